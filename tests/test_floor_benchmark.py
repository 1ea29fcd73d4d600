"""benchmarks/floor.py --quick writes every field issue 28 asks for (a smoke run, tiny sizes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # about a minute on a shared 2-core CPU: imports, two ONNX exports, 4 sides
def test_floor_quick_writes_every_field(tmp_path):
    out = tmp_path / "floor.json"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "floor.py"), "--quick", "--out", str(out)],
        check=True, cwd=tmp_path, env=env, capture_output=True, timeout=600,
    )  # fmt: skip
    record = json.loads(out.read_text())
    m = record["machine"]
    for key in ("cpu_class", "cpu_info", "torch", "threads", "load_avg_start", "load_avg_end",
                "precision_auto", "onnxruntime", "transformers"):  # fmt: skip
        assert key in m, key
    assert set(record["gemm_peak_gflops"]) == {"fp32", "bf16"}
    assert all(v > 0 for v in record["gemm_peak_gflops"].values())
    assert record["forward_logits_flops_per_image"] > 0
    assert set(record["floor_ms_per_image"]) == {"fp32", "bf16"}
    sides = {"ours_fp32", "transformers_fp32", "onnxruntime_classes"}
    multiples = record["multiples"]
    for batch in ("batch_1", "batch_2"):  # --quick: batches 1 and 2 (the full run: 1 and 8)
        row = multiples[f"class_map_{batch}"]
        assert sides | {"onnxruntime_logits_then_torch_argmax", "class_map_step_upsample_argmax",
                        "class_map_step_reference"} <= set(row)  # fmt: skip
        assert all({"ms_per_image", "x_fp32_floor", "x_bf16_floor"} <= set(v) for v in row.values())
        agree = record["inference"][batch]["class_map_agreement"]
        assert agree["upsample_argmax_vs_reference"] >= 0.999
    assert sides <= set(multiples["predict_per_image"])
    train = multiples["training_step"]
    assert {"ours_fp32", "transformers_fp32"} <= set(train)
    assert all("x_fp32_floor" in v and "transformers_over_this" in v for v in train.values())
    assert set(record["training"]["first_loss"]) == set(train)
    losses = record["training"]["first_loss"]  # same weights, same batch: the same loss
    assert abs(losses["ours_fp32"] - losses["transformers_fp32"]) < 1e-3 * losses["ours_fp32"]
