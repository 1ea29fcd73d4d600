import pytest
import torch
import torch.nn.functional as F

from segformer.models import SegFormer, upsample_argmax

# paper Table 1a (M params, 150 classes): encoder, decoder, total
PAPER_PARAMS = {
    "b0": (3.4, 0.4, 3.8),
    "b1": (13.1, 0.6, 13.7),
    "b2": (24.2, 3.3, 27.5),
    "b3": (44.0, 3.3, 47.3),
    "b4": (60.8, 3.3, 64.1),
    "b5": (81.4, 3.3, 84.7),
}


def count(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


@pytest.mark.parametrize("variant", list(PAPER_PARAMS))
def test_parameter_counts_match_the_paper(variant):
    with torch.device("meta"):  # shapes only: instant even for B5
        model = SegFormer(variant, num_classes=150)
    encoder, decoder, total = PAPER_PARAMS[variant]
    assert round(count(model), 1) == total
    assert round(count(model.head), 1) == decoder
    # the paper's split is off by 0.1 M for B0 (3.32 M) and B3 (44.07 M); totals are exact
    assert abs(count(model.encoder) - encoder) <= 0.1 + 1e-9


def test_decoder_dim_defaults():
    with torch.device("meta"):
        assert SegFormer("b1").head.decoder_dim == 256
        assert SegFormer("b2").head.decoder_dim == 768
        assert SegFormer("b2", decoder_dim=256).head.decoder_dim == 256


def test_unknown_variant():
    with pytest.raises(ValueError, match="variant='b6'"):
        SegFormer("b6")


@pytest.fixture(scope="module")
def b0():
    torch.manual_seed(0)
    return SegFormer("b0", num_classes=7).eval()


@pytest.mark.parametrize("size", [(333, 517), (100, 36), (64, 64)])
def test_any_input_size(b0, size):
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        logits, low = b0(x), b0.forward_logits(x)
    assert logits.shape == (1, 7, *size)
    assert low.shape == (1, 7, -(-size[0] // 4), -(-size[1] // 4))
    reference = F.interpolate(low.contiguous(), size=size, mode="bilinear", align_corners=False)
    torch.testing.assert_close(logits, reference)


def assert_same_classes(pred, logits):
    """pred == logits.argmax(1) except where the top two classes (nearly) tie."""
    top2 = logits.topk(2, dim=1).values
    differ = pred != logits.argmax(1)
    assert (top2[:, 0] - top2[:, 1])[differ].le(1e-5).all(), f"{differ.sum()} pixels differ"


def test_predict_matches_argmax_of_upsampled_logits(b0):
    x = torch.randn(2, 3, 93, 141)
    with torch.no_grad():
        pred, logits = b0.predict(x), b0(x)
    assert pred.shape == (2, 93, 141) and pred.dtype == torch.int64
    assert_same_classes(pred, logits)


@pytest.mark.parametrize(
    ("low", "size"),
    [((21, 33), (83, 130)), ((8, 8), (33, 31)), ((5, 7), (5, 7)), ((10, 10), (7, 13))],
)
@pytest.mark.parametrize("classes", [3, 150])
def test_upsample_argmax_is_exact(low, size, classes):
    torch.manual_seed(0)
    coarse = torch.randn(2, classes, max(low[0] // 3, 1), max(low[1] // 3, 1)) * 3
    logits = F.interpolate(coarse, size=low, mode="bilinear") + 0.1 * torch.randn(2, classes, *low)
    upsampled = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    assert_same_classes(upsample_argmax(logits, size), upsampled)


def test_compile_keeps_state_dict_keys_clean():
    model = SegFormer("b0", num_classes=3)
    keys = list(model.state_dict())
    model.compile()  # lazy: nothing is compiled until the first call
    assert list(model.state_dict()) == keys
    assert not any("_orig_mod" in k for k in model.state_dict())


@pytest.mark.slow
def test_compiled_model_runs_and_matches_eager():
    torch.manual_seed(0)
    model = SegFormer("b0", num_classes=3).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        eager = model(x)
        model.compile()
        compiled = model(x)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)
    assert not any("_orig_mod" in k for k in model.state_dict())


def test_fast_paths_match_the_straightforward_model():
    """forward_logits (folded head, padded classifier GEMM), forward and predict (fused
    upsample + argmax) against the literal path: head.forward_reference, F.interpolate, argmax."""
    torch.manual_seed(0)
    model = SegFormer("b0", num_classes=150)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding them is tested
        model.head.bn.running_mean.normal_(0, 0.3)
        model.head.bn.running_var.uniform_(0.5, 2.0)
    model.eval()
    x = torch.randn(1, 3, 96, 136)
    with torch.no_grad():
        ref = model.head.forward_reference(model.encoder(x))
        full = F.interpolate(ref, size=x.shape[-2:], mode="bilinear", align_corners=False)
        fast, fast_full, pred = model.forward_logits(x), model(x), model.predict(x)
    scale = ref.abs().max().item()
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5 * scale)
    torch.testing.assert_close(fast_full, full, rtol=1e-5, atol=1e-5 * scale)
    assert_same_classes(pred, full)


@pytest.mark.parametrize("threshold", [0.5, 0.45])
@pytest.mark.parametrize("size", [(93, 141), (20, 30)], ids=["image", "padded-thumbnail"])
def test_binary_predict_is_the_sigmoid_above_the_threshold(size, threshold):
    """One output (model.num_classes=1): predict is forward(x).sigmoid() > threshold, exactly,
    at any size (a side under MiT's minimum is padded, then cropped back)."""
    torch.manual_seed(0)
    model = SegFormer("b0", num_classes=1, threshold=threshold).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        pred, logits = model.predict(x), model(x)
    assert pred.shape == (2, *size) and pred.dtype == torch.int64
    assert torch.equal(pred, (logits[:, 0].sigmoid() > threshold).long())
    assert model.label_classes == 2
    with pytest.raises(ValueError, match=r"threshold=1.0: .* strictly between 0 and 1"):
        SegFormer("b0", num_classes=1, threshold=1.0)


@pytest.mark.slow
def test_bf16_class_maps_agree_with_fp32_after_training():
    """A B0 trained ~120 steps on the synthetic shapes (64 px) with upsample_cross_entropy:
    its bf16-autocast class maps agree with fp32 on >= 99% of the validation pixels. Checks
    that the bf16 path (encoder, folded head, fused argmax) loses no more than rounding near
    class boundaries; it says nothing about the accuracy of either."""
    from segformer.data.synthetic import SyntheticDataModule
    from segformer.models import upsample_cross_entropy

    torch.manual_seed(0)
    data = SyntheticDataModule(
        num_train=960, num_val=16, image_size=64, batch_size=8, num_workers=0
    )
    model = SegFormer("b0", num_classes=data.num_classes).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for batch in data.train_dataloader():
        loss = upsample_cross_entropy(model.forward_logits(batch["image"]), batch["mask"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    val = next(iter(torch.utils.data.DataLoader(data.dataset("val", train=False), 16)))
    images, masks = val["image"], val["mask"]
    fp32 = model.predict(images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = model.predict(images)
    assert (fp32 == masks).float().mean() > 0.6, "the model did not learn; the check is void"
    assert (bf16 == fp32).float().mean() >= 0.99
