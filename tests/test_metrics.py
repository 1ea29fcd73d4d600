import math

import pytest
import torch
import torch.nn.functional as F
from rich.console import Console

from segformer.metrics import SegmentationMetrics, metrics_table, save_confusion_matrix_png

NAMES = ["road", "sky", "car", "person"]

# 4 classes, two ignored pixels (255). "car" (2) is only predicted, "person" (3) is predicted
# at an ignored pixel only, so it is absent from both once ignored pixels are dropped.
TARGET = torch.tensor([[[0, 0, 1, 1], [0, 1, 1, 255], [255, 0, 0, 1]]])
PREDS = torch.tensor([[[0, 1, 1, 1], [0, 1, 2, 3], [2, 0, 0, 0]]])
# counted by hand over the 10 valid pixels (rows: ground truth, columns: prediction)
CONFMAT = torch.tensor([[4, 1, 0, 0], [1, 3, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
NAN = math.nan
IOU = [4 / 6, 3 / 6, 0.0, NAN]  # TP / (GT + pred - TP); car: 0 / 1; person: 0 / 0
ACC = [4 / 5, 3 / 5, NAN, NAN]  # TP / GT
MIOU = (4 / 6 + 3 / 6 + 0.0) / 3  # person excluded, car counts as 0
MACC = (4 / 5 + 3 / 5) / 2
AACC = 7 / 10


def _close(actual: torch.Tensor, expected: float | list[float]) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected), equal_nan=True)


def test_hand_computed_confusion_matrix() -> None:
    metric = SegmentationMetrics(num_classes=4)
    metric.update(PREDS, TARGET)
    results = metric.compute()
    assert torch.equal(results["confmat"], CONFMAT)
    _close(results["IoU"], IOU)
    _close(results["Acc"], ACC)
    _close(results["mIoU"], MIOU)
    _close(results["mAcc"], MACC)
    _close(results["aAcc"], AACC)


def test_accumulates_over_updates() -> None:
    metric = SegmentationMetrics(num_classes=4)
    metric.update(PREDS[:, :1], TARGET[:, :1])  # images of different sizes
    metric.update(PREDS[:, 1:], TARGET[:, 1:])
    assert torch.equal(metric.compute()["confmat"], CONFMAT)
    metric.update(PREDS, TARGET)
    results = metric.compute()
    assert torch.equal(results["confmat"], 2 * CONFMAT)
    _close(results["mIoU"], MIOU)  # ratios do not change when every count doubles
    metric.reset()
    assert metric.confmat.sum() == 0


def test_states_merge_by_sum() -> None:
    # merge_state applies dist_reduce_fx, the same reduction DDP uses across processes
    a, b = SegmentationMetrics(num_classes=4), SegmentationMetrics(num_classes=4)
    a.update(PREDS[:, :1], TARGET[:, :1])
    b.update(PREDS[:, 1:], TARGET[:, 1:])
    a.merge_state(b)
    assert torch.equal(a.compute()["confmat"], CONFMAT)


def test_logits_input() -> None:
    metric = SegmentationMetrics(num_classes=4)
    logits = F.one_hot(PREDS, 4).permute(0, 3, 1, 2).float()  # (B, K, H, W)
    metric.update(logits, TARGET)
    assert torch.equal(metric.compute()["confmat"], CONFMAT)


def test_custom_ignore_index() -> None:
    metric = SegmentationMetrics(num_classes=4, ignore_index=-1)
    metric.update(PREDS, torch.where(TARGET == 255, -1, TARGET))
    assert torch.equal(metric.compute()["confmat"], CONFMAT)


@pytest.mark.parametrize(("name", "value"), [("target", 7), ("target", -3), ("preds", 4)])
def test_out_of_range_raises(name: str, value: int) -> None:
    metric = SegmentationMetrics(num_classes=4)
    tensors = {"preds": PREDS.clone(), "target": TARGET.clone()}
    tensors[name][0, 0, 0] = value
    with pytest.raises(ValueError, match=rf"{name} contains class {value}, outside \[0, 4\)"):
        metric.update(**tensors)


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match=r"preds shape \(1, 3, 3\) does not match"):
        SegmentationMetrics(num_classes=4).update(PREDS[..., :3], TARGET)


def test_table_renders() -> None:
    metric = SegmentationMetrics(num_classes=4)
    metric.update(PREDS, TARGET)
    console = Console(record=True, width=100)
    console.print(metrics_table(metric.compute(), NAMES, title="val"))
    text = console.export_text()
    lines = {line.split("│")[1].strip(): line for line in text.splitlines() if "│" in line}
    assert "66.67" in lines["road"] and "80.00" in lines["road"]
    # only predicted: IoU, Dice, Precision 0; Acc, Fscore, Recall undefined
    assert lines["car"].count("0.00") == 3 and lines["car"].count("-") == 3
    assert lines["person"].count("-") == 6  # absent: every column shown as "-"
    assert "38.89" in lines["mean"] and "70.00" in lines["mean"]
    assert "aAcc 70.00" in text and "val" in text


def test_table_checks_class_names() -> None:
    metric = SegmentationMetrics(num_classes=4)
    metric.update(PREDS, TARGET)
    with pytest.raises(ValueError, match="3 class names for 4 classes"):
        metrics_table(metric.compute(), NAMES[:3])


def test_confusion_matrix_png(tmp_path) -> None:
    path = save_confusion_matrix_png(CONFMAT, NAMES, tmp_path / "eval" / "confmat.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _reference_scores(target: torch.Tensor, preds: torch.Tensor, k: int, ignore: int = 255):
    """Per-class Dice, precision, recall, F1 from pixel sets, with mmseg's NaN conventions:
    a ratio over an empty set is NaN, and F1 is NaN where precision or recall is."""
    valid = target != ignore
    t, p = target[valid].tolist(), preds[valid].tolist()
    out = {"Dice": [], "Precision": [], "Recall": [], "Fscore": []}
    for c in range(k):
        tp = sum(1 for a, b in zip(t, p, strict=True) if a == b == c)
        in_gt, in_pred = t.count(c), p.count(c)
        dice = 2 * tp / (in_gt + in_pred) if in_gt + in_pred else NAN
        precision = tp / in_pred if in_pred else NAN
        recall = tp / in_gt if in_gt else NAN
        if math.isnan(precision) or math.isnan(recall) or precision + recall == 0:
            f1 = NAN
        else:
            f1 = 2 * precision * recall / (precision + recall)
        for key, value in zip(out, (dice, precision, recall, f1), strict=True):
            out[key].append(value)
    return out


def test_dice_fscore_precision_recall_as_mmseg() -> None:
    metric = SegmentationMetrics(num_classes=4)
    metric.update(PREDS, TARGET)
    results = metric.compute()
    want = _reference_scores(TARGET, PREDS, 4)
    for key, values in want.items():
        _close(results[key], values)
        _close(results[f"m{key}"], float(torch.tensor(values).nanmean()))
    # by hand: road Dice 8/10, sky 6/9, car 0 (only predicted: precision 0, recall NaN)
    _close(results["Dice"], [0.8, 6 / 9, 0.0, NAN])
    _close(results["Fscore"], [0.8, 6 / 9, NAN, NAN])


@pytest.mark.parametrize("seed", range(3))
def test_scores_on_random_maps_match_the_reference(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, 6, (2, 9, 11), generator=g)
    target[torch.rand(target.shape, generator=g) < 0.1] = 255
    preds = torch.randint(0, 5, (2, 9, 11), generator=g)  # class 5 never predicted
    metric = SegmentationMetrics(num_classes=7)  # class 6 absent from both
    metric.update(preds, target)
    results = metric.compute()
    for key, values in _reference_scores(target, preds, 7).items():
        _close(results[key], values)


def test_binary_means_are_the_foregrounds_with_ignored_pixels_left_out() -> None:
    """A binary network's class map (0 background, 1 foreground): the means are the
    foreground's IoU, Dice (= F1), precision and recall, counted by hand; ignored pixels
    (255), whatever is predicted there, do not count."""
    target = torch.tensor([[[1, 1, 1, 0], [0, 0, 255, 255], [1, 0, 0, 0]]])
    preds = torch.tensor([[[1, 1, 0, 1], [1, 0, 1, 0], [1, 0, 0, 0]]])
    # foreground: TP 3, FN 1, FP 2 over the 10 valid pixels
    metric = SegmentationMetrics(num_classes=2, binary=True)
    metric.update(preds, target)
    results = metric.compute()
    _close(results["mIoU"], 3 / 6)
    _close(results["mDice"], 6 / 9)
    _close(results["mFscore"], 6 / 9)
    _close(results["mPrecision"], 3 / 5)
    _close(results["mRecall"], 3 / 4)
    _close(results["mAcc"], 3 / 4)
    _close(results["aAcc"], 7 / 10)
    _close(results["IoU"], [4 / 7, 3 / 6])  # both classes per class, as always
    plain = SegmentationMetrics(num_classes=2)
    plain.update(preds, target)
    _close(plain.compute()["mIoU"], (4 / 7 + 3 / 6) / 2)
    table = Console(record=True, width=120)
    table.print(metrics_table(results, ["bg", "fg"], mean_label="mean (fg)"))
    assert "mean (fg)" in table.export_text()
    with pytest.raises(ValueError, match="binary metrics: 2 classes"):
        SegmentationMetrics(num_classes=3, binary=True)
