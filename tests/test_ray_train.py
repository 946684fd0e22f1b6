"""``zoopt train --workers N``: members evaluated on Ray actors, the same run bit for bit as in process."""
import inspect
import json
import os

import pytest
import torch

pytest.importorskip("ray")

import zoopt  # noqa: E402
from conftest_ray import one_thread, ray_cluster  # noqa: E402,F401
from zoopt.cli import main as cli  # noqa: E402
from zoopt.problems.zoo import make_model, zoo_data  # noqa: E402
from zoopt.training import make_optimizer  # noqa: E402

TINY = ["--model", "mlp", "--data", "digits", "--epochs", "2", "--batch-size", "64", "--limit-train", "192",
        "--limit-eval", "64", "--quiet"]
LOSS = torch.nn.CrossEntropyLoss()


pytestmark = pytest.mark.usefixtures("one_thread")


def on_ray(method):
    """The module facades evaluate on Ray once they take evaluator= (the ES methods always do)."""
    cls = {"polystep": getattr(zoopt, "PolyStep", None), "eggroll": getattr(zoopt, "EGGROLL", None)}.get(method)
    return cls is None or "evaluator" in inspect.signature(cls).parameters


def run(tmp_path, name, method, *extra):
    out = str(tmp_path / name)
    assert cli(["train", "--method", method, *TINY, "--out", out, *extra]) == 0
    records = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    return records, torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)


@pytest.mark.parametrize("method,extra", [("openai_es", ["--popsize", "24"]), ("polystep", ["--rank", "1"]),
                                          ("eggroll", ["--popsize", "24"])])
def test_train_with_two_ray_actors_equals_the_in_process_run(ray_cluster, tmp_path, method, extra):  # noqa: F811
    if not on_ray(method):
        pytest.skip(f"zoopt.{method} takes no evaluator= in this checkout yet")
    local_records, local_state = run(tmp_path, "local", method, *extra)
    ray_records, ray_state = run(tmp_path, "ray", method, *extra, "--workers", "2")
    keys = ("step", "evaluations", "train_loss", "val_acc", "test_acc")
    assert [[r[k] for k in keys] for r in ray_records] == [[r[k] for k in keys] for r in local_records]
    for name, tensor in local_state["model"].items():
        assert torch.equal(ray_state["model"][name], tensor), name
    assert local_records[-1]["evaluations"] > 0
    moved = any(not torch.equal(t, make_model("mlp", seed=0, in_features=64).state_dict()[n])
                for n, t in local_state["model"].items())
    assert moved  # training changed the weights, so the equality above compares real steps


def test_a_named_batch_leaves_its_rows_behind(ray_cluster):  # noqa: F811
    """A batch named (epoch, k, batch_size) crosses as three ints; (x, y) by value ships the rows. Either way the
    actors score the batch the in-process optimizer scores."""
    from zoopt.problems import epoch_order
    from zoopt.workers.ray_evaluator import RayEvaluator

    data = zoo_data("digits", limit_train=128)
    xs, ys = data["x_train"], data["y_train"]
    rows = epoch_order(len(xs), 0, 1)[32:64]  # epoch 1, batch k=1 of 32
    runs, payload = [], []
    with RayEvaluator(2, actor_config={"num_cpus": 1}) as ev:
        for evaluator in (None, ev):
            opt = make_optimizer("openai_es", make_model("mlp", seed=1, in_features=64), model_name="mlp",
                                 total_steps=2, seed=3, options={"popsize": 8}, evaluator=evaluator,
                                 data=(xs, ys), data_seed=0)
            losses = [opt.step((xs[:32], ys[:32]), LOSS)]  # by value
            before = ev.traffic["payload_bytes"]
            losses.append(opt.step((1, 1, 32), LOSS))  # by name, as zoopt.train hands it over
            runs.append((losses, opt))
            payload = [before, ev.traffic["payload_bytes"] - before]
    (local_losses, local), (ray_losses, remote) = runs
    assert ray_losses == local_losses and local_losses[0] != local_losses[1]
    assert torch.equal(remote.strategy.center, local.strategy.center)
    by_value, by_name = payload
    assert by_value - by_name >= xs[:32].numel() * 4  # only the named generation left the rows behind
    # the named batch is the batch itself
    check = make_optimizer("openai_es", make_model("mlp", seed=1, in_features=64), model_name="mlp", total_steps=2,
                           seed=3, options={"popsize": 8})
    assert [check.step((xs[:32], ys[:32]), LOSS), check.step((xs[rows], ys[rows]), LOSS)] == local_losses


def failure(argv, capsys):
    """The one-line message of a failing command, whether cli.main raises it or prints it and exits non-zero."""
    try:
        code = cli(argv)
    except ValueError as exc:
        return str(exc)
    assert code not in (0, None), f"{argv} succeeded"
    return capsys.readouterr().err


def test_bad_backend_combinations_are_refused(tmp_path, capsys):
    assert "backend='ray'" in failure(["train", "--method", "openai_es", *TINY, "--out", str(tmp_path / "a"),
                                       "--workers", "2", "--backend", "local"], capsys)
    assert "evaluates in process" in failure(["train", "--method", "adam", *TINY, "--out", str(tmp_path / "b"),
                                              "--backend", "ray"], capsys)
    assert "workers" in failure(["train", "--method", "openai_es", *TINY, "--out", str(tmp_path / "c"),
                                 "--workers", "0"], capsys)
