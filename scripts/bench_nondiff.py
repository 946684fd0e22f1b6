"""Non-differentiable networks benchmark (issue 17, polystep.md §4.1): for each zoo model and seed,

* ours (``zoopt.PolyStep``) vs the official ``polystep`` package, same config (the paper's
  per-model config, polystep.md §3, pinned here so a change of zoopt's defaults cannot move it;
  only the rank and the size below differ), same batches, same number of steps;
* OpenAI-ES, EGGROLL, sep-CMA-ES (pycma) and SPSA with the paper's baseline settings, each given
  the stepping time of ours on that model and seed;
* Adam on the smooth twin for the same epochs as ours: the ceiling (its twin's accuracy; the
  hard model with the twin's weights is scored too).

Accuracy: "val-selected" is the test accuracy of the epoch with the best validation accuracy;
"test-selected" is the best test accuracy over the epochs (the paper's ``best_accuracy``, which
selects on test); "last" is the last epoch's. Each is reported per seed and as mean ± std
(sample std) over the seeds.

Clock: with ``--clock cpu`` (the default) every stepping time, the time per step and the ES
budgets are this process's CPU seconds (``time.process_time``; one thread), so a busy shared
machine changes the wall time of a run but not the budgets or the ratios. ``--clock wall`` uses
wall seconds (``time.perf_counter``) as ``zoopt.train`` does on its own.

CPU default (issue 17 "a CPU size where every model learns"): scikit-learn digits (8x8 = 64
inputs: 1,168 train / 270 val / 359 test), batch 32, the per-model rank and epochs of
``CPU_MODELS``, the same for ours and the official package. Why: on 784-input MNIST one step
costs seconds (candidates x batch x a forward each; at the paper's ranks MoE makes 22k
candidates per step, INT8/argmax 10-12k), and the table costs about 5-11x ours per model and
seed (the official package's steps plus four ES baselines at ours' time), so in ~75 CPU
minutes for 6 models x 7 methods x 3 seeds no model got more than a few dozen steps and SNN,
staircase and MoE stayed near chance (the earlier default: 4,096 MNIST images, batch 256, 2
epochs, ~2.5 h for one seed). On digits at batch 32 a step is 0.04-1.5 CPU s, so every model
gets 72-360 steps. Rank: the paper's where it is affordable (staircase 4, MLP 8), else 1 (fewer
candidates per step: INT8 and argmax at rank 8 cost 4-5 s a step, MoE at rank 4 11 s). Staircase
needs rank 4 (at rank 1 it stays at chance). Seed-0 probes of ours (CPU s per step ours /
official at commit 5818077 on the loaded 2-core machine; test accuracy of ours):

    snn       rank 1, 288 steps: 0.07 / 0.43 s, 49.0%     int8   rank 1, 108 steps (batch 64): 0.24 / 0.16 s, 89.1%
    staircase rank 4, 288 steps: 0.16 / 0.43 s, 86.1%     argmax rank 1, 108 steps (batch 64): 0.14 / 0.10 s, 72.1%
    moe       rank 1, 73 steps (batch 16): 1.45 / 0.60 s, 44.8%   mlp rank 8, 360 steps: 0.04 / 0.09 s, 96.1%

Expected cost of the whole default table: ~80 CPU minutes at --threads 1 (MoE a third of it).

``--full``: the paper's size (all of MNIST's 50k training images, batch 512, 30 epochs, the
paper's rank per model), meant for a GPU.

Writes ``results.json`` (after every run, atomically, so an interrupted benchmark keeps what
finished; ``--resume`` skips what is there) and ``results.png`` (learning curves) into ``--out``.

    python scripts/bench_nondiff.py --threads 1                  # the CPU table, seeds 0,1,2
    python scripts/bench_nondiff.py --models mlp,snn --seeds 0
    python scripts/bench_nondiff.py --full --device cuda
    python scripts/summarize_nondiff.py runs/bench_nondiff       # the markdown table
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import time
import traceback
import types

import torch

from zoopt.problems.zoo import MODELS, zoo_data
from zoopt.training import train_zoo

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import official_polystep  # noqa: E402  (registers the method polystep_official)

ALL_METHODS = ("polystep", "polystep_official", "openai_es", "eggroll", "sep_cma_es", "spsa", "adam")
ES_METHODS = ("openai_es", "eggroll", "sep_cma_es", "spsa")
POLYSTEP_METHODS = ("polystep", "polystep_official")
PAPER = {"snn": 93.36, "int8": 97.15, "argmax": 86.84, "staircase": 93.17, "moe": 90.70, "mlp": 96.00}

# The paper's PolyStep config per model (polystep.md §3), every key given, so neither zoopt's defaults
# nor its zoo_configs can move this benchmark. Floats are flat (radii times eps); pairs are cosines
# over all the run's steps; momentum False = none.
_COMMON = dict(config="paper", polytope="orthoplex", particle_dim=8, num_probes=1, momentum=False,
               biased_rotation=False, absorb_interval=0, amortize=1)
PAPER_POLYSTEP = {
    "snn": dict(_COMMON, rank=4, epsilon=0.5, step_radius=2.0, probe_radius=1.0, biased_rotation=True,
                absorb_interval=20),
    "int8": dict(_COMMON, rank=8, epsilon=(5.0, 0.3), step_radius=(32.0, 8.0), probe_radius=(2.0, 0.5),
                 momentum=(0.3, 0.5)),
    "argmax": dict(_COMMON, rank=8, epsilon=(5.0, 0.3), step_radius=(32.0, 8.0), probe_radius=(2.0, 0.5)),
    "staircase": dict(_COMMON, rank=4, epsilon=(5.0, 1.0), step_radius=(64.0, 32.0), probe_radius=(2.0, 1.0)),
    "moe": dict(_COMMON, rank=4, epsilon=0.5, step_radius=(12.0, 4.0), probe_radius=1.0, biased_rotation=True,
                absorb_interval=20),
    "mlp": dict(_COMMON, rank=8, epsilon=(10.0, 0.1), step_radius=(5.0, 1.0), probe_radius=(10.0, 2.0), amortize=3),
}

# The CPU size: data, batch and per-model rank/epochs (see the module docstring for why).
CPU_SIZE = dict(data="digits", batch_size=32, limit_train=None, limit_eval=None)
CPU_MODELS = {
    "snn": dict(rank=1, epochs=8),
    "int8": dict(rank=1, epochs=4),
    "argmax": dict(rank=1, epochs=5),
    "staircase": dict(rank=4, epochs=8),
    "moe": dict(rank=1, epochs=2),
    "mlp": dict(rank=8, epochs=10),
}
FULL_SIZE = dict(data="mnist", batch_size=512, limit_train=None, limit_eval=None, epochs=30)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ",".join(MODELS))
    p.add_argument("--methods", default=",".join(ALL_METHODS), help="comma-separated subset of " + ",".join(ALL_METHODS))
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--full", action="store_true", help="paper size: full MNIST, batch 512, 30 epochs, paper ranks")
    p.add_argument("--data", default=None, choices=("digits", "mnist", "mnist14"),
                   help="mnist14: MNIST average-pooled 2x2 to 14x14 (196 inputs)")
    p.add_argument("--epochs", type=int, default=None, help="epochs for every model (default: per model)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--limit-train", type=int, default=None)
    p.add_argument("--limit-eval", type=int, default=None)
    p.add_argument("--rank", type=int, default=None, help="subspace rank for every model (default: per model)")
    p.add_argument("--es-time", type=float, default=None,
                   help="seconds of stepping per ES baseline (default: ours' stepping time on that model and seed)")
    p.add_argument("--clock", default="cpu", choices=("cpu", "wall"),
                   help="stepping times and ES budgets in process CPU seconds (default) or wall seconds")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=os.path.join("runs", "bench_nondiff"))
    p.add_argument("--resume", action="store_true", help="keep the runs already in --out/results.json")
    p.add_argument("--progress", action="store_true")
    args = p.parse_args(argv)
    size = FULL_SIZE if args.full else CPU_SIZE
    for k, v in size.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    args.models = [m for m in args.models.split(",") if m]
    args.methods = [m for m in args.methods.split(",") if m]
    bad = [m for m in args.models if m not in MODELS] + [m for m in args.methods if m not in ALL_METHODS]
    if bad:
        p.error(f"unknown models/methods: {bad}")
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        p.error(f"--seeds must be comma-separated ints, got {args.seeds!r}")
    if not args.seeds or len(set(args.seeds)) != len(args.seeds) or min(args.seeds) < 0:
        p.error(f"--seeds must be distinct ints >= 0, got {args.seeds}")
    return args


def model_size(name, args) -> dict:
    """Rank and epochs of model ``name``: the user's, else the paper's (--full) or the CPU size's."""
    if args.full:
        default = {"rank": PAPER_POLYSTEP[name]["rank"], "epochs": FULL_SIZE["epochs"]}
    else:
        default = CPU_MODELS[name]
    return {k: getattr(args, k) if getattr(args, k) is not None else default[k] for k in ("rank", "epochs")}


def polystep_overrides(name, size) -> dict:
    """The pinned paper config of ``name`` with this size's rank."""
    return {**PAPER_POLYSTEP[name], "rank": size["rank"]}


def load_data(args) -> dict:
    if args.data == "mnist14":
        data = zoo_data("mnist", limit_train=args.limit_train, limit_eval=args.limit_eval)
        for k in ("x_train", "x_val", "x_test"):
            data[k] = torch.nn.functional.avg_pool2d(data[k].view(-1, 1, 28, 28), 2).flatten(1)
    else:
        data = zoo_data(args.data, limit_train=args.limit_train, limit_eval=args.limit_eval)
    return {k: v.to(args.device) for k, v in data.items()}


@contextlib.contextmanager
def use_clock(clock: str):
    """While open, ``zoopt.train`` times its steps with the CPU clock (``time.process_time``, for
    ``"cpu"``) or the wall clock (``"wall"``, its own)."""
    loop = sys.modules["zoopt.train"]
    before = loop.time
    loop.time = time if clock == "wall" else types.SimpleNamespace(perf_counter=time.process_time)
    try:
        yield
    finally:
        loop.time = before


def run_one(method, name, data, args, size, seed, *, time_limit=None):
    steps_per_epoch = max(1, len(data["x_train"]) // args.batch_size)
    return train_zoo(name, method, data=data, epochs=10_000 if time_limit is not None else size["epochs"],
                     batch_size=args.batch_size, seed=seed, polystep_overrides=polystep_overrides(name, size),
                     time_limit=time_limit, progress=args.progress, device=args.device,
                     total_steps=size["epochs"] * steps_per_epoch)


def run_seed(name, seed, data, args, size, runs, log, save):
    """Every method on model ``name`` with ``seed``; ``runs`` (method -> summary) is filled in place and
    ``save()`` runs after each method, so an interrupted benchmark keeps what it finished."""
    def done(method):
        return method in runs and "error" not in runs[method]

    def record(method, fn):
        try:
            runs[method] = fn()
        except Exception as exc:  # report and go on with the other methods
            traceback.print_exc()
            runs[method] = {"error": f"{type(exc).__name__}: {exc}"}
        log(line(method, runs[method]))
        save()

    missing = {"polystep": None, "polystep_official": official_polystep.available()}
    for method in POLYSTEP_METHODS:
        if method not in args.methods or done(method):
            continue
        if missing[method]:
            runs[method] = {"error": missing[method]}
            log(f"  {method:18s} SKIPPED: {missing[method]}")
            continue
        record(method, lambda: run_one(method, name, data, args, size, seed))
    budget = args.es_time
    for ref in POLYSTEP_METHODS:
        if budget is None and "train_time_s" in runs.get(ref, {}):
            budget = runs[ref]["train_time_s"]
    for method in ES_METHODS:
        if method not in args.methods or done(method):
            continue
        if budget is None:
            runs[method] = {"error": "no PolyStep run to match the stepping time (give --es-time)"}
            log(line(method, runs[method]))
            continue

        def es(method=method):
            res = run_one(method, name, data, args, size, seed, time_limit=budget)
            res["time_budget_s"] = budget
            return res
        record(method, es)
    if "adam" in args.methods and not done("adam"):
        record("adam", lambda: run_one("adam", name, data, args, size, seed))
    return runs


def test_selected(summary, prefix: str = "") -> float | None:
    """The best test accuracy over the epochs (the paper's figure: selected on test); ``prefix="twin_"``:
    the smooth twin's (Adam)."""
    recs = summary.get("records")
    return max(r[f"{prefix}test_acc"] for r in recs) if recs else None


def line(method, s):
    if "error" in s:
        return f"  {method:18s} ERROR: {s['error']}"
    twin = f"  twin {100 * s['twin_best_test_acc']:.2f}" if "twin_best_test_acc" in s else ""
    return (f"  {method:18s} val-sel {100 * s['best_test_acc']:6.2f}  test-sel {100 * test_selected(s):6.2f}  "
            f"last {100 * s['last_test_acc']:6.2f}  (ep {s['best_epoch']})  {s['steps']:6d} steps  "
            f"{s['evaluations']:>11,d} evals  {s['time_per_step_s']:8.3f} s/step  {s['train_time_s']:7.1f} s{twin}")


def _stats(values):
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return None
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values), "values": values}


def aggregate(results) -> dict:
    """Per model and method: mean ± std over the seeds (accuracies in %), and ours/official per seed."""
    out = {}
    for name, res in results.items():
        seeds = res.get("seeds", {})
        methods = {m for runs in seeds.values() for m in runs}
        agg = {}
        for method in [m for m in ALL_METHODS if m in methods]:
            ok = [runs[method] for runs in seeds.values() if "best_test_acc" in runs.get(method, {})]
            if not ok:
                continue
            agg[method] = {
                "val_selected_test_acc": _stats([100 * s["best_test_acc"] for s in ok]),
                "test_selected_test_acc": _stats([100 * test_selected(s) for s in ok]),
                "last_test_acc": _stats([100 * s["last_test_acc"] for s in ok]),
                "time_per_step_s": _stats([s["time_per_step_s"] for s in ok]),
                "steps": _stats([s["steps"] for s in ok]),
                "evaluations": _stats([s["evaluations"] for s in ok]),
                "train_time_s": _stats([s["train_time_s"] for s in ok]),
            }
            if method == "adam":
                agg[method]["twin_val_selected_test_acc"] = _stats([100 * s["twin_best_test_acc"] for s in ok])
                agg[method]["twin_test_selected_test_acc"] = _stats([100 * test_selected(s, "twin_") for s in ok])
        ratio = {}
        for seed, runs in seeds.items():
            ours, theirs = runs.get("polystep", {}), runs.get("polystep_official", {})
            if "time_per_step_s" in ours and "time_per_step_s" in theirs:
                ratio[seed] = {"time_per_step": ours["time_per_step_s"] / theirs["time_per_step_s"],
                               "evaluations": ours["evaluations"] / max(1, theirs["evaluations"]),
                               "val_selected_pp": 100 * (ours["best_test_acc"] - theirs["best_test_acc"]),
                               "test_selected_pp": 100 * (test_selected(ours) - test_selected(theirs)),
                               "last_pp": 100 * (ours["last_test_acc"] - theirs["last_test_acc"])}
        if ratio:
            agg["ours_over_official"] = {"per_seed": ratio, **{
                k: _stats([r[k] for r in ratio.values()]) for k in next(iter(ratio.values()))}}
        out[name] = agg
    return out


def plot(results, path, clock="cpu"):
    """One panel per model: validation accuracy against stepping seconds, every method, every seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(results)
    cols = min(3, max(1, len(models)))
    rows = math.ceil(len(models) / cols) if models else 1
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.9 * rows), squeeze=False)
    colors = dict(zip(ALL_METHODS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for ax, name in zip(axes.flat, models):
        seen = set()
        for _seed, runs in sorted(results[name].get("seeds", {}).items()):
            for method in ALL_METHODS:
                recs = runs.get(method, {}).get("records")
                if not recs:
                    continue
                key = "twin_val_acc" if method == "adam" else "val_acc"
                ax.plot([max(r["train_time_s"], 1e-3) for r in recs], [100 * r[key] for r in recs],
                        color=colors[method], alpha=0.75, lw=1.2, ls="--" if method == "polystep_official" else "-",
                        label=None if method in seen else (method + (" (twin)" if method == "adam" else "")))
                seen.add(method)
        ax.axhline(10, color="grey", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_title(f"{name} (chance 10%)")
        ax.set_xlabel(f"stepping time ({clock} s)")
        ax.set_ylabel("validation accuracy %")
        ax.grid(alpha=0.3)
        if seen:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(models):]:
        ax.axis("off")
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def code_version() -> dict:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=20).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "zoopt", "problems", "scripts"], cwd=root,
                               capture_output=True, text=True, timeout=20).stdout.split("\n")
    except (OSError, subprocess.SubprocessError) as exc:
        return {"error": str(exc)}
    return {"commit": head, "uncommitted": [d.strip() for d in dirty if d.strip()]}


def preload() -> None:
    """Import every optimizer's code now, so a long run uses the code that was on disk when it started."""
    import importlib

    for mod in ("zoopt.polystep", "zoopt.polystep.evaluate", "zoopt.eggroll", "zoopt.openai_es", "zoopt.cma_es",
                "zoopt.spsa", "zoopt.training.twin", "zoopt.training.strategy_module"):
        importlib.import_module(mod)
    if official_polystep.available() is None:
        importlib.import_module("polystep")


def main(argv=None) -> int:
    from zoopt.atomic import write_text

    args = parse_args(argv)
    preload()
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "results.json")
    data = load_data(args)
    config = {k: v for k, v in vars(args).items()}
    config.update(n_train=len(data["x_train"]), n_val=len(data["x_val"]), n_test=len(data["x_test"]),
                  in_features=int(data["x_train"].shape[1]), torch=torch.__version__,
                  threads=torch.get_num_threads(), start=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                  code=code_version(), load_at_start=os.getloadavg(),
                  sizes={m: model_size(m, args) for m in args.models},
                  polystep_config={m: polystep_overrides(m, model_size(m, args)) for m in args.models})
    results = {}
    if args.resume and os.path.exists(path):
        with open(path) as fh:
            prev = json.load(fh)
        results = prev.get("results", {})
        config["resumed_from"] = prev.get("config", {})
    print(f"bench_nondiff: {args.data}, {config['n_train']} train / {config['n_val']} val / {config['n_test']} test, "
          f"{config['in_features']} inputs, batch {args.batch_size}, seeds {args.seeds}, {args.threads} threads, "
          f"{args.clock} clock, device {args.device}, code {config['code'].get('commit', '?')[:10]}", flush=True)

    def save():
        write_text(path, json.dumps({"config": config, "results": results, "aggregate": aggregate(results)},
                                    indent=1) + "\n")

    t0 = time.time()
    with use_clock(args.clock):
        run_all(args, data, results, save, t0)
    print(f"done in {time.time() - t0:.0f} s -> {args.out}/results.json, results.png")
    return 0


def run_all(args, data, results, save, t0):
    for seed in args.seeds:
        for name in args.models:
            size = model_size(name, args)
            entry = results.setdefault(name, {"size": size, "seeds": {}})
            if entry["size"] != size:
                raise SystemExit(f"--resume: {name} ran at {entry['size']} before, not {size}")
            print(f"{name} seed {seed}  rank {size['rank']}, {size['epochs']} epochs  "
                  f"(paper, best test: PolyStep {PAPER[name]:.2f})  [{time.time() - t0:.0f} s]", flush=True)
            runs = entry["seeds"].setdefault(str(seed), {})
            run_seed(name, seed, data, args, size, runs, lambda s: print(s, flush=True), save)
            r = aggregate({name: {"seeds": {str(seed): runs}}})[name].get("ours_over_official")
            if r:
                r = r["per_seed"][str(seed)]
                print(f"  ours/official: time per step x{r['time_per_step']:.3f}, evaluations x{r['evaluations']:.4f}, "
                      f"val-selected {r['val_selected_pp']:+.2f} pp, last {r['last_pp']:+.2f} pp", flush=True)
            save()
            plot(results, os.path.join(args.out, "results.png"), args.clock)


if __name__ == "__main__":
    sys.exit(main())
