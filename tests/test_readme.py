"""Every segformer-train / -eval / -predict command the README shows composes into a config."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from helpers import REPO_ROOT, compose_config

CONFIGS = {"segformer-train": "train", "segformer-eval": "eval", "segformer-predict": "predict"}


def readme_commands() -> list[tuple[str, list[str]]]:
    """(config name, overrides) of each command line in README.md (code blocks and `inline`)."""
    text = (REPO_ROOT / "README.md").read_text().replace("\\\n", " ")
    found = []
    for match in re.finditer(r"(segformer-(?:train|eval|predict))((?: [^`\n|]*)?)(?=[`\n|])", text):
        words = shlex.split(match[2].split("#")[0])
        if "-m" in words:  # multirun sweeps: their comma lists are not single configs
            continue
        if any(w.startswith("hydra.searchpath") for w in words):  # the user's own configs
            continue  # (composed from a user folder in tests/test_install.py)
        # placeholders such as <run> stand for a name the user fills in
        overrides = [re.sub(r"<\w+>", "x", w) for w in words if "=" in w and w[0] != "-"]
        found.append((CONFIGS[match[1]], overrides))
    return found


COMMANDS = readme_commands()


def test_the_readme_shows_commands() -> None:
    assert len(COMMANDS) > 15


@pytest.mark.parametrize(("config", "overrides"), COMMANDS, ids=[" ".join(o) for _, o in COMMANDS])
def test_readme_command_composes(config: str, overrides: list[str], tmp_path: Path) -> None:
    required = {"eval": ["ckpt_path=x"], "predict": ["ckpt_path=x", "input=x"]}.get(config, [])
    given = {o.partition("=")[0] for o in overrides}
    extra = [o for o in required if o.partition("=")[0] not in given]
    if "ckpt_path=last" in overrides:  # resumes the newest run of the run_name: make one
        others = [o for o in overrides if o != "ckpt_path=last"]
        run_name = compose_config(config, [*extra, *others], tmp_path).run_name
        last = tmp_path / "logs" / config / run_name / "earlier" / "checkpoints" / "last.ckpt"
        last.parent.mkdir(parents=True)
        last.touch()
    cfg = compose_config(config, [*extra, *overrides], tmp_path)
    assert cfg.inference.mode in ("whole", "slide")
    if config == "train":
        assert cfg.model.variant in ("b0", "b1", "b2", "b3", "b4", "b5")
        _ = cfg.run_name, cfg.data.batch_size  # every interpolation they use resolves
