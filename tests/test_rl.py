"""RL policy search on Gymnasium (CartPole / Pendulum with tiny budgets)."""
import json
import os

import numpy as np
import pytest
import torch

gym = pytest.importorskip("gymnasium")

import zoopt  # noqa: E402
from conftest_ray import ray_cluster  # noqa: E402,F401
from zoopt.problems.gym import GymProblem, RunningStats, episode_seeds, run_episodes  # noqa: E402
from zoopt.problems.policies import (Policy, PolicyConfig, dequantize, load_policy, quantize,  # noqa: E402
                                     save_policy)
from zoopt.spec import PointsSpec  # noqa: E402
from zoopt.workers import LocalEvaluator  # noqa: E402


def es_generations(problem, generations=3, popsize=10, seed=0, evaluator=None):
    es = zoopt.OpenAIES(problem.initial_point(), popsize=popsize, sigma=0.1, lr=0.05, seed=seed)
    evaluator = evaluator or LocalEvaluator()
    fits = []
    for _ in range(generations):
        spec = es.ask()
        f = evaluator(problem, spec)
        es.tell(f)
        fits.append(f)
    return es, torch.stack(fits)


def test_saved_policy_reproduces_returns(tmp_path):
    problem = GymProblem("CartPole-v1", policy="mlp", hidden=(8,), quant="int8", seed=3)
    es, _ = es_generations(problem)
    center = es.center.clone()
    returns = problem.evaluate_center(center, episodes=4, generation=es.generation)
    path = save_policy(str(tmp_path / "p"), problem.policy, center, problem.normalizer, {"env_id": "CartPole-v1"})
    saved = load_policy(path)
    again = run_episodes(saved, "CartPole-v1", episodes=4, seed=3, generation=es.generation)
    np.testing.assert_array_equal(returns, again)
    assert returns.min() >= 8  # real episodes ran
    # the loaded weights are the ones training used
    for (w, b), (w2, b2) in zip(problem.policy.layers(center[None]), saved.layers):
        assert torch.equal(w, w2) and torch.equal(b, b2)


def test_same_seed_same_result_and_slicing_does_not_matter():
    a = GymProblem("CartPole-v1", seed=1)
    _, fa = es_generations(a, generations=4)
    b = GymProblem("CartPole-v1", seed=1)
    _, fb = es_generations(b, generations=4, evaluator=LocalEvaluator(chunk=3))  # members in slices of 3
    assert torch.equal(fa, fb)
    assert a.env_steps == b.env_steps > 0
    a.begin_generation(99), b.begin_generation(99)
    np.testing.assert_array_equal(a.running.mean, b.running.mean)
    np.testing.assert_array_equal(a.running.m2, b.running.m2)
    c = GymProblem("CartPole-v1", seed=2)
    _, fc = es_generations(c, generations=4)
    assert not torch.equal(fa, fc)


def test_common_random_numbers():
    problem = GymProblem("CartPole-v1", policy="linear", episodes=3, seed=0, obs_norm=False)
    x = torch.randn(problem.dim, generator=torch.Generator().manual_seed(0))
    cand = torch.stack([x, x, x * 0.5, x])
    spec = PointsSpec(center=x, popsize=4, generation=0, seed=0, candidates=cand)
    f = problem.evaluate(spec, range(4))
    assert f[0] == f[1] == f[3]  # identical members see identical episodes
    assert episode_seeds(0, 0, 3) != episode_seeds(0, 1, 3)
    assert len(set(episode_seeds(0, 0, 3))) == 3


def test_quantized_policies_hold_int8_and_binary_weights(tmp_path):
    for quant in ("int8", "binary"):
        policy = Policy(PolicyConfig(4, 2, arch="mlp", hidden=(16,), quant=quant))
        flat = torch.randn(3, policy.dim, generator=torch.Generator().manual_seed(1))
        for w, _ in policy.layers(flat):
            for m in range(3):
                values = torch.unique(w[m])
                if quant == "binary":
                    assert values.numel() == 2 and torch.allclose(values.abs(), values.abs()[0].expand(2))
                else:
                    scale = w[m].abs().max() / 127
                    codes = w[m] / scale
                    assert torch.allclose(codes, codes.round(), atol=1e-3) and codes.abs().max() <= 127.001
        arrays = policy.export(flat[0])
        for li in range(2):
            q = arrays[f"q{li}"]
            assert q.dtype == np.int8 and f"w{li}" not in arrays
            if quant == "binary":
                assert set(np.unique(q).tolist()) <= {-1, 1}
            else:
                assert np.abs(q).max() == 127
        saved = load_policy(save_policy(str(tmp_path / quant), policy, flat[0]))
        with np.load(tmp_path / quant / "weights.npz") as data:
            assert data["q0"].dtype == np.int8
        assert torch.equal(saved.layers[0][0], policy.layers(flat[:1])[0][0])


def test_quantize_edge_cases():
    zero = torch.zeros(1, 2, 3)
    q, s = quantize(zero, "int8")
    assert torch.equal(dequantize(q, s), zero)
    q, s = quantize(zero, "binary")
    assert set(q.unique().tolist()) == {1} and float(s) == 0.0
    w = torch.tensor([[[0.5, -1.0, 0.25]]])
    q, s = quantize(w, "int8")
    assert q.tolist() == [[[64, -127, 32]]] and torch.allclose(s, torch.tensor([1 / 127]))


def test_running_stats_merge_matches_numpy():
    rng = np.random.default_rng(0)
    parts = [rng.normal(3.0, 2.0, size=(n, 4)) for n in (5, 1, 40, 13)]
    total = RunningStats.empty(4)
    for p in parts:
        shift = rng.normal(size=4)
        total = total.merge(RunningStats.from_sums(len(p), shift, (p - shift).sum(0), ((p - shift) ** 2).sum(0)))
    allx = np.concatenate(parts)
    assert total.count == len(allx)
    np.testing.assert_allclose(total.mean, allx.mean(0), rtol=1e-12)
    np.testing.assert_allclose(total.var, allx.var(0), rtol=1e-10)


def test_merge_stats_across_worker_copies():
    """Two copies each evaluating half the members, then exchanging stats(), end up like one copy."""
    one = GymProblem("CartPole-v1", seed=4)
    left, right = GymProblem("CartPole-v1", seed=4), GymProblem("CartPole-v1", seed=4)
    es = zoopt.OpenAIES(one.initial_point(), popsize=8, sigma=0.5, seed=0)
    for _ in range(3):
        spec = es.ask()
        f_one = one.evaluate(spec, range(8))
        f_split = torch.cat([left.evaluate(spec, range(0, 5)), right.evaluate(spec, range(5, 8))])
        assert torch.equal(f_one, f_split)
        sl, sr = left.stats(), right.stats()
        left.merge_stats([sr]), right.merge_stats([sl])
        assert left.env_steps == right.env_steps == one.env_steps
        es.tell(f_one)
    for p in (one, left, right):
        p.begin_generation(10)
    np.testing.assert_array_equal(one.running.mean, left.running.mean)
    np.testing.assert_array_equal(one.running.m2, right.running.m2)
    assert one.running.count == one.env_steps
    assert one.normalizer.std.min() > 0


def test_continuous_head_bounds_and_penalties():
    problem = GymProblem("Pendulum-v1", policy="mlp", hidden=(4,), seed=0, max_episode_steps=20)
    x = torch.randn(2, problem.dim, generator=torch.Generator().manual_seed(0)) * 5
    actions = problem.policy.act(problem.policy.layers(x), torch.randn(2, 7, 3) * 10)
    assert actions.shape == (2, 7, 1) and actions.abs().max() <= 2.0 and actions.abs().max() > 1.0
    spec = PointsSpec(center=x[0], popsize=2, generation=0, seed=0, candidates=x)
    plain = problem.evaluate(spec, range(2))
    assert problem.env_steps == 40
    penalized = GymProblem("Pendulum-v1", policy="mlp", hidden=(4,), seed=0, max_episode_steps=20,
                           action_penalty=1.0, alive_penalty=0.5).evaluate(spec, range(2))
    assert (penalized > plain + 10).all()  # fitness = -return grows by at least 20 * 0.5
    discounted = GymProblem("Pendulum-v1", policy="mlp", hidden=(4,), seed=0, max_episode_steps=20,
                            gamma=0.5).evaluate(spec, range(2))
    assert (discounted.abs() < plain.abs()).all()


def test_bad_arguments_raise_clearly():
    with pytest.raises(ValueError, match="unknown Gymnasium environment"):
        GymProblem("NoSuchEnv-v9")
    with pytest.raises(TypeError, match="env_id"):
        GymProblem(3)
    with pytest.raises(ValueError, match="arch"):
        GymProblem("CartPole-v1", policy="transformer")
    with pytest.raises(ValueError, match="quant"):
        GymProblem("CartPole-v1", quant="int4")
    with pytest.raises(ValueError, match="episodes"):
        GymProblem("CartPole-v1", episodes=0)
    with pytest.raises(ValueError, match="gamma"):
        GymProblem("CartPole-v1", gamma=0.0)
    with pytest.raises(ValueError, match="vector"):
        GymProblem("CartPole-v1", vector="threads")
    with pytest.raises(ValueError, match="num_envs"):
        GymProblem("CartPole-v1", num_envs=0)
    with pytest.raises(ValueError, match="hidden"):
        PolicyConfig(4, 2, arch="mlp", hidden=(0,))
    with pytest.raises(ValueError, match="bounds"):
        PolicyConfig(3, 1, head="continuous")
    with pytest.raises(ValueError, match=r"flat parameters must have shape"):
        Policy(PolicyConfig(4, 2)).layers(torch.zeros(1, 3))
    with pytest.raises(FileNotFoundError):
        load_policy("/nonexistent/policy")


def test_async_vector_matches_sync():
    sync = GymProblem("CartPole-v1", seed=5, episodes=2)
    asyn = GymProblem("CartPole-v1", seed=5, episodes=2, vector="async", num_envs=4)
    try:
        _, f1 = es_generations(sync, generations=2, popsize=6)
        _, f2 = es_generations(asyn, generations=2, popsize=6)
    finally:
        asyn.close()
    assert torch.equal(f1, f2)


def test_cli_rl_and_rl_eval(tmp_path, capsys):
    from zoopt.cli import main

    out = tmp_path / "run"
    assert main(["rl", "CartPole-v1", "--budget", "3000", "--popsize", "10", "--quant", "binary",
                 "--out", str(out), "--no-progress", "--eval-episodes", "3"]) == 0
    lines = [json.loads(s) for s in open(out / "metrics.jsonl")]
    assert all("test_mean" in r for r in lines)
    costs = [b["env_steps"] - a["env_steps"] for a, b in zip([{"env_steps": 0}] + lines, lines)]
    assert lines[-1]["env_steps"] <= 3000 < lines[-1]["env_steps"] + max(costs)  # a cap, within one generation
    assert [r["env_steps"] for r in lines] == sorted(r["env_steps"] for r in lines)
    for name in ("best", "final"):
        assert os.path.isfile(out / name / "policy.json") and os.path.isfile(out / name / "weights.npz")
    assert os.path.getsize(out / "learning_curve.png") > 0
    assert not [n for n in os.listdir(out) if n.startswith(".")]  # no temp folders left behind
    best = max(r["test_mean"] for r in lines)
    assert json.load(open(out / "summary.json"))["best"]["return"] == best
    # rl-eval replays the best policy's test episodes exactly
    gen = json.load(open(out / "best" / "policy.json"))["meta"]["eval_generation"]
    again = run_episodes(load_policy(str(out / "best")), "CartPole-v1", episodes=3, seed=0, generation=gen)
    assert again.mean() == pytest.approx(best)
    capsys.readouterr()
    assert main(["rl-eval", str(out / "final"), "--episodes", "2"]) == 0
    assert "CartPole-v1: return" in capsys.readouterr().out


def test_workers_guard():
    from zoopt.rl import make_rl_evaluator

    with pytest.raises(ValueError, match="workers"):
        make_rl_evaluator(0)
    with pytest.raises(ValueError, match="backend='ray'"):
        make_rl_evaluator(2, "local")
    with pytest.raises(ValueError, match="backend must be"):
        make_rl_evaluator(1, "dask")
    try:
        from zoopt.workers.ray_evaluator import RayEvaluator
    except ImportError:
        RayEvaluator = None
    if RayEvaluator is None or not getattr(RayEvaluator, "merges_problem_stats", False):
        with pytest.raises(RuntimeError, match="Ray evaluator|stats"):
            make_rl_evaluator(2)


def test_shared_stats_reach_worker_copies():
    """A worker copy evaluating a spec that carries the coordinator's statistics normalizes like it."""
    driver, worker = GymProblem("CartPole-v1", seed=6), GymProblem("CartPole-v1", seed=6)
    es = zoopt.OpenAIES(driver.initial_point(), popsize=6, sigma=0.5, seed=0)
    for _ in range(3):
        spec = es.ask()
        driver.share_stats(spec)
        f_driver = driver.evaluate(spec, range(6))
        f_worker = worker.evaluate(spec, range(3, 6))  # this copy never saw members 0-2
        assert torch.equal(f_driver[3:], f_worker)
        es.tell(f_driver)


def test_eggroll_members_use_the_population_forward():
    pytest.importorskip("zoopt.eggroll")
    from zoopt.rl import make_rl_strategy
    from zoopt.problems.gym import DenseBatch, LowRankBatch

    problem = GymProblem("CartPole-v1", policy="mlp", hidden=(8,), seed=0)
    es = make_rl_strategy("eggroll", problem, 12, 0)
    spec = es.ask()
    idx = torch.arange(12)
    batch = problem.member_batch(spec, idx)
    assert isinstance(batch, LowRankBatch)
    obs = torch.randn(12, 3, 4, generator=torch.Generator().manual_seed(0))
    dense = DenseBatch(problem.policy, problem.policy.layers(spec.points(idx))).forward(0, 12)(obs)
    torch.testing.assert_close(batch.forward(0, 12)(obs), dense, atol=1e-5, rtol=1e-5)
    f_all = problem.evaluate(spec, idx)
    f_sliced = LocalEvaluator(chunk=4)(GymProblem("CartPole-v1", policy="mlp", hidden=(8,), seed=0), spec)
    assert torch.equal(f_all, f_sliced)
    # quantized policies cannot skip materializing: they take the explicit-points path
    q = GymProblem("CartPole-v1", quant="int8", seed=0)
    assert isinstance(q.member_batch(make_rl_strategy("eggroll", q, 4, 0).ask(), torch.arange(4)), DenseBatch)


@pytest.mark.parametrize("method", ["openai_es", "cma_es", "eggroll", "polystep"])
def test_every_method_trains_a_cartpole_policy(method):
    from zoopt.rl import train_rl
    from zoopt.registry import METHODS

    if method in ("eggroll", "polystep"):
        pytest.importorskip(f"zoopt.{method}")
    out = train_rl("CartPole-v1", method, budget=800, popsize=10, seed=0, eval_episodes=2, eval_every=3)
    assert method in METHODS
    assert out["generations"] >= 1
    assert out["env_steps"] <= 800 or out["generations"] == 1  # PolyStep's first generation alone may pass it
    assert all(np.isfinite(r["test_mean"]) and r["test_mean"] >= 8 for r in out["history"] if "test_mean" in r)


def test_gif_of_an_episode(tmp_path):
    from PIL import Image

    from zoopt.rl import write_gif

    policy = Policy(PolicyConfig(4, 2))
    saved = load_policy(save_policy(str(tmp_path / "p"), policy, torch.zeros(policy.dim)))
    n = write_gif(saved, "CartPole-v1", str(tmp_path / "ep.gif"), max_frames=4)
    assert n == 4
    with Image.open(tmp_path / "ep.gif") as im:
        assert im.size == (600, 400) and im.n_frames >= 2


def test_the_budget_is_a_cap_and_an_oversized_first_generation_is_reported(tmp_path):
    from zoopt.rl import train_rl

    out = train_rl("CartPole-v1", "openai_es", budget=2000, popsize=10, seed=1, eval_episodes=1)
    costs = [b["env_steps"] - a["env_steps"] for a, b in zip([{"env_steps": 0}] + out["history"], out["history"])]
    assert out["env_steps"] <= 2000 < out["env_steps"] + max(costs) and out["stop"] == "budget"
    # Pendulum: every episode is 200 steps, so one generation of 10 members costs 2000 > the budget of 500
    one = train_rl("Pendulum-v1", "openai_es", budget=500, popsize=10, seed=0, eval_episodes=1)
    assert one["generations"] == 1 and one["env_steps"] == one["first_generation_steps"] == 2000


def _message(argv, capsys):
    """The one-line message of a failing command, whether cli.main raises it or prints it and exits non-zero."""
    from zoopt.cli import main

    try:
        code = main(argv)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError) as exc:
        return str(exc)
    assert code not in (0, None), f"{argv} succeeded"
    return capsys.readouterr().err


@pytest.mark.parametrize("flags,needle", [(["NoSuchEnv-v9"], "unknown Gymnasium environment"),
                                          (["CartPole-v1", "--method", "sgd"], "method must be one of"),
                                          (["CartPole-v1", "--policy", "mlp", "--hidden", "abc"], "--hidden"),
                                          (["CartPole-v1", "--budget", "0"], "budget must be an int >= 1"),
                                          (["CartPole-v1", "--popsize", "1"], "popsize must be an int >= 2"),
                                          (["CartPole-v1", "--workers", "0"], "workers must be an int >= 1")])
def test_rl_bad_arguments_get_one_line(tmp_path, capsys, flags, needle):
    msg = _message(["rl", *flags, "--out", str(tmp_path / "r"), "--no-progress"], capsys)
    assert needle in msg and "\n" not in msg.strip()
    assert not (tmp_path / "r").exists() or not os.listdir(tmp_path / "r")  # nothing written for a bad call


def test_rl_run_folders_are_not_overwritten_without_force(tmp_path, capsys):
    from zoopt.cli import main

    base = ["rl", "CartPole-v1", "--budget", "300", "--popsize", "4", "--eval-episodes", "1", "--no-progress",
            "--out", str(tmp_path / "r")]
    assert main(base) == 0
    first = open(tmp_path / "r" / "metrics.jsonl").read()
    msg = _message(base + ["--seed", "1"], capsys)
    assert "already holds a run" in msg and "--force" in msg and "--resume" not in msg  # rl cannot resume
    assert open(tmp_path / "r" / "metrics.jsonl").read() == first
    assert main(base + ["--seed", "1", "--force"]) == 0
    assert json.load(open(tmp_path / "r" / "summary.json"))["seed"] == 1


@pytest.mark.parametrize("breakage,needle", [
    (lambda p: (p / "policy.json").write_text("{not json"), "policy.json: not a JSON policy file"),
    (lambda p: (p / "policy.json").write_bytes(b"\xff\xfe\x00binary"), "policy.json: not a JSON policy file"),
    (lambda p: (p / "policy.json").write_text(json.dumps({"format": "zoopt-policy-1", "config": {"obs": 3},
                                                          "normalizer": {}})), "policy.json: bad policy description"),
    (lambda p: (p / "weights.npz").write_bytes(b"PK\x03\x04garbage"), "weights.npz: not a readable weights file"),
    (lambda p: np.savez(p / "weights.npz", w0=np.zeros((2, 4), np.float32)), "weights.npz: missing array 'b0'"),
    (lambda p: np.savez(p / "weights.npz", w0=np.zeros((3, 4), np.float32), b0=np.zeros(2, np.float32)),
     "weights.npz: array 'w0' has shape"),
    (lambda p: (p / "weights.npz").unlink(), "no weights.npz"),
])
def test_rl_eval_on_a_broken_policy_names_the_file(tmp_path, capsys, breakage, needle):
    policy = Policy(PolicyConfig(4, 2))
    path = tmp_path / "p"
    save_policy(str(path), policy, torch.zeros(policy.dim), meta={"env_id": "CartPole-v1"})
    breakage(path)
    msg = _message(["rl-eval", str(path), "--episodes", "1"], capsys)
    assert needle in msg and "\n" not in msg.strip()


def test_rl_on_two_ray_actors_equals_one_worker_for_every_method(ray_cluster, tmp_path):  # noqa: F811
    """``zoopt rl --workers 2`` takes the same generations as ``--workers 1``: same records, same final policy
    and normalizer; through the CLI for one method, then every method on one pair of actors kept across runs."""
    from zoopt.cli import main
    from zoopt.rl import train_rl
    from zoopt.workers.ray_evaluator import RayEvaluator

    drop = ("seconds", "steps_per_s", "test_seconds")

    def saved(out):
        records = [{k: v for k, v in json.loads(s).items() if k not in drop} for s in open(out / "metrics.jsonl")]
        with np.load(out / "final" / "weights.npz") as w:
            weights = {k: w[k] for k in w.files}
        return records, weights, json.load(open(out / "final" / "policy.json"))["normalizer"]

    def same(one, two):
        assert one[0] == two[0] and len(one[0]) >= 1
        for k in one[1]:
            np.testing.assert_array_equal(one[1][k], two[1][k])
        assert one[2] == two[2]

    runs = {}
    for workers in (1, 2):
        out = tmp_path / f"cli{workers}"
        assert main(["rl", "CartPole-v1", "--budget", "600", "--popsize", "8", "--policy", "mlp", "--hidden", "4",
                     "--eval-episodes", "2", "--workers", str(workers), "--no-progress", "--out", str(out)]) == 0
        runs[workers] = saved(out)
    same(runs[1], runs[2])
    with RayEvaluator(2, actor_config={"num_cpus": 1}) as actors:
        for method in ("cma_es", "sep_cma_es", "eggroll", "polystep", "random"):
            for workers, evaluator in ((1, None), (2, actors)):
                train_rl("CartPole-v1", method, budget=600, popsize=8, policy="mlp", hidden=(4,), eval_episodes=2,
                         out=str(tmp_path / f"{method}{workers}"), evaluator=evaluator)
            same(saved(tmp_path / f"{method}1"), saved(tmp_path / f"{method}2"))


def test_ctrl_c_stops_rl_after_the_generation_and_saves(tmp_path):
    import signal

    from zoopt.rl import train_rl
    from zoopt.training.figures import plot_run

    class CtrlCAt(LocalEvaluator):
        calls = 0

        def __call__(self, problem, spec, members=None):
            CtrlCAt.calls += 1
            if CtrlCAt.calls == 2:
                os.kill(os.getpid(), signal.SIGINT)
            return super().__call__(problem, spec, members)

    out = train_rl("CartPole-v1", "openai_es", budget=10_000, popsize=4, eval_episodes=1, out=str(tmp_path / "r"),
                   evaluator=CtrlCAt())
    assert out["stop"] == "interrupted" and out["generations"] == 2
    assert json.load(open(tmp_path / "r" / "final" / "policy.json"))["meta"]["generation"] == 2
    assert len(open(tmp_path / "r" / "metrics.jsonl").readlines()) == 2
    os.remove(tmp_path / "r" / "learning_curve.png")
    assert os.path.getsize(plot_run(str(tmp_path / "r"))) > 0  # zoopt plot can draw the same figure
