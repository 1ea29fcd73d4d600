"""SegFormer with N input bands: RGB weights adapt (1 band summed, N repeated x 3/N) when the
encoder weights load, checkpoints keep their band count; freezing encoder stages."""

import pytest
import torch
from test_convert import official_mit

from segformer.models import SegFormer, load_encoder_weights
from segformer.models.convert import adapt_input_conv
from segformer.models.mit import MixTransformer
from segformer.optim import param_groups


@pytest.fixture(scope="module")
def rgb() -> SegFormer:
    torch.manual_seed(0)
    return SegFormer("b0", num_classes=5).eval()


def test_adapt_input_conv_sums_or_repeats_and_rescales() -> None:
    w = torch.randn(8, 3, 7, 7)
    torch.testing.assert_close(adapt_input_conv(w, 1), w.sum(1, keepdim=True))
    four = adapt_input_conv(w, 4)
    torch.testing.assert_close(four, torch.cat([w, w[:, :1]], 1) * 0.75)
    assert adapt_input_conv(w, 3) is w
    with pytest.raises(ValueError, match="only 3-channel"):
        adapt_input_conv(torch.randn(8, 4, 7, 7), 2)


def test_adapted_encoders_see_gray_and_repeated_rgb_as_the_rgb_model(rgb, tmp_path) -> None:
    official_mit(rgb, tmp_path / "mit_b0.pth")  # ImageNet-style encoder-only file
    x = torch.randn(2, 3, 64, 64)
    gray = x[:, :1]
    one = SegFormer("b0", num_classes=5, in_channels=1).eval()
    load_encoder_weights(one.encoder, tmp_path / "mit_b0.pth")
    six = MixTransformer("b0", in_channels=6).eval()
    load_encoder_weights(six, tmp_path / "mit_b0.pth")
    with torch.no_grad():
        want_gray = rgb.encoder(gray.expand(-1, 3, -1, -1))
        for got, want in zip(one.encoder(gray), want_gray, strict=True):
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        # 6 bands = RGB twice: each weight x 3/6, the response the same
        for got, want in zip(six(torch.cat([x, x], 1)), rgb.encoder(x), strict=True):
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_from_pretrained_keeps_or_adapts_the_band_count(rgb, tmp_path) -> None:
    torch.save(rgb.state_dict(), tmp_path / "rgb.pt")
    four = SegFormer.from_pretrained(tmp_path / "rgb.pt", in_channels=4)
    assert four.in_channels == 4 and four.encoder.in_channels == 4
    first = "encoder.stages.0.patch_embed.proj.weight"
    torch.testing.assert_close(
        four.state_dict()[first], adapt_input_conv(rgb.state_dict()[first], 4)
    )
    torch.save(four.state_dict(), tmp_path / "four.pt")
    again = SegFormer.from_pretrained(tmp_path / "four.pt")  # the band count of the weights
    assert again.in_channels == 4
    assert again(torch.randn(1, 4, 32, 32)).shape == (1, 5, 32, 32)
    with pytest.raises(ValueError, match=r"four\.pt: only 3-channel"):
        SegFormer.from_pretrained(tmp_path / "four.pt", in_channels=2)


@pytest.mark.parametrize("k", [2, -1])
def test_freeze_stages_no_grad_no_optimizer_slot_eval_mode(k: int) -> None:
    model = SegFormer("b0", num_classes=3, drop_path_rate=0.5)
    model.encoder.freeze_stages(k)
    n = 4 if k == -1 else k
    model.train()
    for i, stage in enumerate(model.encoder.stages):
        frozen = i < n
        assert all(p.requires_grad != frozen for p in stage.parameters())
        assert stage.training != frozen  # frozen stages: no stochastic depth
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    for i, stage in enumerate(model.encoder.stages):
        assert all((p.grad is None) == (i < n) for p in stage.parameters())
    in_optimizer = {id(p) for g in param_groups(model, 1e-3, 0.01) for p in g["params"]}
    frozen_ids = {id(p) for s in model.encoder.stages[:n] for p in s.parameters()}
    assert not in_optimizer & frozen_ids
    assert all(id(p) in in_optimizer for p in model.head.parameters())
    with pytest.raises(ValueError, match=r"freeze_stages=5"):
        model.encoder.freeze_stages(5)
