"""Read SegFormer / MiT checkpoints of any common origin into this package's key layout.

Formats are detected from the keys (``backbone.`` prefixes are dropped):

- segformer: this package, a state_dict (.pt) or .safetensors: ``encoder.stages.0.blocks.0.attn.kv``
- lightning: this package's Lightning .ckpt: the same keys under ``model.``
- official: NVlabs ImageNet ``mit_bX.pth`` (``block1.0.attn.kv``; the ImageNet ``head`` is dropped)
  and segmentation checkpoints (``decode_head.linear_c1.proj``, ``linear_fuse.conv/bn``,
  ``linear_pred``; the unused ``conv_seg`` is dropped)
- hf4: transformers files (save_pretrained, the Hub): ``segformer.encoder.block.0.0.attention.
  self.key``, ``decode_head.linear_c.0.proj``; a directory with config.json works too
- hf5: transformers >= 5 module names (``model.state_dict()``): ``segformer.stages.0.blocks.0.
  attention.k_proj``, ``decode_head.linear_projections.0.proj``
- mmseg: mmsegmentation (``layers.0.1.0.attn.attn.in_proj_weight``), encoder only: mmseg's
  decode head (per-stage ConvModule + BN) is not the paper's

Every path may also be a Hugging Face Hub repo id (``owner/name[@revision]``), resolved to the
cached snapshot by ``hub.resolve_checkpoint``.

Loading never unpickles code: ``torch.load(weights_only=True)`` or safetensors.
"""

from __future__ import annotations

import json
import math
import pickle
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from segformer.errors import InputError, MissingFileError
from segformer.models.hub import resolve_checkpoint
from segformer.models.mit import MixTransformer
from segformer.models.network import is_segformer
from segformer.models.variants import VARIANTS

if TYPE_CHECKING:
    from segformer.models.segformer import SegFormer

# LayerNorm eps preset of the code each source was trained with (ours: the constructor default,
# unless a Lightning checkpoint's hyper-parameters say otherwise)
SOURCE_LN_EPS_PRESET = {
    "segformer": "official",
    "lightning": "official",
    "official": "official",
    "hf4": "hf",
    "hf5": "hf",
    "mmseg": "mmseg",
}

# the first patch embedding's conv: its weight (O, in_channels, 7, 7) sets the input bands
INPUT_CONV = "encoder.stages.0.patch_embed.proj.weight"

# (regex on a source key, template of our key or None = drop); groups fill the template
Rules = list[tuple[str, str | None]]
_S, _B = "encoder.stages.{0}.", "encoder.stages.{0}.blocks.{1}."
_OFFICIAL = r"block\.(\d)\.(\d+)\."  # after _renumber_official
_HF4 = r"segformer\.encoder\."
_HF4_ATTN = _HF4 + r"block\.(\d)\.(\d+)\.attention\."
_HF5 = r"segformer\.stages\.(\d)\."
_HF5_ATTN = _HF5 + r"blocks\.(\d+)\.attention\."
_MM = r"layers\.(\d)\.1\.(\d+)\."
_HF_HEAD: Rules = [
    (r"decode_head\.linear_fuse\.(\w+)", "head.fuse.{0}"),
    (r"decode_head\.batch_norm\.(\w+)", "head.bn.{0}"),
    (r"decode_head\.classifier\.(\w+)", "head.classifier.{0}"),
    (r"classifier\.\w+", None),  # SegformerForImageClassification (ImageNet MiT) head
]
_RULES: dict[str, Rules] = {
    "official": [
        (r"patch_embed\.(\d)\.(proj|norm)\.(\w+)", _S + "patch_embed.{1}.{2}"),
        (_OFFICIAL + r"(norm1|norm2|attn\.q|attn\.kv|attn\.sr|attn\.proj)\.(\w+)", _B + "{2}.{3}"),
        (_OFFICIAL + r"attn\.norm\.(\w+)", _B + "attn.sr_norm.{2}"),
        (_OFFICIAL + r"mlp\.(fc1|fc2)\.(\w+)", _B + "ffn.{2}.{3}"),
        (_OFFICIAL + r"mlp\.dwconv\.dwconv\.(\w+)", _B + "ffn.dwconv.{2}"),
        (r"norm\.(\d)\.(\w+)", _S + "norm.{1}"),
        (r"decode_head\.linear_c\.(\d)\.proj\.(\w+)", "head.proj.{0}.{1}"),
        (r"decode_head\.linear_fuse\.conv\.(\w+)", "head.fuse.{0}"),
        (r"decode_head\.linear_fuse\.bn\.(\w+)", "head.bn.{0}"),
        (r"decode_head\.linear_pred\.(\w+)", "head.classifier.{0}"),
        (r"head\.\w+|decode_head\.conv_seg\.\w+", None),  # ImageNet classifier, unused conv_seg
    ],
    "hf4": [
        (_HF4 + r"patch_embeddings\.(\d)\.proj\.(\w+)", _S + "patch_embed.proj.{1}"),
        (_HF4 + r"patch_embeddings\.(\d)\.layer_norm\.(\w+)", _S + "patch_embed.norm.{1}"),
        (_HF4 + r"block\.(\d)\.(\d+)\.layer_norm_(1|2)\.(\w+)", _B + "norm{2}.{3}"),
        (_HF4_ATTN + r"self\.query\.(\w+)", _B + "attn.q.{2}"),
        (_HF4_ATTN + r"self\.key\.(\w+)", _B + "attn.k.{2}"),  # k, v: merged by _merge_kv
        (_HF4_ATTN + r"self\.value\.(\w+)", _B + "attn.v.{2}"),
        (_HF4_ATTN + r"self\.sr\.(\w+)", _B + "attn.sr.{2}"),
        (_HF4_ATTN + r"self\.layer_norm\.(\w+)", _B + "attn.sr_norm.{2}"),
        (_HF4_ATTN + r"output\.dense\.(\w+)", _B + "attn.proj.{2}"),
        (_HF4 + r"block\.(\d)\.(\d+)\.mlp\.dense(1|2)\.(\w+)", _B + "ffn.fc{2}.{3}"),
        (_HF4 + r"block\.(\d)\.(\d+)\.mlp\.dwconv\.dwconv\.(\w+)", _B + "ffn.dwconv.{2}"),
        (_HF4 + r"layer_norm\.(\d)\.(\w+)", _S + "norm.{1}"),
        (r"decode_head\.linear_c\.(\d)\.proj\.(\w+)", "head.proj.{0}.{1}"),
        *_HF_HEAD,
    ],
    "hf5": [
        (_HF5 + r"patch_embeddings\.proj\.(\w+)", _S + "patch_embed.proj.{1}"),
        (_HF5 + r"patch_embeddings\.layer_norm\.(\w+)", _S + "patch_embed.norm.{1}"),
        (_HF5 + r"blocks\.(\d+)\.layernorm_before\.(\w+)", _B + "norm1.{2}"),
        (_HF5 + r"blocks\.(\d+)\.layernorm_after\.(\w+)", _B + "norm2.{2}"),
        (_HF5_ATTN + r"(q|k|v)_proj\.(\w+)", _B + "attn.{2}.{3}"),
        (_HF5_ATTN + r"o_proj\.(\w+)", _B + "attn.proj.{2}"),
        (_HF5_ATTN + r"sequence_reduction\.sequence_reduction\.(\w+)", _B + "attn.sr.{2}"),
        (_HF5_ATTN + r"sequence_reduction\.layer_norm\.(\w+)", _B + "attn.sr_norm.{2}"),
        (_HF5 + r"blocks\.(\d+)\.mlp\.(fc1|fc2)\.(\w+)", _B + "ffn.{2}.{3}"),
        (_HF5 + r"blocks\.(\d+)\.mlp\.dwconv\.dwconv\.(\w+)", _B + "ffn.dwconv.{2}"),
        (_HF5 + r"layer_norm\.(\w+)", _S + "norm.{1}"),
        (r"decode_head\.linear_projections\.(\d)\.proj\.(\w+)", "head.proj.{0}.{1}"),
        *_HF_HEAD,
    ],
    "mmseg": [
        (r"layers\.(\d)\.0\.projection\.(\w+)", _S + "patch_embed.proj.{1}"),
        (r"layers\.(\d)\.0\.norm\.(\w+)", _S + "patch_embed.norm.{1}"),
        (_MM + r"(norm1|norm2|attn\.sr)\.(\w+)", _B + "{2}.{3}"),
        (_MM + r"attn\.norm\.(\w+)", _B + "attn.sr_norm.{2}"),
        (_MM + r"attn\.attn\.in_proj_(weight|bias)", _B + "attn.qkv.{2}"),  # split by _split_qkv
        (_MM + r"attn\.attn\.out_proj\.(\w+)", _B + "attn.proj.{2}"),
        (_MM + r"ffn\.layers\.0\.(\w+)", _B + "ffn.fc1.{2}"),  # 1x1 convs: see _linear_from_conv
        (_MM + r"ffn\.layers\.1\.(\w+)", _B + "ffn.dwconv.{2}"),
        (_MM + r"ffn\.layers\.4\.(\w+)", _B + "ffn.fc2.{2}"),
        (r"layers\.(\d)\.2\.(\w+)", _S + "norm.{1}"),
        (r"(decode_head|auxiliary_head)\..+", None),  # not the paper's head: not loadable
    ],
}
# a key that only this layout has (checked in order, after dropping "backbone.")
_MARKERS = {
    "segformer": r"encoder\.stages\.0\.patch_embed\.proj\.weight",
    "hf5": r"segformer\.stages\.0\.patch_embeddings\.proj\.weight",
    "hf4": r"segformer\.encoder\.patch_embeddings\.0\.proj\.weight",
    "mmseg": r"layers\.0\.0\.projection\.weight",
    "official": r"patch_embed1\.proj\.weight",
}


@dataclass(frozen=True)
class Checkpoint:
    """Weights in our layout (``encoder.*``, plus ``head.*`` unless encoder-only)."""

    state_dict: dict[str, torch.Tensor]
    source: str  # a key of SOURCE_LN_EPS_PRESET
    variant: str | None  # "b0".."b5", inferred from the weights; None: another encoder
    ln_eps_preset: str  # LayerNorm eps preset of the source
    decoder_dim: int | None  # None: encoder-only weights, or another decoder
    num_classes: int | None
    in_channels: int = 3  # input bands of the first patch embedding
    # the encoder / decoder specs our checkpoint of another composition records (``network``);
    # None for the paper's parts, whose shapes the weights tell
    net: dict[str, Any] | None = None
    threshold: float = 0.5  # a binary network's foreground cut (our checkpoints record it)


def read_checkpoint(path: str | Path, revision: str | None = None) -> Checkpoint:
    """Read, detect the format, convert the keys and infer the variant (see module docstring).

    ``path``: a file, a transformers folder or a Hub repo id (``revision``: its branch, tag or
    commit; ``owner/name@revision`` works too)."""
    path = resolve_checkpoint(path, revision)
    state, container = _read_file(Path(path))
    source = "lightning" if "pytorch-lightning_version" in container else _detect(state, path)
    if source == "mmseg" and any(k.startswith("decode_head.") for k in state):
        warnings.warn(
            f"{path}: mmseg's decode head (per-stage ConvModule + BN) is not the paper's "
            "all-MLP head; only the encoder weights are loaded",
            stacklevel=3,
        )
    state = _rename(state, source)
    if source in ("hf4", "hf5"):
        state = _merge_kv(state)
    if source == "mmseg":
        state = _split_qkv(_linear_from_conv(state))
    hparams = container.get("hyper_parameters", {})
    net = hparams.get("net")
    if net is not None and not is_segformer(net):
        return Checkpoint(
            state_dict=state,
            source=source,
            variant=None,
            ln_eps_preset=SOURCE_LN_EPS_PRESET[source],
            decoder_dim=None,
            num_classes=hparams.get("num_classes"),
            in_channels=hparams.get("in_channels", 3),
            net=net,
            threshold=hparams.get("threshold", 0.5),
        )
    dims, depths = _encoder_shape(state, path)
    # "ln_eps" is the name checkpoints written before 0.2 use, "ln_eps_preset" before the
    # network became encoder + decoder specs
    recorded = (net or {}).get("encoder", {}).get("ln_eps_preset")
    ln_eps_preset = recorded or hparams.get(
        "ln_eps_preset", hparams.get("ln_eps", SOURCE_LN_EPS_PRESET[source])
    )
    head = state.get("head.proj.0.weight")
    classifier = state.get("head.classifier.weight")
    return Checkpoint(
        state_dict=state,
        source=source,
        variant=_variant_of(dims, depths, path),
        ln_eps_preset=ln_eps_preset,
        decoder_dim=None if head is None else head.shape[0],
        num_classes=None if classifier is None else classifier.shape[0],
        in_channels=state[INPUT_CONV].shape[1],
        threshold=hparams.get("threshold", 0.5),
    )


def adapt_input_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """First-conv weights (O, 3, k, k) of an RGB model for ``in_channels`` input bands, as
    timm's ``adapt_input_conv``: 1 band gets the sum over RGB (a gray image then gives what the
    RGB model gives on that image repeated to 3 channels); N bands get RGB repeated (band i
    takes channel i mod 3) and scaled by 3/N, so the same total input gives the same response.
    """
    have = weight.shape[1]
    if have == in_channels:
        return weight
    if have != 3:
        raise InputError(
            f"only 3-channel (RGB) weights adapt to other band counts; these have {have} "
            f"input channels, the model {in_channels}"
        )
    dtype, w = weight.dtype, weight.float()
    if in_channels == 1:
        w = w.sum(1, keepdim=True)
    else:
        w = w.repeat(1, math.ceil(in_channels / 3), 1, 1)[:, :in_channels] * (3 / in_channels)
    return w.to(dtype)


def adapt_in_channels(
    ckpt: Checkpoint, in_channels: int, path: str | Path
) -> dict[str, torch.Tensor]:
    """The checkpoint's state dict with the first patch embedding adapted to ``in_channels``."""
    if ckpt.in_channels == in_channels:
        return ckpt.state_dict
    try:
        adapted = adapt_input_conv(ckpt.state_dict[INPUT_CONV], in_channels)
    except ValueError as err:
        raise InputError(f"{path}: {err}") from None
    return {**ckpt.state_dict, INPUT_CONV: adapted}


def load_encoder_weights(
    encoder: MixTransformer, path: str | Path, revision: str | None = None
) -> None:
    """Load the encoder part of any supported checkpoint (e.g. ImageNet ``mit_b2.pth``, or a Hub
    repo id such as ``nvidia/mit-b0``); RGB weights adapt to an encoder of other
    ``in_channels`` (``adapt_input_conv``)."""
    ckpt = read_checkpoint(path, revision)
    if (encoder.embed_dims, encoder.depths) != _encoder_shape(ckpt.state_dict, path):
        mine = _variant_of(encoder.embed_dims, encoder.depths, "the encoder")
        raise InputError(f"{path}: holds MiT-{ckpt.variant} weights, the encoder is MiT-{mine}")
    prefix = "encoder."
    weights = adapt_in_channels(ckpt, encoder.in_channels, path)
    state = {k.removeprefix(prefix): v for k, v in weights.items() if k.startswith(prefix)}
    load_exact(encoder, state, set(encoder.state_dict()), path)


def load_exact(
    module: nn.Module, state: dict[str, torch.Tensor], expected: set[str], path: str | Path
) -> None:
    """Load ``state`` into ``module``; it must hold exactly the keys ``expected``, shapes equal."""
    own = module.state_dict()
    missing, unexpected = sorted(expected - state.keys()), sorted(state.keys() - expected)
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in sorted(expected & state.keys())
        if state[k].shape != own[k].shape
    ]
    problems = [
        f"{what} ({len(keys)}): {', '.join(keys[:8])}{', ...' if len(keys) > 8 else ''}"
        for what, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatch (checkpoint vs model)", wrong_shape),
        )
        if keys
    ]
    if problems:
        name = type(module).__name__
        raise InputError(f"{path}: cannot load into {name}: " + "; ".join(problems))
    module.load_state_dict(state, strict=False)


def _read_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, the checkpoint dict around it or {}) from a file or a transformers folder."""
    if path.is_dir():
        path = _transformers_weights(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such checkpoint file")
    try:
        if path.suffix == ".safetensors":
            return load_file(path), {}
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # many types: whatever the file turned out to be
        blocked = next((ln.strip() for ln in str(exc).splitlines() if "GLOBAL" in ln), None)
        if isinstance(exc, pickle.UnpicklingError) and blocked:
            raise InputError(
                f"{path}: refused to unpickle: it needs objects beyond tensors and plain "
                f"containers, which could run code ({blocked})"
            ) from None
        reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
        raise InputError(f"{path}: not a PyTorch checkpoint ({reason})") from None
    container: dict[str, Any] = {}
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj, container = obj["state_dict"], obj
        if "pytorch-lightning_version" in container:  # our LightningModule keeps the net in .model
            obj = {k.removeprefix("model."): v for k, v in obj.items() if k.startswith("model.")}
    tensors = isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values())
    if not (obj and tensors):
        raise InputError(f"{path}: no state dict of tensors in it (got {type(obj).__name__})")
    return obj, container


def _transformers_weights(folder: Path) -> Path:
    config = folder / "config.json"
    if not config.is_file():
        raise MissingFileError(f"{folder}: a directory without config.json (transformers layout)")
    model_type = json.loads(config.read_text()).get("model_type")
    if model_type != "segformer":
        raise InputError(f"{config}: model_type={model_type!r}, expected 'segformer'")
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    raise MissingFileError(f"{folder}: neither model.safetensors nor pytorch_model.bin")


def _detect(state: dict[str, torch.Tensor], path: str | Path) -> str:
    keys = [k.removeprefix("backbone.") for k in state]
    for source, marker in _MARKERS.items():
        if any(re.fullmatch(marker, k) for k in keys):
            return source
    raise InputError(
        f"{path}: not a SegFormer/MiT checkpoint of a known layout (first keys: {keys[:5]})"
    )


def _renumber_official(key: str) -> str:
    """patch_embed1/block1/norm1 (stage level) and linear_c1 -> 0-based ``name.0``."""
    return re.sub(
        r"^(patch_embed|block|norm)(\d)\.|^(decode_head\.linear_c)(\d)\.",
        lambda m: f"{m[1] or m[3]}.{int(m[2] or m[4]) - 1}.",
        key,
    )


def _rename(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Apply the first matching rule to each key; unmatched keys stay as they are (and are
    reported by name when loading)."""
    out = {}
    for key, value in state.items():
        name = key.removeprefix("backbone.")
        if source == "official":
            name = _renumber_official(name)
        for pattern, template in _RULES.get(source, []):
            if m := re.fullmatch(pattern, name):
                if template is not None:
                    out[template.format(*m.groups())] = value
                break
        else:
            out[key] = value
    return out


def _merge_kv(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Separate key/value Linears -> one kv Linear (rows: key, then value)."""
    for k_key in [k for k in state if ".attn.k." in k]:
        v_key = k_key.replace(".attn.k.", ".attn.v.")
        if v_key in state:
            kv = torch.cat([state.pop(k_key), state.pop(v_key)])
            state[k_key.replace(".attn.k.", ".attn.kv.")] = kv
    return state


def _split_qkv(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """nn.MultiheadAttention's in_proj [q; k; v] -> q Linear and kv Linear."""
    for key in [k for k in state if ".attn.qkv." in k]:
        qkv = state.pop(key)
        dim = qkv.shape[0] // 3
        state[key.replace(".qkv.", ".q.")] = qkv[:dim]
        state[key.replace(".qkv.", ".kv.")] = qkv[dim:]
    return state


def _linear_from_conv(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """mmseg's Mix-FFN fc1/fc2 are 1x1 convs: (out, in, 1, 1) -> (out, in)."""
    return {
        k: v.flatten(1) if re.search(r"ffn\.fc[12]\.weight$", k) and v.ndim == 4 else v
        for k, v in state.items()
    }


def _encoder_shape(
    state: dict[str, torch.Tensor], path: str | Path
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(embed_dims, depths) of the encoder weights in our layout."""
    dims, depths = [], []
    for i in range(4):
        proj = state.get(f"encoder.stages.{i}.patch_embed.proj.weight")
        block = re.compile(rf"encoder\.stages\.{i}\.blocks\.(\d+)\.")
        blocks = [int(m[1]) for k in state if (m := block.match(k))]
        if proj is None or not blocks:
            raise InputError(f"{path}: no weights for encoder stage {i} (patch embedding, blocks)")
        dims.append(proj.shape[0])
        depths.append(max(blocks) + 1)
    return tuple(dims), tuple(depths)


def _variant_of(dims: tuple[int, ...], depths: tuple[int, ...], what: str | Path) -> str:
    for name, spec in VARIANTS.items():
        if spec.embed_dims == tuple(dims) and spec.depths == tuple(depths):
            return name
    raise InputError(f"{what}: embed_dims {dims}, depths {depths} match no MiT variant b0..b5")


def _lightning_hparams(path: Path) -> dict[str, Any]:
    """Hyper-parameters of our Lightning .ckpt (mmap: the weights are not read a second time);
    {} for other files."""
    if path.is_dir() or path.suffix != ".ckpt":
        return {}
    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return dict(ckpt.get("hyper_parameters", {}))


def checkpoint_class_names(path: str | Path, revision: str | None = None) -> list[str] | None:
    """Class names stored with the weights: our Lightning hyper-parameters or transformers'
    config.json id2label; None for bare state dicts. ``path`` may be a Hub repo id. A binary
    network's (one label in transformers: the foreground) are "background" and that label."""
    path = resolve_checkpoint(path, revision)
    if path.is_dir():
        labels = json.loads((path / "config.json").read_text()).get("id2label") or {}
        if len(labels) == 1:
            return ["background", labels["0"]]
        return [labels[str(i)] for i in range(len(labels))] if labels else None
    names = _lightning_hparams(path).get("class_names")
    return list(names) if names else None


def checkpoint_input_format(path: str | Path, revision: str | None = None) -> dict[str, Any] | None:
    """How the training data was read and normalised (``data.channels.ImageFormat.to_dict``),
    kept in our Lightning hyper-parameters; None for other files and older checkpoints."""
    return _lightning_hparams(resolve_checkpoint(path, revision)).get("input_format")


# --- writing the transformers layout --------------------------------------------------------------
# Our key -> transformers' save_pretrained name (the 4.x names, which transformers 4 and 5 both
# load). ``attn.kv`` becomes ``...kv`` here and is split into ``key``/``value`` afterwards.
_OURS_B = r"encoder\.stages\.(\d)\.blocks\.(\d+)\."
_HF_B = "segformer.encoder.block.{0}.{1}."
_TO_HF4: Rules = [
    (
        r"encoder\.stages\.(\d)\.patch_embed\.proj\.(\w+)",
        "segformer.encoder.patch_embeddings.{0}.proj.{1}",
    ),
    (
        r"encoder\.stages\.(\d)\.patch_embed\.norm\.(\w+)",
        "segformer.encoder.patch_embeddings.{0}.layer_norm.{1}",
    ),
    (_OURS_B + r"norm(1|2)\.(\w+)", _HF_B + "layer_norm_{2}.{3}"),
    (_OURS_B + r"attn\.q\.(\w+)", _HF_B + "attention.self.query.{2}"),
    (_OURS_B + r"attn\.kv\.(\w+)", _HF_B + "attention.self.kv.{2}"),
    (_OURS_B + r"attn\.sr\.(\w+)", _HF_B + "attention.self.sr.{2}"),
    (_OURS_B + r"attn\.sr_norm\.(\w+)", _HF_B + "attention.self.layer_norm.{2}"),
    (_OURS_B + r"attn\.proj\.(\w+)", _HF_B + "attention.output.dense.{2}"),
    (_OURS_B + r"ffn\.fc(1|2)\.(\w+)", _HF_B + "mlp.dense{2}.{3}"),
    (_OURS_B + r"ffn\.dwconv\.(\w+)", _HF_B + "mlp.dwconv.dwconv.{2}"),
    (r"encoder\.stages\.(\d)\.norm\.(\w+)", "segformer.encoder.layer_norm.{0}.{1}"),
    (r"head\.proj\.(\d)\.(\w+)", "decode_head.linear_c.{0}.proj.{1}"),
    (r"head\.fuse\.(\w+)", "decode_head.linear_fuse.{0}"),
    (r"head\.bn\.(\w+)", "decode_head.batch_norm.{0}"),
    (r"head\.classifier\.(\w+)", "decode_head.classifier.{0}"),
]


def transformers_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our SegFormer state dict -> transformers' SegformerForSemanticSegmentation names (as its
    save_pretrained writes them), the kv Linear split into key and value."""
    out = {}
    for key, value in state.items():
        for pattern, template in _TO_HF4:
            if m := re.fullmatch(pattern, key):
                name = template.format(*m.groups())
                break
        else:
            raise InputError(f"no transformers name for our key {key!r}")
        if ".attention.self.kv." in name:  # rows [0:C] key, [C:2C] value
            key_rows, value_rows = value.chunk(2)
            out[name.replace(".kv.", ".key.")] = key_rows
            out[name.replace(".kv.", ".value.")] = value_rows
        else:
            out[name] = value
    # own storage each (safetensors refuses shared memory), on the CPU
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in out.items()}


def transformers_config(
    model: SegFormer, class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """The config.json of SegformerForSemanticSegmentation for ``model`` (a SegformerConfig's
    fields; class names -> id2label/label2id, default transformers' ``LABEL_i``). A binary
    network's one logit is transformers' ``num_labels=1`` (its loss is then BCE with logits):
    id2label names the foreground only (the second of two names)."""
    spec = VARIANTS[model.variant]
    names = list(class_names) if class_names else [f"LABEL_{i}" for i in range(model.num_classes)]
    if model.num_classes == 1 and len(names) == 2:
        names = names[1:]
    if len(names) != model.num_classes:
        raise InputError(f"{len(names)} class names for a model of {model.num_classes} classes")
    last_block = model.encoder.stages[-1].blocks[-1]
    return {
        "architectures": ["SegformerForSemanticSegmentation"],
        "model_type": "segformer",
        "num_channels": int(model.encoder.in_channels),
        "num_encoder_blocks": 4,
        "depths": list(spec.depths),
        "sr_ratios": list(spec.sr_ratios),
        "hidden_sizes": list(spec.embed_dims),
        "patch_sizes": [7, 3, 3, 3],
        "strides": [4, 2, 2, 2],
        "num_attention_heads": list(spec.num_heads),
        "mlp_ratios": [last_block.ffn.fc1.out_features // last_block.ffn.fc1.in_features] * 4,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "classifier_dropout_prob": float(model.head.dropout.p),
        "initializer_range": 0.02,
        "drop_path_rate": float(last_block.drop_path.p),
        "layer_norm_eps": 1e-6,  # SegformerConfig's default; its LayerNorms use 1e-5 regardless
        "decoder_hidden_size": int(model.head.decoder_dim),
        "semantic_loss_ignore_index": 255,
        "reshape_last_stage": True,
        "id2label": {str(i): name for i, name in enumerate(names)},
        "label2id": {name: i for i, name in enumerate(names)},
    }


def save_transformers(
    model: SegFormer, folder: str | Path, class_names: Sequence[str] | None = None
) -> Path:
    """Write ``folder``/config.json + model.safetensors that transformers'
    ``SegformerForSemanticSegmentation.from_pretrained`` loads (and ``SegFormer.from_pretrained``).

    transformers builds every LayerNorm with eps 1e-5 (our ``ln_eps_preset="hf"``); weights of a
    model with another preset are written as they are and give slightly different logits there.
    Both files are written all or nothing (``checkpoint_io.atomic_files``): a failed write
    (disk full, permission, file-size limit) raises one ``UnwritableFileError`` naming the file
    and leaves the folder as it was.
    """
    # imported here: models/ is plain torch, checkpoint_io brings Lightning's checkpoint writer
    from segformer.checkpoint_io import atomic_files

    if model.ln_eps_preset != "hf":
        warnings.warn(
            f"the model uses LayerNorm eps preset {model.ln_eps_preset!r}; transformers uses 1e-5 "
            "in every LayerNorm (our ln_eps_preset='hf'), so its logits differ slightly from this "
            "model's",
            stacklevel=2,
        )
    folder = Path(folder).expanduser()
    config = transformers_config(model, class_names)
    state = transformers_state_dict(model.state_dict())
    files = {
        folder / "model.safetensors": safetensors_bytes(state, metadata={"format": "pt"}),
        folder / "config.json": json.dumps(config, indent=2) + "\n",
    }
    atomic_files(files, "transformers model")
    return folder
