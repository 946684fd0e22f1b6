"""``zoopt train`` and the library's training loop (``zoopt.train``, ``zoopt.training``) on tiny runs (digits)."""
import json
import os
import signal

import pytest
import torch

import zoopt
from zoopt.cli import main as cli
from zoopt.problems.zoo import make_model, zoo_data
from zoopt.training import TrainingInterrupted, make_optimizer, train_zoo
from zoopt.zoo_configs import PAPER_CONFIGS, polystep_config, schedules

LOSS = torch.nn.CrossEntropyLoss()


@pytest.fixture(scope="module")
def digits():
    return zoo_data("digits")


def cli_error(argv, capsys):
    """The one-line message of a failing command, whether cli.main raises it or prints it and exits non-zero."""
    try:
        code = cli(argv)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError) as exc:
        return str(exc)
    except SystemExit as exc:
        code = exc.code
    assert code not in (0, None), f"{argv} succeeded"
    return capsys.readouterr().err


def records_of(out):
    return [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]


def test_cli_tiny_adam_run_writes_metrics_checkpoint_best_and_figure(tmp_path, digits):
    out = str(tmp_path / "run")
    assert cli(["train", "--model", "staircase", "--method", "adam", "--data", "digits", "--epochs", "2",
                "--batch-size", "256", "--out", out, "--quiet", "--lr", "0.01", "--log-every", "2"]) == 0
    records = records_of(out)
    steps_per_epoch = len(digits["x_train"]) // 256
    assert [r["epoch"] for r in records] == [1, 2]
    assert [r["step"] for r in records] == [steps_per_epoch, 2 * steps_per_epoch]
    assert records[-1]["evaluations"] == 2 * steps_per_epoch
    for r in records:
        assert 0.0 <= r["val_acc"] <= 1.0 and 0.0 <= r["twin_test_acc"] <= 1.0
    assert records[-1]["twin_val_acc"] > 0.2  # twice chance: the smooth twin learns in 8 Adam steps
    summary = json.load(open(os.path.join(out, "summary.json")))
    best = max(records, key=lambda r: r["val_acc"])
    assert summary["best_val_acc"] == best["val_acc"] and summary["best_test_acc"] == best["test_acc"]
    assert os.path.getsize(os.path.join(out, "learning_curve.png")) > 0
    steps = [json.loads(line) for line in open(os.path.join(out, "steps.jsonl"))]
    assert [s["step"] for s in steps] == list(range(2, 2 * steps_per_epoch + 1, 2))  # logged every 2 steps
    assert all(s["train_loss_min"] <= s["train_loss"] <= s["train_loss_max"] for s in steps)
    # one checkpoint format, loadable without executing code; it restores the scored model exactly
    state = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)
    assert state["format"] == "zoopt-train-1" and state["config"]["data"] == "digits"
    model = make_model("staircase", in_features=64)
    model.load_state_dict(state["model"])
    acc = float((model(digits["x_test"]).argmax(-1) == digits["y_test"]).float().mean())
    assert acc == pytest.approx(records[-1]["test_acc"])
    model.load_state_dict(torch.load(os.path.join(out, "best.pt"), weights_only=True))
    acc = float((model(digits["x_val"]).argmax(-1) == digits["y_val"]).float().mean())
    assert acc == pytest.approx(best["val_acc"])


@pytest.mark.parametrize("method,extra", [("openai_es", ["--popsize", "8"]), ("sep_cma_es", ["--popsize", "8"]),
                                          ("adam", ["--lr", "0.01"]), ("eggroll", ["--popsize", "8"])])
def test_resume_with_more_epochs_continues_like_an_uninterrupted_run(tmp_path, method, extra):
    """Methods without schedules: 1 epoch, then --resume to 3, equals 3 straight epochs (the scheduled methods
    keep their first schedule length on resume, tested below; their exact resume is the Ctrl-C test)."""
    def run(out, epochs, *flags):
        assert cli(["train", "--model", "mlp", "--method", method, "--data", "digits", "--epochs", str(epochs),
                    "--batch-size", "256", "--limit-train", "768", "--out", str(out), "--quiet", *extra,
                    *flags]) == 0
        return records_of(out), torch.load(out / "checkpoint.pt", weights_only=True)["model"]

    straight, w_straight = run(tmp_path / "a", 3)
    run(tmp_path / "b", 1)
    resumed, w_resumed = run(tmp_path / "b", 3, "--resume")
    keys = ("epoch", "step", "evaluations", "train_loss", "val_acc", "test_acc")
    assert [[r[k] for k in keys] for r in resumed] == [[r[k] for k in keys] for r in straight]
    for name in w_straight:
        assert torch.equal(w_straight[name], w_resumed[name]), name
    summary = json.load(open(tmp_path / "b" / "summary.json"))
    assert summary["steps"] == straight[-1]["step"] and summary["epochs_run"] == 3


class InterruptAt:
    """An optimizer that sends this process SIGINT (Ctrl-C) during step ``at``."""

    def __init__(self, opt, at):
        self.opt, self.at, self.calls = opt, at, 0

    def step(self, batch, loss_fn):
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), signal.SIGINT)
        return self.opt.step(batch, loss_fn)

    def state_dict(self):
        return self.opt.state_dict()

    def load_state_dict(self, state):
        self.opt.load_state_dict(state)

    @property
    def evaluations(self):
        from zoopt.training.methods import evaluations

        return evaluations(self.opt)


def test_resume_keeps_the_schedule_length_the_run_started_with(tmp_path):
    out = tmp_path / "p"
    base = ["train", "--model", "mlp", "--method", "spsa", "--data", "digits", "--batch-size", "256",
            "--limit-train", "768", "--out", str(out), "--quiet"]
    assert cli([*base, "--epochs", "1"]) == 0
    assert cli([*base, "--epochs", "2", "--resume"]) == 0
    assert json.load(open(out / "run.json"))["schedule_steps"] == 3
    assert torch.load(out / "checkpoint.pt", weights_only=True)["config"]["schedule_steps"] == 3
    assert [r["epoch"] for r in records_of(out)] == [1, 2]


@pytest.mark.parametrize("method", ["polystep", "openai_es", "spsa", "eggroll"])
def test_ctrl_c_mid_epoch_keeps_the_step_and_resume_equals_the_uninterrupted_run(tmp_path, digits, method):
    x, y = digits["x_train"][:640], digits["y_train"][:640]  # 10 steps of 64 per epoch

    def setup():
        model = make_model("mlp", in_features=64, seed=0)
        return model, make_optimizer(method, model, model_name="mlp", total_steps=20, seed=0,
                                     options={"popsize": 8} if method in ("openai_es", "eggroll") else {},
                                     polystep_overrides={"rank": 1})

    model, opt = setup()
    straight = zoopt.train(model, (x, y), LOSS, opt, 2, batch_size=64, seed=3, out=str(tmp_path / "a"),
                           progress=False)
    model2, opt2 = setup()
    with pytest.raises(TrainingInterrupted, match="epoch 2, step 13"):
        zoopt.train(model2, (x, y), LOSS, InterruptAt(opt2, 13), 2, batch_size=64, seed=3,
                    out=str(tmp_path / "b"), progress=False)
    state = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert state["position"]["step"] == 13 and state["position"]["k"] == 3  # the step in flight was kept
    model3, opt3 = setup()
    resumed = zoopt.train(model3, (x, y), LOSS, opt3, 2, batch_size=64, seed=3, out=str(tmp_path / "b"),
                          resume=True, progress=False)
    drop = ("seconds", "train_time_s", "time_per_step_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in resumed] == \
        [{k: v for k, v in r.items() if k not in drop} for r in straight]
    for a, b in zip(model.parameters(), model3.parameters()):
        assert torch.equal(a, b)


def test_a_loader_resumes_mid_epoch_by_skipping_the_batches_it_already_took(tmp_path, digits):
    x, y = digits["x_train"][:256], digits["y_train"][:256]
    loader = [(x[i:i + 64], y[i:i + 64]) for i in range(0, 256, 64)]  # the same 4 batches every epoch

    def setup():
        model = make_model("mlp", in_features=64, seed=0)
        return model, make_optimizer("openai_es", model, model_name="mlp", total_steps=8, seed=0,
                                     options={"popsize": 4})

    model, opt = setup()
    straight = zoopt.train(model, loader, LOSS, opt, 2, out=str(tmp_path / "a"), progress=False)
    model2, opt2 = setup()
    with pytest.raises(TrainingInterrupted):
        zoopt.train(model2, loader, LOSS, InterruptAt(opt2, 6), 2, out=str(tmp_path / "b"), progress=False)
    model3, opt3 = setup()
    resumed = zoopt.train(model3, loader, LOSS, opt3, 2, out=str(tmp_path / "b"), resume=True, progress=False)
    assert [r["train_loss"] for r in resumed] == [r["train_loss"] for r in straight]
    for a, b in zip(model.parameters(), model3.parameters()):
        assert torch.equal(a, b)


def test_mid_epoch_checkpoints_every_n_steps(tmp_path, digits):
    model = make_model("mlp", in_features=64, seed=0)
    opt = make_optimizer("openai_es", model, model_name="mlp", total_steps=10, seed=0, options={"popsize": 4})
    seen = []

    class Watch(InterruptAt):
        def step(self, batch, loss_fn):
            path = tmp_path / "c" / "checkpoint.pt"
            seen.append(torch.load(path, weights_only=True)["position"]["step"] if path.exists() else None)
            return self.opt.step(batch, loss_fn)

    zoopt.train(model, (digits["x_train"][:640], digits["y_train"][:640]), LOSS, Watch(opt, 0), 1, batch_size=64,
                out=str(tmp_path / "c"), checkpoint_every=3, progress=False)
    assert seen == [None, None, None, 3, 3, 3, 6, 6, 6, 9]


def test_resume_and_run_folder_errors_are_one_clear_line(tmp_path, capsys):
    base = ["train", "--model", "mlp", "--data", "digits", "--epochs", "1", "--batch-size", "256", "--quiet"]
    out = str(tmp_path / "r")
    assert "no run folder" in cli_error([*base, "--method", "adam", "--out", out, "--resume"], capsys)
    assert cli([*base, "--method", "adam", "--out", out]) == 0
    # the same folder again: refused unless --resume or --force
    assert "already holds a run" in cli_error([*base, "--method", "adam", "--out", out], capsys)
    # another method, other data: named with both values
    msg = cli_error([*base, "--method", "openai_es", "--out", out, "--resume"], capsys)
    assert "belongs to another run" in msg and "method='adam' there, 'openai_es' here" in msg
    msg = cli_error([*base, "--method", "adam", "--out", out, "--resume", "--limit-train", "500"], capsys)
    assert "limit_train=None there, 500 here" in msg
    # a finished run resumes to the same summary, without another step
    before = json.load(open(os.path.join(out, "summary.json")))
    assert cli([*base, "--method", "adam", "--out", out, "--resume"]) == 0
    assert json.load(open(os.path.join(out, "summary.json"))) == before
    # --force replaces the run
    assert cli([*base, "--method", "adam", "--out", out, "--force", "--epochs", "2"]) == 0
    assert [r["epoch"] for r in records_of(out)] == [1, 2]
    # a corrupt or truncated checkpoint names the file
    ckpt = os.path.join(out, "checkpoint.pt")
    data = open(ckpt, "rb").read()
    open(ckpt, "wb").write(data[: len(data) // 2])
    msg = cli_error([*base, "--method", "adam", "--out", out, "--resume", "--epochs", "3"], capsys)
    assert ckpt in msg and "\n" not in msg.strip()
    open(ckpt, "wb").write(b"garbage")
    assert ckpt in cli_error([*base, "--method", "adam", "--out", out, "--resume", "--epochs", "3"], capsys)


def test_a_checkpoint_of_another_model_shape_is_refused_with_its_file(tmp_path, digits):
    out = str(tmp_path / "s")
    model = make_model("mlp", in_features=64, seed=0)
    opt = make_optimizer("adam", model, model_name="mlp", total_steps=2)
    zoopt.train(model, (digits["x_train"], digits["y_train"]), LOSS, opt, 1, batch_size=512, out=out, progress=False)
    other = make_model("mlp", in_features=32, seed=0)
    x = digits["x_train"][:, :32]
    with pytest.raises(ValueError, match="does not fit this model"):
        zoopt.train(other, (x, digits["y_train"]), LOSS, make_optimizer("adam", other, model_name="mlp", total_steps=2),
                    2, batch_size=512, out=out, resume=True, progress=False)


@pytest.mark.parametrize("flags,needle", [(["--batch-size", "0"], "batch_size must be an int >= 1"),
                                          (["--batch-size", "100000"], "batch_size must be <="),
                                          (["--epochs", "0"], "epochs must be an int >= 1"),
                                          (["--workers", "0"], "workers must be an int >= 1"),
                                          (["--threads", "0"], "--threads must be >= 1"),
                                          (["--device", "tpu9"], "device must be a torch device")])
def test_bad_arguments_get_one_line_naming_them(tmp_path, capsys, flags, needle):
    msg = cli_error(["train", "--model", "mlp", "--method", "adam", "--data", "digits", "--quiet",
                     "--out", str(tmp_path / "x"), *flags], capsys)
    assert needle in msg and "Traceback" not in msg


@pytest.mark.parametrize("method,popsize", [("openai_es", 50), ("sep_cma_es", 16), ("spsa", 2)])
def test_es_optimizers_move_the_model_and_count_evaluations(method, popsize, digits):
    model = make_model("mlp", in_features=64, seed=1)
    before = [p.detach().clone() for p in model.parameters()]
    opt = make_optimizer(method, model, model_name="mlp", total_steps=10, seed=0)
    x, y = digits["x_train"][:64], digits["y_train"][:64]
    loss = opt.step((x, y), LOSS)
    assert loss == loss and opt.evaluations == popsize
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    opt.step((x, y), LOSS)
    assert opt.evaluations == 2 * popsize


def test_a_batch_named_by_its_rows_equals_the_batch_itself(digits):
    """The facades' contract: (epoch, k, batch_size) names rows of data through epoch_order."""
    from zoopt.problems import epoch_order

    x, y = digits["x_train"], digits["y_train"]
    runs = []
    for named in (False, True):
        model = make_model("mlp", in_features=64, seed=2)
        opt = make_optimizer("openai_es", model, model_name="mlp", total_steps=2, seed=1, options={"popsize": 6},
                             data=(x, y) if named else None, data_seed=5)
        rows = epoch_order(len(x), 5, 1)[32:64]
        runs.append((opt.step((1, 1, 32) if named else (x[rows], y[rows]), LOSS), opt.strategy.center.clone()))
    assert runs[0][0] == runs[1][0] and torch.equal(runs[0][1], runs[1][1])
    with pytest.raises(ValueError, match="needs data"):
        make_optimizer("openai_es", make_model("mlp", in_features=64), model_name="mlp", total_steps=1).step(
            (0, 0, 8), LOSS)


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
        make_optimizer("sgd", make_model("mlp"), model_name="mlp", total_steps=1)
    with pytest.raises(ValueError, match="evaluates in process"):
        make_optimizer("adam", make_model("mlp"), model_name="mlp", total_steps=1, evaluator="ray")
    assert cli(["train", "--model", "mlp", "--method", "nope"]) == 2  # one line from the library, as in zoopt rl


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


def test_best_epoch_is_selected_on_validation_not_test(tmp_path):
    from zoopt.training import split_scorer, summarize

    model = _Scripted()

    class Scripted:
        evaluations = 0

        def step(self, batch, loss_fn):
            self.evaluations += 1
            model.epoch = 1 + (self.evaluations - 1) // 2
            return 0.0

        def state_dict(self):
            return {"evaluations": self.evaluations}

    y = torch.tensor([0, 1, 2, 1])
    data = {"x_train": torch.zeros(4, 2), "y_train": y,
            "x_val": torch.stack([torch.zeros(4), y.float()], 1), "y_val": y,
            "x_test": torch.stack([torch.ones(4), y.float()], 1), "y_test": y}
    records = zoopt.train(model, (data["x_train"], y), LOSS, Scripted(), 2, batch_size=2,
                          eval_fn=split_scorer(data, {"": model}), select="val_acc", out=str(tmp_path),
                          progress=False)
    summary = summarize(records)
    assert summary["best_epoch"] == 1 and summary["best_val_acc"] == 1.0
    assert summary["best_test_acc"] == 0.0 and summary["last_test_acc"] == 1.0
    model.epoch = 0
    model.load_state_dict(torch.load(tmp_path / "best.pt", weights_only=True))  # the validation-best epoch's
    with pytest.raises(ValueError, match="epochs"):
        zoopt.train(model, (data["x_train"], y), LOSS, Scripted(), 0, batch_size=2, progress=False)


def test_train_zoo_on_ray_rejects_in_process_methods(digits):
    with pytest.raises(ValueError, match="evaluates in process|workers"):
        train_zoo("mlp", "adam", data=digits, epochs=1, batch_size=512, workers=2, backend="local")


def _script(name):
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_script_imports_the_cli_commands():
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts")
    for name in os.listdir(root):
        if name.endswith(".py"):
            assert "zoopt.commands" not in open(os.path.join(root, name)).read(), name


def test_ours_and_the_official_package_get_the_same_schedules():
    pytest.importorskip("polystep")
    from zoopt.polystep.schedules import Cosine

    official = _script("official_polystep")
    for name in PAPER_CONFIGS:
        cfg = polystep_config(name)
        ours, theirs = schedules(cfg, 37, Cosine), schedules(cfg, 37, official.official_cosine)
        for key in ours:
            if isinstance(ours[key], float):
                assert ours[key] == theirs[key]
            else:
                assert [ours[key].at(t) for t in range(40)] == pytest.approx([theirs[key].at(t) for t in range(40)])


def test_polystep_config_choice_auto_picks_paper_only_for_full_mnist():
    from zoopt.zoo_configs import choose_polystep_config

    assert choose_polystep_config("auto", "mnist") == "paper"
    assert choose_polystep_config("auto", "mnist", limit_train=5000) == "scaled"
    assert choose_polystep_config("auto", "digits") == "scaled"
    assert choose_polystep_config("paper", "digits") == "paper"
    assert choose_polystep_config("scaled", "mnist") == "scaled"
    with pytest.raises(ValueError, match="polystep config must be one of"):
        choose_polystep_config("fast", "digits")


def _eps_alpha_rho(opt):
    s = opt.stepper
    return s.epsilon.at(0), s.step_radius.at(0), (s.probe_radius.at(0) if hasattr(s.probe_radius, "at")
                                                  else s.probe_radius * s.epsilon.at(0))


def test_make_optimizer_builds_the_paper_config_unless_scaled_is_asked_for():
    """No "config" (what scripts/bench_nondiff.py passes) is the paper's; "scaled" is zoopt.PolyStep(model)'s."""
    paper = make_optimizer("polystep", make_model("snn", in_features=64), model_name="snn", total_steps=10,
                           polystep_overrides={"rank": None, "polytope": None})
    assert _eps_alpha_rho(paper) == pytest.approx((0.5, 2.0 * 0.5, 1.0 * 0.5))
    assert paper.absorb_interval == 20 and paper.stepper.biased_rotation
    model = make_model("snn", in_features=64)
    scaled = make_optimizer("polystep", model, model_name="snn", total_steps=10,
                            polystep_overrides={"config": "scaled", "rank": None, "polytope": None})
    plain = zoopt.PolyStep(make_model("snn", in_features=64), seed=0)
    assert _eps_alpha_rho(scaled) == pytest.approx(_eps_alpha_rho(plain))
    assert scaled.subspace.dim == plain.subspace.dim and scaled.absorb_interval == 0
    assert make_optimizer("polystep", make_model("snn", in_features=64), model_name="snn", total_steps=10,
                          polystep_overrides={"config": "scaled", "rank": 1}).subspace.dim < plain.subspace.dim
    with pytest.raises(ValueError, match="polystep config must be"):
        make_optimizer("polystep", model, model_name="snn", total_steps=10, polystep_overrides={"config": "fast"})


@pytest.mark.parametrize("flags,expected", [([], "scaled"), (["--polystep-config", "paper"], "paper")])
def test_cli_polystep_config_is_the_one_it_says(tmp_path, monkeypatch, flags, expected):
    """On digits `zoopt train` builds zoopt.PolyStep's scaled defaults (auto) unless --polystep-config paper;
    run.json records which."""
    built = []

    class Recording(zoopt.PolyStep):
        def __init__(self, model, **kwargs):
            super().__init__(model, **kwargs)
            built.append(self)

    monkeypatch.setattr(zoopt, "PolyStep", Recording)
    out = tmp_path / "run"
    assert cli(["train", "--model", "mlp", "--method", "polystep", "--data", "digits", "--epochs", "1",
                "--limit-train", "128", "--rank", "1", "--out", str(out), "--quiet", *flags]) == 0
    run = json.load(open(out / "run.json"))
    assert run["polystep_overrides"] == {"rank": 1, "config": expected}
    assert run["batch_size"] == 128  # the digits default
    (opt,) = built
    reference = (make_optimizer("polystep", make_model("mlp", in_features=64), model_name="mlp", total_steps=1,
                                polystep_overrides={"rank": 1}) if expected == "paper" else
                 zoopt.PolyStep(make_model("mlp", in_features=64), rank=1))
    assert _eps_alpha_rho(opt) == pytest.approx(_eps_alpha_rho(reference))
    assert opt.subspace.dim == reference.subspace.dim
    assert "--polystep-config" in _help(["train"]) and "auto" in _help(["train"])


def _help(argv):
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
        cli([*argv, "--help"])
    return buf.getvalue()
