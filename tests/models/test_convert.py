"""Every checkpoint format, built here from our weights with reverse mappings written in the
test, loads back to the same weights; bad files fail with clear errors. (The transformers
layouts, written by transformers itself, are in test_transformers.py.)"""

import os
import re

import pytest
import torch
from safetensors.torch import save_file

from segformer.models import SegFormer, load_encoder_weights
from segformer.models.mit import MixTransformer

NUM_CLASSES = 7


@pytest.fixture(scope="module")
def model() -> SegFormer:
    torch.manual_seed(0)
    model = SegFormer("b0", num_classes=NUM_CLASSES)
    with torch.no_grad():  # non-default norms so that every tensor is distinguishable
        for name, tensor in model.state_dict().items():
            if "norm" in name or "bn." in name:
                tensor.add_(torch.rand_like(tensor.float()).to(tensor.dtype))
    return model.eval()


def to_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our keys -> NVlabs mix_transformer.py / segformer_head.py names (1-based stages)."""
    block = {
        "attn.sr_norm": "attn.norm",
        "ffn.fc1": "mlp.fc1",
        "ffn.dwconv": "mlp.dwconv.dwconv",
        "ffn.fc2": "mlp.fc2",
    }
    head = {"fuse": "linear_fuse.conv", "bn": "linear_fuse.bn", "classifier": "linear_pred"}
    out = {}
    for key, value in state.items():
        if m := re.fullmatch(r"encoder\.stages\.(\d)\.patch_embed\.(.+)", key):
            key = f"backbone.patch_embed{int(m[1]) + 1}.{m[2]}"
        elif m := re.fullmatch(r"encoder\.stages\.(\d)\.blocks\.(\d+)\.(.+)\.(\w+)", key):
            key = f"backbone.block{int(m[1]) + 1}.{m[2]}.{block.get(m[3], m[3])}.{m[4]}"
        elif m := re.fullmatch(r"encoder\.stages\.(\d)\.norm\.(\w+)", key):
            key = f"backbone.norm{int(m[1]) + 1}.{m[2]}"
        elif m := re.fullmatch(r"head\.proj\.(\d)\.(\w+)", key):
            key = f"decode_head.linear_c{int(m[1]) + 1}.proj.{m[2]}"
        elif m := re.fullmatch(r"head\.(\w+)\.(\w+)", key):
            key = f"decode_head.{head[m[1]]}.{m[2]}"
        out[key] = value
    return out


def to_mmseg(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our encoder keys -> mmseg mit.py names (mit2mmseg.py), with the fused in_proj."""
    block = {
        "attn.sr_norm": "attn.norm",
        "attn.proj": "attn.attn.out_proj",
        "ffn.fc1": "ffn.layers.0",
        "ffn.dwconv": "ffn.layers.1",
        "ffn.fc2": "ffn.layers.4",
    }
    out = {}
    for key, value in state.items():
        if m := re.fullmatch(r"encoder\.stages\.(\d)\.patch_embed\.(proj|norm)\.(\w+)", key):
            key = f"layers.{m[1]}.0.{'projection' if m[2] == 'proj' else 'norm'}.{m[3]}"
        elif m := re.fullmatch(r"encoder\.stages\.(\d)\.blocks\.(\d+)\.(.+)\.(\w+)", key):
            prefix = f"layers.{m[1]}.1.{m[2]}."
            if m[3] == "attn.kv":
                continue
            if m[3] == "attn.q":  # in_proj = [q; k; v]
                kv = state[key.replace("attn.q.", "attn.kv.")]
                key, value = f"{prefix}attn.attn.in_proj_{m[4]}", torch.cat([value, kv])
            else:
                key = f"{prefix}{block.get(m[3], m[3])}.{m[4]}"
                if m[3] in ("ffn.fc1", "ffn.fc2") and m[4] == "weight":
                    value = value[:, :, None, None]  # mmseg's FFN uses 1x1 convs
        elif m := re.fullmatch(r"encoder\.stages\.(\d)\.norm\.(\w+)", key):
            key = f"layers.{m[1]}.2.{m[2]}"
        else:
            continue
        out[f"backbone.{key}"] = value
    return out


def encoder_only(state):
    return {k: v for k, v in state.items() if k.startswith("encoder.")}


def assert_same_weights(actual: dict, expected: dict):
    assert actual.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0, msg=key)


def test_official_segmentation_checkpoint(model, tmp_path):
    state = to_official(model.state_dict())
    state["decode_head.conv_seg.weight"] = torch.zeros(NUM_CLASSES, 128, 1, 1)  # unused, dropped
    state["decode_head.conv_seg.bias"] = torch.zeros(NUM_CLASSES)
    torch.save({"meta": {"iter": 160000}, "state_dict": state}, tmp_path / "segformer.b0.pth")
    loaded = SegFormer.from_pretrained(tmp_path / "segformer.b0.pth")
    assert (loaded.variant, loaded.num_classes, loaded.ln_eps_preset) == (
        "b0",
        NUM_CLASSES,
        "official",
    )
    assert_same_weights(loaded.state_dict(), model.state_dict())


def official_mit(model, path):
    state = {k.removeprefix("backbone."): v for k, v in to_official(model.state_dict()).items()}
    state = {k: v for k, v in state.items() if not k.startswith("decode_head.")}
    state |= {"head.weight": torch.randn(1000, 256), "head.bias": torch.randn(1000)}  # ImageNet
    torch.save(state, path)


def test_official_imagenet_mit_checkpoint(model, tmp_path):
    official_mit(model, tmp_path / "mit_b0.pth")
    loaded = SegFormer.from_pretrained(tmp_path / "mit_b0.pth", num_classes=19)
    assert (loaded.variant, loaded.num_classes, loaded.head.decoder_dim) == ("b0", 19, 256)
    assert_same_weights(encoder_only(loaded.state_dict()), encoder_only(model.state_dict()))


def test_load_encoder_weights(model, tmp_path):
    official_mit(model, tmp_path / "mit_b0.pth")
    encoder = MixTransformer("b0")
    load_encoder_weights(encoder, tmp_path / "mit_b0.pth")
    assert_same_weights(encoder.state_dict(), model.encoder.state_dict())
    with pytest.raises(ValueError, match=r"MiT-b0 weights, the encoder is MiT-b1"):
        load_encoder_weights(MixTransformer("b1"), tmp_path / "mit_b0.pth")


def test_mmseg_backbone_checkpoint(model, tmp_path):
    state = to_mmseg(model.state_dict())
    state["decode_head.convs.0.conv.weight"] = torch.zeros(256, 32, 1, 1)  # mmseg's own head
    torch.save({"state_dict": state}, tmp_path / "mmseg.pth")
    with pytest.warns(UserWarning, match="only the encoder weights are loaded"):
        loaded = SegFormer.from_pretrained(tmp_path / "mmseg.pth", num_classes=NUM_CLASSES)
    assert loaded.ln_eps_preset == "mmseg"
    assert_same_weights(encoder_only(loaded.state_dict()), encoder_only(model.state_dict()))


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_own_state_dict(model, tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    assert_same_weights(SegFormer.from_pretrained(path).state_dict(), model.state_dict())


@pytest.mark.slow
def test_own_lightning_checkpoint(tmp_path):
    """A real Lightning checkpoint (loops, callbacks, optimizer states) loads weights-only."""
    import lightning as L

    class Module(L.LightningModule):
        # "ln_eps": the hyper-parameter's name in checkpoints written before 0.2
        def __init__(self, num_classes: int = 3, ln_eps: str = "hf"):
            super().__init__()
            self.save_hyperparameters()
            self.model = SegFormer("b0", num_classes=num_classes, ln_eps_preset=ln_eps)

        def training_step(self, batch, batch_idx):
            return self.model.forward_logits(batch[0]).mean()

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-4)

    module = Module()
    data = torch.utils.data.TensorDataset(torch.randn(2, 3, 64, 64))
    trainer = L.Trainer(
        max_steps=1, logger=False, enable_progress_bar=False, default_root_dir=tmp_path
    )
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=2))
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    loaded = SegFormer.from_pretrained(tmp_path / "last.ckpt")
    assert (loaded.num_classes, loaded.ln_eps_preset) == (3, "hf")  # eps from the hyper-parameters
    assert_same_weights(loaded.state_dict(), module.model.state_dict())


def test_other_num_classes_reinitialises_only_the_classifier(model, tmp_path):
    torch.save(model.state_dict(), tmp_path / "model.pt")
    with pytest.warns(UserWarning, match="7 classes in the checkpoint, 3 requested"):
        loaded = SegFormer.from_pretrained(tmp_path / "model.pt", num_classes=3)
    ours = {k: v for k, v in loaded.state_dict().items() if "classifier" not in k}
    theirs = {k: v for k, v in model.state_dict().items() if "classifier" not in k}
    assert_same_weights(ours, theirs)
    assert loaded.head.classifier.weight.shape == (3, 256, 1, 1)


def test_wrong_variant(model, tmp_path):
    torch.save(model.state_dict(), tmp_path / "model.pt")
    with pytest.raises(ValueError, match=r"model\.pt: holds MiT-b0 weights, not b2 as asked"):
        SegFormer.from_pretrained(tmp_path / "model.pt", variant="b2")
    with pytest.raises(ValueError, match="decoder_dim=768 requested, the checkpoint has 256"):
        SegFormer.from_pretrained(tmp_path / "model.pt", decoder_dim=768)


def test_missing_and_unknown_keys(model, tmp_path):
    state = to_official(model.state_dict())
    del state["backbone.block2.1.attn.kv.bias"]
    state["backbone.block2.1.attn.extra.weight"] = torch.zeros(1)
    torch.save({"state_dict": state}, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match=r"broken\.pth") as error:
        SegFormer.from_pretrained(tmp_path / "broken.pth")
    message = str(error.value)
    assert "missing keys (1): encoder.stages.1.blocks.1.attn.kv.bias" in message
    assert "unexpected keys (1): backbone.block2.1.attn.extra.weight" in message


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "random.pth").write_bytes(os.urandom(4096))
    with pytest.raises(ValueError, match=r"random\.pth: not a PyTorch checkpoint"):
        SegFormer.from_pretrained(tmp_path / "random.pth")
    torch.save({"epoch": 1}, tmp_path / "no_weights.pt")
    with pytest.raises(ValueError, match=r"no_weights\.pt: no state dict of tensors"):
        SegFormer.from_pretrained(tmp_path / "no_weights.pt")
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "resnet.pt")
    with pytest.raises(ValueError, match=r"resnet\.pt: not a SegFormer/MiT checkpoint"):
        SegFormer.from_pretrained(tmp_path / "resnet.pt")
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        SegFormer.from_pretrained(tmp_path / "missing.pt")


class RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {RunsCode.marker}",))


def test_pickle_that_runs_code_is_refused(tmp_path):
    RunsCode.marker = tmp_path / "pwned"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": RunsCode()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"evil\.pt: refused to unpickle.*posix\.system"):
        SegFormer.from_pretrained(tmp_path / "evil.pt")
    assert not RunsCode.marker.exists()


def test_transformers_directory_of_another_model(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ValueError, match="model_type='bert', expected 'segformer'"):
        SegFormer.from_pretrained(tmp_path)
