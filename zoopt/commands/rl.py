"""``zoopt rl ENV`` trains a policy on a Gymnasium env; ``zoopt rl-eval PATH`` replays a saved one.

The budget is counted in environment steps (the steps the training episodes
really used). Every ``eval_every`` generations the center is tested on its
own seed stream (those steps are not charged to the budget); the center with
the best test return so far is saved as ``best/``, the last one as ``final/``
(weights + ``policy.json``), with one JSON line per generation in ``metrics.jsonl``.
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Optional

import numpy as np
import torch

# Strategy options per method for RL (flat policy vectors with normalized observations).
METHOD_DEFAULTS = {
    "openai_es": {"sigma": 0.1, "lr": 0.05},
    "cma_es": {"sigma": 0.5},
    "sep_cma_es": {"sigma": 0.5},
    "polystep": {},
    "eggroll": {"sigma": 0.1, "lr": 0.05},
    "random": {},
}


def make_rl_strategy(method: str, problem, popsize: int, seed: int, **options):
    """A registered strategy for ``problem`` with the RL defaults for ``method``, overridden by ``options``.

    EGGROLL gets the policy's tensor shapes, so its weight matrices are
    perturbed by low-rank factors and members run through its population
    forward; PolyStep's population size follows from its geometry.
    """
    import importlib

    from zoopt.registry import METHODS, make_strategy

    for module in ("zoopt.eggroll", "zoopt.polystep"):  # they register their method names on import
        try:
            importlib.import_module(module)
        except ImportError:
            pass
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
    kwargs = {**METHOD_DEFAULTS.get(method, {}), **{k: v for k, v in options.items() if v is not None}}
    if method == "eggroll":
        kwargs.setdefault("shapes", problem.policy.param_shapes)
    if method != "polystep":
        kwargs["popsize"] = popsize
    return make_strategy(method, problem.initial_point(), seed=seed, **kwargs)


def make_rl_evaluator(workers: int, backend: str | None = None):
    """The in-process evaluator (default for 1 worker) or ``workers`` Ray actors (default for more)."""
    from zoopt.workers import make_evaluator, resolve_backend

    if resolve_backend(workers, backend) == "local":
        return make_evaluator("local")
    try:
        from zoopt.workers.ray_evaluator import RayEvaluator
    except ImportError as exc:
        raise RuntimeError(f"--workers {workers} needs the Ray evaluator (zoopt.workers.ray_evaluator) and the "
                           f"ray extra; it is not available here ({exc}). Use --workers 1.") from None
    if not getattr(RayEvaluator, "merges_problem_stats", False):
        raise RuntimeError(f"--workers {workers}: this Ray evaluator does not bring the workers' problem.stats() "
                           "(observation statistics and env steps) back to the driver, which RL needs for "
                           "normalization and the env-step budget. Use --workers 1.")
    return RayEvaluator(num_actors=workers)


def train_rl(env_id: str, method: str = "openai_es", *, budget: int = 200_000, popsize: int = 50, seed: int = 0,
             policy: str = "linear", hidden=(64,), quant: str = "none", episodes: int = 1, workers: int = 1,
             backend: Optional[str] = None, vector: str = "sync", obs_norm: bool = True, gamma: float = 1.0, action_penalty: float = 0.0,
             alive_penalty: float = 0.0, eval_every: int = 1, eval_episodes: int = 10,
             eval_every_steps: Optional[int] = None, target: Optional[float] = None, out: Optional[str] = None, progress: bool = False,
             strategy_options: Optional[dict] = None, env_kwargs: Optional[dict] = None) -> dict:
    """Search a policy for ``env_id`` with ``method`` until ``budget`` env steps are used (or ``target``
    is reached by the center's test return). Returns a summary with the per-generation history.

    The center is tested every ``eval_every`` generations, or, with
    ``eval_every_steps``, whenever the env steps cross a multiple of it.
    """
    from tqdm.auto import tqdm

    from zoopt.metrics import JsonlLogger
    from zoopt.problems.gym import GymProblem
    from zoopt.problems.policies import save_policy

    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
        raise ValueError(f"budget must be a positive int (environment steps), got {budget!r}")
    if eval_every < 1 or eval_episodes < 1:
        raise ValueError(f"eval_every and eval_episodes must be >= 1, got {eval_every} and {eval_episodes}")
    if eval_every_steps is not None and eval_every_steps < 1:
        raise ValueError(f"eval_every_steps must be >= 1 or None, got {eval_every_steps}")
    problem = GymProblem(env_id, policy=policy, hidden=hidden, quant=quant, episodes=episodes, seed=seed,
                         vector=vector, obs_norm=obs_norm, gamma=gamma, action_penalty=action_penalty,
                         alive_penalty=alive_penalty, env_kwargs=env_kwargs)
    strategy = make_rl_strategy(method, problem, popsize, seed, **(strategy_options or {}))
    evaluator = make_rl_evaluator(workers, backend)
    remote = workers > 1 or backend == "ray"
    meta = {"env_id": env_id, "env_kwargs": env_kwargs or {}, "method": method, "seed": seed,
            "episodes": episodes, "popsize": popsize}
    logger = JsonlLogger(os.path.join(out, "metrics.jsonl") if out else None)
    history, best = [], {"return": -math.inf, "env_steps": None, "generation": None}
    reached_at, next_eval, test_seconds = None, eval_every_steps, 0.0
    start = time.perf_counter()
    bar = tqdm(total=budget, disable=not progress, unit="step", unit_scale=True, dynamic_ncols=True)
    try:
        while problem.env_steps < budget:
            spec = strategy.ask()
            if remote:  # actors normalize with the driver's statistics
                problem.share_stats(spec)
            steps_before = problem.env_steps
            fitness = evaluator(problem, spec)
            if problem.env_steps == steps_before:
                raise RuntimeError("the evaluator did not report the workers' observation statistics and env "
                                   "steps: it must merge each worker's problem.stats() into the driver's problem "
                                   "with problem.merge_stats(); use --workers 1 until it does")
            gen_stats = strategy.tell(fitness)
            g = strategy.generation
            rec = {"generation": g, "env_steps": problem.env_steps, "train_mean": -gen_stats["mean"],
                   "train_max": -gen_stats["min"], "seconds": time.perf_counter() - start}
            # training throughput: wall time so far minus the time spent testing the center
            rec["steps_per_s"] = problem.env_steps / max(rec["seconds"] - test_seconds, 1e-9)
            done = problem.env_steps >= budget
            if eval_every_steps is None:
                due = g % eval_every == 0
            else:
                due = problem.env_steps >= next_eval or g == 1
                next_eval = (problem.env_steps // eval_every_steps + 1) * eval_every_steps
            if due or done:
                t_test = time.perf_counter()
                center = strategy.center.detach().clone()
                test = problem.evaluate_center(center, eval_episodes, generation=g)
                rec.update(test_mean=float(test.mean()), test_std=float(test.std()))
                if rec["test_mean"] > best["return"]:
                    best = {"return": rec["test_mean"], "env_steps": problem.env_steps, "generation": g}
                    if out:
                        save_policy(os.path.join(out, "best"), problem.policy, center, problem.normalizer,
                                    {**meta, "generation": g, "env_steps": problem.env_steps,
                                     "test_mean": rec["test_mean"], "eval_generation": g})
                if target is not None and reached_at is None and rec["test_mean"] >= target:
                    reached_at = problem.env_steps
                test_seconds += time.perf_counter() - t_test
            rec["test_seconds"] = test_seconds
            history.append(rec)
            logger.log(rec)
            bar.update(problem.env_steps - bar.n)
            bar.set_postfix(test=f"{rec.get('test_mean', float('nan')):.1f}", refresh=False)
            if reached_at is not None:
                break
    finally:
        bar.close()
        problem.close()
        if hasattr(evaluator, "close"):
            evaluator.close()
    final_dir = None
    if out:
        final_dir = save_policy(os.path.join(out, "final"), problem.policy, strategy.center.detach().clone(),
                                problem.normalizer, {**meta, "generation": strategy.generation,
                                                     "env_steps": problem.env_steps,
                                                     "eval_generation": strategy.generation})
        with open(os.path.join(out, "summary.json"), "w") as fh:
            json.dump({**meta, "best": best, "env_steps": problem.env_steps, "reached_at": reached_at,
                       "generations": strategy.generation, "seconds": time.perf_counter() - start}, fh, indent=2)
    return {"history": history, "best": best, "env_steps": problem.env_steps, "reached_at": reached_at,
            "generations": strategy.generation, "seconds": time.perf_counter() - start,
            "test_seconds": test_seconds,
            "center": strategy.center.detach().clone(), "problem": problem, "final_dir": final_dir}


def write_gif(saved, env_id: str, path: str, seed: int = 0, env_kwargs: Optional[dict] = None,
              max_frames: int = 500, fps: int = 30) -> int:
    """Render one episode of ``saved`` (rgb_array) into a GIF at ``path``; returns the number of frames."""
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    import gymnasium as gym

    env = gym.make(env_id, render_mode="rgb_array", **(env_kwargs or {}))
    frames = []
    try:
        obs, _ = env.reset(seed=seed)
        frames.append(env.render())
        done = False
        while not done and len(frames) < max_frames:
            obs, _, terminated, truncated, _ = env.step(saved.act(obs))
            frames.append(env.render())
            done = terminated or truncated
    finally:
        env.close()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        import imageio.v2 as imageio

        imageio.mimsave(path, frames, duration=1000 / fps, loop=0)
    except ImportError:
        from PIL import Image

        images = [Image.fromarray(f) for f in frames]
        images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return len(frames)


# -- command line ----------------------------------------------------------------------
def _hidden(text: str):
    try:
        sizes = tuple(int(h) for h in text.split(","))
    except ValueError:
        raise ValueError(f"--hidden must be comma-separated ints such as 64,64, got {text!r}") from None
    return sizes


def register(sub) -> None:
    p = sub.add_parser("rl", help="search a policy for a Gymnasium environment")
    p.add_argument("env", help="Gymnasium environment id, e.g. CartPole-v1")
    p.add_argument("--method", default="openai_es", help="openai_es, cma_es, sep_cma_es, polystep, eggroll, ...")
    p.add_argument("--popsize", type=int, default=50)
    p.add_argument("--budget", type=int, default=300_000, help="environment steps (default 300000)")
    p.add_argument("--workers", type=int, default=1, help="more than 1 evaluates on Ray actors")
    p.add_argument("--backend", choices=("local", "ray"), default=None,
                   help="where members are evaluated (default: local for 1 worker, ray for more)")
    p.add_argument("--policy", default="linear", choices=["linear", "mlp"])
    p.add_argument("--hidden", default="64", help="MLP hidden sizes, comma-separated (default 64)")
    p.add_argument("--quant", default="none", choices=["none", "fp32", "int8", "binary"],
                   help="weight format (fp32 = none)")
    p.add_argument("--episodes", type=int, default=1, help="episodes per member (K)")
    p.add_argument("--vector", default="sync", choices=["sync", "async"])
    p.add_argument("--sigma", type=float, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--gamma", type=float, default=1.0)
    p.add_argument("--action-penalty", type=float, default=0.0)
    p.add_argument("--alive-penalty", type=float, default=0.0)
    p.add_argument("--no-obs-norm", action="store_true")
    p.add_argument("--eval-every", type=int, default=1)
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--target", type=float, default=None, help="stop once the center's test return reaches this")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output folder (default runs/rl/ENV-METHOD-seedS)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=main)

    e = sub.add_parser("rl-eval", help="replay a saved policy: mean +- std return, optional GIF")
    e.add_argument("path", help="a policy folder written by zoopt rl (e.g. runs/rl/.../best)")
    e.add_argument("--episodes", type=int, default=20)
    e.add_argument("--seed", type=int, default=None, help="evaluation seed (default: the training seed)")
    e.add_argument("--env", default=None, help="override the environment id stored with the policy")
    e.add_argument("--gif", default=None, help="write a GIF of one episode here")
    e.set_defaults(func=main_eval)


def main(args) -> int:
    from zoopt.workers import resolve_backend

    try:
        resolve_backend(args.workers, args.backend)
    except ValueError as exc:
        raise SystemExit(f"zoopt rl: --workers/--backend: {exc}") from None
    quant = "none" if args.quant == "fp32" else args.quant
    out = args.out or os.path.join("runs", "rl", f"{args.env}-{args.method}-seed{args.seed}")
    options = {"sigma": args.sigma, "lr": args.lr}
    summary = train_rl(args.env, args.method, budget=args.budget, popsize=args.popsize, seed=args.seed,
                       policy=args.policy, hidden=_hidden(args.hidden), quant=quant, episodes=args.episodes,
                       workers=args.workers, backend=args.backend, vector=args.vector, obs_norm=not args.no_obs_norm, gamma=args.gamma,
                       action_penalty=args.action_penalty, alive_penalty=args.alive_penalty,
                       eval_every=args.eval_every, eval_episodes=args.eval_episodes, target=args.target, out=out,
                       progress=not args.no_progress, strategy_options=options)
    last = [r for r in summary["history"] if "test_mean" in r][-1]
    print(f"{args.env} {args.method} ({args.policy}, {args.quant}): final test return "
          f"{last['test_mean']:.1f} +- {last['test_std']:.1f}, best {summary['best']['return']:.1f} "
          f"after {summary['env_steps']} env steps, {summary['generations']} generations, "
          f"{summary['seconds']:.1f} s ({summary['env_steps'] / max(summary['seconds'], 1e-9):.0f} steps/s)")
    print(f"saved: {os.path.join(out, 'best')}  {os.path.join(out, 'final')}  {os.path.join(out, 'metrics.jsonl')}")
    return 0


def main_eval(args) -> int:
    from zoopt.problems.gym import run_episodes
    from zoopt.problems.policies import load_policy

    saved = load_policy(args.path)
    env_id = args.env or saved.meta.get("env_id")
    if not env_id:
        raise ValueError("the policy does not record its environment; pass --env")
    seed = saved.meta.get("seed", 0) if args.seed is None else args.seed
    returns = run_episodes(saved, env_id, episodes=args.episodes, seed=seed, env_kwargs=saved.meta.get("env_kwargs"))
    print(f"{env_id}: return {returns.mean():.2f} +- {returns.std():.2f} over {args.episodes} episodes "
          f"(min {returns.min():.1f}, max {returns.max():.1f})")
    if args.gif:
        n = write_gif(saved, env_id, args.gif, seed=seed, env_kwargs=saved.meta.get("env_kwargs"))
        print(f"GIF of one episode ({n} frames): {args.gif}")
    return 0
