"""Mix Transformer (MiT) encoder, as released by NVlabs (mix_transformer.py).

Tokens live as (B, N, C) with N = H * W, row-major. Every 2-D view of them is a free
``view(B, H, W, C).permute(0, 3, 1, 2)``: an NCHW-shaped tensor in channels-last memory, which
convolutions accept as is and whose ``flatten(2).transpose(1, 2)`` is contiguous (B, N, C) again.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from segformer.errors import InputError
from segformer.models.variants import get_variant

# LayerNorm eps: (block and stage-end norms, patch-embed and sr norms). The official code builds
# the latter two as plain nn.LayerNorm, hence "plain_eps" below.
LN_EPS_PRESETS: dict[str, tuple[float, float]] = {
    "official": (1e-6, 1e-5),  # NVlabs: partial(LayerNorm, eps=1e-6) + two plain nn.LayerNorm
    "hf": (1e-5, 1e-5),  # transformers: plain nn.LayerNorm everywhere
    "mmseg": (1e-6, 1e-6),  # mmseg: norm_cfg eps=1e-6 everywhere
}


def _tokens_to_map(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, h*w, C) -> (B, C, h, w) channels-last view (no copy)."""
    return x.view(x.shape[0], h, w, x.shape[2]).permute(0, 3, 1, 2)


def _map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h*w, C); a view when x is channels-last."""
    return x.flatten(2).transpose(1, 2)


class DropPath(nn.Module):
    """Stochastic depth: drop the residual branch per sample, rescale the kept ones."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty(x.shape[0], *(1,) * (x.ndim - 1)).bernoulli_(keep)  # (B, 1, 1)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p:.3f}"


class OverlapPatchEmbed(nn.Module):
    """Strided conv with overlapping windows (7/4/pad 3 or 3/2/pad 1), then LayerNorm."""

    def __init__(self, in_ch: int, dim: int, kernel: int, stride: int, eps: float) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_ch, dim, kernel, stride, padding=kernel // 2)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)  # (B, C, h, w)
        h, w = x.shape[-2:]
        return self.norm(_map_to_tokens(x)), h, w  # (B, N, C)


class EfficientSelfAttention(nn.Module):
    """Multi-head attention whose keys/values come from a sr x sr strided-conv reduced map."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, plain_eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.sr_ratio = sr_ratio
        self.q = nn.Linear(dim, dim)
        if sr_ratio > 1:  # stage 4 attends to all tokens: no sr conv, no norm
            self.sr = nn.Conv2d(dim, dim, sr_ratio, sr_ratio)
            self.sr_norm = nn.LayerNorm(dim, eps=plain_eps)
        self.kv = nn.Linear(dim, 2 * dim)  # rows [0:C] key, [C:2C] value (official layout)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        B, N, C = x.shape
        q = self.q(x).view(B, N, self.num_heads, -1).transpose(1, 2)  # (B, heads, N, d)
        if self.sr_ratio > 1:
            x = self.sr(_tokens_to_map(x, h, w))  # (B, C, h/sr, w/sr)
            x = self.sr_norm(_map_to_tokens(x))  # (B, n, C)
        kv = self.kv(x).view(B, -1, 2, self.num_heads, C // self.num_heads)  # (B, n, 2, heads, d)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # 2 x (B, heads, n, d)
        x = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, d), scale d^-0.5
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class MixFFN(nn.Module):
    """fc1 -> 3x3 depth-wise conv (the positional cue) -> GELU -> fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = self.dwconv(_tokens_to_map(self.fc1(x), h, w))  # (B, 4C, h, w)
        return self.fc2(F.gelu(_map_to_tokens(x)))  # (B, N, C)


class Block(nn.Module):
    """Pre-norm transformer block: x + DropPath(attn(LN(x))), x + DropPath(ffn(LN(x)))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        sr_ratio: int,
        mlp_ratio: int,
        drop_path: float,
        eps: float,
        plain_eps: float,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio, plain_eps)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.ffn = MixFFN(dim, mlp_ratio * dim)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.ffn(self.norm2(x), h, w))


class MiTStage(nn.Module):
    """Patch embedding, a stack of blocks, then the stage-end LayerNorm."""

    def __init__(
        self,
        in_ch: int,
        dim: int,
        depth: int,
        num_heads: int,
        sr_ratio: int,
        mlp_ratio: int,
        kernel: int,
        stride: int,
        drop_paths: list[float],
        eps: float,
        plain_eps: float,
    ) -> None:
        super().__init__()
        self.patch_embed = OverlapPatchEmbed(in_ch, dim, kernel, stride, plain_eps)
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, sr_ratio, mlp_ratio, drop_paths[j], eps, plain_eps)
            for j in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, h, w = self.patch_embed(x)  # (B, N, C)
        for block in self.blocks:
            x = block(x, h, w)
        return _tokens_to_map(self.norm(x), h, w)  # (B, C, h, w) channels-last


class MixTransformer(nn.Module):
    """MiT encoder: forward((B, in_channels, H, W)) -> 4 maps (B, C_i, H/s, W/s) at strides 4,
    8, 16, 32, with C_i = ``out_channels``.

    ``variant`` "b0".."b5" picks the shapes of the one table (``variants.VARIANTS``). The maps
    are channels-last views of the stage tokens (NCHW shape, no copy). ``drop_path_rate`` grows
    linearly from 0 over all blocks. ``ln_eps_preset`` is a key of ``LN_EPS_PRESETS``.
    ``freeze_stages(k)`` stops training the first k stages.
    """

    def __init__(
        self,
        variant: str = "b0",
        in_channels: int = 3,
        drop_path_rate: float = 0.1,
        ln_eps_preset: str = "official",
    ) -> None:
        super().__init__()
        if ln_eps_preset not in LN_EPS_PRESETS:
            raise InputError(
                f"ln_eps_preset={ln_eps_preset!r}; expected one of {list(LN_EPS_PRESETS)}"
            )
        spec = get_variant(variant)
        embed_dims, depths = spec.embed_dims, spec.depths
        self.variant, self.ln_eps_preset = variant, ln_eps_preset
        self.embed_dims, self.depths = tuple(embed_dims), tuple(depths)
        self.out_channels = list(embed_dims)  # the encoder contract (models/network.py)
        self.in_channels = in_channels
        self.frozen_stages = 0
        eps, plain_eps = LN_EPS_PRESETS[ln_eps_preset]
        n = sum(depths)
        drop_paths = [drop_path_rate * j / max(n - 1, 1) for j in range(n)]  # 0 -> rate, linear
        self.stages = nn.ModuleList()
        for i, (dim, depth) in enumerate(zip(embed_dims, depths, strict=True)):
            first = sum(depths[:i])
            self.stages.append(
                MiTStage(
                    in_ch=in_channels if i == 0 else embed_dims[i - 1],
                    dim=dim,
                    depth=depth,
                    num_heads=spec.num_heads[i],
                    sr_ratio=spec.sr_ratios[i],
                    mlp_ratio=spec.mlp_ratio,
                    kernel=7 if i == 0 else 3,
                    stride=4 if i == 0 else 2,
                    drop_paths=drop_paths[first : first + depth],
                    eps=eps,
                    plain_eps=plain_eps,
                )
            )
        self.apply(_init_weights)
        self.min_input_size = _min_input_size(self.stages)

    def freeze_stages(self, k: int) -> None:
        """Freeze the first ``k`` stages (patch embedding, blocks, stage norm); -1 = all four.

        Their parameters get ``requires_grad=False`` (no gradients; optimisers built from
        trainable parameters leave them out) and the stages stay in eval mode whatever
        ``train()`` says: stochastic depth no longer drops their blocks. MiT has LayerNorms only
        (no running statistics), so a frozen stage computes exactly what it did at load time.
        """
        n = len(self.stages) if k == -1 else k
        if not 0 <= n <= len(self.stages):
            raise InputError(f"freeze_stages={k}; expected -1 (all) or 0..{len(self.stages)}")
        self.frozen_stages = n
        for i, stage in enumerate(self.stages):
            stage.requires_grad_(i >= n)
        self.train(self.training)

    def train(self, mode: bool = True) -> MixTransformer:
        super().train(mode)
        for stage in self.stages[: self.frozen_stages]:
            stage.eval()
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = x.contiguous(memory_format=torch.channels_last)  # so stage 1's tokens are a view too
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


def _min_input_size(stages: nn.ModuleList) -> int:
    """The smallest image side every stage runs on: a stage's sequence-reduction conv (kernel and
    stride sr) needs a map side >= sr. 29 for MiT-B0..B5 (stage 1 maps a side n to ceil(n / 4),
    which must reach 8)."""

    def fits(n: int) -> bool:
        for stage in stages:
            conv = stage.patch_embed.proj
            n = (n + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1
            if n < max([block.attn.sr_ratio for block in stage.blocks] + [1]):
                return False
        return True

    return next(n for n in range(1, 1 << 16) if fits(n))


def _init_weights(m: nn.Module) -> None:
    """Official init: trunc-normal(.02) Linear, normal(0, sqrt(2 / fan_out)) Conv2d, zero biases."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
