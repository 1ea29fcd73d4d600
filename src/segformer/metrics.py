"""Segmentation metrics (mIoU, mAcc, aAcc, mDice, mFscore, mPrecision, mRecall) from a confusion
matrix, as a table and a figure."""

from __future__ import annotations

import math
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from rich.table import Table
from torch import Tensor
from torchmetrics import Metric

from segformer.checkpoint_io import atomic_write
from segformer.errors import InputError

if TYPE_CHECKING:
    from matplotlib.figure import Figure


class SegmentationMetrics(Metric):
    """Confusion-matrix metrics in the mmseg convention.

    IoU_k = TP / (TP + FP + FN) and Acc_k = TP / (TP + FN) per class; mIoU and mAcc are the
    nan-means, so a class absent from both prediction and ground truth (IoU NaN) or from the
    ground truth (Acc NaN) does not count, while a class that is only predicted scores IoU 0.
    aAcc is the pixel accuracy. As mmseg's mDice / mFscore: Dice_k = 2 TP / (2 TP + FP + FN),
    Precision_k = TP / (TP + FP), Recall_k = TP / (TP + FN) (= Acc_k) and Fscore_k =
    (1 + beta^2) P R / (beta^2 P + R) with beta = 1 (NaN where P or R is, so a class never
    predicted has Dice 0 but Fscore NaN); their means are nan-means too. The only state is the
    (K, K) confusion matrix, summed across processes, so the metrics are exact under DDP.

    ``binary``: the two classes (background, foreground) of a binary network; the "means" (mIoU,
    mAcc, mDice, mFscore, mPrecision, mRecall) are then the foreground's values alone (as
    sklearn's average="binary"), so mIoU is the foreground IoU; the per-class values and aAcc
    are as usual.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    confmat: Tensor

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        beta: float = 1.0,
        binary: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if binary and num_classes != 2:
            raise InputError(
                f"binary metrics: 2 classes (background, foreground), not {num_classes}"
            )
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.beta = beta
        self.binary = binary
        # rows: ground truth, columns: prediction
        self.add_state(
            "confmat", torch.zeros(num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum"
        )

    def update(self, preds: Tensor, target: Tensor) -> None:
        """preds: class map (B, H, W) or logits/probabilities (B, K, H, W); target: (B, H, W)."""
        if preds.ndim == target.ndim + 1:
            preds = preds.argmax(1)
        if preds.shape != target.shape:
            raise InputError(
                f"preds shape {tuple(preds.shape)} does not match target shape "
                f"{tuple(target.shape)}; expected (B, H, W) class maps or (B, K, H, W) logits"
            )
        valid = target != self.ignore_index
        preds, target = preds[valid].long(), target[valid].long()
        k = self.num_classes
        for name, labels in (("target", target), ("preds", preds)):
            bad = labels[(labels < 0) | (labels >= k)]
            if bad.numel():
                raise InputError(
                    f"{name} contains class {bad[0].item()}, outside [0, {k}) and not "
                    f"ignore_index={self.ignore_index}"
                )
        # one pass over the pixels: each (gt, pred) pair is a bin of the flattened matrix
        self.confmat += torch.bincount(target * k + preds, minlength=k * k).view(k, k)

    def compute(self) -> dict[str, Tensor]:
        cm = self.confmat.float()
        tp = cm.diagonal()
        gt, pred = cm.sum(1), cm.sum(0)
        iou = tp / (gt + pred - tp)  # 0 / 0 = NaN for classes absent from both
        acc = tp / gt  # NaN for classes absent from the ground truth
        dice = 2 * tp / (gt + pred)  # NaN for classes absent from both
        precision = tp / pred  # NaN for classes never predicted
        recall = acc
        beta2 = self.beta**2
        fscore = (1 + beta2) * precision * recall / (beta2 * precision + recall)
        averaged = slice(1, 2) if self.binary else slice(None)  # binary: the foreground

        def mean(values: Tensor) -> Tensor:
            return values[averaged].nanmean()

        return {
            "mIoU": mean(iou),
            "mAcc": mean(acc),
            "aAcc": tp.sum() / cm.sum(),
            "mDice": mean(dice),
            "mFscore": mean(fscore),
            "mPrecision": mean(precision),
            "mRecall": mean(recall),
            "IoU": iou,
            "Acc": acc,
            "Dice": dice,
            "Fscore": fscore,
            "Precision": precision,
            "Recall": recall,
            "confmat": self.confmat.clone(),
        }


def _percent(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.2f}"


# per-class results -> the table column and the mean's key (the columns of metrics_table)
PER_CLASS = {
    "IoU": "mIoU",
    "Acc": "mAcc",
    "Dice": "mDice",
    "Fscore": "mFscore",
    "Precision": "mPrecision",
    "Recall": "mRecall",
}
SUMMARY = ("mIoU", "mAcc", "aAcc", "mDice", "mFscore", "mPrecision", "mRecall")


def per_class_results(
    results: dict[str, Tensor], class_names: Sequence[str]
) -> dict[str, dict[str, float]]:
    """{class name: {"IoU": ..., "Acc": ..., "Dice": ...}} of the results present."""
    keys = [k for k in PER_CLASS if k in results]
    return {name: {k: float(results[k][i]) for k in keys} for i, name in enumerate(class_names)}


def metrics_table(
    results: dict[str, Tensor],
    class_names: Sequence[str],
    title: str = "Segmentation metrics",
    mean_label: str = "mean",
) -> Table:
    """Per-class IoU, Acc, Dice, Fscore, Precision, Recall in % (those present in `results`),
    "-" for NaN (absent classes), the means' row (named `mean_label`) and aAcc in the caption."""
    columns = [k for k in PER_CLASS if k in results]
    if len(class_names) != len(results["IoU"]):
        raise InputError(f"got {len(class_names)} class names for {len(results['IoU'])} classes")
    table = Table(title=title, caption=f"aAcc {_percent(float(results['aAcc']))}")
    table.add_column("Class")
    for key in columns:
        table.add_column(f"{'Prec' if key == 'Precision' else key} (%)", justify="right")
    values = [results[k].tolist() for k in columns]
    for i, name in enumerate(class_names):
        table.add_row(name, *(_percent(v[i]) for v in values))
    table.add_section()
    means = [_percent(float(results[PER_CLASS[k]])) for k in columns]
    table.add_row(mean_label, *means, style="bold")
    return table


def confusion_matrix_figure(confmat: Tensor, class_names: Sequence[str]) -> Figure:
    """Row-normalised confusion matrix (row k: where the pixels of class k went)."""
    # imported here: only evaluation draws figures, and Figure renders with Agg without pyplot,
    # so no global backend is changed
    from matplotlib.figure import Figure

    k = len(class_names)
    cm = confmat.double().cpu()
    cm = (cm / cm.sum(1, keepdim=True).clamp(min=1)).numpy()
    size = min(max(6.0, 0.5 * k), 40.0)
    fig = Figure(figsize=(size, size), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(cm, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, shrink=0.8)
    ax.set_xticks(range(k), class_names, rotation=90, fontsize="small")
    ax.set_yticks(range(k), class_names, fontsize="small")
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    if k <= 20:  # cell values stay legible only for few classes
        for i in range(k):
            for j in range(k):
                color = "white" if cm[i, j] > 0.5 else "black"
                ax.text(j, i, f"{cm[i, j]:.2f}", ha="center", va="center", color=color, size=7)
    return fig


def save_confusion_matrix_png(
    confmat: Tensor, class_names: Sequence[str], path: str | Path, dpi: int = 100
) -> Path:
    """Write the row-normalised confusion matrix to ``path`` (PNG); returns the path."""
    import matplotlib.pyplot as plt

    fig, picture = confusion_matrix_figure(confmat, class_names), BytesIO()
    fig.savefig(picture, format="png", dpi=dpi)
    plt.close(fig)
    atomic_write(path, picture.getvalue(), "confusion matrix")
    return Path(path)
