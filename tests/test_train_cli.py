"""``zoopt train`` and its training loop on tiny runs (digits data)."""
import json
import os

import pytest
import torch

from zoopt.cli import main as cli
from zoopt.commands.train import (PAPER_CONFIGS, Stepper, fit, make_stepper, polystep_class, polystep_config)
from zoopt.problems.zoo import make_model, zoo_data


@pytest.fixture(scope="module")
def digits():
    return zoo_data("digits")


def test_cli_tiny_adam_run_writes_metrics_checkpoint_and_plot(tmp_path, digits):
    out = str(tmp_path / "run")
    assert cli(["train", "--model", "staircase", "--method", "adam", "--data", "digits", "--epochs", "2",
                "--batch-size", "256", "--out", out, "--quiet", "--lr", "0.01"]) == 0
    records = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    steps_per_epoch = len(digits["x_train"]) // 256
    assert [r["epoch"] for r in records] == [1, 2]
    assert [r["step"] for r in records] == [steps_per_epoch, 2 * steps_per_epoch]
    assert records[-1]["forward_passes"] == 2 * steps_per_epoch
    for r in records:
        assert 0.0 <= r["val_acc"] <= 1.0 and 0.0 <= r["twin_test_acc"] <= 1.0
    assert records[-1]["twin_val_acc"] > 0.2  # twice chance: the smooth twin learns in 8 Adam steps
    summary = json.load(open(os.path.join(out, "summary.json")))
    best = max(records, key=lambda r: r["val_acc"])
    assert summary["best_val_acc"] == best["val_acc"] and summary["best_test_acc"] == best["test_acc"]
    assert os.path.getsize(os.path.join(out, "metrics.png")) > 0
    # the checkpoint restores the scored model exactly
    state = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=False)
    model = make_model("staircase", in_features=64)
    model.load_state_dict(state["model"])
    acc = float((model(digits["x_test"]).argmax(-1) == digits["y_test"]).float().mean())
    assert acc == pytest.approx(records[-1]["test_acc"])
    assert state["method"] == "adam" and "state" in state["optimizer"]["adam"]


@pytest.mark.parametrize("method,extra", [("polystep", ["--rank", "1"]), ("openai_es", ["--popsize", "8"]),
                                          ("sep_cma_es", ["--popsize", "8"]), ("adam", ["--lr", "0.01"]),
                                          ("eggroll", ["--popsize", "8"])])
def test_resume_continues_exactly_where_an_uninterrupted_run_would_be(tmp_path, digits, method, extra):
    def run(out, epochs, *flags):
        assert cli(["train", "--model", "mlp", "--method", method, "--data", "digits", "--epochs", str(epochs),
                    "--batch-size", "256", "--limit-train", "768", "--out", str(out), "--quiet", *extra,
                    *flags]) == 0
        records = [json.loads(line) for line in open(out / "metrics.jsonl")]
        return records, torch.load(out / "checkpoint.pt", weights_only=False)["model"]

    straight, w_straight = run(tmp_path / "a", 3)
    run(tmp_path / "b", 1)
    resumed, w_resumed = run(tmp_path / "b", 3, "--resume")
    keys = ("epoch", "step", "forward_passes", "train_loss", "val_acc", "test_acc")
    assert [[r[k] for k in keys] for r in resumed] == [[r[k] for k in keys] for r in straight]
    for name in w_straight:
        assert torch.equal(w_straight[name], w_resumed[name]), name
    summary = json.load(open(tmp_path / "b" / "summary.json"))
    assert summary["steps"] == straight[-1]["step"] and summary["epochs_run"] == 3


def test_resume_errors_are_clear(tmp_path):
    out = str(tmp_path / "r")
    with pytest.raises(SystemExit, match="no checkpoint"):
        cli(["train", "--model", "mlp", "--method", "adam", "--data", "digits", "--epochs", "1", "--out", out,
             "--quiet", "--resume"])
    assert cli(["train", "--model", "mlp", "--method", "adam", "--data", "digits", "--epochs", "1",
                "--batch-size", "256", "--out", out, "--quiet"]) == 0
    with pytest.raises(SystemExit, match="from method 'adam', not 'openai_es'"):
        cli(["train", "--model", "mlp", "--method", "openai_es", "--data", "digits", "--epochs", "2", "--out", out,
             "--quiet", "--resume"])
    # a finished run resumes to the same summary, without another step
    before = json.load(open(os.path.join(out, "summary.json")))
    assert cli(["train", "--model", "mlp", "--method", "adam", "--data", "digits", "--epochs", "1",
                "--batch-size", "256", "--out", out, "--quiet", "--resume"]) == 0
    assert json.load(open(os.path.join(out, "summary.json"))) == before


@pytest.mark.skipif(polystep_class() is None, reason="zoopt.PolyStep not in this checkout yet")
def test_cli_tiny_polystep_run_counts_forward_passes(tmp_path, digits):
    out = str(tmp_path / "ps")
    assert cli(["train", "--model", "mlp", "--method", "polystep", "--data", "digits", "--epochs", "1",
                "--batch-size", "512", "--rank", "1", "--out", out, "--quiet"]) == 0
    rec = json.loads(open(os.path.join(out, "metrics.jsonl")).readline())
    assert rec["step"] == len(digits["x_train"]) // 512
    assert rec["forward_passes"] > 0 and os.path.exists(os.path.join(out, "checkpoint.pt"))


@pytest.mark.parametrize("method,popsize", [("openai_es", 50), ("sep_cma_es", 16), ("spsa", 2)])
def test_es_steppers_move_the_model_and_count_forward_passes(method, popsize, digits):
    model = make_model("mlp", in_features=64, seed=1)
    before = [p.detach().clone() for p in model.parameters()]
    stepper = make_stepper(method, model, model_name="mlp", total_steps=10, seed=0)
    x, y = digits["x_train"][:64], digits["y_train"][:64]
    loss = stepper.step(x, y)
    assert loss == loss and stepper.forward_passes == popsize
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    stepper.step(x, y)
    assert stepper.forward_passes == 2 * popsize


def test_paper_configs_and_argument_errors():
    assert set(PAPER_CONFIGS) == {"snn", "int8", "argmax", "staircase", "moe", "mlp"}
    snn = polystep_config("snn")
    assert (snn["rank"], snn["epsilon"], snn["step_radius"], snn["probe_radius"]) == (4, 0.5, 2.0, 1.0)
    assert snn["biased_rotation"] and snn["absorb_interval"] == 20 and snn["polytope"] == "orthoplex"
    assert polystep_config("int8")["momentum"] == (0.3, 0.5) and polystep_config("mlp")["amortize"] == 3
    assert polystep_config("snn", rank=2, polytope=None)["rank"] == 2
    with pytest.raises(ValueError, match="model must be one of"):
        polystep_config("vgg")
    with pytest.raises(ValueError, match="method must be one of"):
        make_stepper("sgd", make_model("mlp"), model_name="mlp", total_steps=1)
    with pytest.raises(SystemExit):
        cli(["train", "--model", "mlp", "--method", "nope"])


class _Scripted(torch.nn.Module):
    """Predicts the right label on validation rows (x == 0) at epoch 1 and on test rows (x == 1) at epoch 2."""

    def __init__(self):
        super().__init__()
        self.epoch = 0
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        right = (x[:, 0] == 0) if self.epoch == 1 else (x[:, 0] == 1)
        labels = torch.where(right, x[:, 1].long(), (x[:, 1].long() + 1) % 3)
        return torch.nn.functional.one_hot(labels, 3).float()


class _ScriptedStepper(Stepper):
    name = "scripted"

    def step(self, x, y):
        self.forward_passes += 1
        self.model.epoch = 1 + (self.forward_passes - 1) // 2
        return 0.0


def test_best_epoch_is_selected_on_validation_not_test():
    y = torch.tensor([0, 1, 2, 1])
    data = {"x_train": torch.zeros(4, 2), "y_train": y,
            "x_val": torch.stack([torch.zeros(4), y.float()], 1), "y_val": y,
            "x_test": torch.stack([torch.ones(4), y.float()], 1), "y_test": y}
    summary = fit(_ScriptedStepper(_Scripted()), data, epochs=2, batch_size=2)
    assert summary["best_epoch"] == 1 and summary["best_val_acc"] == 1.0
    assert summary["best_test_acc"] == 0.0 and summary["last_test_acc"] == 1.0
    with pytest.raises(ValueError, match="epochs"):
        fit(_ScriptedStepper(_Scripted()), data, epochs=0, batch_size=2)


def _bench_module():
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "bench_nondiff.py")
    spec = importlib.util.spec_from_file_location("bench_nondiff", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_sizes_and_a_tiny_run(tmp_path):
    bench = _bench_module()
    cpu, full = bench.parse_args([]), bench.parse_args(["--full"])
    assert (cpu.epochs, cpu.batch_size, cpu.limit_train, cpu.rank) == (2, 256, 4096, 1)
    assert (full.epochs, full.batch_size, full.limit_train, full.rank) == (30, 512, None, None)
    # the CPU size's staircase override applies unless --full or the user set rank/epochs
    assert (bench.model_args("staircase", cpu).rank, bench.model_args("staircase", cpu).epochs) == (4, 3)
    assert bench.model_args("snn", cpu).rank == 1 and bench.model_args("staircase", full).rank is None
    mine = bench.model_args("staircase", bench.parse_args(["--rank", "2"]))
    assert (mine.rank, mine.epochs) == (2, 3)
    with pytest.raises(SystemExit):
        bench.parse_args(["--models", "resnet"])
    out = str(tmp_path / "bench")
    assert bench.main(["--models", "mlp", "--methods", "openai_es,adam", "--limit-train", "512", "--limit-eval",
                       "200", "--epochs", "1", "--es-time", "0.5", "--out", out]) == 0
    res = json.load(open(os.path.join(out, "results.json")))["results"]["mlp"]
    assert res["adam"]["steps"] == 2 and res["adam"]["forward_passes"] == 2
    assert res["openai_es"]["wall_time_budget_s"] == 0.5 and res["openai_es"]["train_time_s"] >= 0.5
    assert os.path.getsize(os.path.join(out, "results.png")) > 0


def test_ours_and_the_official_package_get_the_same_schedules():
    pytest.importorskip("polystep")
    from polystep import CosineEpsilon

    from zoopt.commands.train import _schedules
    from zoopt.polystep.schedules import Cosine

    def official(init, target, total_steps):
        return CosineEpsilon(init=init, target=target, decay=abs(init - target) / total_steps, total_steps=total_steps)

    for name in PAPER_CONFIGS:
        cfg = polystep_config(name)
        ours, theirs = _schedules(cfg, 37, Cosine), _schedules(cfg, 37, official)
        for key in ours:
            if isinstance(ours[key], float):
                assert ours[key] == theirs[key]
            else:
                assert [ours[key].at(t) for t in range(40)] == pytest.approx([theirs[key].at(t) for t in range(40)])


def test_summarize_nondiff_merges_seeds_and_keeps_sizes_apart(tmp_path, capsys):
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts",
                        "summarize_nondiff.py")
    spec = importlib.util.spec_from_file_location("summarize_nondiff", path)
    summ = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summ)

    def write(name, seed, rank, accs):
        res = {"staircase": {"size": {"rank": rank, "epochs": 3},
                             "polystep": {"best_test_acc": accs[0], "time_per_step_s": 1.0},
                             "polystep_official": {"best_test_acc": accs[1], "time_per_step_s": 4.0}}}
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(
            {"config": {"seed": seed, "rank": 1, "epochs": 2}, "results": res}))
        return str(tmp_path / name)

    dirs = [write("a", 0, 4, (0.30, 0.20)), write("b", 1, 4, (0.20, 0.20)), write("c", 0, 1, (0.1, 0.1))]
    table = summ.collect(dirs)
    assert set(table) == {("staircase", 4, 3), ("staircase", 1, 3)}
    assert table[("staircase", 4, 3)][0] == pytest.approx((30.0, 20.0, 0.25))
    assert summ.main(dirs) == 0
    assert "+5.00" in capsys.readouterr().out      # mean diff over seeds 0 and 1 at rank 4
    with pytest.raises(ValueError, match="twice"):
        summ.collect(dirs + [write("d", 1, 4, (0.2, 0.2))])
