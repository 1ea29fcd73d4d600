"""transformers checkpoints in both key layouts, written by the installed library itself, and
numerical parity with its SegformerForSemanticSegmentation."""

import warnings

import pytest
import torch
from safetensors.torch import save_file

from segformer.models import VARIANTS, SegFormer, read_checkpoint

transformers = pytest.importorskip("transformers")
NUM_CLASSES = 7


def hf_model(variant: str, num_labels: int = 150):
    spec = VARIANTS[variant]
    config = transformers.SegformerConfig(
        hidden_sizes=list(spec.embed_dims),
        depths=list(spec.depths),
        decoder_hidden_size=spec.decoder_dim,
        num_labels=num_labels,
    )
    torch.manual_seed(0)
    model = transformers.SegformerForSemanticSegmentation(config)
    with torch.no_grad():  # random norms and BatchNorm statistics
        for name, tensor in model.state_dict().items():
            if ("norm" in name or "batch_norm" in name) and tensor.is_floating_point():
                tensor.add_(0.2 * torch.rand_like(tensor))
    return model.eval()


def save_hf(model, folder, layout: str):
    """hf4: save_pretrained (transformers writes the 4.x names); hf5: the module's own names."""
    if layout == "hf4":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.save_pretrained(folder)
    else:
        folder.mkdir()
        model.config.to_json_file(folder / "config.json")
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, folder / "model.safetensors")


@pytest.mark.parametrize("layout", ["hf4", "hf5"])
def test_transformers_layouts(tmp_path, layout):
    hf = hf_model("b0", num_labels=NUM_CLASSES)
    save_hf(hf, tmp_path / "hf", layout)
    ckpt = read_checkpoint(tmp_path / "hf")
    assert (ckpt.source, ckpt.variant, ckpt.ln_eps_preset) == (layout, "b0", "hf")
    model = SegFormer.from_pretrained(tmp_path / "hf")
    assert (model.num_classes, model.ln_eps_preset) == (NUM_CLASSES, "hf")
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_logits(x), hf(x).logits, rtol=0, atol=1e-5)


def test_weights_of_no_variant(tmp_path):
    config = transformers.SegformerConfig(hidden_sizes=[32, 64, 160, 256], depths=[1, 1, 1, 1])
    transformers.SegformerForSemanticSegmentation(config).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"depths \(1, 1, 1, 1\) match no MiT variant"):
        SegFormer.from_pretrained(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["b0", "b2"])
def test_parity_with_transformers(tmp_path, variant):
    """Random transformers model -> save_pretrained -> ours: same logits, H/4 and full size."""
    hf = hf_model(variant)
    save_hf(hf, tmp_path / "hf", "hf4")
    model = SegFormer.from_pretrained(tmp_path / "hf")
    for size in [(512, 512), (333, 517)]:
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            theirs, ours = hf(x).logits, model.forward_logits(x)
            full = torch.nn.functional.interpolate(theirs, size=size, mode="bilinear")
            assert ours.shape == theirs.shape == (1, 150, -(-size[0] // 4), -(-size[1] // 4))
            torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
            torch.testing.assert_close(model(x), full, rtol=0, atol=1e-5)
