"""segformer-export format=transformers: a folder transformers loads, checked with it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import compose_config
from safetensors.torch import save_file

from segformer.export import export
from segformer.models import SegFormer

transformers = pytest.importorskip("transformers")


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = SegFormer("b0", num_classes=5, ln_eps_preset="hf")
    with torch.no_grad():
        model.head.bn.running_mean.uniform_(-1, 1)
        model.head.bn.running_var.uniform_(0.5, 2)
    path = tmp_path / "b0.safetensors"
    save_file(model.state_dict(), path)
    return path


def run_export(tmp_path: Path, overrides: list[str]) -> list[float]:
    base = ["height=64", "width=96", "check_size=[40,72]"]
    return export(compose_config("export", base + overrides, root=tmp_path))


def test_export_transformers_folder(tmp_path, weights, capsys):
    out = tmp_path / "hf"
    # a bare state dict reads with the official LayerNorm eps: the export says what changes
    with pytest.warns(UserWarning, match="transformers uses 1e-5 in every LayerNorm"):
        diffs = run_export(
            tmp_path, [f"ckpt_path={weights}", "format=transformers", f"output={out}"]
        )
    assert len(diffs) == 2 and max(diffs) <= 1e-5
    assert "transformers vs PyTorch at (1, 3, 64, 96)" in capsys.readouterr().out
    theirs = transformers.SegformerForSemanticSegmentation.from_pretrained(out).eval()
    # with transformers' LayerNorm eps the same weights give its logits (fp32 rounding)
    ours = SegFormer.from_pretrained(weights, ln_eps_preset="hf")
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (theirs(x).logits - ours.forward_logits(x)).abs().max() <= 1e-5
    assert theirs.config.id2label[4] == "LABEL_4"
    assert (tmp_path / "logs" / "export" / "transformers").is_dir()  # run_name follows format


def test_export_transformers_needs_a_folder(tmp_path, weights):
    with pytest.raises(
        ValueError, match=r"writes a folder .*set output=DIR \(got output=model.onnx\)"
    ):
        run_export(tmp_path, [f"ckpt_path={weights}", "format=transformers"])


def test_unknown_format(tmp_path, weights):
    with pytest.raises(ValueError, match=r"format='tflite'; expected 'onnx' or 'transformers'"):
        run_export(tmp_path, [f"ckpt_path={weights}", "format=tflite"])
