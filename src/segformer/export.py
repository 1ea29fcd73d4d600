"""segformer-export: a checkpoint to ONNX with dynamic batch, height and width, verified with
onnxruntime against PyTorch before the command succeeds; or (format=transformers) to a folder
that transformers' SegformerForSemanticSegmentation.from_pretrained loads, verified with it.

    segformer-export ckpt_path=logs/train/synthetic_b0/<run>/checkpoints/last.ckpt output=model.onnx
    segformer-export pretrained=segformer-b2-ade/ output=b2.onnx height=512 width=512 classes=true
    segformer-export ckpt_path=last.ckpt format=transformers output=segformer-b0-synthetic/

Input "image": float32 (B, C, H, W), RGB scaled to [0, 1] then ImageNet-normalised (mean/std in
the model metadata); for other inputs (C = the checkpoint's in_channels) the stored values
divided by the metadata's "max_value", then normalised with its mean/std (the training
data's). Output "logits": float32 (B, K, H, W) at the input size, or with classes=true
"classes": int64 (B, H, W), the argmax inside the graph. A binary checkpoint
(``model.num_classes=1``) gives one logit (K = 1; its sigmoid is the foreground probability),
and "classes" 1 where the sigmoid exceeds its ``threshold`` (in the metadata) and 0 elsewhere.
The check runs onnxruntime (CPU) at the export size and at ``check_size`` with batch 2 and
fails (non-zero exit) when the max abs difference of the logits exceeds ``atol``.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from segformer.checkpoint_io import atomic_output
from segformer.cli import hydra_cli, print_config
from segformer.data.channels import ImageFormat
from segformer.errors import InputError
from segformer.models import SegFormer
from segformer.models.convert import checkpoint_class_names, checkpoint_input_format
from segformer.resolvers import register_resolvers

register_resolvers()


class ClassMap(nn.Module):
    """SegFormer followed by the argmax over classes: (B, C, H, W) -> (B, H, W) int64; a binary
    network's (one output): 1 where the sigmoid exceeds its ``threshold``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.binary = model.num_classes == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.binary:
            return (self.model(x)[:, 0].sigmoid() > self.model.threshold).long()
        return self.model(x).argmax(1)


def export_onnx(
    model: SegFormer,
    path: str | Path,
    size: Sequence[int] = (512, 512),
    opset: int = 17,
    classes: bool = False,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write ``model`` (eval mode) as ONNX with dynamic batch, height and width."""
    import onnx  # the onnx extra; format=transformers does without it

    model.eval()  # eval: BatchNorm folds into the head's weights, dropout and drop-path are off
    net, name = (ClassMap(model), "classes") if classes else (model, "logits")
    axes = {0: "batch", 1 if classes else 2: "height", 2 if classes else 3: "width"}
    x = torch.randn(1, getattr(model, "in_channels", 3), *size)
    with warnings.catch_warnings():
        # the head's "already at this size?" test is constant for any input over 4 pixels
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        # the TorchScript exporter: torch.export (dynamo=True) rejects the dynamic H and W
        torch.onnx.export(
            net,
            (x,),
            str(path),
            input_names=["image"],
            output_names=[name],
            dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"}, name: axes},
            opset_version=opset,
            dynamo=False,
        )
    if metadata:
        proto = onnx.load(str(path))
        onnx.helper.set_model_props(proto, metadata)
        onnx.save(proto, str(path))


@torch.no_grad()
def check_onnx(
    model: SegFormer,
    path: str | Path,
    shapes: Sequence[Sequence[int]],
    atol: float = 1e-4,
    seed: int = 0,
) -> list[float]:
    """Run the ONNX file with onnxruntime and PyTorch on random images of each (B, 3, H, W)
    ``shapes``; returns the max abs logit difference per shape, raises above ``atol``.

    A class-map export is compared through the logits: every pixel's ONNX class must score
    within 2 * atol of the PyTorch top logit (only near-ties may differ); a binary network's
    class may differ only where its logit is within atol of the threshold's."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    output = session.get_outputs()[0].name
    model = model.cpu().eval()
    generator = torch.Generator().manual_seed(seed)
    diffs = []
    for shape in shapes:
        x = torch.randn(*shape, generator=generator)
        ref = model(x).float()  # (B, K, H, W)
        got = torch.from_numpy(session.run(None, {"image": x.numpy()})[0])
        if got.shape[-2:] != ref.shape[-2:]:
            raise RuntimeError(f"{path}: output {tuple(got.shape)} for input {tuple(shape)}")
        if output == "classes" and ref.shape[1] == 1:  # binary: flips only near the cut
            cut = math.log(model.threshold / (1 - model.threshold))  # the threshold as a logit
            flipped = got != (ref[:, 0].sigmoid() > model.threshold).long()
            diff = float((ref[:, 0] - cut).abs()[flipped].max()) if flipped.any() else 0.0
        elif output == "classes":  # how far below the top PyTorch logit each ONNX class scores
            gap = ref.amax(1) - ref.gather(1, got[:, None]).squeeze(1)  # (B, H, W)
            diff = float(gap.max()) / 2  # <= atol when the logits agree within atol
        else:
            diff = float((got - ref).abs().max())
        if not diff <= atol:  # NaN fails too
            raise RuntimeError(
                f"{path}: onnxruntime differs from PyTorch at input {tuple(shape)}: "
                f"{measure(output == 'classes', ref.shape[1] == 1)} "
                f"{diff:.3g} > atol {atol:g}"
            )
        diffs.append(diff)
    return diffs


def measure(classes: bool, binary: bool) -> str:
    """What ``check_onnx`` compares: logits, or a class map's logits (top-logit gap; binary: the
    flipped pixels' logit distance to the threshold)."""
    if not classes:
        return "max abs diff"
    return "flips' logit distance to the threshold" if binary else "top-logit gap / 2"


def export(cfg: DictConfig) -> list[float]:
    """Export ``cfg.ckpt_path`` to ``cfg.output`` and check it; returns the max abs differences."""
    if cfg.get("ckpt_path") is None:
        raise InputError("set ckpt_path=PATH (alias pretrained=PATH): weights in any format")
    fmt = cfg.get("format", "onnx")
    if fmt == "transformers":
        return export_transformers_folder(cfg)
    if fmt != "onnx":
        raise InputError(f"format={fmt!r}; expected 'onnx' or 'transformers'")
    print_config(cfg, save_to=Path(cfg.paths.output_dir), show=cfg.get("print_config", False))
    ckpt_path, output = Path(cfg.ckpt_path).expanduser(), Path(cfg.output).expanduser()
    model = SegFormer.from_pretrained(ckpt_path)
    names = checkpoint_class_names(ckpt_path) or [str(i) for i in range(model.label_classes)]
    stored = checkpoint_input_format(ckpt_path)
    image_format = ImageFormat.from_dict(stored or {"in_channels": model.in_channels})
    mean, std = image_format.mean_std()  # stored units: on [0, 1] after / max_value
    scale = image_format.max_value
    metadata = {
        "network": f"{type(model.encoder).__name__} + {type(model.head).__name__}",
        **({"variant": model.variant} if model.variant else {}),
        "num_classes": str(model.num_classes),
        "class_names": json.dumps(names),
        # binary (one output): foreground where sigmoid(logit) > threshold
        **({"threshold": str(model.threshold)} if model.num_classes == 1 else {}),
        "in_channels": str(model.in_channels),
        "max_value": json.dumps(scale),
        "mean": json.dumps((mean / scale).round(6).tolist()),  # on values / max_value
        "std": json.dumps((std / scale).round(6).tolist()),
    }
    size = (cfg.height, cfg.width)
    # written beside and renamed: a failed write (disk full, size limit) leaves no partial file
    # and the previous model as it was, and says so in one line
    with atomic_output(output, "ONNX model") as tmp:
        export_onnx(model, tmp, size, cfg.opset, cfg.classes, metadata)
    shapes = [(1, model.in_channels, *size), (2, model.in_channels, *cfg.check_size)]
    diffs = check_onnx(model, output, shapes, cfg.atol)
    what = measure(cfg.classes, model.num_classes == 1)
    for shape, diff in zip(shapes, diffs, strict=True):
        print(f"onnxruntime vs PyTorch at {tuple(shape)}: {what} {diff:.2e} (atol {cfg.atol:g})")
    print(f"wrote {output} ({output.stat().st_size / 2**20:.1f} MiB)")
    return diffs


@torch.no_grad()
def check_transformers(
    folder: str | Path, shapes: Sequence[Sequence[int]], atol: float = 1e-4, seed: int = 0
) -> list[float]:
    """Load ``folder`` with transformers' SegformerForSemanticSegmentation and with
    ``SegFormer.from_pretrained``; returns their max abs H/4 logit difference per (B, 3, H, W)
    ``shapes``, raises above ``atol``."""
    from transformers import SegformerForSemanticSegmentation

    theirs = SegformerForSemanticSegmentation.from_pretrained(str(folder)).eval()
    ours = SegFormer.from_pretrained(folder)
    generator = torch.Generator().manual_seed(seed)
    diffs = []
    for shape in shapes:
        x = torch.randn(*shape, generator=generator)
        diff = float((theirs(pixel_values=x).logits - ours.forward_logits(x)).abs().max())
        if not diff <= atol:  # NaN fails too
            raise RuntimeError(
                f"{folder}: transformers differs from PyTorch at input {tuple(shape)}: "
                f"max abs difference {diff:.3g} > atol {atol:g}"
            )
        diffs.append(diff)
    return diffs


def export_transformers_folder(cfg: DictConfig) -> list[float]:
    """format=transformers: ``cfg.output`` becomes a folder (config.json + model.safetensors)
    for ``SegformerForSemanticSegmentation.from_pretrained``, checked with transformers when it
    is installed; returns the max abs logit differences (empty when not checked)."""
    output = Path(cfg.output).expanduser()
    if output.suffix == ".onnx" or output.is_file():
        raise InputError(
            f"format=transformers writes a folder (config.json + model.safetensors): set "
            f"output=DIR (got output={cfg.output})"
        )
    print_config(cfg, save_to=Path(cfg.paths.output_dir), show=cfg.get("print_config", False))
    ckpt_path = cfg.ckpt_path
    model = SegFormer.from_pretrained(ckpt_path)
    if not isinstance(model, SegFormer):
        raise InputError(
            f"{ckpt_path}: format=transformers holds the paper's network (MiT encoder + all-MLP "
            f"head); this checkpoint's is {type(model.encoder).__name__} + "
            f"{type(model.head).__name__} (format=onnx exports any network)"
        )
    model.save_pretrained_transformers(output, checkpoint_class_names(ckpt_path))
    shapes = [(1, 3, cfg.height, cfg.width), (2, 3, *cfg.check_size)]
    try:
        import transformers  # noqa: F401
    except ImportError:
        print(f"wrote {output}; not checked: transformers is not installed (the 'hf' extra)")
        return []
    diffs = check_transformers(output, shapes, cfg.atol)
    generator = torch.Generator().manual_seed(0)
    reread = SegFormer.from_pretrained(output)
    for shape, diff in zip(shapes, diffs, strict=True):
        x = torch.randn(*shape, generator=generator)
        with torch.no_grad():  # what the LayerNorm eps of transformers changes, if anything
            source = float((reread.forward_logits(x) - model.forward_logits(x)).abs().max())
        print(
            f"transformers vs PyTorch at {tuple(shape)}: max abs diff {diff:.2e} (atol "
            f"{cfg.atol:g}); vs the source model (ln_eps_preset {model.ln_eps_preset} -> hf) "
            f"{source:.2e}"
        )
    print(f"wrote {output} (config.json, model.safetensors)")
    return diffs


@hydra_cli("export", config_name="export")
def main(cfg: DictConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    main()
