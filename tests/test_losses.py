"""losses.py against straightforward reference implementations written here, on H/4 logits
upsampled to the labels, with ignored pixels and class weights; zero-valid-pixel batches;
combining terms from config; the module's default path unchanged; the binary (one-logit)
losses."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import CONFIG_DIR, compose_config
from omegaconf import OmegaConf

from segformer.losses import (
    LOSSES,
    binary_cross_entropy,
    build_loss,
    cross_entropy,
    dice_loss,
    focal_loss,
    lovasz_softmax,
    ohem_cross_entropy,
)
from segformer.models import upsample_cross_entropy
from segformer.module import SegFormerModule

IGNORE = 255
K = 4


def batch(seed: int = 0, ignore_share: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Low-res logits (2, K, 5, 6) and labels (2, 19, 23) with some pixels ignored."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, K, 5, 6, generator=g) * 2
    target = torch.randint(0, K, (2, 19, 23), generator=g)
    target[torch.rand(target.shape, generator=g) < ignore_share] = IGNORE
    return logits, target


def binary_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One logit (2, 1, 5, 6) and labels 0 / 1 (2, 19, 23) with some pixels ignored."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 1, 5, 6, generator=g) * 2
    target = torch.randint(0, 2, (2, 19, 23), generator=g)
    target[torch.rand(target.shape, generator=g) < 0.2] = IGNORE
    return logits, target


def batch_for(name: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    return binary_batch(seed) if name == "bce" else batch(seed)


def up(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)


def pixels(logits: torch.Tensor, target: torch.Tensor) -> list[tuple[torch.Tensor, int]]:
    """(probabilities (K,), label) of every valid pixel, one by one."""
    probs = up(logits, target).softmax(1)
    return [
        (probs[b, :, y, x], int(target[b, y, x]))
        for b in range(target.shape[0])
        for y in range(target.shape[1])
        for x in range(target.shape[2])
        if target[b, y, x] != IGNORE
    ]


WEIGHT = torch.tensor([0.5, 2.0, 1.0, 0.25])


@pytest.mark.parametrize("weight", [None, WEIGHT], ids=["plain", "weighted"])
def test_cross_entropy_is_torchs_on_the_upsampled_logits(weight) -> None:
    logits, target = batch()
    want = F.cross_entropy(up(logits, target), target, weight=weight, ignore_index=IGNORE)
    torch.testing.assert_close(cross_entropy(logits, target, IGNORE, weight), want)


@pytest.mark.parametrize("weight", [None, WEIGHT], ids=["plain", "weighted"])
def test_focal_loss_against_a_pixel_loop(weight) -> None:
    logits, target = batch(1)
    total = norm = 0.0
    for p, y in pixels(logits, target):
        w = 1.0 if weight is None else float(weight[y])
        total += w * (1 - float(p[y])) ** 2 * -math.log(float(p[y]))
        norm += w
    got = focal_loss(logits, target, IGNORE, weight, gamma=2.0)
    assert float(got) == pytest.approx(total / norm, rel=1e-5)
    # gamma 0 is cross-entropy
    torch.testing.assert_close(
        focal_loss(logits, target, IGNORE, weight, gamma=0.0),
        cross_entropy(logits, target, IGNORE, weight),
    )


@pytest.mark.parametrize("weight", [None, WEIGHT], ids=["plain", "weighted"])
def test_dice_loss_against_per_image_per_class_sums(weight) -> None:
    logits, target = batch(2)
    probs = up(logits, target).softmax(1)
    per_image = []
    for b in range(2):
        valid = target[b] != IGNORE
        total = 0.0
        for c in range(K):
            p = probs[b, c][valid]
            g = (target[b][valid] == c).float()
            dice = 1 - (2 * (p * g).sum() + 1) / ((p**2).sum() + (g**2).sum() + 1)
            total += float(dice) * (1.0 if weight is None else float(weight[c]))
        per_image.append(total / K)
    got = dice_loss(logits, target, IGNORE, weight)
    assert float(got) == pytest.approx(np.mean(per_image), rel=1e-5)


def _lovasz_reference(logits, target, weight) -> float:
    """Berman et al.'s definition: sort errors, Jaccard loss of each prefix set from set sizes."""
    probs = up(logits, target).softmax(1).permute(0, 2, 3, 1)[target != IGNORE]  # (N, K)
    labels = target[target != IGNORE]
    losses = []
    for c in sorted(set(labels.tolist())):
        fg = (labels == c).tolist()
        errors = (torch.tensor(fg, dtype=torch.float32) - probs[:, c]).abs().tolist()
        order = sorted(range(len(errors)), key=lambda i: -errors[i])
        loss, previous, mispredicted = 0.0, 0.0, set()
        for i in order:
            mispredicted.add(i)
            union = sum(fg) + sum(1 for j in mispredicted if not fg[j])
            jaccard = len(mispredicted) / union  # |M| / |fg u M|
            loss += errors[i] * (jaccard - previous)
            previous = jaccard
        losses.append(loss * (1.0 if weight is None else float(weight[c])))
    return float(np.mean(losses))


@pytest.mark.parametrize("weight", [None, WEIGHT], ids=["plain", "weighted"])
def test_lovasz_softmax_against_its_definition(weight) -> None:
    logits, target = batch(3)
    target[target == 3] = 0  # a class absent from the batch is left out ("present")
    got = lovasz_softmax(logits, target, IGNORE, weight)
    assert float(got) == pytest.approx(_lovasz_reference(logits, target, weight), rel=1e-4)


def _ohem_reference(logits, target, weight, thresh, min_kept) -> float:
    """mmseg OHEMPixelSampler's selection, written out, then the class-weighted mean CE."""
    items = pixels(logits, target)
    prob = np.array([float(p[y]) for p, y in items])
    w = np.array([1.0 if weight is None else float(weight[y]) for _, y in items])
    ce = -np.log(prob)
    batch_kept = min_kept * target.shape[0]
    if thresh is not None:
        threshold = max(np.sort(prob)[min(batch_kept, len(prob) - 1)], thresh)
        keep = prob < threshold
    else:
        keep = np.zeros(len(prob), bool)
        keep[np.argsort(-(ce * w), kind="stable")[:batch_kept]] = True
    return float((ce * w)[keep].sum() / w[keep].sum())


@pytest.mark.parametrize(("thresh", "min_kept"), [(0.7, 10), (0.3, 300), (0.99, 5), (None, 40)])
@pytest.mark.parametrize("weight", [None, WEIGHT], ids=["plain", "weighted"])
def test_ohem_selects_as_mmseg_and_averages_the_kept(weight, thresh, min_kept) -> None:
    logits, target = batch(4)
    got = ohem_cross_entropy(logits, target, IGNORE, weight, thresh=thresh, min_kept=min_kept)
    want = _ohem_reference(logits, target, weight, thresh, min_kept)
    assert float(got) == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("name", list(LOSSES))
def test_no_valid_pixel_gives_zero_with_zero_gradient(name: str) -> None:
    logits, target = batch_for(name, 5)
    target[:] = IGNORE
    logits.requires_grad_(True)
    loss = LOSSES[name](logits, target, IGNORE, WEIGHT[: 2 if name == "bce" else K])
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert logits.grad is not None and (logits.grad == 0).all()


@pytest.mark.parametrize("name", list(LOSSES))
def test_ignored_pixels_do_not_matter(name: str) -> None:
    logits, target = batch_for(name, 6)
    target[:, :, :12] = IGNORE  # output columns 0-11 ignored
    changed = logits.clone()
    changed[..., :2] = torch.randn_like(logits)[..., :2]  # logit columns 0-1 reach columns <= 9
    a = LOSSES[name](logits, target, IGNORE, None)
    b = LOSSES[name](changed, target, IGNORE, None)
    torch.testing.assert_close(a, b)


def test_build_loss_combines_weighted_terms_and_checks_names() -> None:
    logits, target = batch(7)
    combined = build_loss([{"name": "ce", "weight": 1.0}, {"name": "dice", "weight": 0.5}])
    want = cross_entropy(logits, target) + 0.5 * dice_loss(logits, target)
    torch.testing.assert_close(combined(logits, target), want)
    assert set(combined.last) == {"ce", "dice"}
    focal = build_loss({"name": "focal", "gamma": 0.0})
    torch.testing.assert_close(focal(logits, target), cross_entropy(logits, target))
    with pytest.raises(ValueError, match="name must be one of ce, bce, focal, dice, lovasz, ohem"):
        build_loss([{"name": "tversky"}])
    with pytest.raises(ValueError, match=r"dice: unknown option\(s\) \['gamma'\]"):
        build_loss([{"name": "dice", "gamma": 2}])


def test_module_default_loss_is_the_banded_cross_entropy_and_terms_are_selectable() -> None:
    logits, target = batch(8)
    default = SegFormerModule(num_classes=K, class_weights=WEIGHT.tolist())
    assert default.criterion is None
    want = upsample_cross_entropy(logits, target, IGNORE, WEIGHT)
    assert torch.equal(default.loss(logits, target), want)  # bit for bit as before
    chosen = SegFormerModule(
        num_classes=K,
        class_weights=WEIGHT.tolist(),
        loss=[{"name": "lovasz", "weight": 2.0}, {"name": "ce", "weight": 1.0}],
    )
    got = chosen.loss(logits, target)
    expected = 2 * lovasz_softmax(logits, target, IGNORE, WEIGHT) + want
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize(
    "preset", sorted(p.stem for p in (Path(CONFIG_DIR) / "loss").glob("*.yaml"))
)
def test_loss_presets_compose_into_the_model_config(preset: str, tmp_path: Path) -> None:
    cfg = compose_config("train", [f"loss={preset}"], tmp_path)
    binary = preset.startswith("bce")  # for model.num_classes=1
    loss = build_loss(OmegaConf.to_container(cfg.model.loss), binary=binary)
    logits, target = binary_batch(9) if binary else batch(9)
    assert torch.isfinite(loss(logits, target))


BINARY_WEIGHT = torch.tensor([0.5, 2.0])  # background, foreground


@pytest.mark.parametrize("weight", [None, BINARY_WEIGHT], ids=["plain", "weighted"])
def test_bce_is_the_cross_entropy_of_the_logit_pair_zero_x(weight) -> None:
    """One logit x is the softmax pair (0, x): BCE equals CE on it, value and gradient, with
    ignored pixels and class weights; and it is torch's BCE over the valid pixels."""
    logits, target = binary_batch(1)
    x = logits.clone().requires_grad_(True)
    pair = torch.cat([torch.zeros_like(logits), logits], 1).requires_grad_(True)
    got = binary_cross_entropy(x, target, IGNORE, weight)
    want = F.cross_entropy(up(pair, target), target, weight=weight, ignore_index=IGNORE)
    torch.testing.assert_close(got, want)
    got.backward()
    want.backward()
    torch.testing.assert_close(x.grad, pair.grad[:, 1:])
    valid = target != IGNORE
    w = torch.ones(int(valid.sum())) if weight is None else weight[target[valid]]
    loss = F.binary_cross_entropy_with_logits(
        up(logits, target)[:, 0][valid], target[valid].float(), w, reduction="sum"
    )
    torch.testing.assert_close(got.detach(), loss / w.sum())


@pytest.mark.parametrize("weight", [None, BINARY_WEIGHT], ids=["plain", "weighted"])
def test_binary_dice_is_the_foregrounds_over_valid_pixels(weight) -> None:
    logits, target = binary_batch(2)
    probs = up(logits, target)[:, 0].sigmoid()
    per_image = []
    for b in range(2):
        valid = target[b] != IGNORE
        p, g = probs[b][valid], (target[b][valid] == 1).float()
        dice = 1 - (2 * (p * g).sum() + 1) / ((p**2).sum() + (g**2).sum() + 1)
        per_image.append(float(dice) * (1.0 if weight is None else float(weight[1])))
    got = dice_loss(logits, target, IGNORE, weight)
    assert float(got) == pytest.approx(np.mean(per_image), rel=1e-5)
    # ignore_index 0 is a label here, not a class to leave out of the one channel
    assert float(dice_loss(logits, target.clamp(max=1), 0)) > 0


def test_binary_losses_by_name_and_their_checks() -> None:
    logits, target = binary_batch(3)
    combined = build_loss([{"name": "bce"}, {"name": "dice", "weight": 0.5}], binary=True)
    want = binary_cross_entropy(logits, target) + 0.5 * dice_loss(logits, target)
    torch.testing.assert_close(combined(logits, target), want)
    with pytest.raises(ValueError, match=r"model.loss focal: a softmax loss .* trains with bce"):
        build_loss("focal", binary=True)
    with pytest.raises(ValueError, match=r"model.loss bce: .* needs model.num_classes=1"):
        build_loss("bce")
    with pytest.raises(ValueError, match=r"bce takes one logit per pixel .* got 4"):
        binary_cross_entropy(*batch(3))


def test_binary_module_trains_with_bce_by_default_and_checks_its_classes() -> None:
    logits, target = binary_batch(4)
    module = SegFormerModule(num_classes=1, class_names=["background", "road"])
    torch.testing.assert_close(module.loss(logits, target), binary_cross_entropy(logits, target))
    chosen = SegFormerModule(
        num_classes=1,
        class_weights=BINARY_WEIGHT.tolist(),
        loss=[{"name": "bce"}, {"name": "dice", "weight": 0.5}],
    )
    want = binary_cross_entropy(logits, target, IGNORE, BINARY_WEIGHT) + 0.5 * dice_loss(
        logits, target, IGNORE, BINARY_WEIGHT
    )
    torch.testing.assert_close(chosen.loss(logits, target), want)
    with pytest.raises(ValueError, match=r"num_classes=1 .* needs data of 2 classes .* has 3"):
        SegFormerModule(num_classes=1, class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"class_weights has 1 values, expected one per class"):
        SegFormerModule(num_classes=1, class_weights=[2.0])
