import pytest
import torch
from torch import nn

from segformer.models import LN_EPS_PRESETS, MixTransformer


def tiny_encoder(**kwargs) -> MixTransformer:
    return MixTransformer("b0", **kwargs)


@pytest.mark.parametrize("size", [(64, 64), (97, 203), (333, 517)])
def test_feature_shapes(size):
    h, w = size
    features = tiny_encoder().eval()(torch.randn(1, 3, h, w))
    sizes = [-(-h // 4), -(-w // 4)]  # 7/4/pad 3, then 3/2/pad 1: ceil division each time
    for feature, dim in zip(features, (32, 64, 160, 256), strict=True):
        assert feature.shape == (1, dim, *sizes)
        assert feature.is_contiguous(memory_format=torch.channels_last)  # free view of tokens
        sizes = [-(-s // 2) for s in sizes]


def test_structure_matches_the_release():
    encoder = tiny_encoder()
    stage1, stage4 = encoder.stages[0], encoder.stages[3]
    embed1, embed4 = stage1.patch_embed.proj, stage4.patch_embed.proj
    assert (embed1.kernel_size, embed1.stride, embed1.padding) == ((7, 7), (4, 4), (3, 3))
    assert (embed4.kernel_size, embed4.stride, embed4.padding) == ((3, 3), (2, 2), (1, 1))
    assert stage1.blocks[0].attn.sr.kernel_size == (8, 8) == stage1.blocks[0].attn.sr.stride
    assert not hasattr(stage4.blocks[0].attn, "sr")  # sr ratio 1: no reduction conv, no norm
    assert not hasattr(stage4.blocks[0].attn, "sr_norm")
    assert stage1.blocks[0].ffn.fc1.out_features == 4 * 32  # mlp_ratio 4 (not the paper's 8)
    assert stage1.blocks[0].ffn.dwconv.groups == 128
    assert stage1.blocks[0].attn.q.bias is not None  # qkv_bias=True


def test_drop_path_linear_over_all_blocks():
    encoder = MixTransformer("b2", drop_path_rate=0.1)
    rates = [block.drop_path.p for stage in encoder.stages for block in stage.blocks]
    assert rates == pytest.approx(torch.linspace(0, 0.1, 16).tolist())


@pytest.mark.parametrize("preset", list(LN_EPS_PRESETS))
def test_layernorm_eps_presets(preset):
    eps, plain = LN_EPS_PRESETS[preset]
    stage = tiny_encoder(ln_eps_preset=preset).stages[0]
    assert stage.norm.eps == eps and stage.blocks[0].norm1.eps == eps
    assert stage.patch_embed.norm.eps == plain and stage.blocks[0].attn.sr_norm.eps == plain
    assert LN_EPS_PRESETS["official"] == (1e-6, 1e-5)


def test_unknown_eps_preset():
    with pytest.raises(ValueError, match="ln_eps_preset='nope'"):
        tiny_encoder(ln_eps_preset="nope")


def test_official_init():
    torch.manual_seed(0)
    encoder = MixTransformer("b1")
    fc1 = encoder.stages[3].blocks[0].ffn.fc1.weight  # Linear: trunc-normal .02
    assert fc1.std().item() == pytest.approx(0.02, rel=0.05)  # timm bounds ±2: no real cut
    conv = encoder.stages[3].patch_embed.proj  # normal(0, sqrt(2 / fan_out))
    assert conv.weight.std().item() == pytest.approx((2 / (9 * 512)) ** 0.5, rel=0.05)
    assert all(m.bias.abs().sum() == 0 for m in encoder.modules() if isinstance(m, nn.Linear))


def test_drop_path_only_in_training():
    encoder = MixTransformer("b0", drop_path_rate=0.5)
    x = torch.randn(4, 3, 32, 32)
    encoder.eval()
    assert torch.equal(encoder(x)[3], encoder(x)[3])
    encoder.train()
    assert not torch.equal(encoder(x)[3], encoder(x)[3])
