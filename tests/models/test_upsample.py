"""The fused upsample + argmax / cross-entropy against the straightforward F.interpolate path;
the binary (one-logit) threshold against upsample + sigmoid."""

import pytest
import torch
import torch.nn.functional as F

from segformer.models import upsample_argmax, upsample_cross_entropy
from segformer.models.upsample import fused_upsample_cross_entropy, upsample_threshold
from segformer.models.valid_pixels import valid_mean


def upsample(logits, size):
    return F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)


def assert_same_classes(pred, upsampled):
    """pred == upsampled.argmax(1) except where the top two classes tie (to 1e-5 relative)."""
    top2 = upsampled.topk(2, dim=1).values
    differ = pred != upsampled.argmax(1)
    gap = (top2[:, 0] - top2[:, 1])[differ]
    assert gap.le(1e-5 * upsampled.abs().max()).all(), f"{differ.sum()} pixels differ"


def noisy_logits(batch, classes, low, channels_last=True, scale=0.02):
    """Random-init-like logits: small, near-ties everywhere, so most cells have many candidate
    classes (the worst case of the fast path, every candidate-count group is exercised)."""
    x = scale * torch.randn(batch, classes, *low)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize(
    ("low", "size"), [((32, 32), (128, 128)), ((17, 23), (67, 90)), ((12, 9), (7, 13))]
)
def test_argmax_many_candidates(low, size, channels_last, monkeypatch):
    """Every candidate-count group runs: the switch to all classes in bands is turned off."""
    from segformer.models import upsample as module

    monkeypatch.setattr(module, "DENSE_SHARE", float("inf"))
    torch.manual_seed(0)
    logits = noisy_logits(2, 150, low, channels_last)
    assert_same_classes(upsample_argmax(logits, size), upsample(logits, size))


def test_argmax_ties_and_extremes():
    torch.manual_seed(0)
    logits = torch.zeros(1, 10, 6, 7)  # every class ties everywhere
    pred = upsample_argmax(logits, (24, 28))
    assert pred.shape == (1, 24, 28) and pred.dtype == torch.int64
    logits = (torch.randn(1, 10, 6, 7) * 1e4).round()  # large values, exact integer ties
    assert_same_classes(upsample_argmax(logits, (23, 29)), upsample(logits, (23, 29)))
    one = torch.randn(2, 5, 1, 1)  # a single cell
    assert_same_classes(upsample_argmax(one, (4, 3)), upsample(one, (4, 3)))


def test_argmax_of_bf16_logits_mixes_in_fp32():
    torch.manual_seed(0)
    logits = noisy_logits(1, 150, (20, 20)).bfloat16()
    assert_same_classes(upsample_argmax(logits, (80, 80)), upsample(logits, (80, 80)))


def reference_loss(logits, target, ignore_index=255, weight=None):
    up = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(up, target, weight=weight, ignore_index=ignore_index)


@pytest.mark.parametrize(
    ("low", "size"),
    [
        ((16, 128), (64, 512)),
        ((9, 13), (35, 50)),
        ((10, 10), (7, 13)),
        ((8, 8), (8, 8)),
        ((1, 4), (3, 16)),  # sides of 1: views that are not channels-last
        ((3, 1), (12, 3)),
    ],
)
def test_cross_entropy_value_and_gradient(low, size):
    """(16, 128) -> (64, 512) with 150 classes runs in 5 bands of output rows."""
    torch.manual_seed(0)
    classes = 150 if size == (64, 512) else 7
    logits = torch.randn(1 if classes == 150 else 2, classes, *low).requires_grad_()
    target = torch.randint(0, classes, (logits.shape[0], *size))
    target[:, : size[0] // 4] = 255  # an ignored band
    target[..., -2:] = 255
    ours, ref = upsample_cross_entropy(logits, target), reference_loss(logits, target)
    (g_ours,), (g_ref,) = torch.autograd.grad(ours, logits), torch.autograd.grad(ref, logits)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=0)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-5, atol=1e-5 * g_ref.abs().max().item())


def test_cross_entropy_class_weights():
    """Weighted mean as F.cross_entropy(weight=...): sum(w_y * nll) / sum(w_y) over kept pixels."""
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 9, 13).requires_grad_()
    target = torch.randint(0, 6, (2, 35, 50))
    target[:, :5] = 255
    weight = torch.tensor([0.2, 1.0, 4.5, 0.1, 9.6, 2.0])
    ours = upsample_cross_entropy(logits, target, weight=weight)
    ref = reference_loss(logits, target, weight=weight)
    (g_ours,), (g_ref,) = torch.autograd.grad(ours, logits), torch.autograd.grad(ref, logits)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=0)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-5, atol=1e-5 * g_ref.abs().max().item())
    assert not torch.allclose(ours, reference_loss(logits, target))  # the weights matter


def test_cross_entropy_channels_last_bf16_and_ignored():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 8, 8).contiguous(memory_format=torch.channels_last)
    logits = logits.bfloat16().requires_grad_()
    target = torch.randint(0, 5, (2, 32, 32))
    ours = upsample_cross_entropy(logits, target)
    (grad,) = torch.autograd.grad(ours, logits)
    assert ours.dtype == torch.float32 and grad.dtype == torch.bfloat16
    torch.testing.assert_close(ours, reference_loss(logits.float(), target), rtol=1e-5, atol=0)


def test_fused_path_matches_the_reference_with_and_without_weights():
    """What GPUs run (ATen interpolate + a summed cross-entropy / kept weight), here on the CPU."""
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 9, 13).requires_grad_()
    target = torch.randint(0, 6, (2, 35, 50))
    target[:, :5] = 255
    for weight in (None, torch.tensor([0.2, 1.0, 4.5, 0.1, 9.6, 2.0])):
        ours = fused_upsample_cross_entropy(logits, target, weight=weight)
        ref = reference_loss(logits, target, weight=weight)
        (g_ours,), (g_ref,) = torch.autograd.grad(ours, logits), torch.autograd.grad(ref, logits)
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=0)
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-5, atol=1e-6)


LOSSES = {"banded": upsample_cross_entropy, "fused": fused_upsample_cross_entropy}


@pytest.mark.parametrize("path", list(LOSSES))
@pytest.mark.parametrize("weighted", [False, True])
def test_no_valid_pixel_gives_zero_loss_and_zero_gradient(path, weighted):
    """Every pixel ignored: F.cross_entropy gives NaN (0 / 0); ours gives 0, and a gradient of
    0 for every logit (finite, so a step changes nothing but weight decay). The loss stays in
    the graph: backward reaches the logits (under DDP every rank joins the all-reduce)."""
    torch.manual_seed(0)
    logits = torch.randn(1, 5, 8, 8).requires_grad_()
    weight = torch.tensor([0.5, 1.0, 2.0, 3.0, 0.1]) if weighted else None
    void = torch.full((1, 32, 32), 255)
    assert reference_loss(logits, void, weight=weight).isnan()  # what we avoid
    loss = LOSSES[path](logits, void, weight=weight)
    assert loss.requires_grad and loss.grad_fn is not None
    (grad,) = torch.autograd.grad(loss, logits)
    assert loss.item() == 0.0
    assert grad.shape == logits.shape and grad.eq(0).all()
    # a batch of a void image and a labelled one: the mean over the labelled pixels only
    target = torch.cat([void, torch.randint(0, 5, (1, 32, 32))])
    both = torch.randn(2, 5, 8, 8).requires_grad_()
    mixed = LOSSES[path](both, target, weight=weight)
    alone = reference_loss(both[1:], target[1:], weight=weight)
    torch.testing.assert_close(mixed, alone, rtol=1e-5, atol=0)
    (grad,) = torch.autograd.grad(mixed, both)
    assert grad[0].eq(0).all() and grad[1].ne(0).any()


def test_valid_mean_rule():
    """The shared rule (models/valid_pixels.py): total / count, 0 for count 0, no 0 / 0."""
    total = torch.tensor(0.0, requires_grad=True)
    assert valid_mean(total * 1, torch.tensor(0.0)).item() == 0.0
    assert valid_mean(torch.tensor(3.0), torch.tensor(0.5)).item() == 6.0  # summed weights < 1
    (grad,) = torch.autograd.grad(valid_mean(total * 2, torch.tensor(0.0)), total)
    assert grad.item() == 2.0  # finite: d(total / 1)


def test_other_devices_take_the_plain_functions():
    """The banded paths are for CPUs; elsewhere (GPU) the fused ATen ops run. On the meta device
    the banded code could not run at all (it reads tensor values), the plain ops can."""
    logits = torch.empty(2, 5, 8, 8, device="meta")
    target = torch.empty(2, 32, 32, dtype=torch.long, device="meta")
    assert upsample_argmax(logits, (32, 32)).shape == (2, 32, 32)
    loss = upsample_cross_entropy(logits, target, weight=torch.ones(5, device="meta"))
    assert loss.shape == () and loss.dtype == torch.float32


NEAR_TIE = 1e-5  # a differing pixel's top-2 gap, relative to the largest |upsampled logit|


def smooth_logits(batch, classes, low, scale=3.0):
    """Trained-model-like logits: regions with one clear winner, boundaries between them."""
    coarse = scale * torch.randn(batch, classes, max(2, low[0] // 6), max(2, low[1] // 6))
    return upsample(coarse, low).contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("classes", [2, 19, 150])
@pytest.mark.parametrize("kind", ["smooth", "noisy"])
@pytest.mark.parametrize(("low", "size"), [((32, 32), (128, 128)), ((17, 23), (67, 90)),
                                           ((40, 24), (160, 96)), ((9, 13), (9, 13))])  # fmt: skip
def test_argmax_parity_classes_sizes_dtypes(kind, classes, dtype, low, size):
    """The class map equals resize_bilinear(logits).argmax(1) on >= 99.9% of pixels, and every
    differing pixel is a near-tie (top-2 gap <= NEAR_TIE x max |logit|). Why it is exact
    otherwise: for the reference class r of a cell, mix(c) - mix(r) is a convex combination of
    the corner differences, so it is at most their maximum; a class below r at all four corners
    (beyond a rounding slack) is below r at every pixel of the cell and cannot be the argmax."""
    torch.manual_seed(classes + size[0])
    make = smooth_logits if kind == "smooth" else noisy_logits
    logits = make(2, classes, low).to(dtype)
    pred, up = upsample_argmax(logits, size), upsample(logits, size)
    assert pred.shape == (2, *size)
    differ = pred != up.argmax(1)
    assert differ.float().mean() <= 1e-3
    top2 = up.topk(2, dim=1).values
    assert ((top2[:, 0] - top2[:, 1])[differ] <= NEAR_TIE * up.abs().max()).all()


def test_argmax_takes_bands_when_candidates_are_everywhere(monkeypatch):
    """White-noise logits leave many candidates in every cell: all classes are mixed in bands
    (the same map), and smooth logits keep the candidate path."""
    from segformer.models import upsample as module

    calls = []
    banded = module._banded_argmax
    monkeypatch.setattr(module, "_banded_argmax", lambda *a: calls.append(1) or banded(*a))
    torch.manual_seed(0)
    noisy = noisy_logits(2, 150, (16, 16))
    assert_same_classes(upsample_argmax(noisy, (64, 64)), upsample(noisy, (64, 64)))
    assert calls == [1]
    smooth = smooth_logits(2, 150, (16, 16))
    assert_same_classes(upsample_argmax(smooth, (64, 64)), upsample(smooth, (64, 64)))
    assert calls == [1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("threshold", [0.5, 0.3, 0.9])
@pytest.mark.parametrize(("low", "size"), [((17, 23), (67, 90)), ((9, 13), (9, 13))])
def test_threshold_is_the_sigmoid_of_the_upsampled_logit(low, size, threshold, dtype):
    """A binary network's class map, exactly: F.interpolate (in fp32), sigmoid, > threshold."""
    torch.manual_seed(0)
    logits = smooth_logits(2, 1, low).to(dtype)
    got = upsample_threshold(logits, size, threshold)
    want = (upsample(logits, size)[:, 0].sigmoid() > threshold).long()
    assert got.shape == (2, *size) and got.dtype == torch.int64
    assert torch.equal(got, want)
    assert 0 < got.float().mean() < 1  # both classes occur: the comparison means something


def test_cross_entropy_of_confident_wrong_logits_stays_finite():
    """Logit gaps of hundreds: the target's softmax underflows to 0 in fp32 where the model is
    confidently wrong; the loss there comes from a log-softmax, as F.cross_entropy's does, not
    -log(0) = inf."""
    torch.manual_seed(0)
    logits = (300 * torch.randn(2, 6, 9, 13)).requires_grad_()
    target = torch.randint(0, 6, (2, 35, 50))
    ours, ref = upsample_cross_entropy(logits, target), reference_loss(logits, target)
    (g_ours,), (g_ref,) = torch.autograd.grad(ours, logits), torch.autograd.grad(ref, logits)
    assert ours.isfinite() and ref > 50
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=0)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-5, atol=1e-5 * g_ref.abs().max().item())


def test_cross_entropy_without_gradient_is_the_same_loss():
    """Validation computes the loss without a gradient (a log-softmax pass, nothing kept)."""
    torch.manual_seed(0)
    logits = torch.randn(2, 7, 9, 13)
    target = torch.randint(0, 7, (2, 35, 50))
    target[:, :4] = 255
    with torch.no_grad():
        plain = upsample_cross_entropy(logits, target)
    with_grad = upsample_cross_entropy(logits.clone().requires_grad_(), target)
    torch.testing.assert_close(plain, with_grad.detach(), rtol=1e-6, atol=0)
    torch.testing.assert_close(plain, reference_loss(logits, target), rtol=1e-5, atol=0)


@pytest.mark.parametrize(
    ("low", "size"), [((32, 32), (128, 128)), ((17, 23), (67, 90)), ((12, 9), (7, 13))]
)
def test_cell_blocks_cover_every_pixel_once_per_owner(low, size):
    """The dense blocks of all cells (regular ones and the padded edge / uneven ones) reach
    every output pixel, and each pixel only from the cell that owns it."""
    from segformer.models.upsample import _CellPixels, _owned_pixels, _source_index

    (h, w), (H, W), B = low, size, 2
    y0, _, wy = _source_index(H, h, torch.device("cpu"))
    x0, _, wx = _source_index(W, w, torch.device("cpu"))
    y_axis, x_axis = (*_owned_pixels(y0, h), wy), (*_owned_pixels(x0, w), wx)
    blocks = _CellPixels(y_axis, x_axis, (h, w), size, elements=64)
    cells = torch.arange(B * h * w)
    owner = torch.full((B * H * W,), -1)
    for part, wy_c, wx_c, pos in blocks(cells, 4):
        ny, nx = wy_c.shape[1], wx_c.shape[1]
        owner[pos] = cells[part, None].expand(-1, ny * nx).reshape(-1)
    b, y, x = torch.meshgrid(torch.arange(B), torch.arange(H), torch.arange(W), indexing="ij")
    assert torch.equal(owner, ((b * h + y0[y]) * w + x0[x]).reshape(-1))
