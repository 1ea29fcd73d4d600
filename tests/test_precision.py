"""precision=auto: bf16 only where it is faster here, decided on the real CPU (no mocks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import compose_train

from segformer.precision import (
    cached_inference_speedup,
    choose_precision,
    cpu_class,
    cpu_info,
    resolve_precision,
    speedup_cache,
)
from segformer.train import train

CHOOSE = (
    "from segformer.precision import choose_precision, cpu_class; "
    "print(cpu_class()); print(choose_precision('cpu')[0])"
)


def _choose_in(env: dict[str, str]) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", CHOOSE],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return out.stdout.split("\n")[:2]


@pytest.mark.slow
def test_auto_is_fp32_when_dispatch_is_limited_to_avx2() -> None:
    """As on an AVX2-only CPU (or this one restricted to AVX2, as the README's rows): no native
    bf16, so fp32 without measuring."""
    cls, precision = _choose_in({"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert cls == "AVX2"
    assert precision == "32-true"


@pytest.mark.slow
def test_auto_measures_when_only_onednn_is_limited() -> None:
    """ATen at AVX512 but oneDNN held to AVX2: the bf16 units exist yet are not used, and the
    measurement (not the flags) finds bf16 slower: fp32. On a CPU without bf16 units the flags
    decide, also fp32."""
    _, precision = _choose_in({"ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert precision == "32-true"


def test_explicit_precision_wins_and_the_reason_is_given() -> None:
    assert resolve_precision("bf16-mixed") == ("bf16-mixed", "set explicitly")
    assert resolve_precision("32-true", "cpu") == ("32-true", "set explicitly")
    info = cpu_info()
    assert {"model", "flags", "capability", "threads"} <= set(info)
    if "+" not in cpu_class():  # no bf16 units: decided by the flags alone
        precision, reason = choose_precision("cpu")
        assert precision == "32-true" and "bf16 would be emulated" in reason


@pytest.mark.slow
def test_train_records_the_choice_and_the_machine(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, ["trainer.precision=auto"])
    train(cfg)
    plan = json.loads((Path(cfg.paths.output_dir) / "run_plan.json").read_text())
    assert plan["precision"] in ("32-true", "bf16-mixed")
    assert plan["precision_reason"].startswith("CPU ")
    assert plan["cpu_class"] == cpu_class() and plan["cpu"]["capability"]


def test_the_inference_measurement_is_made_once_per_machine(tmp_path, monkeypatch) -> None:
    """Eval and predict decide from one measurement kept per machine, so a speedup near the
    threshold cannot flip their precision (and metrics) between runs."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cache, key = speedup_cache(), json.dumps(cpu_info(), sort_keys=True)
    assert cache == tmp_path / "segformer" / "precision.json"
    speedup, source = cached_inference_speedup()
    assert speedup > 0 and source == f"measured now, kept in {cache}"
    entries = json.loads(cache.read_text())
    assert entries[key]["speedup"] == round(speedup, 4)
    again, source = cached_inference_speedup()
    assert again == round(speedup, 4) and source.startswith(f"measured {entries[key]['date']}")
    # what is kept decides: a made-up entry for this machine is read, not measured over
    for kept, expected in [(3.0, "bf16-mixed"), (0.5, "32-true")]:
        cache.write_text(json.dumps({key: {"speedup": kept, "date": "2026-01-01"}}))
        precision, reason = choose_precision("cpu")
        if "+" in cpu_class():  # bf16 units: the kept measurement
            assert precision == expected and f"{kept:.2f}x" in reason and str(cache) in reason
        else:  # none: the flags decide and nothing is read
            assert precision == "32-true" and "bf16 would be emulated" in reason
    # another machine's entry is not this one's: measured, and both kept
    other = {"model": "another CPU"}
    cache.write_text(json.dumps({json.dumps(other): {"speedup": 9.0, "date": "2026-01-01"}}))
    assert cached_inference_speedup()[0] != 9.0
    assert len(json.loads(cache.read_text())) == 2


def test_a_broken_or_unwritable_cache_costs_only_a_measurement(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cache = speedup_cache()
    cache.parent.mkdir(parents=True)
    cache.write_text('{"half a fi')
    speedup, source = cached_inference_speedup()
    assert source.startswith("measured now") and speedup > 0
    key = json.dumps(cpu_info(), sort_keys=True)
    assert json.loads(cache.read_text())[key]["speedup"] == round(speedup, 4)
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))  # cannot hold a folder
    speedup, source = cached_inference_speedup()
    assert speedup > 0 and source == f"measured now; {speedup_cache()} not writable"
