"""scripts/gpu_check.py at toy sizes on CPU: every part runs and reports numbers (or a clean CUDA skip)."""
import importlib.util
import json
import math
import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def _finite_positive(value):
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_gpu_check_tiny_on_cpu(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "gpu_check.py"), "--device", "cpu",
                           "--tiny", "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    parts = report["parts"]
    assert set(parts) == {"kernels", "noise", "eggroll", "polystep", "snn_mnist"}
    for name, part in parts.items():
        assert part["status"] == "ok", (name, part.get("error"), part.get("traceback"))

    kernels = parts["kernels"]
    assert kernels["returncode"] == 0 and kernels["failed"] == 0 and kernels["passed"] > 0
    assert kernels["skipped"] > 0  # the CUDA kernel tests skip themselves cleanly without a GPU

    noise = parts["noise"]
    assert noise["backend"] == "torch"
    for key in ("keyed_GBps", "randn_GBps", "ratio_keyed_over_randn"):
        assert _finite_positive(noise[key]), key

    egg = parts["eggroll"]
    assert egg["rank"] == 1 and egg["N"] >= 2
    assert _finite_positive(egg["plain_s"]) and _finite_positive(egg["population_s"])
    assert math.isclose(egg["ratio_plain_over_population"], egg["plain_s"] / egg["population_s"])

    poly = parts["polystep"]
    assert poly["candidates_per_step"] > 1
    assert _finite_positive(poly["ours"]["s_per_step"])
    if importlib.util.find_spec("polystep") is None:  # the official package comes with the bench extra only
        assert "not importable" in poly["official"]["skipped"]
    else:
        assert _finite_positive(poly["official"]["s_per_step"])
        assert _finite_positive(poly["ratio_ours_over_official"])

    snn = parts["snn_mnist"]
    assert snn["epochs_done"] == len(snn["records"]) >= 1
    for rec in snn["records"]:
        assert 0.0 <= rec["val_acc"] <= 1.0 and math.isfinite(rec["train_loss"])
