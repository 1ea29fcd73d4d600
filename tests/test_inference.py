import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segformer.inference import (
    InferenceConfig,
    multi_scale_inference,
    predict_logits,
    resized_shape,
    sliding_window_inference,
)
from segformer.models.upsample import resize_bilinear

K = 5


class Recorder(nn.Module):
    """Records the input sizes it sees. A 1x1 conv is translation and flip equivariant; with
    ``context`` a 3x3 conv and logits at 1/4 resolution (like SegFormer's head) it is neither."""

    def __init__(self, context: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, K, 3 if context else 1, padding=1 if context else 0)
        self.context = context
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x: Tensor) -> Tensor:
        self.shapes.append(tuple(x.shape))
        logits = self.conv(x)
        return F.avg_pool2d(logits, 4) if self.context else logits


def whole_inference(
    model: nn.Module, images: Tensor, scale: tuple[int, int] | None = None, align: int | None = None
) -> Tensor:
    """The straightforward whole-image path: resize, one forward, logits back at (H, W)."""
    size = images.shape[-2:]
    x = resize_bilinear(images, resized_shape(size, scale, align))
    return resize_bilinear(resize_bilinear(model(x), x.shape[-2:]), size)


def _images(*shape: int) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


def test_slide_on_crop_sized_image_equals_whole() -> None:
    model, images = Recorder(context=True), _images(2, 3, 32, 48)
    slide = sliding_window_inference(model, images, crop=(32, 48), stride=(24, 36))
    assert torch.equal(slide, whole_inference(model, images))


def test_slide_small_image_and_uneven_stride() -> None:
    # H=20 < crop 32: one row spanning the height; W=45, crop 16, stride 12: windows at
    # x = 0, 12, 24 and 29 (the last one moved back to end at the border)
    model, images = Recorder(), _images(2, 3, 20, 45)
    logits = sliding_window_inference(model, images, crop=(32, 16), stride=(24, 12))
    assert model.shapes == [(2 * 4, 3, 20, 16)]  # 4 windows x 2 images in one forward
    assert logits.shape == (2, K, 20, 45)
    torch.testing.assert_close(logits, whole_inference(model, images), atol=1e-6, rtol=0)


def test_slide_grid_like_cityscapes() -> None:
    # Cityscapes 1024x2048, crop 1024, stride 768 -> 1 x 3 windows; here at 1/16 scale
    model = Recorder(context=True)
    logits = sliding_window_inference(model, _images(1, 3, 64, 128), (64, 64), (48, 48), 1)
    assert model.shapes == [(1, 3, 64, 64)] * 3
    assert logits.shape == (1, K, 64, 128)


def test_window_batch_does_not_change_result() -> None:
    model, images = Recorder(context=True), _images(2, 3, 56, 56)
    one = sliding_window_inference(model, images, (24, 24), (16, 16), window_batch=1)
    many = sliding_window_inference(model, images, (24, 24), (16, 16), window_batch=4)
    assert len(model.shapes) == 3 * 3 + 3  # 9 windows: 9 forwards, then 3 (4 + 4 + 1)
    torch.testing.assert_close(one, many, atol=1e-6, rtol=0)


def test_whole_resizes_with_scale_and_align() -> None:
    # (long, short) = (2048, 512) on 300x400: factor min(2048/400, 512/300) -> 512x683,
    # aligned up to multiples of 32 -> 512x704
    model = Recorder(context=True)
    logits = whole_inference(model, _images(1, 3, 300, 400), scale=(2048, 512), align=32)
    assert model.shapes == [(1, 3, 512, 704)]
    assert logits.shape == (1, K, 300, 400)


@pytest.mark.parametrize(
    ("size", "scale", "align", "ratio", "expected"),
    [
        ((300, 400), None, None, 1.0, (300, 400)),
        ((300, 400), None, 32, 1.0, (320, 416)),
        ((100, 150), 256, None, 1.0, (256, 384)),  # int: short side
        ((300, 800), (1000, 600), 32, 1.0, (384, 1024)),  # long side binds: 375x1000
        ((300, 400), (2048, 512), 32, 0.75, (384, 512)),  # ADE ratio 0.75: 384x512
        ((1024, 2048), (2048, 1024), None, 0.5, (512, 1024)),  # Cityscapes ratio 0.5
        ((10, 15), None, None, 1.25, (13, 19)),  # 12.5 -> 13, 18.75 -> 19 (round half up)
    ],
)
def test_resized_shape(size, scale, align, ratio, expected) -> None:
    assert resized_shape(size, scale, align, ratio) == expected


def test_multi_scale_single_pass_is_softmax_of_whole() -> None:
    model, images = Recorder(context=True), _images(2, 3, 32, 40)
    probs = multi_scale_inference(model, images, InferenceConfig(scales=[1.0]))
    torch.testing.assert_close(probs, whole_inference(model, images).softmax(1))


def test_flip_of_flip_equivariant_model_is_unchanged() -> None:
    model, images = Recorder(), _images(2, 3, 24, 36)
    plain = multi_scale_inference(model, images, InferenceConfig())
    flipped = multi_scale_inference(model, images, InferenceConfig(flip=True))
    assert len(model.shapes) == 1 + 2
    torch.testing.assert_close(flipped, plain)


def test_multi_scale_averages_probabilities() -> None:
    model, images = Recorder(context=True), _images(1, 3, 32, 32)
    cfg = InferenceConfig(scales=[0.5, 1.0], flip=True)
    probs = multi_scale_inference(model, images, cfg)
    assert sorted(s[-2:] for s in model.shapes) == [(16, 16)] * 2 + [(32, 32)] * 2
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 32, 32))


def test_predict_logits_dispatch_and_out_size() -> None:
    model, images = Recorder(context=True), _images(2, 3, 32, 48)
    logits = predict_logits(model, images, InferenceConfig())
    assert torch.equal(logits, whole_inference(model, images))  # one pass: logits
    cfg = InferenceConfig(mode="slide", crop=32, stride=16)
    slide = predict_logits(model, images, cfg, out_size=(64, 96))
    assert slide.shape == (2, K, 64, 96)
    probs = predict_logits(model, images, InferenceConfig(flip=True), out_size=(16, 24))
    assert probs.shape == (2, K, 16, 24)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 16, 24))  # several passes: probs


@pytest.mark.parametrize(
    ("data", "single_scale", "scales"),
    [
        ("ade20k", ("whole", (2048, 512), 32, None, None), (0.75, 0.875, 1.0, 1.125, 1.25)),
        (
            "cityscapes",
            ("slide", None, None, (1024, 1024), (768, 768)),  # native 2048x1024
            (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0),
        ),
    ],
)
def test_data_configs_give_the_paper_inference(data, single_scale, scales, tmp_path) -> None:
    """The paper's single-scale test of each data set comes from its data config; multi-scale +
    flip is the command-line override the README gives."""
    from helpers import compose_config
    from omegaconf import OmegaConf

    ms = [f"inference.scales=[{','.join(map(str, scales))}]", "inference.flip=true"]
    for overrides, want_scales, flip in (([], (1.0,), False), (ms, scales, True)):
        cfg = compose_config("eval", [f"data={data}", "ckpt_path=x", *overrides], tmp_path)
        settings = OmegaConf.to_container(cfg.inference, resolve=True)
        inference = InferenceConfig(**{k: v for k, v in settings.items() if v is not None})
        got = (inference.mode, inference.scale, inference.align, inference.crop, inference.stride)
        n = 5 if inference.mode == "slide" else 3  # a window matters to slide only
        assert got[:n] == single_scale[:n]
        assert (inference.scales, inference.flip) == (want_scales, flip)
        assert inference.window_batch == 4


def test_config_normalises_and_validates() -> None:
    cfg = InferenceConfig(mode="slide", scale=[2048, 512], crop=512, stride=[341, 341], scales=[1])
    assert (cfg.scale, cfg.crop, cfg.stride) == ((2048, 512), (512, 512), (341, 341))
    assert cfg.scales == (1.0,)
    with pytest.raises(ValueError, match="mode='tile'"):
        InferenceConfig(mode="tile")
    with pytest.raises(ValueError, match="exceeds crop"):
        InferenceConfig(crop=(64, 64), stride=(96, 32))
    with pytest.raises(ValueError, match=r"scale=\(1, 2, 3\); expected an int or two ints"):
        InferenceConfig(scale=(1, 2, 3))


def _near_ties(reference_scores: Tensor, fast: Tensor, ref: Tensor, tol: float) -> None:
    """Every pixel where the fast class map differs is a near-tie of the reference scores: the
    class it chose scores within ``tol`` of the reference's top class there."""
    differ = fast != ref
    chosen = reference_scores.gather(1, fast[:, None]).squeeze(1)
    top = reference_scores.gather(1, ref[:, None]).squeeze(1)
    gaps = (top - chosen)[differ]
    assert gaps.numel() == 0 or float(gaps.max()) <= tol
    assert differ.float().mean() < 1e-3


@pytest.mark.parametrize(
    "cfg",
    [
        InferenceConfig(),  # whole, native size: SegFormer.predict's path
        InferenceConfig(scale=(96, 64), align=32),  # resized first (ADE20K-style)
        InferenceConfig(mode="slide", crop=(64, 64), stride=(48, 48)),  # needs full scores
        InferenceConfig(scales=(0.75, 1.0), flip=True),  # averaged probabilities
    ],
    ids=["whole", "whole-resized", "slide", "multi-scale-flip"],
)
def test_class_map_fast_path_matches_argmax_of_scores(cfg: InferenceConfig) -> None:
    """predict_classes = predict_logits(...).argmax(1) except at near-ties (tolerance 1e-4 on
    the reference's fp32 scores); measured on a random-init B0: no pixel differs here."""
    from segformer.inference import predict_classes
    from segformer.models import SegFormer

    torch.manual_seed(0)
    model = SegFormer("b0", num_classes=7).eval()
    images = torch.randn(2, 3, 90, 118)
    with torch.no_grad():
        scores = predict_logits(model, images, cfg, (90, 118))
        fast = predict_classes(model, images, cfg, (90, 118))
    assert fast.shape == (2, 90, 118) and fast.dtype == torch.int64
    _near_ties(scores, fast, scores.argmax(1), tol=1e-4)


def test_class_map_of_any_module_without_forward_logits() -> None:
    from segformer.inference import predict_classes

    model, images = Recorder(context=True), torch.randn(1, 3, 64, 80)
    cfg = InferenceConfig()
    with torch.no_grad():
        assert torch.equal(
            predict_classes(model, images, cfg), predict_logits(model, images, cfg).argmax(1)
        )


class SoftmaxPair(nn.Module):
    """A one-logit model as the two-class model of logits (0, x): softmax gives class 1 the
    sigmoid of x, so its class maps are what the binary model's must be at threshold 0.5."""

    def __init__(self, binary: nn.Module) -> None:
        super().__init__()
        self.binary = binary

    def forward(self, x: Tensor) -> Tensor:
        logit = self.binary(x)
        return torch.cat([torch.zeros_like(logit), logit], 1)


BINARY_MODES = [
    InferenceConfig(),  # whole: SegFormer.predict's path (upsample_threshold)
    InferenceConfig(scale=(96, 64), align=32),
    InferenceConfig(mode="slide", crop=(48, 64), stride=(32, 40)),  # overlaps: logits averaged
    InferenceConfig(scales=(0.75, 1.0, 1.5), flip=True),  # probabilities averaged
    InferenceConfig(mode="slide", crop=(64, 64), stride=(48, 48), scales=(0.5, 1.0), flip=True),
]
BINARY_IDS = ["whole", "whole-resized", "slide", "multi-scale-flip", "slide-multi-scale"]


@pytest.mark.parametrize("cfg", BINARY_MODES, ids=BINARY_IDS)
def test_binary_blends_as_the_softmax_pair_and_thresholds_its_probability(cfg) -> None:
    """A one-output model in every mode: its probabilities are the class-1 probabilities of the
    equivalent softmax pair (windows, scales and flips blend alike), its class map is exactly
    class_map(probabilities, threshold) and, at 0.5, the pair's argmax but for near-ties."""
    from segformer.inference import class_map, predict_classes, predict_probabilities
    from segformer.models import SegFormer

    torch.manual_seed(0)
    model = SegFormer("b0", num_classes=1).eval()
    pair, images = SoftmaxPair(model), torch.randn(1, 3, 72, 96)
    with torch.no_grad():
        probs = predict_probabilities(model, images, cfg)
        classes = predict_classes(model, images, cfg)
        pair_probs = predict_probabilities(pair, images, cfg)
        model.threshold = 0.55
        other = predict_classes(model, images, cfg)
    assert probs.shape == (1, 1, 72, 96) and classes.dtype == torch.int64
    torch.testing.assert_close(probs[:, 0], pair_probs[:, 1], rtol=0, atol=1e-6)
    assert torch.equal(classes, class_map(probs, 0.5))
    assert torch.equal(other, class_map(probs, 0.55))
    assert 0 < classes.float().mean() < 1 and not torch.equal(classes, other)
    differ = classes != pair_probs.argmax(1)
    assert (probs[:, 0] - 0.5).abs()[differ].le(1e-6).all()


def test_segment_takes_a_read_only_array_without_warning() -> None:
    """np.asarray(PIL image) is read-only: segment reads it without torch's warning about
    non-writable arrays, and gives the class map of a writable copy."""
    import warnings

    import numpy as np

    from segformer.inference import segment

    model = Recorder().eval()
    images = np.random.default_rng(0).integers(0, 256, (1, 20, 24, 3), dtype=np.uint8)
    frozen = images.copy()
    frozen.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        classes = segment(model, frozen)
    assert np.array_equal(classes, segment(model, images))
