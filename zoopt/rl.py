"""Policy search on a Gymnasium env: the loop behind ``zoopt rl`` (:func:`train_rl`), its strategy and
evaluator choices, and a GIF of a saved policy (:func:`write_gif`).

The budget is counted in environment steps (the steps the training episodes
really used) and is a cap: a generation starts only when the previous
generation's cost still fits, so a run stops within one generation below the
budget (the first generation always runs; its cost is reported when it alone
passes the budget). Ctrl-C stops after the generation in flight and saves as at the
end. Every ``eval_every`` generations the center is tested on
its own seed stream (those steps are not charged to the budget); the center
with the best test return so far is saved as ``best/``, the last one as
``final/`` (weights + ``policy.json``, each folder replaced atomically), with
one JSON line per generation in ``metrics.jsonl`` and the learning curve in
``learning_curve.png``.
"""
from __future__ import annotations

import math
import os
import time
from typing import Optional

import numpy as np

from zoopt.metrics import JsonlLogger
from zoopt.zoo_configs import RL_DEFAULTS


# method names of ``zoopt train`` that policy search cannot use, with the reason
NOT_FOR_RL = {"adam": "it trains a network by backprop (on the zoo models' smooth twins), and an episode's "
                      "return has no gradient; use a forward-only method such as openai_es"}


def _import_methods():
    import importlib

    for module in ("zoopt.eggroll", "zoopt.polystep"):  # they register their method names on import
        try:
            importlib.import_module(module)
        except ImportError:
            pass


def make_rl_strategy(method: str, problem, popsize: int, seed: int, **options):
    """A registered strategy for ``problem`` with the RL defaults for ``method``, overridden by ``options``.

    EGGROLL gets the policy's tensor shapes, so its weight matrices are
    perturbed by low-rank factors and members run through its population
    forward; PolyStep's population size follows from its geometry.
    """
    from zoopt.registry import METHODS, make_strategy

    _import_methods()
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    kwargs = {**RL_DEFAULTS.get(method, {}), **{k: v for k, v in options.items() if v is not None}}
    if method == "eggroll":
        kwargs.setdefault("shapes", problem.policy.param_shapes)
    if method != "polystep":
        kwargs["popsize"] = popsize
    return make_strategy(method, problem.initial_point(), seed=seed, **kwargs)


def make_rl_evaluator(workers: int, backend: str | None = None, address: str | None = None):
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
    return RayEvaluator(num_actors=workers, **({"address": address} if address else {}))


def _check_int(name, value, low):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def _save_policy(path, problem, center, meta):
    from zoopt.atomic import atomic_dir
    from zoopt.problems.policies import save_policy

    with atomic_dir(path) as tmp:
        save_policy(tmp, problem.policy, center, problem.normalizer, meta)


def default_rl_dir(env_id: str, method: str, seed: int) -> str:
    return os.path.join("runs", "rl", f"{env_id}-{method}-seed{seed}")


def train_rl(env_id: str, method: str = "openai_es", *, budget: int = 200_000, popsize: int = 50, seed: int = 0,
             policy: str = "linear", hidden=(64,), quant: str = "none", episodes: int = 1, workers: int = 1,
             backend: Optional[str] = None, address: Optional[str] = None, vector: str = "sync",
             obs_norm: bool = True, gamma: float = 1.0, action_penalty: float = 0.0, alive_penalty: float = 0.0,
             eval_every: int = 1, eval_episodes: int = 10, eval_every_steps: Optional[int] = None,
             target: Optional[float] = None, out: Optional[str] = None, force: bool = False, progress: bool = False,
             strategy_options: Optional[dict] = None, env_kwargs: Optional[dict] = None, evaluator=None,
             loggers=None) -> dict:
    """Search a policy for ``env_id`` with ``method`` within ``budget`` env steps (or until ``target``
    is reached by the center's test return). Returns a summary with the per-generation history.

    The center is tested every ``eval_every`` generations, or, with
    ``eval_every_steps``, whenever the env steps cross a multiple of it.
    ``out`` is a run folder; one that already holds a run is replaced only with ``force``.
    ``evaluator`` (an evaluator object, e.g. a ``RayEvaluator`` kept across runs) replaces the one
    ``workers``/``backend`` would start; it is not closed here. ``loggers`` (e.g.
    :func:`zoopt.loggers.make_loggers`) get every generation's record too; they are not closed here.
    """
    from tqdm.auto import tqdm

    from zoopt.atomic import write_json
    from zoopt.problems.gym import GymProblem
    from zoopt.training.interrupt import stop_on_interrupt
    from zoopt.workers import resolve_backend

    _check_int("budget", budget, 1)
    _check_int("popsize", popsize, 2)
    _check_int("eval_every", eval_every, 1)
    _check_int("eval_episodes", eval_episodes, 1)
    if eval_every_steps is not None:
        _check_int("eval_every_steps", eval_every_steps, 1)
    resolve_backend(workers, backend)
    _import_methods()
    from zoopt.registry import METHODS

    if method in NOT_FOR_RL:
        raise ValueError(f"method {method!r} cannot search a policy: {NOT_FOR_RL[method]}")
    if method not in METHODS:  # before the env and the actors start
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    meta = {"env_id": env_id, "env_kwargs": env_kwargs or {}, "method": method, "seed": seed,
            "episodes": episodes, "popsize": popsize}
    problem = GymProblem(env_id, policy=policy, hidden=hidden, quant=quant, episodes=episodes, seed=seed,
                         vector=vector, obs_norm=obs_norm, gamma=gamma, action_penalty=action_penalty,
                         alive_penalty=alive_penalty, env_kwargs=env_kwargs)
    try:
        strategy = make_rl_strategy(method, problem, popsize, seed, **(strategy_options or {}))
        if out:
            from zoopt.training.runs import prepare_run_dir

            prepare_run_dir(out, {**meta, "budget": budget, "policy": policy, "hidden": list(hidden),
                                  "quant": quant}, force=force, resumable=False)
        owned = evaluator is None
        if owned:
            evaluator = make_rl_evaluator(workers, backend, address)
    except BaseException:
        problem.close()
        raise
    metrics = JsonlLogger(os.path.join(out, "metrics.jsonl") if out else None)
    history, best = [], {"return": -math.inf, "env_steps": None, "generation": None}
    reached_at, next_eval, test_seconds, last_cost, stop = None, eval_every_steps, 0.0, 0, "budget"
    start = time.perf_counter()
    bar = tqdm(total=budget, disable=not progress, unit="step", unit_scale=True, dynamic_ncols=True)
    try:
        with stop_on_interrupt(lambda: tqdm.write("stopping after this generation (Ctrl-C again to "
                                                 "abort)")) as ctrl_c:
            while problem.env_steps < budget:
                if ctrl_c.requested:
                    stop = "interrupted"
                    break
                if history and problem.env_steps + last_cost > budget:
                    break  # the next generation would pass the budget: stop within one generation of it
                spec = strategy.ask()
                steps_before = problem.env_steps
                fitness = evaluator(problem, spec)
                last_cost = problem.env_steps - steps_before
                if last_cost == 0:
                    raise RuntimeError("the evaluator did not report the workers' observation statistics and env "
                                       "steps: it must merge each worker's problem.stats() into the driver's problem "
                                       "with problem.merge_stats(); use --workers 1 until it does")
                gen_stats = strategy.tell(fitness)
                g = strategy.generation
                rec = {"generation": g, "env_steps": problem.env_steps, "train_mean": -gen_stats["mean"],
                       "train_max": -gen_stats["min"], "seconds": time.perf_counter() - start}
                # training throughput: wall time so far minus the time spent testing the center
                rec["steps_per_s"] = problem.env_steps / max(rec["seconds"] - test_seconds, 1e-9)
                done = problem.env_steps >= budget or problem.env_steps + last_cost > budget
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
                            _save_policy(os.path.join(out, "best"), problem, center,
                                         {**meta, "generation": g, "env_steps": problem.env_steps,
                                          "test_mean": rec["test_mean"], "eval_generation": g})
                    if target is not None and reached_at is None and rec["test_mean"] >= target:
                        reached_at = problem.env_steps
                    test_seconds += time.perf_counter() - t_test
                rec["test_seconds"] = test_seconds
                history.append(rec)
                metrics.log(rec)
                if loggers is not None:
                    loggers.log(rec)
                bar.update(min(problem.env_steps, budget) - bar.n)
                bar.set_postfix(test=f"{rec.get('test_mean', float('nan')):.1f}", refresh=False)
                if reached_at is not None:
                    stop = "target"
                    break
    finally:
        bar.close()
        problem.close()
        if owned and hasattr(evaluator, "close"):
            evaluator.close()
    seconds = time.perf_counter() - start
    summary = {"best": best, "env_steps": problem.env_steps, "budget": budget, "stop": stop,
               "first_generation_steps": history[0]["env_steps"] if history else 0, "reached_at": reached_at,
               "generations": strategy.generation, "seconds": seconds, "test_seconds": test_seconds}
    final_dir = None
    if out:
        from zoopt.training.figures import plot_run

        final_dir = os.path.join(out, "final")
        _save_policy(final_dir, problem, strategy.center.detach().clone(),
                     {**meta, "generation": strategy.generation, "env_steps": problem.env_steps,
                      "eval_generation": strategy.generation})
        write_json(os.path.join(out, "summary.json"), {**meta, **summary})
        plot_run(out)  # the same figure ``zoopt plot`` draws
    return {**summary, "history": history, "center": strategy.center.detach().clone(), "problem": problem,
            "final_dir": final_dir}


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


__all__ = ["train_rl", "make_rl_strategy", "make_rl_evaluator", "write_gif", "default_rl_dir"]
