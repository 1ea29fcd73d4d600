"""segformer-export format=transformers: a folder transformers loads, checked with it; a binary
network as its num_labels=1."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import compose_config, write_lightning_checkpoint
from safetensors.torch import save_file

from segformer.export import export
from segformer.models import SegFormer
from segformer.models.convert import checkpoint_class_names

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


def test_export_binary_as_transformers_num_labels_1(tmp_path):
    """A binary checkpoint (one output) is transformers' num_labels=1, id2label the foreground:
    its logits match, its own loss is BCE with logits (its num_labels == 1 branch), and the
    folder reads back as a binary network with both class names."""
    ckpt = write_lightning_checkpoint(tmp_path / "b.ckpt", ["background", "crack"], num_classes=1)
    out = tmp_path / "hf"
    with pytest.warns(UserWarning, match="transformers uses 1e-5"):
        diffs = run_export(tmp_path, [f"ckpt_path={ckpt}", "format=transformers", f"output={out}"])
    assert max(diffs) <= 1e-5
    theirs = transformers.SegformerForSemanticSegmentation.from_pretrained(out).eval()
    assert (theirs.config.num_labels, theirs.config.id2label) == (1, {0: "crack"})
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 2, (2, 64, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        output = theirs(pixel_values=x, labels=labels)
    up = torch.nn.functional.interpolate(output.logits, (64, 64), mode="bilinear")
    bce = torch.nn.functional.binary_cross_entropy_with_logits(up[:, 0], labels.float())
    torch.testing.assert_close(output.loss, bce)
    reread = SegFormer.from_pretrained(out)
    assert (reread.num_classes, reread.label_classes) == (1, 2)
    assert checkpoint_class_names(out) == ["background", "crack"]
