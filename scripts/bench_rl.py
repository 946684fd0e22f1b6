"""RL benchmark: zoopt's methods vs EvoTorch PGPE at equal environment steps and seeds.

For each environment, every method runs ``--seeds`` seeds with the same
env-step budget; the center is tested every ``budget / checkpoints`` steps on
the same held-out episode seeds for every method (EvoTorch's center through
``GymNE.to_policy``, which includes its observation normalization). Test
steps are not charged to anyone's budget. On CartPole and Acrobot the fp32,
int8 and binary variants of zoopt's OpenAI-ES policy also run.

After the budget, each method's final center is scored on ``--final-episodes``
held-out episodes (a seed stream no checkpoint uses, the same for every method):
that is the number to compare, since one checkpoint's 10 episodes are noisy.

Prints the test return (mean +- std over seeds) against env steps, the env
steps needed to reach each env's target, and env steps per second; writes
``runs/bench_rl/results.json`` and one PNG of curves per environment.

    python scripts/bench_rl.py                 # CartPole + Acrobot, small budgets (a few CPU minutes)
    python scripts/bench_rl.py --envs all      # also Pendulum, LunarLander, HalfCheetah at small budgets
    python scripts/bench_rl.py --full          # the issue's budgets (HalfCheetah 10M x 3 seeds: ~1.5 h on one
                                               # core, two thirds of it PGPE's)
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

import numpy as np
import torch

from zoopt.rl import train_rl
from zoopt.problems.gym import episode_seeds
from zoopt.registry import METHODS

for _module in ("zoopt.eggroll", "zoopt.polystep"):  # they register their method names on import
    try:
        __import__(_module)
    except ImportError:
        pass

# env -> (small budget, full budget, target, popsize, policy, hidden)
ENVS = {
    "CartPole-v1": (300_000, 1_000_000, 500.0, 50, "linear", ()),
    "Acrobot-v1": (300_000, 1_000_000, -85.0, 50, "linear", ()),
    "Pendulum-v1": (300_000, 2_000_000, -200.0, 50, "mlp", (16,)),
    "LunarLander-v3": (300_000, 5_000_000, 200.0, 50, "mlp", (16,)),
    "HalfCheetah-v5": (200_000, 10_000_000, None, 50, "linear", ()),
}
QUANT_ENVS = ("CartPole-v1", "Acrobot-v1")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def test_module(module, env_id: str, seeds) -> np.ndarray:
    """Returns of an EvoTorch policy module on the held-out episode seeds (EvoTorch's action rule)."""
    import gymnasium as gym

    env = gym.make(env_id)
    discrete = isinstance(env.action_space, gym.spaces.Discrete)
    out = []
    with torch.no_grad():
        for s in seeds:
            obs, _ = env.reset(seed=int(s))
            total, done = 0.0, False
            while not done:
                a = module(torch.as_tensor(obs, dtype=torch.float32)).numpy()
                a = int(np.argmax(a)) if discrete else np.clip(a, env.action_space.low, env.action_space.high)
                obs, r, term, trunc, _ = env.step(a)
                total += float(r)
                done = term or trunc
            out.append(total)
    env.close()
    return np.asarray(out)


FINAL_STREAM = 2   # the final center's held-out episodes: a seed stream no checkpoint test uses


def final_seeds(seed: int, episodes: int) -> list[int]:
    """The final test's episodes, shared by every method of a seed (what ``evaluate_center`` plays on that stream)."""
    return episode_seeds(seed, 0, episodes, stream=FINAL_STREAM)


def run_pgpe(env_id: str, budget: int, seed: int, popsize: int, policy: str, hidden, test_every: int,
             test_episodes: int, target, final_episodes: int):
    """EvoTorch PGPE (ClipUp, centered ranks, symmetric sampling) on GymNE with observation normalization."""
    from evotorch.algorithms import PGPE
    from evotorch.neuroevolution import GymNE

    seed_everything(seed)
    net = "Linear(obs_length, act_length)" if policy == "linear" else \
        " >> ".join([f"Linear(obs_length, {hidden[0]})", "Tanh()", f"Linear({hidden[0]}, act_length)"])
    problem = GymNE(env=env_id, network=net, observation_normalization=True, num_episodes=1)
    searcher = PGPE(problem, popsize=popsize, center_learning_rate=0.075, stdev_learning_rate=0.1,
                    radius_init=0.27, optimizer="clipup", optimizer_config={"max_speed": 0.15})
    curve, next_test, gen, start, reached = [], test_every, 0, time.perf_counter(), None
    train_time = 0.0
    while problem.interaction_count < budget:
        t0 = time.perf_counter()
        searcher.step()
        train_time += time.perf_counter() - t0
        gen += 1
        steps = problem.interaction_count
        if steps >= next_test or steps >= budget or gen == 1:
            next_test = (steps // test_every + 1) * test_every
            ret = test_module(problem.to_policy(searcher.status["center"]), env_id,
                              episode_seeds(seed, gen, test_episodes, stream=1))
            curve.append((steps, float(ret.mean())))
            if target is not None and reached is None and ret.mean() >= target:
                reached = steps
    final = test_module(problem.to_policy(searcher.status["center"]), env_id, final_seeds(seed, final_episodes))
    return {"curve": curve, "env_steps": problem.interaction_count, "train_seconds": train_time,
            "seconds": time.perf_counter() - start, "reached_at": reached, "final_test": float(final.mean())}


def run_ours(env_id: str, method: str, budget: int, seed: int, popsize: int, policy: str, hidden, quant: str,
             test_every: int, test_episodes: int, target, final_episodes: int, stop: bool = False):
    seed_everything(seed)
    summary = train_rl(env_id, method, budget=budget, popsize=popsize, seed=seed, policy=policy,
                       hidden=hidden or (16,), quant=quant, eval_every_steps=test_every, eval_episodes=test_episodes,
                       target=target if stop else None)
    curve = [(r["env_steps"], r["test_mean"]) for r in summary["history"] if "test_mean" in r]
    reached = next((s for s, v in curve if target is not None and v >= target), None)
    problem = summary["problem"]   # closed by train_rl; evaluate_center reopens its envs
    try:
        final = problem.evaluate_center(summary["center"], final_episodes, stream=FINAL_STREAM)
    finally:
        problem.close()
    return {"curve": curve, "env_steps": summary["env_steps"], "seconds": summary["seconds"],
            "train_seconds": summary["seconds"] - summary["test_seconds"], "reached_at": reached,
            "final_test": float(final.mean())}


def summarize(runs, checkpoints: int, budget: int):
    """Mean and std over seeds of the test return at common step marks (last value carried forward)."""
    marks = np.linspace(budget / checkpoints, budget, checkpoints)
    table = []
    for i, mark in enumerate(marks):
        vals = []
        for r in runs:
            last = i == len(marks) - 1   # the final test, even when a generation overshot the budget
            before = [v for s, v in r["curve"] if last or s <= mark * 1.0001]
            vals.append(before[-1] if before else float("nan"))
        table.append((int(mark), float(np.nanmean(vals)), float(np.nanstd(vals))))
    return table


def plot(results: dict, path: str, env_id: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, entry in results.items():
        steps = [m for m, _, _ in entry["table"]]
        mean = np.array([v for _, v, _ in entry["table"]])
        std = np.array([s for _, _, s in entry["table"]])
        ax.plot(steps, mean, label=label)
        ax.fill_between(steps, mean - std, mean + std, alpha=0.15)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("test return (mean over seeds)")
    ax.set_title(env_id)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--envs", default="CartPole-v1,Acrobot-v1", help="comma list or 'all'")
    ap.add_argument("--methods", default="openai_es,cma_es,polystep,eggroll",
                    help="zoopt methods (those not registered yet are skipped)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--budget", type=int, default=None, help="env steps per run (default: per env)")
    ap.add_argument("--full", action="store_true", help="the issue's budgets")
    ap.add_argument("--checkpoints", type=int, default=20)
    ap.add_argument("--test-episodes", type=int, default=10, help="episodes per checkpoint test")
    ap.add_argument("--final-episodes", type=int, default=50,
                    help="held-out episodes on which the final center is scored (same seeds for every method)")
    ap.add_argument("--no-quant", action="store_true")
    ap.add_argument("--quant-methods", default="openai_es,polystep",
                    help="methods that also run int8 and binary policies on CartPole and Acrobot")
    ap.add_argument("--quant-only", action="store_true", help="only the int8/binary variants (no fp32, no peer)")
    ap.add_argument("--stop-at-target", action="store_true",
                    help="zoopt runs stop once the test return reaches the target (the curve keeps its last value)")
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--out", default="runs/bench_rl")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    envs = list(ENVS) if args.envs == "all" else args.envs.split(",")
    methods = [m for m in args.methods.split(",") if m in METHODS]
    skipped = [m for m in args.methods.split(",") if m not in METHODS]
    if skipped:
        print(f"skipping methods not registered in this checkout: {skipped}")
    os.makedirs(args.out, exist_ok=True)
    all_results = {"args": vars(args), "envs": {}}
    for env_id in envs:
        if env_id not in ENVS:
            raise ValueError(f"unknown benchmark env {env_id!r}; choose from {list(ENVS)}")
        small, full, target, popsize, policy, hidden = ENVS[env_id]
        budget = args.budget or (full if args.full else small)
        test_every = max(1, budget // args.checkpoints)
        variants = [] if args.quant_only else [(m, "none") for m in methods]
        if env_id in QUANT_ENVS and not args.no_quant:
            variants += [(m, q) for m in args.quant_methods.split(",") if m in METHODS for q in ("int8", "binary")]
        results = {}
        print(f"\n=== {env_id}: budget {budget} env steps, popsize {popsize}, {policy} policy, "
              f"{args.seeds} seeds, target {target}")
        for method, quant in variants:
            label = f"zoopt {method}" + ("" if quant == "none" else f" {quant}")
            runs = [run_ours(env_id, method, budget, s, popsize, policy, hidden, quant, test_every,
                             args.test_episodes, target, args.final_episodes, args.stop_at_target)
                    for s in range(args.seeds)]
            results[label] = {"runs": runs}
            print(f"  {label}: done ({sum(r['seconds'] for r in runs):.0f} s)", flush=True)
        if not args.no_peer and not args.quant_only:
            runs = [run_pgpe(env_id, budget, s, popsize, policy, hidden, test_every, args.test_episodes, target,
                             args.final_episodes) for s in range(args.seeds)]
            results["evotorch PGPE"] = {"runs": runs}
            print(f"  evotorch PGPE: done ({sum(r['seconds'] for r in runs):.0f} s)", flush=True)
        for entry in results.values():
            runs = entry["runs"]
            entry["table"] = summarize(runs, args.checkpoints, budget)
            entry["final_mean"], entry["final_std"] = entry["table"][-1][1], entry["table"][-1][2]
            entry["reached_at"] = [r["reached_at"] for r in runs]
            entry["best_test"] = [max(v for _, v in r["curve"]) for r in runs]
            finals = [r["final_test"] for r in runs]
            entry["final_test_mean"], entry["final_test_std"] = float(np.mean(finals)), float(np.std(finals))
            entry["steps_per_s"] = float(np.mean([r["env_steps"] / r["train_seconds"] for r in runs]))
        print(f"  {'env steps':>10} " + " ".join(f"{label:>22}" for label in results))
        for i in range(0, args.checkpoints, max(1, args.checkpoints // 5)):
            row = [results[label]["table"][i] for label in results]
            print(f"  {row[0][0]:>10} " + " ".join(f"{m:>13.1f} +- {s:>5.1f}" for _, m, s in row))
        peer = results.get("evotorch PGPE")
        final_head = f"final, {args.final_episodes} eps"
        print(f"  {'method':<24} {'last checkpoint':>18} {final_head:>18} {'best test (per seed)':>26} "
              f"{'steps to target (per seed)':>30} {'env steps/s':>12}")
        for label, entry in results.items():
            ratio = ""
            if peer is not None and label != "evotorch PGPE":
                ratio = f"  ({entry['steps_per_s'] / peer['steps_per_s']:.1f}x PGPE's steps/s)"
            best = "[" + ", ".join(f"{b:.1f}" for b in entry["best_test"]) + "]"
            print(f"  {label:<24} {entry['final_mean']:>9.1f} +- {entry['final_std']:>5.1f} "
                  f"{entry['final_test_mean']:>9.1f} +- {entry['final_test_std']:>5.1f} {best:>26} "
                  f"{str(entry['reached_at']):>30} {entry['steps_per_s']:>12.0f}{ratio}")
        png = os.path.join(args.out, f"{env_id}.png")
        plot(results, png, env_id)
        all_results["envs"][env_id] = {"budget": budget, "target": target, "popsize": popsize, "policy": policy,
                                       "results": results}
        print(f"  curves: {png}")
        with open(os.path.join(args.out, "results.json"), "w") as fh:
            json.dump(all_results, fh, indent=1)
    print(f"\nresults: {os.path.join(args.out, 'results.json')} (CPU timings on a shared 2-core machine)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
