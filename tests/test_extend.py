"""A researcher's own dataset, encoder, decoder, loss and schedule (tests/user_project, outside
the package, importable through PYTHONPATH) run through every command with config overrides
only: train, resume, eval, predict, ONNX export; the parts' contract is checked with errors
that name the part, and a bug in the user's code keeps its traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO_ROOT
from PIL import Image

from segformer.errors import InputError
from segformer.losses import build_loss
from segformer.models import EncoderDecoder, segformer_net
from segformer.optim import build_scheduler, param_groups

PROJECT = REPO_ROOT / "tests" / "user_project"
MY_NET = {
    "encoder": {"_target_": "my_project.encoders.ConvEncoder", "widths": [8, 16, 16, 32]},
    "decoder": {"_target_": "my_project.heads.FPNHead", "width": 16},
}


@pytest.fixture
def on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(PROJECT))


def make_fields(root: Path, n: int = 6) -> None:
    """{root}/{train,val}.csv + RGB PNG images and class-id PNG masks (3 classes)."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    (root / "ann").mkdir()
    rows = []
    for i in range(n):
        mask = np.zeros((72, 96), np.uint8)
        mask[10:40, 20 + i : 60 + i] = 1
        mask[50:, :30] = 2
        image = rng.integers(0, 60, (72, 96, 3), dtype=np.uint8)
        image[mask == 1] += np.array([0, 150, 0], np.uint8)
        image[mask == 2] += np.array([150, 20, 20], np.uint8)
        Image.fromarray(image).save(root / "img" / f"f{i}.png")
        Image.fromarray(mask).save(root / "ann" / f"f{i}.png")
        rows.append(f"img/f{i}.png,ann/f{i}.png")
    (root / "train.csv").write_text("\n".join(rows[:4]) + "\n")
    (root / "val.csv").write_text("\n".join(rows[4:]) + "\n")


def run(command: str, *overrides: str, cwd: Path, check: bool = True):
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}  # the user's package, importable
    env.pop("SEGFORMER_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, "-m", f"segformer.{command}", *overrides],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"segformer-{command} failed:\n{proc.stdout[-3000:]}\n{proc.stderr}")
    return proc


@pytest.mark.slow
def test_own_components_through_every_command(tmp_path: Path) -> None:
    data = tmp_path / "fields"
    make_fields(data)
    common = [
        f"hydra.searchpath=[file://{PROJECT / 'my_configs'}]",
        "data=csv_pairs",
        f"data.root={data}",
        "data.num_workers=0",
        f"paths.log_dir={tmp_path / 'logs'}",
    ]
    train = [
        *common,
        "experiment=my_net",
        "data.batch_size=2",
        "trainer.precision=32-true",
        "trainer.val_check_interval=2",
        "trainer.num_sanity_val_steps=0",
        "trainer.enable_model_summary=false",
        "print_config=false",
    ]
    run("train", *train, "trainer.max_steps=2", cwd=tmp_path)
    (run_dir,) = (tmp_path / "logs" / "train" / "csv_pairs_b0").iterdir()
    ckpt_path = run_dir / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    net = ckpt["hyper_parameters"]["net"]
    assert net["encoder"]["_target_"] == "my_project.encoders.ConvEncoder"  # recorded
    assert net["decoder"]["_target_"] == "my_project.heads.FPNHead"
    assert ckpt["global_step"] == 2
    assert ckpt["lr_schedulers"][0]["_last_lr"][0] < 6e-5  # WarmupCosine after warmup
    log = (run_dir / "train.log").read_text() if (run_dir / "train.log").exists() else ""
    assert "Traceback" not in log

    run("train", *train, "trainer.max_steps=4", "ckpt_path=last", cwd=tmp_path)
    resumed = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    assert resumed["global_step"] == 4  # the same run directory, continued

    # eval, predict and export rebuild the network from the checkpoint alone
    evaluated = run("eval", *common, f"ckpt_path={ckpt_path}", cwd=tmp_path)
    assert "mIoU" in evaluated.stdout + evaluated.stderr
    (eval_dir,) = (tmp_path / "logs" / "eval" / "csv_pairs").iterdir()
    assert 0.0 <= json.loads((eval_dir / "metrics.json").read_text())["mIoU"] <= 1.0

    out = tmp_path / "pred"
    run("predict", f"ckpt_path={ckpt_path}", f"input={data / 'img'}", f"output={out}", cwd=tmp_path)
    pred = np.asarray(Image.open(out / "f0.png"))
    assert pred.shape == (72, 96) and set(np.unique(pred)) <= {0, 1, 2}
    assert [c["name"] for c in json.loads((out / "classes.json").read_text())] == [
        "background",
        "crop",
        "weed",
    ]

    onnx_file = tmp_path / "my_net.onnx"
    exported = run(
        "export",
        f"ckpt_path={ckpt_path}",
        f"output={onnx_file}",
        "height=64",
        "width=96",
        "check_size=[72,96]",
        cwd=tmp_path,
    )
    assert onnx_file.is_file() and "onnxruntime vs PyTorch" in exported.stdout

    # the transformers format holds the paper's network only: one line says so
    refused = run(
        "export",
        f"ckpt_path={ckpt_path}",
        "format=transformers",
        f"output={tmp_path / 'hf'}",
        cwd=tmp_path,
        check=False,
    )
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "ConvEncoder + FPNHead" in refused.stderr


@pytest.mark.slow
def test_a_bug_in_the_users_code_keeps_its_traceback(tmp_path: Path) -> None:
    """A ValueError raised inside a user's class is a bug, not a config mistake: the whole
    traceback, down to the user's line, reaches the terminal."""
    (tmp_path / "buggy_heads.py").write_text(
        "from torch import nn\n\n\n"
        "class BuggyHead(nn.Module):\n"
        "    def __init__(self, in_channels, num_classes):\n"
        "        super().__init__()\n"
        "        self.classifier = nn.Conv2d(in_channels[0], num_classes, 1)\n\n"
        "    def forward(self, features):\n"
        "        raise ValueError('my head has a bug')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "segformer.train",
            "experiment=synthetic",
            "model.decoder._target_=buggy_heads.BuggyHead",  # one override swaps the part
            f"paths.log_dir={tmp_path / 'logs'}",
            "print_config=false",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "Traceback (most recent call last)" in proc.stderr
    assert "buggy_heads.py" in proc.stderr and "ValueError: my head has a bug" in proc.stderr
    assert "segformer-train: error:" not in proc.stderr


def test_a_composed_network_keeps_the_contract(on_path: None) -> None:
    net = EncoderDecoder(MY_NET, num_classes=3, in_channels=4)
    net.check()
    x = torch.randn(2, 4, 50, 70)
    assert net.forward_logits(x).shape == (2, 3, 13, 18)  # ceil(side / 4)
    assert net(x).shape == (2, 3, 50, 70)
    assert net.predict(x).shape == (2, 50, 70)
    assert net.variant is None and net.min_input_size == 1
    # the paper's parts through the same composition: same keys as SegFormer's
    paper = EncoderDecoder(segformer_net("b0"), num_classes=3)
    assert paper.variant == "b0" and paper.min_input_size == 29
    assert any(k.startswith("head.classifier.") for k in paper.state_dict())


def test_one_override_swaps_a_part(on_path: None) -> None:
    """`model.decoder._target_=my_project.heads.FPNHead` leaves the default head's decoder_dim
    and dropout beside it in the composed config: FPNHead takes neither, so they are left out
    (and not recorded); settings it does take pass through."""
    paper = segformer_net("b0")
    net = EncoderDecoder(
        {**paper, "decoder": {**paper["decoder"], "_target_": "my_project.heads.FPNHead"}},
        num_classes=3,
    )
    assert net.net["decoder"] == {"_target_": "my_project.heads.FPNHead"}
    assert net.net["encoder"] == paper["encoder"]  # the MiT keeps all its settings
    widened = EncoderDecoder(
        {
            **paper,
            "decoder": {**paper["decoder"], "_target_": "my_project.heads.FPNHead", "width": 8},
        },
        num_classes=3,
    )
    assert widened.head.classifier.in_channels == 8
    with pytest.raises(InputError, match=r"FPNHead takes no widths \(it takes in_channels, "):
        EncoderDecoder(  # a typo is not a default's setting: the class refuses it
            {**paper, "decoder": {"_target_": "my_project.heads.FPNHead", "widths": 8}},
            num_classes=3,
        )


@pytest.mark.parametrize(
    ("net", "match"),
    [
        ({**MY_NET, "encoder": {"widths": [8]}}, r"model\.encoder: no _target_"),
        (
            {**MY_NET, "encoder": {"_target_": "my_project.encoders.NoSuchEncoder"}},
            r"my_project\.encoders has no 'NoSuchEncoder'",
        ),
        (
            {**MY_NET, "decoder": {"_target_": "not_installed_pkg.Head"}},
            r"cannot import 'not_installed_pkg'; install the package",
        ),
        (
            {**MY_NET, "encoder": {"_target_": "torch.nn.Identity"}},
            r"exposes the channels of its feature maps as `out_channels: list\[int\]`",
        ),
    ],
)
def test_contract_errors_name_the_part(on_path: None, net: dict, match: str) -> None:
    with pytest.raises(InputError, match=match):
        EncoderDecoder(net, num_classes=3)


def test_wrong_output_shapes_are_named(on_path: None) -> None:
    lying = EncoderDecoder(MY_NET, num_classes=3)
    lying.encoder.out_channels = [8, 16, 16, 64]  # says 64, gives 32
    with pytest.raises(InputError, match=r"gave maps of \[8, 16, 16, 32\] channels"):
        lying.check()
    coarse = EncoderDecoder(MY_NET, num_classes=3)
    coarse.stride = 8  # as if the head said stride 8: its logits are at 1/4
    with pytest.raises(InputError, match=r"expected \(num_classes, H/s, W/s\) = \(3, 8, 8\)"):
        coarse.check()


def test_optimizer_groups_for_any_composition(on_path: None) -> None:
    net = EncoderDecoder(MY_NET, num_classes=3)
    groups = {g["name"]: g for g in param_groups(net, lr=1e-3, weight_decay=0.01)}
    batchnorm = {
        id(p)
        for m in net.encoder.modules()
        if isinstance(m, torch.nn.BatchNorm2d)
        for p in m.parameters()
    }
    assert {id(p) for p in groups["encoder_no_decay"]["params"]} == batchnorm
    assert groups["encoder_no_decay"]["weight_decay"] == 0.0
    assert groups["head"]["lr"] == pytest.approx(1e-2)  # x10
    assert {id(p) for p in groups["head"]["params"]} == {id(p) for p in net.head.parameters()}


def test_user_loss_term_follows_the_zero_valid_pixel_rule(on_path: None) -> None:
    loss = build_loss(
        [
            {"name": "ce", "weight": 1.0},
            {"_target_": "my_project.losses.SmoothedCrossEntropy", "smoothing": 0.1, "weight": 0.5},
        ]
    )
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = torch.randint(0, 3, (2, 32, 32))
    value = loss(logits, target, 255, None)
    assert set(loss.last) == {"ce", "SmoothedCrossEntropy"}
    smoothed = torch.nn.functional.cross_entropy(
        torch.nn.functional.interpolate(logits, (32, 32), mode="bilinear"),
        target,
        label_smoothing=0.1,
    )
    torch.testing.assert_close(loss.last["SmoothedCrossEntropy"], smoothed.detach())
    torch.testing.assert_close(value, loss.last["ce"] + 0.5 * smoothed.detach())
    void = loss(logits, torch.full((2, 32, 32), 255), 255, None)  # no valid pixel: 0, not NaN
    void.backward()
    assert void.item() == 0.0 and torch.count_nonzero(logits.grad) == 0


def _optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)


@pytest.mark.parametrize(
    ("spec", "length"),
    [
        ({"_target_": "torch.optim.lr_scheduler.CosineAnnealingLR", "T_max": None}, "T_max"),
        ({"_target_": "segformer.optim.WarmupPolyLR", "total_steps": None}, "total_steps"),
        ({"_target_": "my_project.schedules.WarmupCosine", "total_steps": None}, None),
    ],
)
def test_a_schedule_ends_at_the_runs_last_step(on_path: None, spec: dict, length) -> None:
    optimizer = _optimizer()
    scheduler, settings = build_scheduler({**spec, "interval": "step"}, optimizer, 20)
    assert settings == {"interval": "step", "frequency": 1}
    if length:
        assert getattr(scheduler, {"T_max": "T_max", "total_steps": "total_steps"}[length]) == 20
    for _ in range(20):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_schedule_errors_name_the_key() -> None:
    with pytest.raises(InputError, match=r"scheduler.interval='weekly'"):
        build_scheduler(
            {"_target_": "torch.optim.lr_scheduler.StepLR", "step_size": 1, "interval": "weekly"},
            _optimizer(),
            10,
        )
    with pytest.raises(InputError, match=r"scheduler.T_max: set it for interval 'epoch'"):
        build_scheduler(
            {"_target_": "torch.optim.lr_scheduler.CosineAnnealingLR", "interval": "epoch"},
            _optimizer(),
            10,
        )
