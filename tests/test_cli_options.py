"""Issue 19, "One CLI": the shared options, help with defaults, one method vocabulary, one figure per
run folder, and the optional metrics loggers."""
import argparse
import json
import sys
import types

import pytest

from zoopt import cli
from zoopt.commands import options

# the shared options each command must take, spelled the same way
SHARED = {
    "demo": ("--out", "--force", "--seed", "--quiet", "--threads", "--logger", "--workers", "--backend", "--address"),
    "train": ("--out", "--force", "--seed", "--quiet", "--threads", "--logger", "--method", "--workers", "--backend",
              "--address"),
    "rl": ("--out", "--force", "--seed", "--quiet", "--threads", "--logger", "--method", "--workers", "--backend",
           "--address"),
    "maxsat": ("--out", "--force", "--seed", "--quiet", "--threads"),
    "merge": ("--out", "--seed", "--quiet"),
}


def subparsers():
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def option(parser, flag):
    return next((a for a in parser._actions if flag in a.option_strings), None)


def test_shared_options_have_one_spelling_and_one_help():
    parsers = subparsers()
    helps = {}
    for command, flags in SHARED.items():
        for flag in flags:
            action = option(parsers[command], flag)
            assert action is not None, f"zoopt {command} has no {flag}"
            if flag not in ("--out", "--method", "--seed"):
                helps.setdefault(flag, set()).add(action.help)
    assert all(len(texts) == 1 for texts in helps.values()), helps
    names = options.method_names()
    assert {"cma_es", "sep_cma_es", "openai_es", "polystep", "eggroll", "spsa", "random", "adam"} <= set(names)
    for command in ("train", "rl"):
        assert option(parsers[command], "--method").help.startswith(f"one of {', '.join(names)};")
    for command in ("demo", "train", "rl", "maxsat", "merge"):
        assert option(parsers[command], "--out").metavar == "DIR"
        # --no-progress stays as a hidden alias of --quiet
        hidden = option(parsers[command], "--no-progress")
        assert hidden.dest == "quiet" and hidden.help is argparse.SUPPRESS
        assert "--no-progress" not in parsers[command].format_help()


@pytest.mark.parametrize("command", ["demo", "train", "rl", "rl-eval", "plot", "bench", "maxsat", "merge",
                                     "serve-merge"])
def test_help_shows_every_default(command):
    parser = subparsers()[command]
    text = " ".join(parser.format_help().split())
    shown = 0
    for action in parser._actions:
        if (not action.option_strings or action.default in (None, argparse.SUPPRESS, [])
                or action.default is False or action.help is argparse.SUPPRESS):
            continue
        assert f"(default: {action.default})" in text or "default" in (action.help or ""), \
            f"zoopt {command} --help does not show the default of {action.option_strings[0]}"
        shown += 1
    assert command in ("bench", "plot") or shown > 0


def test_methods_that_cannot_work_are_refused_in_one_line(capsys, tmp_path):
    assert cli.main(["train", "--model", "mlp", "--method", "cma_es", "--data", "digits",
                     "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("zoopt train: error: method 'cma_es' cannot train a network here: full CMA-ES")
    assert "sep_cma_es" in err and err.count("\n") == 1 and not (tmp_path / "t").exists()
    assert cli.main(["rl", "CartPole-v1", "--method", "adam", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("zoopt rl: error: method 'adam' cannot search a policy") and err.count("\n") == 1


def capture_figures(monkeypatch):
    from zoopt.training import figures

    saved = []
    real = figures._save
    monkeypatch.setattr(figures, "_save", lambda fig, path: (saved.append(fig), real(fig, path)))
    return saved


def test_demo_and_plot_draw_the_same_learning_curve(tmp_path, monkeypatch, capsys):
    from matplotlib.collections import PolyCollection

    saved = capture_figures(monkeypatch)
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out), "--generations", "12", "--quiet"]) == 0
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["generation"] for r in rows] == list(range(1, 13))
    assert all(r["train_loss_min"] <= r["train_loss"] <= r["train_loss_max"] for r in rows)
    first = (out / "learning_curve.png").read_bytes()
    assert sorted(p.name for p in out.glob("*.png")) == ["learning_curve.png"]
    (out / "learning_curve.png").unlink()
    assert cli.main(["plot", str(out)]) == 0
    assert (out / "learning_curve.png").read_bytes() == first  # the same figure, byte for byte
    assert sorted(p.name for p in out.glob("*.png")) == ["learning_curve.png"]
    fig = saved[-1]
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert labels == ["accuracy %", "training loss"]  # no bookkeeping panels (seconds, steps/s)
    assert any(isinstance(c, PolyCollection) for c in fig.axes[1].collections)  # the population's spread
    assert fig._suptitle.get_text() == "zoopt demo: step-activation MLP on digits, OpenAI-ES"
    # a second run into the same folder is refused; --force replaces it
    assert cli.main(["demo", "--out", str(out), "--generations", "2", "--quiet"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert cli.main(["demo", "--out", str(out), "--generations", "2", "--quiet", "--force"]) == 0


def test_plot_redraws_rl_and_train_run_folders(tmp_path, monkeypatch):
    from matplotlib.collections import PolyCollection

    from zoopt.training.figures import plot_run

    saved = capture_figures(monkeypatch)
    rl = tmp_path / "rl"
    rl.mkdir()
    (rl / "run.json").write_text(json.dumps({"env_id": "CartPole-v1", "method": "openai_es", "seed": 3}))
    (rl / "metrics.jsonl").write_text("".join(json.dumps(
        {"generation": g, "env_steps": 100 * g, "train_mean": 10.0 * g, "train_max": 12.0 * g, "seconds": 0.1 * g,
         "steps_per_s": 1000.0, "test_mean": 9.0 * g, "test_std": 1.0}) + "\n" for g in range(1, 5)))
    assert cli.main(["plot", str(rl)]) == 0
    fig = saved[-1]
    assert len(fig.axes) == 1 and fig.axes[0].get_xlabel() == "environment steps"
    assert any(isinstance(c, PolyCollection) for c in fig.axes[0].collections)
    assert fig.axes[0].get_title() == "CartPole-v1 / openai_es (seed 3), 400 env steps"
    train = tmp_path / "train"
    train.mkdir()
    (train / "run.json").write_text(json.dumps({"model": "snn", "method": "polystep", "data": "digits", "seed": 0}))
    (train / "metrics.jsonl").write_text("".join(json.dumps(
        {"epoch": e, "train_loss": 1.0 / e, "val_acc": 0.5 + e / 10, "test_acc": 0.5 + e / 10, "seconds": 1.0})
        + "\n" for e in (1, 2, 3)))
    assert plot_run(str(train)) == str(train / "learning_curve.png")
    assert saved[-1]._suptitle.get_text() == "snn / polystep on digits (seed 0)"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "metrics.jsonl").write_text('{"x": 1}\n')
    with pytest.raises(ValueError, match="not a zoopt demo, train or rl run folder"):
        plot_run(str(tmp_path / "other"))


# -- loggers ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, module", [("tensorboard", "tensorboard"), ("mlflow", "mlflow"), ("wandb", "wandb")])
def test_missing_logger_backend_names_its_extra(name, module, monkeypatch, tmp_path, capsys):
    from zoopt.loggers import MissingExtra, make_loggers

    monkeypatch.setitem(sys.modules, module, None)  # as if not installed, whether it is or not
    with pytest.raises(MissingExtra, match=rf"the {name} logger needs the {module} package.*zoopt-engine\[{name}\]"):
        make_loggers([name], str(tmp_path))
    out = tmp_path / "run"
    assert cli.main(["demo", "--out", str(out), "--generations", "2", "--logger", name, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"zoopt demo: error: the {name} logger needs") and err.count("\n") == 1
    assert not out.exists()  # nothing started before the check


def test_unknown_logger_is_refused():
    from zoopt.loggers import make_loggers

    with pytest.raises(ValueError, match="logger must be one of"):
        make_loggers(["csv"], ".")
    with pytest.raises(SystemExit):
        cli.main(["demo", "--logger", "csv"])


def fake_backends(monkeypatch):
    """Stand-ins for mlflow, wandb and torch.utils.tensorboard that record what they are given."""
    calls = []
    mlflow = types.ModuleType("mlflow")
    mlflow.start_run = lambda run_name: calls.append(("mlflow.start", run_name))
    mlflow.log_metrics = lambda metrics, step: calls.append(("mlflow", step, metrics))
    mlflow.end_run = lambda: calls.append(("mlflow.end",))

    class Run:
        def log(self, metrics):
            calls.append(("wandb", metrics))

        def finish(self):
            calls.append(("wandb.finish",))

    wandb = types.ModuleType("wandb")
    wandb.init = lambda project, name, dir: (calls.append(("wandb.init", project, name)), Run())[1]

    class SummaryWriter:
        def __init__(self, log_dir):
            calls.append(("tb.open", log_dir))

        def add_scalar(self, key, value, global_step):
            calls.append(("tb", key, value, global_step))

        def close(self):
            calls.append(("tb.close",))

    tb = types.ModuleType("torch.utils.tensorboard")
    tb.SummaryWriter = SummaryWriter
    for name, module in (("mlflow", mlflow), ("wandb", wandb), ("tensorboard", types.ModuleType("tensorboard")),
                         ("torch.utils.tensorboard", tb)):
        monkeypatch.setitem(sys.modules, name, module)
    return calls


def test_loggers_send_each_records_numbers_against_its_step(monkeypatch, tmp_path):
    from zoopt.loggers import make_loggers

    calls = fake_backends(monkeypatch)
    loggers = make_loggers(["tensorboard", "mlflow", "wandb"], str(tmp_path / "run-7"))
    loggers.log({"generation": 4, "train_loss": 0.5, "ok": True, "name": "x", "bad": float("nan")})
    loggers.close()
    assert ("tb", "generation", 4.0, 4) in calls and ("tb", "train_loss", 0.5, 4) in calls
    assert not any(c[0] == "tb" and c[1] in ("ok", "name", "bad") for c in calls)
    assert ("mlflow.start", "run-7") in calls and ("mlflow", 4, {"generation": 4.0, "train_loss": 0.5}) in calls
    assert ("wandb.init", "zoopt", "run-7") in calls and ("wandb", {"generation": 4.0, "train_loss": 0.5}) in calls
    assert all(c in calls for c in [("tb.close",), ("mlflow.end",), ("wandb.finish",)])


def test_demo_logs_every_generation_to_the_chosen_logger(monkeypatch, tmp_path):
    calls = fake_backends(monkeypatch)
    assert cli.main(["demo", "--out", str(tmp_path / "d"), "--generations", "3", "--quiet", "--logger", "mlflow"]) == 0
    assert [c[1] for c in calls if c[0] == "mlflow"] == [1, 2, 3]
    jsonl = [json.loads(line) for line in open(tmp_path / "d" / "metrics.jsonl")]
    assert [c[2]["train_loss"] for c in calls if c[0] == "mlflow"] == [r["train_loss"] for r in jsonl]
    assert calls[-1] == ("mlflow.end",)


def test_run_length_flags_name_their_unit():
    parsers = subparsers()
    assert option(parsers["demo"], "--generations").metavar == "GENERATIONS"
    assert option(parsers["train"], "--epochs").metavar == "EPOCHS"
    assert option(parsers["rl"], "--budget").metavar == "ENV_STEPS"
    assert option(parsers["maxsat"], "--steps").metavar == "STEPS"
    assert option(parsers["merge"], "--budget").metavar == "QUERIES"


def test_threads_is_checked_by_name(capsys, tmp_path):
    assert cli.main(["demo", "--out", str(tmp_path), "--threads", "0"]) == 2
    assert capsys.readouterr().err.startswith("zoopt demo: error: --threads must be >= 1, got 0")


def test_options_module_is_not_a_command():
    assert "options" not in subparsers()
    assert options.RUN_OPTIONS == ("--out", "--force", "--seed", "--quiet")


def test_demo_workers_go_to_ray_actors(monkeypatch, tmp_path):
    from zoopt.workers import LocalEvaluator

    seen = []

    def fake_make_evaluator(evaluator, address=None, **kwargs):
        seen.append((evaluator, address, kwargs))
        return LocalEvaluator()

    monkeypatch.setattr(sys.modules["zoopt.run"], "make_evaluator", fake_make_evaluator)
    assert cli.main(["demo", "--out", str(tmp_path / "a"), "--generations", "1", "--quiet"]) == 0
    assert cli.main(["demo", "--out", str(tmp_path / "b"), "--generations", "1", "--quiet", "--workers", "2",
                     "--address", "10.0.0.5:6379"]) == 0
    assert seen == [("local", None, {}), ("ray", "10.0.0.5:6379", {"num_actors": 2})]
    assert cli.main(["demo", "--out", str(tmp_path / "c"), "--workers", "2", "--backend", "local"]) == 2


def test_logger_extras_are_declared():
    import configparser
    import os

    from zoopt.loggers import BACKENDS, PACKAGES

    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.cfg"))
    extras = cfg["options.extras_require"]
    for name in BACKENDS:  # the error message tells the user to install zoopt-engine[NAME]
        assert PACKAGES[name] in extras[name].split()
