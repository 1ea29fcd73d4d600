"""Hub repo ids wherever a checkpoint path goes: resolved by huggingface_hub's real
snapshot_download from a cache in the real layout, offline (HF_HUB_OFFLINE=1, nothing can be
downloaded), then read like any local checkpoint."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch
from hubcache import add_to_hub_cache, offline_hub_cache
from safetensors.torch import save_file

from segformer.models import SegFormer, load_encoder_weights, read_checkpoint
from segformer.models.convert import checkpoint_class_names
from segformer.models.hub import parse_hub_id, resolve_checkpoint
from segformer.models.mit import MixTransformer
from segformer.models.variants import VARIANTS

transformers = pytest.importorskip("transformers")
pytest.importorskip("huggingface_hub")
LABELS = ["sky", "road", "car"]


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return offline_hub_cache(tmp_path, monkeypatch)


def hf_folder(folder: Path, num_labels: int = 3, seed: int = 0):
    """A random transformers B0 saved with save_pretrained (config.json + model.safetensors)."""
    spec = VARIANTS["b0"]
    config = transformers.SegformerConfig(
        hidden_sizes=list(spec.embed_dims),
        depths=list(spec.depths),
        decoder_hidden_size=256,
        num_labels=num_labels,
        id2label={i: f"{LABELS[i % 3]}{i // 3 or ''}" for i in range(num_labels)},
    )
    torch.manual_seed(seed)
    model = transformers.SegformerForSemanticSegmentation(config).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        model.decode_head.batch_norm.running_mean.uniform_(-1, 1)
        model.decode_head.batch_norm.running_var.uniform_(0.5, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(folder)
    return model


def test_load_by_repo_id_from_the_cache(hub_cache, tmp_path):
    hf = hf_folder(tmp_path / "export")
    assert {p.name for p in (tmp_path / "export").iterdir()} == {"config.json", "model.safetensors"}
    commit = add_to_hub_cache(hub_cache, "acme/segformer-b0-tiny", tmp_path / "export")

    model = SegFormer.from_pretrained("acme/segformer-b0-tiny")
    assert (model.variant, model.num_classes, model.ln_eps_preset) == ("b0", 3, "hf")
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_logits(x), hf(x).logits, rtol=0, atol=1e-5)
    # the snapshot folder huggingface_hub returned, inside our cache
    resolved = resolve_checkpoint("acme/segformer-b0-tiny")
    assert resolved == hub_cache / "models--acme--segformer-b0-tiny" / "snapshots" / commit
    assert checkpoint_class_names("acme/segformer-b0-tiny") == LABELS
    assert read_checkpoint("acme/segformer-b0-tiny").source == "hf4"


def test_revisions_pick_their_snapshot(hub_cache, tmp_path):
    hf_folder(tmp_path / "main", num_labels=3)
    hf_folder(tmp_path / "v2", num_labels=5, seed=1)
    add_to_hub_cache(hub_cache, "acme/seg", tmp_path / "main")
    commit = add_to_hub_cache(hub_cache, "acme/seg", tmp_path / "v2", revision="v2")

    assert SegFormer.from_pretrained("acme/seg").num_classes == 3
    assert SegFormer.from_pretrained("acme/seg@v2").num_classes == 5
    assert SegFormer.from_pretrained("acme/seg", revision="v2").num_classes == 5
    assert SegFormer.from_pretrained("acme/seg", revision=commit).num_classes == 5
    with pytest.raises(ValueError, match=r"revision 'v2' in the id but revision='main'"):
        SegFormer.from_pretrained("acme/seg@v2", revision="main")
    with pytest.raises(FileNotFoundError, match=r"acme/seg@v3: .*not in the cache"):
        SegFormer.from_pretrained("acme/seg@v3")


def test_encoder_weights_by_repo_id(hub_cache, tmp_path):
    hf_folder(tmp_path / "export")
    add_to_hub_cache(hub_cache, "acme/mit-b0", tmp_path / "export")
    encoder = MixTransformer("b0")
    load_encoder_weights(encoder, "acme/mit-b0")
    local = SegFormer.from_pretrained(tmp_path / "export").encoder.state_dict()
    for key, value in encoder.state_dict().items():
        torch.testing.assert_close(value, local[key], rtol=0, atol=0)


def test_a_repo_with_one_weights_file(hub_cache, tmp_path):
    """Not the transformers layout: the single checkpoint file of the snapshot is read."""
    torch.manual_seed(0)
    ours = SegFormer("b0", num_classes=4).eval()
    (tmp_path / "repo").mkdir()
    save_file(ours.state_dict(), tmp_path / "repo" / "segformer_b0.safetensors")
    (tmp_path / "repo" / "README.md").write_text("weights")
    add_to_hub_cache(hub_cache, "acme/single", tmp_path / "repo")
    assert resolve_checkpoint("acme/single").name == "segformer_b0.safetensors"
    model = SegFormer.from_pretrained("acme/single")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ours(x), rtol=0, atol=0)


def test_offline_and_not_cached_says_what_to_download(hub_cache):
    with pytest.raises(FileNotFoundError) as err:
        SegFormer.from_pretrained("nvidia/segformer-b0-finetuned-ade-512-512")
    message = str(err.value)
    assert "nvidia/segformer-b0-finetuned-ade-512-512: not a local file or folder" in message
    assert f"not in the cache {hub_cache} while HF_HUB_OFFLINE is set" in message
    download = "hf download nvidia/segformer-b0-finetuned-ade-512-512 config.json model.safetensors"
    assert download in message
    assert f"to {hub_cache / 'models--nvidia--segformer-b0-finetuned-ade-512-512'}," in message
    assert not any(hub_cache.iterdir())  # nothing was written


def test_without_huggingface_hub(hub_cache, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # `import huggingface_hub` fails
    with pytest.raises(FileNotFoundError, match=r"huggingface_hub is not installed.*hf download"):
        SegFormer.from_pretrained("acme/seg")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("nvidia/mit-b0", ("nvidia/mit-b0", None)),
        (
            "nvidia/segformer-b2-finetuned-ade-512-512@refs/pr/1",
            ("nvidia/segformer-b2-finetuned-ade-512-512", "refs/pr/1"),
        ),
        ("acme/seg@v1.0", ("acme/seg", "v1.0")),
        ("pretrained/mit_b0.pth", None),  # a missing local file stays a missing local file
        ("weights/model.safetensors", None),
        ("logs/train/x/checkpoints/last.ckpt", None),
        ("./acme/seg", None),
        ("/acme/seg", None),
        ("segformer-b2-ade/", None),
        ("mit_b0", None),
        ("acme--x/seg", None),
    ],
)
def test_what_counts_as_a_repo_id(text, expected):
    assert parse_hub_id(text) == expected


def test_an_existing_local_path_is_never_a_repo_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("acme").mkdir()
    torch.save(SegFormer("b0", num_classes=2).state_dict(), "acme/seg")
    assert parse_hub_id("acme/seg") is None
    assert SegFormer.from_pretrained("acme/seg").num_classes == 2
    with pytest.raises(FileNotFoundError, match="no such checkpoint file"):
        SegFormer.from_pretrained("pretrained/mit_b0.pth")
