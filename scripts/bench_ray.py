"""Ray evaluation benchmark: overhead, bytes on the wire, and actor scaling on an env-bound problem.

    python scripts/bench_ray.py            # small CPU sizes, ~2-4 minutes on 2 cores
    python scripts/bench_ray.py --full     # more generations and episodes

(1) Overhead per generation on a trivial problem at N = 1024: LocalEvaluator
    vs RayEvaluator (1 and 2 actors), same specs.
(2) Bytes sent per generation for a 1M-parameter model at N = 1024: what the
    evaluator serializes (payload + task arguments + fitness back), against
    N*D*4 bytes for shipping every member's vector. The problem wraps a real
    1M-parameter MLP (its pickled size is paid once per actor) but returns
    zeros: the traffic does not depend on the evaluation, and 1024 forwards of
    a 1M-parameter model would dominate a CPU run.
(3) Environment steps/s with 1 and 2 actors: a CPU-bound synthetic env (numpy
    dynamics in a Python step loop) and, when gymnasium is installed,
    CartPole-v1 through problems/gym.py (obs_norm off so copies are stateless).
    Target: 2 actors >= 1.7x the steps/s of 1.

Writes runs/bench_ray/bench_ray.json and bench_ray.png.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

import zoopt
from zoopt.problems import Problem, VectorProblem
from zoopt.shaping import shape_fitness
from zoopt.workers import LocalEvaluator


def trivial(x):
    return x.sum(1)


class DryModelProblem(Problem):
    """Holds a model of ~``params`` parameters; every member's fitness is 0 (traffic measurement only)."""

    def __init__(self, params: int):
        width = int(params ** 0.5)
        self.model = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.Tanh(), torch.nn.Linear(width, 1))
        self.dim = sum(p.numel() for p in self.model.parameters())

    def initial_point(self):
        return torch.cat([p.detach().reshape(-1) for p in self.model.parameters()])

    def evaluate(self, spec, members):
        return torch.zeros(len(members))


class SyntheticEnvProblem(Problem):
    """An env-bound problem: each member runs ``steps`` steps of a small numpy dynamics in Python.

    The policy is linear in the 8-dim state, the cost is the squared state; the
    per-step Python and numpy overhead, not the policy, dominates, as in
    classic-control environments.
    """

    def __init__(self, steps: int = 300, state_dim: int = 8):
        self.steps, self.state_dim = int(steps), int(state_dim)
        self.dim = state_dim * state_dim
        g = np.random.default_rng(0)
        self.dynamics = np.eye(state_dim) + 0.05 * g.standard_normal((state_dim, state_dim))

    def evaluate(self, spec, members):
        points = spec.points(members).double().numpy()
        out = np.empty(len(points))
        for m, flat in enumerate(points):
            gain = flat.reshape(self.state_dim, self.state_dim)
            state, cost = np.ones(self.state_dim), 0.0
            for _ in range(self.steps):
                action = np.tanh(gain @ state)
                state = np.clip(self.dynamics @ state + 0.1 * action, -10, 10)
                cost += float(state @ state)
            out[m] = cost / self.steps
        return torch.as_tensor(out, dtype=torch.float32)


def specs(dim: int, popsize: int, count: int, x0=None):
    es = zoopt.OpenAIES(x0 if x0 is not None else torch.zeros(dim), popsize=popsize, sigma=0.05, seed=0)
    out = []
    for _ in range(count):
        spec = es.ask()
        out.append(spec)
        es.tell(torch.randn(popsize, generator=torch.Generator().manual_seed(len(out))))
    return out


def time_generations(evaluator, problem, spec_list) -> tuple[float, list]:
    """Seconds per generation after a warm-up generation, and the fitness of each timed one.
    In-process, ``problem.env_steps`` (when the problem counts them) advances by the timed steps."""
    evaluator(problem, spec_list[0])  # warm-up: actors start, problem loads
    problem.timed_steps_from = getattr(problem, "env_steps", 0)
    fits, start = [], time.perf_counter()
    for spec in spec_list[1:]:
        fits.append(evaluator(problem, spec))
    return (time.perf_counter() - start) / (len(spec_list) - 1), fits


def bench_overhead(ray_evaluator, gens: int) -> dict:
    problem, spec_list = VectorProblem(trivial, 10), specs(10, 1024, gens + 1)
    local_s, local_f = time_generations(LocalEvaluator(), problem, spec_list)
    out = {"popsize": 1024, "dim": 10, "local_ms": 1e3 * local_s}
    for actors in (1, 2):
        with ray_evaluator(actors) as ev:
            ray_s, ray_f = time_generations(ev, problem, spec_list)
            assert all(torch.equal(a, b) for a, b in zip(ray_f, local_f)), "Ray fitness differs from local"
            out[f"ray{actors}_ms"] = 1e3 * ray_s
            out[f"ray{actors}_tasks_per_gen"] = ev.traffic["tasks"] / len(spec_list)
        out[f"ray{actors}_overhead_ms"] = out[f"ray{actors}_ms"] - out["local_ms"]
    print(f"(1) overhead/gen, N=1024, trivial fn: local {out['local_ms']:.2f} ms, "
          f"Ray 1 actor {out['ray1_ms']:.2f} ms, 2 actors {out['ray2_ms']:.2f} ms "
          f"(+{out['ray2_overhead_ms']:.2f} ms, {out['ray2_tasks_per_gen']:.0f} tasks/gen)")
    return out


def bench_bytes(ray_evaluator, params: int, gens: int) -> dict:
    problem = DryModelProblem(params)
    popsize, dim = 1024, problem.dim
    spec_list = specs(dim, popsize, gens, problem.initial_point())
    with ray_evaluator(2) as ev:
        for spec in spec_list:
            fitness = ev(problem, spec)
        per_gen = {k: ev.traffic[k] / gens for k in ("payload_bytes", "task_bytes", "result_bytes")}
        weights = shape_fitness(fitness, "centered_rank")
        before = ev.traffic["result_bytes"]
        ev.weighted_noise_sum(spec_list[-1], weights)
        sum_back = ev.traffic["result_bytes"] - before
        problem_bytes = ev.traffic["problem_bytes"]
    sent = per_gen["payload_bytes"] + per_gen["task_bytes"]
    vectors = popsize * dim * 4
    out = {"dim": dim, "popsize": popsize, **per_gen, "sent_per_gen": sent, "vectors_bytes": vectors,
           "sent_fraction": sent / vectors, "problem_bytes_once_per_actor": problem_bytes,
           "noise_sum_bytes_back": sum_back}
    print(f"(2) bytes/gen, D={dim:,}, N={popsize}: sent {sent / 1e6:.3f} MB (payload {per_gen['payload_bytes'] / 1e6:.3f}"
          f" MB + tasks {per_gen['task_bytes'] / 1e3:.1f} kB), fitness back {per_gen['result_bytes'] / 1e3:.1f} kB; "
          f"shipping vectors {vectors / 1e9:.2f} GB -> {100 * sent / vectors:.3f}% (target < 1%); "
          f"partial sums back {sum_back / 1e6:.1f} MB")
    return out


def bench_scaling(ray_evaluator, name: str, make_problem, popsize: int, gens: int, steps_of) -> dict:
    """``make_problem()`` gives a fresh copy per evaluator (env problems keep per-generation state)."""
    problem = make_problem()
    spec_list = specs(problem.dim, popsize, gens + 1, problem.initial_point())
    local_s, local_f = time_generations(LocalEvaluator(), problem, spec_list)
    steps = steps_of(problem, spec_list)  # env steps per timed generation
    out = {"popsize": popsize, "steps_per_gen": steps, "local_steps_per_s": steps / local_s}
    for actors in (1, 2):
        with ray_evaluator(actors) as ev:
            ev(make_problem(), spec_list[0])  # start the actors before reading their CPU clocks
            cpu_before = ev.actor_cpu_seconds()
            ray_s, ray_f = time_generations(ev, make_problem(), spec_list)
            cpu = ev.actor_cpu_seconds() - cpu_before
            assert all(torch.equal(a, b) for a, b in zip(ray_f, local_f)), f"{name}: Ray fitness differs from local"
            out[f"ray{actors}_steps_per_s"] = steps / ray_s
            # steps per actor CPU-second over the timed generations (+ a warm-up): blind to time slicing
            out[f"ray{actors}_steps_per_cpu_s"] = steps * len(spec_list) / cpu
    out["speedup_2_vs_1"] = out["ray2_steps_per_s"] / out["ray1_steps_per_s"]
    # If each actor had a core to itself, 2 actors would run 2x the CPU-seconds of 1 per wall second.
    out["cpu_efficiency_2_vs_1"] = out["ray2_steps_per_cpu_s"] / out["ray1_steps_per_cpu_s"]
    print(f"(3) {name}: {steps:.0f} env steps/gen; local {out['local_steps_per_s']:,.0f}/s, Ray 1 actor "
          f"{out['ray1_steps_per_s']:,.0f}/s, 2 actors {out['ray2_steps_per_s']:,.0f}/s -> "
          f"{out['speedup_2_vs_1']:.2f}x wall (target >= 1.7x); steps per actor CPU-second 2 vs 1 actors: "
          f"{out['cpu_efficiency_2_vs_1']:.2f} (2x this = the speedup with a free core per actor)")
    return out


def cartpole(popsize: int, gens: int, ray_evaluator):
    try:
        from zoopt.problems.gym import GymProblem
    except ImportError as exc:
        print(f"(3) CartPole skipped: {exc}")
        return None
    def make_problem():
        return GymProblem("CartPole-v1", policy="linear", episodes=4, obs_norm=False, seed=0)

    def steps_of(problem, spec_list):  # counted by the in-process run, the same episodes Ray runs
        return (problem.env_steps - problem.timed_steps_from) / (len(spec_list) - 1)

    return bench_scaling(ray_evaluator, "CartPole-v1 (linear policy, 4 episodes/member)",
                         make_problem, popsize, gens, steps_of)


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scaling = {k: v for k, v in results.items() if k.startswith("steps_") and v}
    fig, axes = plt.subplots(1, 1 + len(scaling), figsize=(4 * (1 + len(scaling)), 3.2))
    ov = results["overhead"]
    axes[0].bar(["local", "Ray 1", "Ray 2"], [ov["local_ms"], ov["ray1_ms"], ov["ray2_ms"]])
    axes[0].set_ylabel("ms / generation")
    axes[0].set_title("trivial fn, N=1024")
    for ax, (name, r) in zip(axes[1:], scaling.items()):
        ax.bar(["local", "Ray 1", "Ray 2"], [r["local_steps_per_s"], r["ray1_steps_per_s"], r["ray2_steps_per_s"]])
        ax.set_ylabel("env steps / s")
        ax.set_title(f"{name[6:]}: {r['speedup_2_vs_1']:.2f}x")
    fig.suptitle(f"RayEvaluator on {os.cpu_count()} cores (shared machine: contention likely)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="more generations and a larger env population")
    parser.add_argument("--out", default="runs/bench_ray")
    parser.add_argument("--params", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    gens = 20 if args.full else 6
    env_pop = 64 if args.full else 24

    from zoopt.workers.ray_cluster import connect
    from zoopt.workers.ray_evaluator import RayEvaluator

    start = time.perf_counter()
    connect(None, num_cpus=2)
    print(f"Ray started in {time.perf_counter() - start:.1f} s; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores")

    def ray_evaluator(actors):
        return RayEvaluator(actors, ranges_per_actor=4)

    results = {"cores": os.cpu_count(), "load_average_start": os.getloadavg()[0], "full": args.full}
    results["overhead"] = bench_overhead(ray_evaluator, gens)
    results["bytes"] = bench_bytes(ray_evaluator, args.params, 2)
    results["steps_synthetic"] = bench_scaling(ray_evaluator, "synthetic env (300 numpy steps/member)",
                                               lambda: SyntheticEnvProblem(steps=300),
                                               env_pop, max(3, gens // 2),
                                               lambda p, s: float(s[0].popsize * p.steps))
    results["steps_cartpole"] = cartpole(env_pop * 8, max(3, gens // 2), ray_evaluator)
    results["load_average_end"] = os.getloadavg()[0]
    print(f"load average at the end {results['load_average_end']:.1f} on {os.cpu_count()} cores: ratios above are "
          "distorted when other processes share the cores")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench_ray.json"), "w") as f:
        json.dump(results, f, indent=2)
    plot(results, os.path.join(args.out, "bench_ray.png"))
    print(f"wrote {args.out}/bench_ray.json and bench_ray.png")
    import ray

    ray.shutdown()
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
