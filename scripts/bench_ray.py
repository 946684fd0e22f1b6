"""Ray evaluation benchmark: overhead, bytes on the wire, and actor scaling on env-bound problems.

    python scripts/bench_ray.py                    # all parts, small CPU sizes (a few minutes on 2 cores)
    python scripts/bench_ray.py --parts speedup    # only the 1 vs 2 actor env steps/s (~2-3 minutes)
    python scripts/bench_ray.py --full             # more generations, bigger populations

(1) ``overhead``: time per generation on a trivial problem at N = 1024:
    LocalEvaluator vs RayEvaluator (1 and 2 actors), same specs.
(2) ``bytes``: bytes sent per generation for a 1M-parameter model at N = 1024:
    what the evaluator serializes (payload + task arguments + fitness back),
    against N*D*4 bytes for shipping every member's vector. The problem wraps a
    real 1M-parameter MLP (its pickled size is paid once per actor) but returns
    zeros: the traffic does not depend on the evaluation, and 1024 forwards of
    a 1M-parameter model would dominate a CPU run.
(3) ``speedup``: environment steps/s in process, with 1 actor and with 2 actors,
    on CartPole-v1 (linear policy, 4 episodes per member, variable episode
    lengths) and HalfCheetah-v5 (linear policy, 1000-step MuJoCo episodes),
    through problems/gym.py with obs_norm off; ``--envs synthetic`` adds a
    numpy-dynamics env. In-process, 2 plain processes (multiprocessing, one
    half of the members each: the machine's own 1 -> 2 process scaling, no Ray)
    and Ray with 1 and 2 actors are alive together and take turns generation
    by generation (the order rotates), so they see the same machine load. Every
    generation's fitness is compared with in-process evaluation (a mismatch is
    printed and saved, not fatal). Besides wall-clock steps/s it reports CPU
    time: actor CPU per env step (does splitting the population into ranges add
    work?), the driver's and Ray's own processes' CPU per generation (what they
    take from the actors on a 2-core machine), and the speedup a free core per
    actor would give, 2 x (1-actor CPU/step) / (2-actor CPU/step), which time
    slicing by other processes does not distort. Target: 2 actors >= 1.7x the
    wall steps/s of 1.
(4) ``modules``: module training on Ray actors, 1 vs 2 actors: PolyStep on the
    zoo SNN and EGGROLL (rank 1, 128 members) on an MNIST MLP 784-128-10,
    batches of 256 named by (epoch, k, batch size) so the training split goes to
    each actor once. Steps/s, bytes sent per step against shipping every
    candidate's weights (members x params x 4), actor and driver CPU s per step,
    and whether 1 and 2 actors give the same losses.

Timings on a shared machine are distorted by other processes; the load
average is printed and saved. Writes runs/bench_ray/bench_ray.json and bench_ray.png.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import contextmanager

import numpy as np
import torch

import zoopt
from zoopt.problems import Problem, VectorProblem
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
            ev(problem, spec)
        per_gen = {k: ev.traffic[k] / gens for k in ("payload_bytes", "task_bytes", "result_bytes")}
        problem_bytes = ev.traffic["problem_bytes"]
    sent = per_gen["payload_bytes"] + per_gen["task_bytes"]
    vectors = popsize * dim * 4
    out = {"dim": dim, "popsize": popsize, **per_gen, "sent_per_gen": sent, "vectors_bytes": vectors,
           "sent_fraction": sent / vectors, "problem_bytes_once_per_actor": problem_bytes}
    print(f"(2) bytes/gen, D={dim:,}, N={popsize}: sent {sent / 1e6:.3f} MB (payload {per_gen['payload_bytes'] / 1e6:.3f}"
          f" MB + tasks {per_gen['task_bytes'] / 1e3:.1f} kB), fitness back {per_gen['result_bytes'] / 1e3:.1f} kB; "
          f"shipping vectors {vectors / 1e9:.2f} GB -> {100 * sent / vectors:.3f}% (target < 1%)")
    return out


@contextmanager
def quiet_stderr():
    """Silence C-level stderr (MuJoCo prints a deprecation warning per env it builds)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class CpuClocks:
    """CPU seconds of this process, of the evaluators' actors, and of Ray's other processes."""

    def __init__(self):
        try:
            import psutil
        except ImportError:
            psutil = None
        self.psutil = psutil
        self.actor_pids: set = set()

    def add_actors(self, evaluator) -> None:
        import ray

        self.actor_pids |= set(ray.get([a.pid.remote() for a in evaluator.actors()]))

    def system(self) -> float:
        """Ray's processes that are not actors (raylet, GCS, idle workers...): children of this driver."""
        if self.psutil is None:
            return float("nan")
        total = 0.0
        for child in self.psutil.Process().children(recursive=True):
            if child.pid in self.actor_pids:
                continue
            try:
                times = child.cpu_times()
                total += times.user + times.system
            except self.psutil.Error:
                pass
        return total

    @staticmethod
    def driver() -> float:
        return time.process_time()


_POOL_PROBLEM = None


def _pool_init(problem_bytes: bytes) -> None:
    global _POOL_PROBLEM
    import pickle

    torch.set_num_threads(1)
    _POOL_PROBLEM = pickle.loads(problem_bytes)


def _pool_evaluate(args):
    spec, start, stop = args
    cpu = time.process_time()
    fitness = _POOL_PROBLEM.evaluate(spec, torch.arange(start, stop))
    return fitness, time.process_time() - cpu


class PoolEvaluator:
    """The no-Ray reference: ``workers`` plain processes (multiprocessing, spawned), each evaluating one
    equal share of the members, the spec pickled to each per generation. It shows how well the machine
    itself scales 1 -> 2 processes at that moment, with no scheduling at all."""

    def __init__(self, problem, workers: int = 2):
        import multiprocessing
        import pickle

        self.workers = workers
        self.pool = multiprocessing.get_context("spawn").Pool(workers, _pool_init, (pickle.dumps(problem),))
        self.cpu = 0.0

    def pids(self) -> set:
        return {proc.pid for proc in self.pool._pool}

    def __call__(self, problem, spec):
        n = spec.popsize
        bounds = [round(i * n / self.workers) for i in range(self.workers + 1)]
        parts = self.pool.map(_pool_evaluate, [(spec, a, b) for a, b in zip(bounds, bounds[1:])], chunksize=1)
        self.cpu += sum(cpu for _, cpu in parts)
        return torch.cat([torch.as_tensor(f, dtype=torch.float32) for f, _ in parts])

    def actor_cpu_seconds(self) -> float:
        return self.cpu

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()


def bench_speedup(name: str, make_problem, popsize: int, rounds: int, warmup: int = 2) -> dict:
    """Local, 1-actor and 2-actor evaluation of the same generations, taking turns; see (3) above."""
    from zoopt.workers.ray_evaluator import RayEvaluator

    keys = ("local", "pool2", "ray1", "ray2")
    with quiet_stderr():
        problems = {k: make_problem() for k in keys}
    x0 = problems["local"].initial_point()
    spec_list = specs(problems["local"].dim, popsize, warmup + rounds, x0)
    clocks = CpuClocks()
    evaluators = {"local": LocalEvaluator()}
    rec = {k: {"wall": 0.0, "driver_cpu": 0.0, "actor_cpu": 0.0, "system_cpu": 0.0} for k in keys}
    try:
        with quiet_stderr():
            for actors in (1, 2):
                evaluators[f"ray{actors}"] = RayEvaluator(actors, actor_config={"num_cpus": 1})
            evaluators["pool2"] = PoolEvaluator(problems["pool2"], 2)
            for spec in spec_list[:warmup]:  # actors start, load the problem, build their vector envs
                fits = [evaluators[k](problems[k], spec) for k in keys]
        for k in ("ray1", "ray2"):
            clocks.add_actors(evaluators[k])
        clocks.actor_pids |= evaluators["pool2"].pids()
        steps, mismatches = 0, []
        for r, spec in enumerate(spec_list[warmup:]):
            fits = {}
            for k in keys[r % len(keys):] + keys[:r % len(keys)]:
                ev, problem = evaluators[k], problems[k]
                steps_before = problem.env_steps if k == "local" else 0
                a0 = ev.actor_cpu_seconds() if k != "local" else 0.0
                s0, d0, t0 = clocks.system(), clocks.driver(), time.perf_counter()
                fits[k] = ev(problem, spec)
                wall, d1, s1 = time.perf_counter() - t0, clocks.driver(), clocks.system()
                a1 = ev.actor_cpu_seconds() if k != "local" else d1 - d0
                rec[k]["wall"] += wall
                rec[k]["driver_cpu"] += d1 - d0
                rec[k]["system_cpu"] += s1 - s0
                rec[k]["actor_cpu"] += a1 - a0  # local: the driver does the work
                if k == "local":
                    steps += problem.env_steps - steps_before
            for k in keys:  # reported, not fatal: the timing still stands (tests assert the equality)
                if not torch.equal(fits[k], fits["local"]):
                    where = (fits[k] != fits["local"]).nonzero().reshape(-1).tolist()
                    mismatches.append(f"generation {spec.generation}: {k} differs at members {where[:8]}")
                    print(f"    WARNING {name}: {mismatches[-1]}", flush=True)
        if callable(getattr(problems["local"], "stats", None)):  # GymProblem: actors' step counts come back
            assert all(problems[k].env_steps == problems["local"].env_steps for k in ("ray1", "ray2")), \
                f"{name}: env steps differ"
    finally:
        for ev in evaluators.values():
            ev.close()
    out = {"popsize": popsize, "rounds": rounds, "steps_per_gen": steps / rounds, "fitness_mismatches": mismatches}
    for k in keys:
        r = rec[k]
        out[k] = {"steps_per_s": steps / r["wall"], "ms_per_gen": 1e3 * r["wall"] / rounds,
                  "work_us_per_step": 1e6 * r["actor_cpu"] / steps,
                  "driver_cpu_ms_per_gen": 1e3 * r["driver_cpu"] / rounds,
                  "ray_system_cpu_ms_per_gen": 1e3 * r["system_cpu"] / rounds}
        if k != "local":
            actors = int(k[-1])
            out[k]["actor_busy_fraction"] = r["actor_cpu"] / (actors * r["wall"])
    out["speedup_2_vs_1"] = out["ray2"]["steps_per_s"] / out["ray1"]["steps_per_s"]
    out["ray1_vs_local"] = out["ray1"]["steps_per_s"] / out["local"]["steps_per_s"]
    out["work_inflation_2_vs_1"] = out["ray2"]["work_us_per_step"] / out["ray1"]["work_us_per_step"]
    out["free_core_speedup_2_vs_1"] = 2 / out["work_inflation_2_vs_1"]
    # the machine's own 1 -> 2 process scaling at that moment: plain processes vs one process (in-process)
    out["pool2_vs_local"] = out["pool2"]["steps_per_s"] / out["local"]["steps_per_s"]
    out["load_average"] = os.getloadavg()[0]
    l, p2, r1, r2 = out["local"], out["pool2"], out["ray1"], out["ray2"]
    print(f"(3) {name}: {out['steps_per_gen']:,.0f} env steps/gen, {rounds} generations each\n"
          f"    steps/s: local {l['steps_per_s']:,.0f}, Ray 1 actor {r1['steps_per_s']:,.0f}, 2 actors "
          f"{r2['steps_per_s']:,.0f} -> 2 vs 1: {out['speedup_2_vs_1']:.2f}x wall (target >= 1.7x); "
          f"1 actor vs local {out['ray1_vs_local']:.2f}x\n"
          f"    no-Ray reference: 2 plain processes {p2['steps_per_s']:,.0f}/s = {out['pool2_vs_local']:.2f}x local "
          f"(what the machine gives 2 processes right now)\n"
          f"    work (actor CPU) per env step: local {l['work_us_per_step']:.1f} us, 2 plain processes "
          f"{p2['work_us_per_step']:.1f} us, 1 actor {r1['work_us_per_step']:.1f}"
          f" us, 2 actors {r2['work_us_per_step']:.1f} us -> with a free core per actor 2 vs 1 would be "
          f"{out['free_core_speedup_2_vs_1']:.2f}x\n"
          f"    per generation: driver CPU {r1['driver_cpu_ms_per_gen']:.1f} / {r2['driver_cpu_ms_per_gen']:.1f} ms, "
          f"Ray's own processes {r1['ray_system_cpu_ms_per_gen']:.1f} / {r2['ray_system_cpu_ms_per_gen']:.1f} ms "
          f"(1 / 2 actors); actors busy {100 * r1['actor_busy_fraction']:.0f}% / {100 * r2['actor_busy_fraction']:.0f}%"
          f" of wall time; load average {out['load_average']:.1f} on {os.cpu_count()} cores", flush=True)
    return out


def gym_problem(env_id: str, episodes: int):
    from zoopt.problems.gym import GymProblem

    def make_problem():
        return GymProblem(env_id, policy="linear", episodes=episodes, obs_norm=False, seed=0)

    return make_problem


class CountedSyntheticEnv(SyntheticEnvProblem):
    """``SyntheticEnvProblem`` that counts its steps like GymProblem (``env_steps``) and merges worker counts."""

    env_steps = 0

    def evaluate(self, spec, members):
        self.env_steps += len(members) * self.steps
        return super().evaluate(spec, members)


# Populations are sized so that each actor's ranges stay large: GymProblem pays a fixed cost per step of
# every range (one policy forward, the vector bookkeeping: ~55 us, more than a HalfCheetah step), so small
# ranges make every member dearer; with 2 actors the default plan cuts N into 4 ranges of N/4.
ENVS = {  # name -> (label, problem factory, popsize (default, --full), generations (default, --full))
    "cartpole": ("CartPole-v1, linear policy, 4 episodes/member", gym_problem("CartPole-v1", 4), (512, 1024), (6, 16)),
    "halfcheetah": ("HalfCheetah-v5, linear policy, 1 episode/member", gym_problem("HalfCheetah-v5", 1),
                    (128, 256), (3, 6)),
    "synthetic": ("synthetic numpy env, 1000 steps/member", lambda: CountedSyntheticEnv(steps=1000), (32, 64), (6, 20)),
}


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    if results.get("overhead"):
        ov = results["overhead"]
        panels.append(("trivial fn, N=1024", "ms / generation", ["local", "Ray 1", "Ray 2"],
                       [ov["local_ms"], ov["ray1_ms"], ov["ray2_ms"]]))
    for name, r in results.get("modules", {}).items():
        panels.append((f"{name}: 2 vs 1 actor {r['speedup_2_vs_1']:.2f}x", "steps / s", ["Ray 1", "Ray 2"],
                       [r["ray1"]["steps_per_s"], r["ray2"]["steps_per_s"]]))
    for name, r in results.get("speedup", {}).items():
        panels.append((f"{name}: 2 vs 1 actor {r['speedup_2_vs_1']:.2f}x", "env steps / s",
                       ["local", "2 procs", "Ray 1", "Ray 2"],
                       [r[k]["steps_per_s"] for k in ("local", "pool2", "ray1", "ray2")]))
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    for ax, (title, ylabel, labels, values) in zip(axes[0], panels):
        ax.bar(labels, values)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"RayEvaluator on {os.cpu_count()} cores, load average {results['load_average_end']:.1f} "
                 "(shared machine: contention likely)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def module_run(method: str, actors: int, data, steps: int, batch_size: int, egg_popsize: int = 128) -> dict:
    """``steps`` training steps of ``method`` (PolyStep on the zoo SNN, EGGROLL on an MNIST MLP) on ``actors``
    Ray actors, after one warm-up step; the training split goes to each actor once, batches by name."""
    from zoopt.problems.zoo.models import make_model
    from zoopt.workers.ray_evaluator import RayEvaluator

    ev = RayEvaluator(actors, actor_config={"num_cpus": 1})
    loss_fn = torch.nn.CrossEntropyLoss()
    if method == "polystep":
        model = make_model("snn", seed=0)
        opt = zoopt.PolyStep(model, seed=0, evaluator=ev, data=data)
        members = opt.evaluations_per_step
    else:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(784, 128), torch.nn.Tanh(), torch.nn.Linear(128, 10))
        members = egg_popsize
        opt = zoopt.EGGROLL(model, popsize=members, rank=1, sigma=0.05, lr=0.05, seed=0, evaluator=ev, data=data)
    params = sum(t.numel() for t in model.parameters())
    try:
        losses = [opt.step((0, 0, batch_size), loss_fn)]  # warm-up: actors load the model and the split
        ev.actor_cpu_seconds()  # returns once every actor holds them
        traffic0 = {k: ev.traffic[k] for k in ("payload_bytes", "task_bytes", "result_bytes")}
        actor0, driver0, wall0 = ev.actor_cpu_seconds(), time.process_time(), time.perf_counter()
        for k in range(1, steps + 1):
            losses.append(opt.step((0, k, batch_size), loss_fn))
        wall = time.perf_counter() - wall0
        driver_cpu, actor_cpu = time.process_time() - driver0, ev.actor_cpu_seconds() - actor0
        sent = sum(ev.traffic[k] - traffic0[k] for k in ("payload_bytes", "task_bytes")) / steps
        back = (ev.traffic["result_bytes"] - traffic0["result_bytes"]) / steps
    finally:
        if hasattr(opt, "close"):
            opt.close()
        ev.close()
    return {"steps_per_s": steps / wall, "params": params, "members_per_step": members,
            "bytes_sent_per_step": sent, "bytes_back_per_step": back, "candidate_weights_bytes": 4 * params * members,
            "actor_cpu_s_per_step": actor_cpu / steps, "driver_cpu_s_per_step": driver_cpu / steps, "losses": losses}


def bench_modules(steps: int, batch_size: int, limit_train: int, egg_popsize: int = 128,
                  methods=("polystep", "eggroll")) -> dict:
    """(4) module training on Ray: PolyStep on the zoo SNN and EGGROLL on an MNIST MLP, 1 vs 2 actors."""
    from zoopt.problems.data import load_mnist

    mnist = load_mnist(limit_train=limit_train)
    data = (mnist["x_train"], mnist["y_train"])
    out = {}
    labels = {"polystep": "PolyStep, zoo SNN", "eggroll": f"EGGROLL ({egg_popsize} members), MNIST MLP 784-128-10"}
    for method in methods:
        label = labels[method]
        one, two = (module_run(method, actors, data, steps, batch_size, egg_popsize) for actors in (1, 2))
        r = out[method] = {"ray1": one, "ray2": two, "speedup_2_vs_1": two["steps_per_s"] / one["steps_per_s"],
                           # what a free core per actor would give (time slicing by other processes aside)
                           "cpu_speedup_2_vs_1": 2 * one["actor_cpu_s_per_step"] / two["actor_cpu_s_per_step"],
                           "same_losses": one["losses"] == two["losses"]}
        print(f"(4) {label}: {one['steps_per_s']:.2f} -> {two['steps_per_s']:.2f} steps/s with 2 actors "
              f"({r['speedup_2_vs_1']:.2f}x wall, {r['cpu_speedup_2_vs_1']:.2f}x by actor CPU; same losses: "
              f"{r['same_losses']}); sent {two['bytes_sent_per_step'] / 1e3:.1f}"
              f" kB/step vs {two['candidate_weights_bytes'] / 1e6:.1f} MB of candidate weights "
              f"({two['members_per_step']} x {two['params']:,} params); actor CPU s/step "
              f"{one['actor_cpu_s_per_step']:.3f} (1) vs {two['actor_cpu_s_per_step']:.3f} (2), driver "
              f"{two['driver_cpu_s_per_step']:.3f}", flush=True)
    return out


PARTS = ("overhead", "bytes", "speedup", "modules")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {PARTS}")
    parser.add_argument("--envs", default="cartpole,halfcheetah", help=f"speedup envs, subset of {tuple(ENVS)}")
    parser.add_argument("--full", action="store_true", help="more generations and larger env populations")
    parser.add_argument("--out", default="runs/bench_ray")
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--modules", default="polystep,eggroll", help="module part: subset of polystep,eggroll")
    parser.add_argument("--egg-popsize", type=int, default=128,
                        help="module part: EGGROLL members per step (small ones are bound by Ray's per-step overhead)")
    args = parser.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    envs = [e for e in args.envs.split(",") if e]
    for name, allowed, values in (("--parts", PARTS, parts), ("--envs", tuple(ENVS), envs)):
        bad = [v for v in values if v not in allowed]
        if bad:
            parser.error(f"{name}: unknown {bad}, choose from {allowed}")
    os.environ["OMP_NUM_THREADS"] = "1"  # one thread everywhere: the actors' and the in-process baseline's
    torch.set_num_threads(1)
    gens = 20 if args.full else 6

    from zoopt.workers.ray_cluster import connect
    from zoopt.workers.ray_evaluator import RayEvaluator

    start = time.perf_counter()
    # 3 logical CPUs: the 1-actor and the 2-actor evaluators live side by side and take turns (never busy together)
    connect(None, num_cpus=3, log_to_driver=False)
    print(f"Ray started in {time.perf_counter() - start:.1f} s; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores", flush=True)

    def ray_evaluator(actors):
        return RayEvaluator(actors, actor_config={"num_cpus": 1})

    results = {"cores": os.cpu_count(), "load_average_start": os.getloadavg()[0], "full": args.full,
               "parts": parts}
    if "overhead" in parts:
        results["overhead"] = bench_overhead(ray_evaluator, gens)
    if "bytes" in parts:
        results["bytes"] = bench_bytes(ray_evaluator, args.params, 2)
    if "speedup" in parts:
        results["speedup"] = {}
        for env in envs:
            label, make_problem, pops, rounds = ENVS[env]
            if env != "synthetic":
                try:
                    with quiet_stderr():
                        make_problem().close()
                except ImportError as exc:  # no gymnasium
                    print(f"(3) {label} skipped: {exc}")
                    continue
                except Exception as exc:  # gymnasium without the env's extra (DependencyNotInstalled)
                    if type(exc).__name__ != "DependencyNotInstalled":
                        raise
                    print(f"(3) {label} skipped: {exc}")
                    continue
            results["speedup"][env] = bench_speedup(label, make_problem, pops[args.full], rounds[args.full])
    if "modules" in parts:
        results["modules"] = bench_modules(steps=8 if args.full else 3, batch_size=256, limit_train=4096,
                                           egg_popsize=args.egg_popsize, methods=tuple(args.modules.split(",")))
    results["load_average_end"] = os.getloadavg()[0]
    print(f"load average at the end {results['load_average_end']:.1f} on {os.cpu_count()} cores: wall-clock ratios "
          "above are distorted when other processes share the cores", flush=True)
    os.makedirs(args.out, exist_ok=True)
    name = "bench_ray" if parts == list(PARTS) else "bench_ray_" + "_".join(parts)
    with open(os.path.join(args.out, f"{name}.json"), "w") as f:
        json.dump(results, f, indent=2)
    plot(results, os.path.join(args.out, f"{name}.png"))
    print(f"wrote {args.out}/{name}.json and {name}.png")
    import ray

    ray.shutdown()
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
