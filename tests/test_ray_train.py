"""``zoopt train --workers N --backend ray``: ES members evaluated on Ray actors, the same run as in process."""
import json
import os

import pytest
import torch

pytest.importorskip("ray")

from conftest_ray import ray_cluster  # noqa: E402,F401
from zoopt.cli import main as cli  # noqa: E402
from zoopt.commands.train import make_stepper  # noqa: E402
from zoopt.problems.zoo import make_model, zoo_data  # noqa: E402

TINY = ["--model", "mlp", "--data", "digits", "--epochs", "2", "--batch-size", "64", "--limit-train", "192",
        "--limit-eval", "64", "--popsize", "24", "--quiet"]


def run(tmp_path, name, method, *extra):
    out = str(tmp_path / name)
    assert cli(["train", "--method", method, *TINY, "--out", out, *extra]) == 0
    records = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    return records, torch.load(os.path.join(out, "checkpoint.pt"), weights_only=False)


@pytest.mark.parametrize("method", ["openai_es", "sep_cma_es"])
def test_train_with_two_ray_actors_equals_the_in_process_run(ray_cluster, tmp_path, method):
    local_records, local_state = run(tmp_path, "local", method)
    ray_records, ray_state = run(tmp_path, "ray", method, "--workers", "2", "--backend", "ray")
    assert [r["train_loss"] for r in ray_records] == [r["train_loss"] for r in local_records]
    assert [r["val_acc"] for r in ray_records] == [r["val_acc"] for r in local_records]
    for name, tensor in local_state["model"].items():
        assert torch.equal(ray_state["model"][name], tensor), name
    assert ray_records[-1]["forward_passes"] == local_records[-1]["forward_passes"] == 2 * 3 * 24
    moved = any(not torch.equal(t, make_model("mlp", seed=0, in_features=64).state_dict()[n])
                for n, t in local_state["model"].items())
    assert moved  # training changed the weights, so the equality above compares real steps


def test_the_batch_travels_as_its_epoch_and_index_or_by_value(ray_cluster):
    """Inside ``fit`` the spec names the batch ``(epoch, k)``; stepping outside ``fit`` (no key) ships the batch
    itself. Either way the actors see the batch the in-process stepper sees."""
    from zoopt.commands.train import epoch_order
    from zoopt.workers.ray_evaluator import RayEvaluator

    data = zoo_data("digits", limit_train=128)
    xs, ys = data["x_train"], data["y_train"]
    rows = epoch_order(len(xs), 0, 1)[32:64]  # epoch 1, batch k=1 of 32
    runs, payload = [], []
    with RayEvaluator(2, actor_config={"num_cpus": 1}) as ev:
        for evaluator in (None, ev):
            stepper = make_stepper("openai_es", make_model("mlp", seed=1, in_features=64), model_name="mlp",
                                   total_steps=2, seed=3, options={"popsize": 8}, evaluator=evaluator,
                                   train=(xs, ys, 32, 0))
            losses = [stepper.step(xs[:32], ys[:32])]  # by value
            before = ev.traffic["payload_bytes"]
            stepper.batch_key = (1, 1)
            losses.append(stepper.step(xs[rows], ys[rows]))  # by key, as fit() does
            runs.append((losses, stepper))
            payload = [before, ev.traffic["payload_bytes"] - before]
    (local_losses, local), (ray_losses, remote) = runs
    assert ray_losses == local_losses and local_losses[0] != local_losses[1]
    assert torch.equal(remote.strategy.center, local.strategy.center)
    by_value, by_key = payload
    assert by_value - by_key >= xs[:32].numel() * 4  # only the keyed generation left the batch behind


def test_bad_backend_combinations_are_refused(tmp_path):
    with pytest.raises(SystemExit, match="--backend ray"):
        cli(["train", "--method", "openai_es", *TINY, "--out", str(tmp_path / "a"), "--workers", "2",
             "--backend", "local"])
    with pytest.raises(SystemExit, match="ES methods"):
        cli(["train", "--method", "adam", *TINY, "--out", str(tmp_path / "b"), "--backend", "ray"])
    with pytest.raises(SystemExit, match="--workers"):
        cli(["train", "--method", "openai_es", *TINY, "--out", str(tmp_path / "c"), "--workers", "0"])
    with pytest.raises(ValueError, match="ES methods"):
        make_stepper("adam", make_model("mlp", in_features=64), model_name="mlp", total_steps=1, evaluator=object())
