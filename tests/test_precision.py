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
    INFERENCE,
    choose_precision,
    cpu_class,
    cpu_info,
    measured_speedup,
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
def test_train_records_the_choice_and_the_machine(tmp_path: Path, monkeypatch) -> None:
    """And reruns of one config take the same precision: its measurement is kept; another
    batch size is another workload, measured anew."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    plans = []
    for run, extra in [("first", []), ("rerun", []), ("batch3", ["data.batch_size=3"])]:
        cfg = compose_train(tmp_path, ["trainer.precision=auto", f"run_name={run}", *extra])
        train(cfg)
        plans.append(json.loads((Path(cfg.paths.output_dir) / "run_plan.json").read_text()))
    for plan in plans:
        assert plan["precision"] in ("32-true", "bf16-mixed")
        assert plan["precision_reason"].startswith("CPU ")
        assert plan["cpu_class"] == cpu_class() and plan["cpu"]["capability"]
    first, rerun, batch3 = (p["precision_reason"] for p in plans)
    if "+" in cpu_class():  # bf16 units: measured on the run's own steps, kept per config
        assert "training steps of b0, batch 4" in first and "measured now, kept in" in first
        assert rerun.split(" (")[0] == first.split(" (")[0]  # the same speedup, read back
        assert "training steps of b0, batch 4" in rerun and "kept in" in rerun
        assert "measured now" not in rerun and plans[1]["precision"] == plans[0]["precision"]
        assert "training steps of b0, batch 3" in batch3 and "measured now" in batch3
        assert len(json.loads(speedup_cache().read_text())) == 2
    else:  # none: the flags decide, nothing measured or kept
        assert first == rerun == batch3 and "bf16 would be emulated" in first
        assert not speedup_cache().exists()


def test_the_inference_measurement_is_made_once_per_machine(tmp_path, monkeypatch) -> None:
    """Eval and predict decide from one measurement kept per machine, so a speedup near the
    threshold cannot flip their precision (and metrics) between runs."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cache, key = speedup_cache(), _key(INFERENCE[0])
    assert cache == tmp_path / "segformer" / "precision.json"
    speedup, source = measured_speedup(INFERENCE)
    assert speedup > 0 and source == f"measured now, kept in {cache}"
    entries = json.loads(cache.read_text())
    assert entries[key]["speedup"] == round(speedup, 4)
    again, source = measured_speedup(INFERENCE)
    assert again == round(speedup, 4) and source.startswith(f"measured {entries[key]['date']}")
    # what is kept decides: a made-up entry for this machine is read, not measured over
    for kept, expected in [(3.0, "bf16-mixed"), (0.5, "32-true")]:
        cache.write_text(json.dumps({key: {"speedup": kept, "date": "2026-01-01"}}))
        precision, reason = choose_precision("cpu")
        if "+" in cpu_class():  # bf16 units: the kept measurement
            assert precision == expected and f"{kept:.2f}x" in reason and str(cache) in reason
        else:  # none: the flags decide and nothing is read
            assert precision == "32-true" and "bf16 would be emulated" in reason
    # another machine's or workload's entry is not this one's: measured, and all kept
    other_cpu = json.dumps({**json.loads(key), "model": "another CPU"}, sort_keys=True)
    kept = {"speedup": 9.0, "date": "2026-01-01"}
    cache.write_text(json.dumps({other_cpu: kept, _key("another workload"): kept}))
    assert measured_speedup(INFERENCE)[0] != 9.0
    assert len(json.loads(cache.read_text())) == 3


def _key(workload: str) -> str:
    return json.dumps({**cpu_info(), "workload": workload}, sort_keys=True)


def test_a_broken_or_unwritable_cache_costs_only_a_measurement(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cache = speedup_cache()
    cache.parent.mkdir(parents=True)
    cache.write_text('{"half a fi')
    speedup, source = measured_speedup(INFERENCE)
    assert source.startswith("measured now") and speedup > 0
    assert json.loads(cache.read_text())[_key(INFERENCE[0])]["speedup"] == round(speedup, 4)
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))  # cannot hold a folder
    speedup, source = measured_speedup(INFERENCE)
    assert speedup > 0 and source == f"measured now; {speedup_cache()} not writable"
