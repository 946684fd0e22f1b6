"""scripts/bench_nondiff.py and scripts/summarize_nondiff.py: sizes, the pinned paper config, a tiny
two-seed run (CPU clock, equal-time ES budget, resume) and the markdown table."""
import importlib.util
import json
import os
import sys

import pytest
import torch

from zoopt.zoo_configs import PAPER_CONFIGS, POLYSTEP_COMMON, polystep_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script(name):
    path = os.path.join(ROOT, "scripts", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _script("bench_nondiff")


def test_sizes(bench):
    cpu, full = bench.parse_args([]), bench.parse_args(["--full"])
    assert (cpu.data, cpu.batch_size, cpu.seeds, cpu.clock) == ("digits", 32, [0, 1, 2], "cpu")
    assert "eggroll" in cpu.methods and "polystep_official" in cpu.methods
    assert (full.data, full.batch_size, full.limit_train) == ("mnist", 512, None)
    for name in bench.MODELS:
        assert bench.model_size(name, cpu) == bench.CPU_MODELS[name]
        assert bench.model_size(name, full) == {"rank": bench.PAPER_POLYSTEP[name]["rank"], "epochs": 30}
    mine = bench.parse_args(["--rank", "2", "--seeds", "3,5"])
    assert bench.model_size("staircase", mine) == {"rank": 2, "epochs": bench.CPU_MODELS["staircase"]["epochs"]}
    assert mine.seeds == [3, 5]
    for bad in (["--models", "resnet"], ["--seeds", "1,1"], ["--seeds", "a"]):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)


def test_the_paper_config_is_pinned_whole(bench):
    """Every setting zoopt's paper config has is given by the benchmark, so zoopt's defaults cannot move it."""
    for name in PAPER_CONFIGS:
        pinned = bench.PAPER_POLYSTEP[name]
        assert set(POLYSTEP_COMMON) | set(PAPER_CONFIGS[name]) <= set(pinned)
        cfg = polystep_config(name, **bench.polystep_overrides(name, {"rank": 3, "epochs": 1}))
        assert cfg["rank"] == 3
        assert {k: cfg[k] for k in pinned if k != "rank"} == {k: v for k, v in pinned.items() if k != "rank"}


def test_tiny_two_seed_run_resume_and_table(bench, tmp_path, capsys):
    out = str(tmp_path / "bench")
    argv = ["--models", "mlp", "--methods", "polystep,openai_es,adam", "--seeds", "0,1", "--epochs", "1",
            "--batch-size", "512", "--rank", "1", "--out", out, "--threads", "1"]
    loop = sys.modules["zoopt.train"]
    before, threads = loop.time, torch.get_num_threads()
    try:
        assert bench.main(argv) == 0
        assert loop.time is before  # the CPU clock is undone after the run
        first = json.load(open(os.path.join(out, "results.json")))
        assert bench.main(argv + ["--resume"]) == 0  # everything is there: nothing runs again
    finally:
        torch.set_num_threads(threads)
    run = json.load(open(os.path.join(out, "results.json")))
    assert run["results"] == first["results"]
    assert run["config"]["clock"] == "cpu" and run["config"]["polystep_config"]["mlp"]["config"] == "paper"
    seeds = run["results"]["mlp"]["seeds"]
    assert sorted(seeds) == ["0", "1"]
    for runs in seeds.values():
        assert runs["polystep"]["steps"] == 2 and runs["adam"]["steps"] == 2
        assert runs["openai_es"]["time_budget_s"] == runs["polystep"]["train_time_s"]
        assert runs["openai_es"]["train_time_s"] >= runs["openai_es"]["time_budget_s"]
    agg = run["aggregate"]["mlp"]["polystep"]["val_selected_test_acc"]
    values = [100 * seeds[s]["polystep"]["best_test_acc"] for s in ("0", "1")]
    assert agg["n"] == 2 and agg["mean"] == pytest.approx(sum(values) / 2)
    tsel = run["aggregate"]["mlp"]["openai_es"]["test_selected_test_acc"]["mean"]
    assert tsel >= run["aggregate"]["mlp"]["openai_es"]["val_selected_test_acc"]["mean"]
    assert os.path.getsize(os.path.join(out, "results.png")) > 0

    summ = _script("summarize_nondiff")
    capsys.readouterr()
    assert summ.main([out]) == 0
    text = capsys.readouterr().out
    assert "| mlp | 1 | 1 | 2 |" in text and f"{agg['mean']:.1f} ± {agg['std']:.1f}" in text
    with pytest.raises(ValueError, match="twice"):
        summ.merge([out, out])
