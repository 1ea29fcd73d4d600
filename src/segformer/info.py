"""segformer-info: a SegFormer variant's shape, weights' names, parameters and multiply-accumulates.

    segformer-info variant=b2 size=512x512 num_classes=150 [decoder_dim=768]

MACs are counted on the meta device (no memory, no compute) with torch's FlopCounterMode, which
counts matmuls, convolutions and attention; MACs = FLOPs / 2. The paper's "GFLOPs" are such
MACs. They are given for the paper's head computation and for this package's exact fast path.
"""

from __future__ import annotations

import sys

import torch
from rich.console import Console
from rich.table import Table
from torch.utils.flop_counter import FlopCounterMode

from segformer.models import SegFormer, get_variant

DEFAULTS = {"variant": "b0", "size": "512x512", "num_classes": "150", "decoder_dim": "null"}


def parse_args(argv: list[str]) -> dict[str, str]:
    """``key=value`` arguments over DEFAULTS; an unknown key or a bare word is an error."""
    args = dict(DEFAULTS)
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in args:
            keys = ", ".join(args)
            raise SystemExit(f"segformer-info: bad argument {arg!r}; use key=value with {keys}")
        args[key] = value
    return args


def _int(args: dict[str, str], key: str) -> int:
    try:
        return int(args[key])
    except ValueError:
        raise SystemExit(f"segformer-info: {key}={args[key]!r}; expected an integer") from None


def _parse_size(size: str) -> tuple[int, int]:
    """ "512" or "512x1024" (height x width)."""
    h, _, w = size.lower().partition("x")
    if not (h.isdigit() and (w.isdigit() or not w)):
        raise SystemExit(f"segformer-info: size={size!r}; expected HxW or one int")
    return int(h), int(w or h)


def _gmacs(fn, *args) -> float:
    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops() / 2e9


def model_info(variant: str, size: tuple[int, int], num_classes: int, decoder_dim: int | None):
    """{"encoder"|"decoder"|"total": (params in M, GMACs paper head, GMACs fast head)}."""
    with torch.device("meta"):
        model = SegFormer(variant, num_classes, decoder_dim).eval()
        x = torch.empty(1, 3, *size)
    with torch.no_grad():
        features = model.encoder(x)
        enc = _gmacs(model.encoder, x)
        dec = _gmacs(model.head.forward_reference, features), _gmacs(model.head, features)
    params = [sum(p.numel() for p in m.parameters()) / 1e6 for m in (model.encoder, model.head)]
    return {
        "encoder": (params[0], enc, enc),
        "decoder": (params[1], *dec),
        "total": (sum(params), enc + dec[0], enc + dec[1]),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    variant, size = args["variant"], _parse_size(args["size"])
    try:
        spec = get_variant(variant)
    except ValueError as err:
        raise SystemExit(f"segformer-info: {err}") from None
    num_classes = _int(args, "num_classes")
    decoder_dim = None if args["decoder_dim"] == "null" else _int(args, "decoder_dim")
    info = model_info(variant, size, num_classes, decoder_dim)
    table = Table(
        title=f"SegFormer-{variant.upper()} at {size[0]}x{size[1]}, {num_classes} classes",
        caption="MACs = FLOPs / 2 (matmuls, convs, attention); the fast head is exact",
    )
    for column in ("", "Params (M)", "GMACs (paper head)", "GMACs (fast head)"):
        table.add_column(column, justify="right" if column else "left")
    for part, (params, paper, fast) in info.items():
        table.add_row(part, f"{params:.2f}", f"{paper:.1f}", f"{fast:.1f}")
    facts = Table.grid(padding=(0, 2))
    for name, value in [
        ("embed dims / depths", f"{spec.embed_dims} / {spec.depths}"),
        ("heads / sr ratios", f"{spec.num_heads} / {spec.sr_ratios}"),
        ("decoder width (paper)", str(spec.decoder_dim)),
        ("ImageNet weights", f"{spec.imagenet_file} (Hub: {spec.hub_imagenet})"),
        ("fine-tuned on the Hub", f"{spec.hub_ade20k}, {spec.hub_cityscapes}"),
    ]:
        facts.add_row(name, value)
    console = Console()
    console.print(table)
    console.print(facts)


if __name__ == "__main__":
    main()
