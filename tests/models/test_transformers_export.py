"""Writing the transformers layout: ours -> transformers (its own from_pretrained) -> ours, with
the logits equal all the way (ln_eps_preset="hf" is transformers' LayerNorm eps)."""

from __future__ import annotations

import json
import re
import warnings

import pytest
import torch

from segformer.models import SegFormer
from segformer.models.convert import _merge_kv, _rename, transformers_state_dict

transformers = pytest.importorskip("transformers")
NAMES = ["sky", "road", "car", "person"]


def random_model(variant: str = "b0", num_classes: int = 4, ln_eps_preset: str = "hf") -> SegFormer:
    torch.manual_seed(0)
    model = SegFormer(variant, num_classes=num_classes, ln_eps_preset=ln_eps_preset, dropout=0.2)
    with torch.no_grad():  # non-trivial norms and BatchNorm statistics
        for name, tensor in model.state_dict().items():
            if ("norm" in name or "bn." in name) and tensor.is_floating_point():
                tensor.add_(0.2 * torch.rand_like(tensor))
    return model.eval()


def test_round_trip_through_transformers(tmp_path):
    ours = random_model()
    ours.save_pretrained_transformers(tmp_path / "hf", NAMES)
    assert {p.name for p in (tmp_path / "hf").iterdir()} == {"config.json", "model.safetensors"}

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no missing / unexpected keys, no other complaint
        theirs = transformers.SegformerForSemanticSegmentation.from_pretrained(tmp_path / "hf")
    theirs.eval()
    assert theirs.config.id2label == dict(enumerate(NAMES))
    assert theirs.config.label2id == {n: i for i, n in enumerate(NAMES)}
    assert theirs.config.decoder_hidden_size == 256
    assert theirs.config.classifier_dropout_prob == pytest.approx(0.2)

    back = SegFormer.from_pretrained(tmp_path / "hf")
    assert (back.variant, back.num_classes, back.ln_eps_preset) == ("b0", 4, "hf")
    for size in [(64, 96), (45, 70)]:
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            mine, hf_logits, again = (
                ours.forward_logits(x),
                theirs(x).logits,
                back.forward_logits(x),
            )
        assert (mine - hf_logits).abs().max() <= 1e-5
        assert (again - hf_logits).abs().max() <= 1e-5
        torch.testing.assert_close(again, mine, rtol=0, atol=0)  # the same weights exactly


@pytest.mark.slow
def test_round_trip_b2_768_decoder(tmp_path):
    ours = random_model("b2", num_classes=3)
    ours.save_pretrained_transformers(tmp_path / "hf")
    theirs = transformers.SegformerForSemanticSegmentation.from_pretrained(tmp_path / "hf").eval()
    assert theirs.config.decoder_hidden_size == 768
    assert theirs.config.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert (ours.forward_logits(x) - theirs(x).logits).abs().max() <= 1e-5


def test_key_mapping_is_the_inverse_of_reading(tmp_path):
    state = random_model().state_dict()
    hf = transformers_state_dict(state)
    assert len(hf) == len(state) + sum(".attn.kv." in k for k in state)  # kv -> key + value
    assert any(
        re.fullmatch(r"segformer\.encoder\.block\.0\.0\.attention\.self\.key\.weight", k)
        for k in hf
    )
    back = _merge_kv(_rename(hf, "hf4"))
    assert back.keys() == state.keys()
    for key, value in state.items():
        torch.testing.assert_close(back[key], value, rtol=0, atol=0)


def test_other_ln_eps_warns_and_writes_the_same_weights(tmp_path):
    ours = random_model(ln_eps_preset="official")
    with pytest.warns(UserWarning, match=r"preset 'official'; transformers uses 1e-5"):
        ours.save_pretrained_transformers(tmp_path / "hf")
    back = SegFormer.from_pretrained(tmp_path / "hf")
    for key, value in ours.state_dict().items():
        torch.testing.assert_close(back.state_dict()[key], value, rtol=0, atol=0)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["model_type"] == "segformer" and config["hidden_sizes"] == [32, 64, 160, 256]


def test_wrong_number_of_class_names(tmp_path):
    with pytest.raises(ValueError, match="3 class names for a model of 4 classes"):
        random_model().save_pretrained_transformers(tmp_path / "hf", NAMES[:3])
