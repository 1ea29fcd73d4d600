"""A segmentation network composed of an encoder and a decoder, built from config specs.

The parts are any ``nn.Module`` keeping this contract (checked when the network is built, with
an error naming the part):

- encoder: built with ``in_channels`` (the image bands); maps (B, C, H, W) to a list of feature
  maps and exposes their channel counts as ``out_channels: list[int]``. Optional:
  ``min_input_size`` (the smallest side it runs on: smaller images are edge-padded up to it),
  ``freeze_stages(k)`` (``model.freeze_stages``), ``load_pretrained(path)``
  (``model.pretrained``).
- decoder: built with ``in_channels: list[int]`` (the encoder's ``out_channels``) and
  ``num_classes``; maps the list of feature maps to logits (B, num_classes, H/s, W/s), s = its
  ``stride`` attribute (4 when absent).

``num_classes=1`` is a binary network: one logit, the foreground where its sigmoid exceeds
``threshold``; its class map has two classes, 0 background and 1 foreground (``label_classes``).

A spec is a dict in Hydra's ``_target_`` convention (``{"_target_": "pkg.mod.Class", **kwargs}``,
nested specs instantiated first, ``_partial_: true`` for a factory), read here without Hydra so
that a checkpoint that records its specs rebuilds anywhere ``models/`` is importable.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segformer.errors import InputError
from segformer.models.upsample import resize_bilinear, upsample_argmax, upsample_threshold

MIT = "segformer.models.mit.MixTransformer"
ALL_MLP_HEAD = "segformer.models.head.AllMLPHead"


def locate(target: str, where: str) -> Any:
    """The object named by the dotted path ``target`` (``pkg.module.Name``)."""
    parts = target.split(".")
    for i in range(len(parts) - 1, 0, -1):  # the longest importable module prefix
        module_name = ".".join(parts[:i])
        try:
            obj: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name is not None and not module_name.startswith(err.name):
                raise  # the module exists but imports something missing: its own error
            continue
        for name in parts[i:]:
            if not hasattr(obj, name):
                raise InputError(f"{where}._target_={target}: {module_name} has no {name!r}")
            obj = getattr(obj, name)
        return obj
    raise InputError(
        f"{where}._target_={target}: cannot import {parts[0]!r}; install the package that "
        "defines it, or add its folder to PYTHONPATH"
    )


def instantiate(spec: Mapping[str, Any], where: str, **kwargs: Any) -> Any:
    """``spec["_target_"](**spec_kwargs, **kwargs)``, nested specs built first; ``where`` names
    the spec in errors (e.g. ``model.decoder``)."""
    spec = dict(spec)
    target = spec.pop("_target_", None)
    if not isinstance(target, str):
        raise InputError(f"{where}: no _target_ (the dotted path of a class or function)")
    partial = bool(spec.pop("_partial_", False))
    for key in ("_convert_", "_recursive_"):  # Hydra's own flags: nothing to do here
        spec.pop(key, None)
    unknown = [k for k in spec if k.startswith("_") and k.endswith("_")]
    if unknown:
        raise InputError(f"{where}: {', '.join(unknown)} not supported in a network spec")
    args = {k: _built(v, f"{where}.{k}") for k, v in spec.items()}
    args.update(kwargs)
    factory = locate(target, where)
    _check_arguments(factory, args, f"{where}._target_={target}")
    return functools.partial(factory, **args) if partial else factory(**args)


def _check_arguments(factory: Any, args: Mapping[str, Any], where: str) -> None:
    """An argument the target does not take is a config mistake: named, with what it takes."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # no signature to read (a builtin): the call will tell
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(args) - set(params))
    if unknown:
        takes = [n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL]
        raise InputError(
            f"{where} takes no {', '.join(unknown)} (it takes {', '.join(takes) or 'nothing'})"
        )


def _built(value: Any, where: str) -> Any:
    if isinstance(value, Mapping):
        if "_target_" in value:
            return instantiate(value, where)
        return {k: _built(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_built(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def label_classes(num_classes: int) -> int:
    """The classes of the class map of a network with ``num_classes`` outputs: one per output,
    or 2 (0 background, 1 foreground) for a binary network's one logit."""
    return 2 if num_classes == 1 else num_classes


def check_threshold(threshold: float) -> float:
    """A binary network's foreground cut on the sigmoid, in (0, 1), as a float."""
    if not 0.0 < float(threshold) < 1.0:
        raise InputError(
            f"threshold={threshold}: the foreground probability cut of a binary network, "
            "strictly between 0 and 1"
        )
    return float(threshold)


def pad_small(x: torch.Tensor, min_size: int) -> torch.Tensor:
    """``x`` (B, C, H, W) with a side under ``min_size`` padded at the bottom / right up to it
    by repeating the edge pixels (any side >= 1 can be; the image's own colours, not a border
    the model never saw), else ``x`` itself. MiT cannot run on fewer pixels: its attention
    reduces the keys with a stride-8 conv at stage 1.

    While tracing (ONNX export) the sides are symbolic: the pad is always in the graph, with
    amount 0 (an identity) for images that need none."""
    h, w = x.shape[-2:]
    if isinstance(h, torch.Tensor):  # traced: keep the amounts dynamic
        pad_h, pad_w = (min_size - h).clamp(min=0), (min_size - w).clamp(min=0)
    elif h >= min_size and w >= min_size:
        return x
    else:
        pad_h, pad_w = max(min_size - h, 0), max(min_size - w, 0)
    return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")


class EncoderDecoder(nn.Module):
    """encoder -> decoder -> logits, from the specs ``net = {"encoder": ..., "decoder": ...}``.

    ``forward`` gives logits at the input size (bilinear, align_corners=False),
    ``forward_logits`` the decoder's (1/stride of the input), ``predict`` the class map (with
    one output, a binary network: the sigmoid above ``threshold``, default 0.5). Any
    image size H, W >= 1 runs: sides under the encoder's ``min_input_size`` are edge-padded
    and the outputs cropped back (``pad_small``). The decoder is the ``head`` attribute: the
    state-dict keys are ``encoder.*`` and ``head.*``, as in the official checkpoints.
    """

    def __init__(
        self,
        net: Mapping[str, Any],
        num_classes: int,
        in_channels: int = 3,
        threshold: float = 0.5,
    ) -> None:
        super().__init__()
        missing = [part for part in ("encoder", "decoder") if part not in net]
        if missing:
            raise InputError(f"model: no {' or '.join(missing)} spec (a _target_ and arguments)")
        # what the parts are built from, and what a checkpoint records
        self.net = {part: _own_settings(net[part], part) for part in ("encoder", "decoder")}
        net = self.net
        self.num_classes, self.in_channels = int(num_classes), int(in_channels)
        self.threshold = check_threshold(threshold)  # used with one output (binary) only
        self.encoder = instantiate(net["encoder"], "model.encoder", in_channels=in_channels)
        out_channels = _check_encoder(self.encoder, net["encoder"])
        self.head = instantiate(
            net["decoder"], "model.decoder", in_channels=out_channels, num_classes=num_classes
        )
        if not isinstance(self.head, nn.Module):
            raise InputError(
                f"model.decoder._target_={net['decoder'].get('_target_')} built a "
                f"{type(self.head).__name__}, not an nn.Module"
            )
        self.stride = int(getattr(self.head, "stride", 4))
        self.min_input_size = int(getattr(self.encoder, "min_input_size", 1))

    @property
    def variant(self) -> str | None:
        """The MiT variant of the encoder ("b0".."b5"), None for other encoders."""
        return getattr(self.encoder, "variant", None)

    @property
    def label_classes(self) -> int:
        """The classes of the class map: ``num_classes``, or 2 for one output (binary)."""
        return label_classes(self.num_classes)

    @property
    def ln_eps_preset(self) -> str | None:
        """The MiT encoder's LayerNorm eps preset (``mit.LN_EPS_PRESETS``), None for others."""
        return getattr(self.encoder, "ln_eps_preset", None)

    def check(self, size: int = 64) -> None:
        """Run a (1, C, size, size) image and check the parts keep their contract: as many
        feature maps as ``out_channels`` with those channels, and logits of num_classes
        channels at 1/stride of the input. Raises InputError naming the part."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                x = torch.zeros(1, self.in_channels, size, size)
                features = self.encoder(pad_small(x, self.min_input_size))
                channels = [int(f.shape[1]) for f in features]
                if channels != list(self.encoder.out_channels):
                    raise InputError(
                        f"model.encoder._target_={self.net['encoder']['_target_']}: forward gave "
                        f"maps of {channels} channels, out_channels says "
                        f"{list(self.encoder.out_channels)}"
                    )
                logits = self.head(features)
        finally:
            self.train(was_training)
        want = (self.num_classes, -(-size // self.stride), -(-size // self.stride))
        if tuple(logits.shape[1:]) != want:
            raise InputError(
                f"model.decoder._target_={self.net['decoder']['_target_']}: a {size}x{size} "
                f"image gave logits {tuple(logits.shape[1:])}, expected (num_classes, H/s, W/s) "
                f"= {want} with stride s={self.stride} (set a `stride` attribute if not 4)"
            )

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> logits (B, K, ceil(H/s), ceil(W/s)), s = the decoder's stride."""
        return self._run(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> logits (B, K, H, W), bilinear with align_corners=False."""
        return self._run(x, resize_bilinear)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> class map (B, H, W) int64: forward(x).argmax(1) but for near-ties;
        with one output (binary) forward(x).sigmoid() > threshold, exactly."""
        if self.num_classes == 1:
            return self._run(x, functools.partial(upsample_threshold, threshold=self.threshold))
        return self._run(x, upsample_argmax)

    def _run(
        self,
        x: torch.Tensor,
        to_size: Callable[[torch.Tensor, Sequence[int]], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The decoder's logits, or ``to_size(logits, size)`` at the input size. Any H, W >= 1:
        a side under ``min_input_size`` is padded (``pad_small``) and the output cropped back to
        the image (the logits to the cells of the image)."""
        padded = pad_small(x, self.min_input_size)
        out = self.head(self.encoder(padded))  # (B, K, h/s, w/s)
        if to_size is not None:
            out = to_size(out, padded.shape[-2:])  # (B, [K,] h, w)
        if padded is x:
            return out
        h, w = x.shape[-2:]
        if to_size is None:
            s = self.stride
            h, w = (h + s - 1) // s, (w + s - 1) // s  # ceil(side / s): stage 1's cells
        return out[..., :h, :w]

    def compile(self, *args: Any, **kwargs: Any) -> None:
        """torch.compile the encoder and the decoder in place (``nn.Module.compile``): every
        entry point runs compiled and the state-dict keys stay clean (no ``_orig_mod.``)."""
        self.encoder.compile(*args, **kwargs)
        self.head.compile(*args, **kwargs)


def _own_settings(spec: Mapping[str, Any], part: str) -> dict[str, Any]:
    """``spec`` without the settings of the default part (MiT's variant, drop_path_rate,
    ln_eps_preset; the head's decoder_dim, dropout) that another ``_target_`` does not take:
    a command-line ``model.decoder._target_=pkg.MyHead`` replaces the class but keeps the
    default's keys beside it in the composed config."""
    spec = dict(spec)
    target = spec.get("_target_")
    default = segformer_net()[part]
    if not isinstance(target, str) or target == default["_target_"]:
        return spec
    try:
        params = inspect.signature(locate(target, f"model.{part}")).parameters
    except (TypeError, ValueError):  # no signature to read (a builtin): keep everything
        return spec
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return spec
    return {k: v for k, v in spec.items() if k in params or k not in default or k == "_target_"}


def _check_encoder(encoder: Any, spec: Mapping[str, Any]) -> list[int]:
    where = f"model.encoder._target_={spec.get('_target_')}"
    if not isinstance(encoder, nn.Module):
        raise InputError(f"{where} built a {type(encoder).__name__}, not an nn.Module")
    channels = getattr(encoder, "out_channels", None)
    if not (
        isinstance(channels, list | tuple)
        and channels
        and all(isinstance(c, int) and c > 0 for c in channels)
    ):
        raise InputError(
            f"{where}: an encoder exposes the channels of its feature maps as "
            f"`out_channels: list[int]`; got {channels!r}"
        )
    return list(channels)


def segformer_net(
    variant: str = "b0",
    decoder_dim: int | None = None,
    drop_path_rate: float = 0.1,
    dropout: float = 0.1,
    ln_eps_preset: str = "official",
) -> dict[str, dict[str, Any]]:
    """The specs of the paper's network: MiT-``variant`` + the all-MLP head of width
    ``decoder_dim`` (None: the variant's E, 256 for B0/B1, 768 for B2-B5)."""
    from segformer.models.variants import get_variant

    return {
        "encoder": {
            "_target_": MIT,
            "variant": variant,
            "drop_path_rate": drop_path_rate,
            "ln_eps_preset": ln_eps_preset,
        },
        "decoder": {
            "_target_": ALL_MLP_HEAD,
            "decoder_dim": decoder_dim or get_variant(variant).decoder_dim,
            "dropout": dropout,
        },
    }


def is_segformer(net: Mapping[str, Any]) -> bool:
    """Whether the specs build the paper's parts (MiT encoder, all-MLP head)."""
    return net["encoder"].get("_target_") == MIT and net["decoder"].get("_target_") == ALL_MLP_HEAD
