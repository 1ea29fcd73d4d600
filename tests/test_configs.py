"""Every config composes, every experiment instantiates its data module and model for every
variant, and the variant table drives the per-variant settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import CONFIG_DIR, REPO_ROOT, compose_config
from hydra.errors import MissingConfigException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from segformer.build import build_module
from segformer.eval import evaluate
from segformer.models import VARIANTS, SegFormer

EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))
PAPER = ["ade20k", "cityscapes", "coco_stuff", "voc"]  # start from the ImageNet MiT weights


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_instantiates(experiment: str, tmp_path: Path) -> None:
    cfg = compose_config("train", [f"experiment={experiment}"], tmp_path)
    datamodule = instantiate(cfg.data)
    module = build_module(cfg, datamodule)
    assert module.model.variant == cfg.model.variant
    assert module.model.num_classes == datamodule.num_classes
    assert cfg.run_name == f"{experiment}_{cfg.model.variant}"
    if experiment.startswith("synthetic"):
        datamodule.setup("fit")
        return
    # the data is not on this machine: the error names the missing root, not a deep traceback
    with pytest.raises(FileNotFoundError, match=str(Path(cfg.data.root))):
        datamodule.setup("fit")


@pytest.mark.parametrize("experiment", PAPER)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_paper_experiment_for_every_variant(experiment: str, variant: str, tmp_path) -> None:
    cfg = compose_config(
        "train", [f"experiment={experiment}", f"model.variant={variant}"], tmp_path
    )
    assert cfg.run_name == f"{experiment}_{variant}"
    assert Path(cfg.model.pretrained) == tmp_path / "pretrained" / f"mit_{variant}.pth"
    side = 640 if (experiment, variant) == ("ade20k", "b5") else None
    if experiment == "ade20k":  # the paper's one per-variant difference: B5 at 640
        assert list(cfg.data.crop_size) == [side or 512] * 2
        assert list(cfg.data.scale) == list(cfg.data.eval.scale) == [2048, side or 512]
        assert list(cfg.inference.scale) == [2048, side or 512]
    assert cfg.model.encoder.variant == variant
    assert cfg.model.decoder.decoder_dim == VARIANTS[variant].decoder_dim  # the paper's E
    instantiate(cfg.data)


@pytest.mark.parametrize(
    ("overrides", "per_device"),
    [
        (["trainer.devices=1"], 16),
        (["trainer=ddp", "trainer.devices=8"], 2),
        (["trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"], 2),
    ],
)
def test_per_device_batch_follows_global_batch(
    overrides: list[str], per_device: int, tmp_path: Path
) -> None:
    cfg = compose_config("train", ["experiment=ade20k", "model.variant=b2", *overrides], tmp_path)
    assert cfg.data.batch_size == per_device
    assert cfg.model.variant == "b2"


def test_global_batch_must_divide(tmp_path: Path) -> None:
    cfg = compose_config("train", ["experiment=cityscapes", "trainer.devices=3"], tmp_path)
    with pytest.raises(Exception, match="not divisible by 3"):
        _ = cfg.data.batch_size


@pytest.mark.parametrize(
    "group", ["trainer", "logger", "debug", "optimizer", "scheduler", "inference", "model"]
)
def test_every_option_of_a_group_composes(group: str, tmp_path: Path) -> None:
    for option in sorted((Path(CONFIG_DIR) / group).glob("*.yaml")):
        cfg = compose_config("train", [f"{group}={option.stem}"], tmp_path)
        assert cfg.get(group) is not None or group == "debug"


@pytest.mark.parametrize("config", ["train", "eval", "predict"])
def test_one_inference_group_for_every_command(config: str, tmp_path: Path) -> None:
    extra = {"train": [], "eval": ["ckpt_path=x.ckpt"], "predict": ["ckpt_path=x", "input=x"]}
    cfg = compose_config(config, [*extra[config], "data=cityscapes"], tmp_path)
    assert cfg.inference.mode == "slide"  # the dataset's eval settings as defaults
    assert list(cfg.inference.stride) == [768, 768]
    cfg = compose_config(config, [*extra[config], "inference.flip=true"], tmp_path)
    assert cfg.inference.flip is True and cfg.inference.mode == "whole"


def test_model_group_builds_the_network_it_names(tmp_path: Path) -> None:
    cfg = compose_config(
        "train",
        ["model.variant=b1", "model.decoder.decoder_dim=128", "model.encoder.ln_eps_preset=hf"],
        tmp_path,
    )
    module = build_module(cfg, instantiate(cfg.data))
    assert module.model.variant == "b1" and module.model.head.decoder_dim == 128
    assert module.model.ln_eps_preset == "hf"
    assert module.hparams.optimizer["lr"] == cfg.optimizer.lr  # the groups reach the module


def test_eval_checks_the_network_overrides_and_refuses_the_others(tmp_path: Path) -> None:
    """The network comes from the checkpoint: model.variant / model.decoder.decoder_dim are checks
    (they were silently ignored once), other model.* keys are refused."""
    ckpt = tmp_path / "b0.pt"
    torch.save(SegFormer("b0", num_classes=6).state_dict(), ckpt)
    base = [f"ckpt_path={ckpt}", "data.num_workers=0", "trainer.limit_val_batches=1"]
    for overrides, match in [
        (["model.variant=b2"], "holds MiT-b0 weights, not b2"),
        (["experiment=cityscapes", "model.variant=b1"], "not b1"),
        (["model.decoder.decoder_dim=768"], "decoder_dim=768 requested, the checkpoint has 256"),
        (["model.head_lr_mult=1"], r"model\.head_lr_mult cannot change it"),
    ]:
        cfg = compose_config("eval", [*base, *overrides], tmp_path)
        with pytest.raises(ValueError, match=match):
            evaluate(cfg)
    # an experiment's run_name is for training: eval's run directory keeps the data name
    cfg = compose_config("eval", [*base, "experiment=cityscapes"], tmp_path)
    assert cfg.run_name == "cityscapes"
    cfg = compose_config("eval", [*base, "data.num_val=2", "model.variant=b0"], tmp_path)
    assert 0.0 <= evaluate(cfg)["mIoU"] <= 1.0


def _strings(node: object) -> list[str]:
    """Every string value of a resolved config (keys aside)."""
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return [node] if isinstance(node, str) else []


def _job(cfg: DictConfig) -> dict:
    """The resolved job config, as `--cfg job --resolve` prints it (no hydra node)."""
    return OmegaConf.to_container(
        OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True
    )


def test_without_an_experiment_a_run_is_the_users_not_the_demos(tmp_path: Path) -> None:
    """`segformer-train data=folder data.root=X 'data.classes=[a,b]'`: the paper's recipe on
    whatever the machine has, no time budget, a run name from the data; nothing of the
    synthetic demo (its budget, its CPU, its lr, its name) leaks in."""
    cfg = compose_config("train", ["data=folder", "data.root=X", "data.classes=[a,b]"], tmp_path)
    assert cfg.hydra.runtime.choices.experiment is None
    assert cfg.budget.minutes is None
    assert cfg.trainer.accelerator == "auto" and cfg.trainer.precision == "auto"
    assert cfg.run_name == "folder_b0"
    assert [s for s in _strings(_job(cfg)) if "synthetic" in s] == []
    # the paper's recipe: AdamW 6e-5, head x10, warmup 1500 + poly over 160k steps
    assert cfg.optimizer.lr == 6e-5 and cfg.model.head_lr_mult == 10.0
    assert cfg.scheduler.warmup_steps == 1500 and cfg.trainer.max_steps == 160000
    # with no data= the embedded data is the default; only the data choice says "synthetic"
    cfg = compose_config("train", [], tmp_path)
    assert cfg.run_name == "synthetic_b0" and cfg.budget.minutes is None
    assert cfg.trainer.accelerator == "auto" and cfg.optimizer.lr == 6e-5
    job = _job(cfg)  # the run directories hold the run name: only what does not follow from it
    others = {k: str(v).replace(cfg.run_name, "") for k, v in job.items() if k != "data"}
    leaks = [k for k, v in others.items() if "synthetic" in v]
    assert leaks == []


def test_make_train_and_the_optuna_search_select_the_demo(tmp_path: Path) -> None:
    recipe = (REPO_ROOT / "Makefile").read_text().split("\ntrain:", 1)[1].splitlines()[1]
    assert recipe.split() == [
        "$(PYTHON)",
        "-m",
        "segformer.train",
        "experiment=synthetic",
        "$(ARGS)",
    ]
    cfg = compose_config("train", ["hparams_search=synthetic_optuna"], tmp_path)
    assert cfg.hydra.runtime.choices.experiment == "synthetic"
    assert cfg.run_name == "synthetic_b0" and cfg.budget.minutes == 5


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_no_experiment_pins_the_accelerator(experiment: str, tmp_path: Path) -> None:
    """Experiments say what to train; where is the machine's business (GPU when present, else
    the CPU with precision auto), for training and for evaluating its checkpoints."""
    text = (Path(CONFIG_DIR) / "experiment" / f"{experiment}.yaml").read_text()
    assert "/trainer" not in text
    for config, extra in (("train", []), ("eval", ["ckpt_path=x.ckpt"])):
        cfg = compose_config(config, [f"experiment={experiment}", *extra], tmp_path)
        assert cfg.trainer.accelerator == "auto", config
        assert cfg.trainer.precision == "auto" and cfg.trainer.devices == 1, config
    # an explicit trainer still wins
    cfg = compose_config("train", [f"experiment={experiment}", "trainer=cpu"], tmp_path)
    assert cfg.trainer.accelerator == "cpu"


def test_eval_of_a_paper_checkpoint_needs_no_trainer_override(tmp_path: Path) -> None:
    """`segformer-eval experiment=cityscapes ckpt_path=...` on a CPU-only machine: nothing in
    eval.yaml or the experiment asks for a GPU."""
    cfg = compose_config("eval", ["experiment=cityscapes", "ckpt_path=x.pth"], tmp_path)
    assert cfg.trainer.accelerator == "auto" and cfg.trainer.strategy == "auto"
    assert cfg.run_name == "cityscapes" and cfg.data.eval.mode == "slide"
    assert cfg.data.batch_size == 8  # the global batch on one device of whatever kind


# every key of every data config, resolved (with paths.root_dir=tmp_path, seed 42): the shared
# keys of configs/data/base/dataset.yaml, then what each dataset changes or adds
ON_DISK = {
    "_convert_": "all",
    "batch_size": 2,
    "val_batch_size": 1,
    "num_workers": None,
    "pin_memory": None,
    "cache_images": False,
    "crop_size": [512, 512],
    "scale": [2048, 512],
    "ratio_range": [0.5, 2.0],
    "cat_max_ratio": 0.75,
    "class_uniform": 0.0,
    "photometric": True,
    "ignore_index": 255,
    "train_split": "train",
    "val_split": "val",
    "test_split": "test",
    "group": None,
    "group_file": None,
    "val_groups": None,
    "seed": 42,
    "eval": {"mode": "whole"},
}
DATA = {
    "ade20k": {
        "_target_": "segformer.data.ade20k.ADE20KDataModule",
        "root": "ADEChallengeData2016",
        "reduce_zero_label": True,
        "train_split": "training",
        "val_split": "validation",
        "test_split": "validation",
        "eval": {"mode": "whole", "scale": [2048, 512], "align": 32},
    },
    "camvid": {
        "_target_": "segformer.data.camvid.CamVidDataModule",
        "root": "camvid",
        "batch_size": 8,
        "cache_images": True,
        "crop_size": [360, 360],
        "scale": [480, 360],
        "group": "([^/_]+)_[^/]*$",
    },
    "cityscapes": {
        "_target_": "segformer.data.cityscapes.CityscapesDataModule",
        "root": "cityscapes",
        "batch_size": 1,
        "crop_size": [1024, 1024],
        "scale": [2048, 1024],
        "test_split": "val",
        "eval": {"mode": "slide", "crop": [1024, 1024], "stride": [768, 768]},
    },
    "coco_stuff": {
        "_target_": "segformer.data.coco_stuff.COCOStuffDataModule",
        "root": "coco_stuff164k",
        "train_split": "train2017",
        "val_split": "val2017",
        "test_split": "val2017",
        "eval": {"mode": "whole", "scale": [2048, 512], "align": 32},
    },
    "voc": {
        "_target_": "segformer.data.voc.VOCDataModule",
        "root": "VOCdevkit/VOC2012",
        "test_split": "val",
        "eval": {"mode": "whole", "scale": [2048, 512]},
    },
    "folder": {
        "_target_": "segformer.data.folder.FolderDataModule",
        "root": "custom",
        "batch_size": 8,
        "classes": ["background", "foreground"],
        "palette": None,
        "reduce_zero_label": False,
        "in_channels": 3,
        "bands": None,
        "keep_alpha": False,
        "mean": None,
        "std": None,
        "max_value": 255,
        "label_map": None,
        "label_check_files": 64,
        "nodata": None,
        "img_dir": None,
        "ann_dir": None,
        "img_suffix": None,
        "seg_map_suffix": None,
        "split_file": None,
        "train_transforms": None,
    },
}
SYNTHETIC = {  # no files, splits or resize scale: not on the base
    "_target_": "segformer.data.synthetic.SyntheticDataModule",
    "_convert_": "all",
    "num_train": 2000,
    "num_val": 200,
    "num_test": 200,
    "image_size": 128,
    "texture_noise": 0.0,
    "batch_size": 8,
    "val_batch_size": 16,
    "num_workers": None,
    "pin_memory": None,
    "ratio_range": [0.75, 1.25],
    "cat_max_ratio": 1.0,
    "class_uniform": 0.0,
    "photometric": False,
    "ignore_index": 255,
    "seed": 42,
    "eval": {"mode": "whole"},
}


@pytest.mark.parametrize("data", [*DATA, "synthetic"])
def test_data_config_resolves_to_its_recorded_values(data: str, tmp_path: Path) -> None:
    """Each data config on the shared base: exactly the keys and values it had, every one a
    keyword its datamodule takes (instantiating reads no files)."""
    cfg = compose_config("train", [f"data={data}"], tmp_path)
    got = OmegaConf.to_container(cfg.data, resolve=True)
    if data == "synthetic":
        expected = SYNTHETIC
    else:
        expected = {**ON_DISK, **DATA[data]}
        expected["root"] = str(tmp_path / "data" / DATA[data]["root"])
    assert got == expected
    instantiate(cfg.data)


def test_the_data_base_is_not_a_dataset(tmp_path: Path) -> None:
    assert sorted(p.stem for p in (Path(CONFIG_DIR) / "data").glob("*.yaml")) == sorted(
        [*DATA, "synthetic"]
    )
    with pytest.raises(MissingConfigException, match="data/base"):
        compose_config("train", ["data=base"], tmp_path)


def test_flat_network_keys_of_an_older_model_config_name_their_new_place(tmp_path: Path) -> None:
    from omegaconf import open_dict

    from segformer.errors import InputError

    cfg = compose_config("train", ["experiment=synthetic"], tmp_path)
    with open_dict(cfg):
        cfg.model.decoder_dim = 128
        cfg.model.drop_path_rate = 0.2
        cfg.model.no_such_setting = 1
    with pytest.raises(InputError) as err:
        build_module(cfg, instantiate(cfg.data))
    assert str(err.value) == (
        "model.decoder_dim is now model.decoder.decoder_dim; model.drop_path_rate is now "
        "model.encoder.drop_path_rate; model.no_such_setting is not a setting of SegFormerModule"
    )
