"""PolyStep with no tuning on small non-differentiable nets, beside the official package, OpenAI-ES and EGGROLL.

Methods, each with its library's defaults and nothing tuned:

* ``ours``: ``zoopt.PolyStep(model, seed=0)`` (model-scaled defaults, :mod:`zoopt.polystep.defaults`);
* ``official``: ``polystep.PolyStepOptimizer(model, seed=0)`` (full space, 2-D particles);
* ``openai_es``: zoopt's OpenAI-ES on the flat weights as ``zoopt train`` builds it
  (``zoopt.zoo_configs.ES_DEFAULTS``: population 50, sigma 0.02, lr 0.01, SGD);
* ``eggroll``: ``zoopt.EGGROLL(model, seed=0)`` (population 256, rank 1, sigma 0.05, lr 0.05).

Models (``--model``), on scikit-learn's digits (64 standardized features, the
seeded train/val/test split of ``zoopt.problems.data``), minibatches of
``--batch`` drawn by a seeded shuffle, cross-entropy, one thread:

* ``staircase``: 64 -> 32 -> 10 with ``floor(5 sigmoid(x)) / 5`` between the layers (issue 17's net);
* ``snn``: the zoo's hard-LIF spiking net built for 64 inputs (64 -> 128 LIF x 15 steps -> 10 LIF counts).

Each method trains for the same budget of *process CPU seconds* (with one
thread that is the wall time of a quiet machine; on a shared machine the wall
time is longer and noisier, so the CPU clock keeps the comparison fair). The
test accuracy is recorded every ``--every`` steps and at least every
``budget / 40`` CPU seconds (evaluation time not counted). Prints accuracy
against steps, member evaluations and CPU seconds, the accuracy reached at
``--marks`` CPU seconds, and writes ``<method>.json`` per method and
``curves.png`` (every method's JSON found in ``--out`` for the same model) under ``--out``,
so methods can run as separate processes into one folder.

    python scripts/bench_polystep_defaults.py                                # staircase, 90 s each, all four
    python scripts/bench_polystep_defaults.py --model snn --budget 360 --methods ours,openai_es
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import time
import warnings

import torch
from torch import nn

METHODS = ("ours", "official", "openai_es", "eggroll")
LABELS = {"ours": "zoopt.PolyStep", "official": "polystep (official)", "openai_es": "OpenAI-ES (zoopt)",
          "eggroll": "EGGROLL (zoopt)"}


def build_model(name: str, seed: int) -> nn.Module:
    """The benchmark net ``name`` with initial weights a pure function of ``seed``."""
    if name == "snn":
        from zoopt.problems.zoo import make_model

        return make_model("snn", seed=seed, in_features=64, num_classes=10)
    if name != "staircase":
        raise ValueError(f"model must be 'staircase' or 'snn', got {name!r}")
    from zoopt.problems.zoo.layers import Staircase

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(64, 32), Staircase(5), nn.Linear(32, 10))


def build_optimizer(method: str, model: nn.Module, seed: int):
    """``(step(x, y, loss_fn), evaluations())`` for ``method`` training ``model`` in place."""
    if method == "ours":
        import zoopt

        opt = zoopt.PolyStep(model, seed=seed)
        return (lambda x, y, f: opt.step((x, y), f)), (lambda: opt.evaluations)
    if method == "official":
        from polystep import PolyStepOptimizer

        opt = PolyStepOptimizer(model, seed=seed)
        return (lambda x, y, f: opt.step_batch(x, y, loss_fn=f)), (lambda: int(sum(opt.state.evals)))
    if method in ("openai_es", "eggroll"):
        from zoopt.training.methods import evaluations, make_optimizer

        opt = make_optimizer(method, model, model_name="mlp", total_steps=1, seed=seed)
        return (lambda x, y, f: opt.step((x, y), f)), (lambda: evaluations(opt))
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def train(method: str, model_name: str, budget: float, every: int, seed: int, batch: int, data: dict) -> dict:
    xtr, ytr = data["x_train"].float(), data["y_train"].long()
    xte, yte = data["x_test"].float(), data["y_test"].long()
    model = build_model(model_name, seed)
    loss_fn = nn.CrossEntropyLoss()
    step, evaluations = build_optimizer(method, model, seed)
    gen = torch.Generator().manual_seed(seed)
    order, at = torch.randperm(len(xtr), generator=gen), 0
    curve, clock, steps, wall = [], 0.0, 0, 0.0
    gap = budget / 40

    def record():
        with torch.no_grad():
            acc = float((model(xte).argmax(1) == yte).float().mean())
        curve.append({"step": steps, "evaluations": evaluations(), "cpu_s": round(clock, 3),
                      "wall_s": round(wall, 3), "test_acc": acc})

    record()
    while clock < budget:
        if at + batch > len(xtr):
            order, at = torch.randperm(len(xtr), generator=gen), 0
        rows = order[at:at + batch]
        at += batch
        start, start_wall = time.process_time(), time.perf_counter()
        step(xtr[rows], ytr[rows], loss_fn)
        clock += time.process_time() - start
        wall += time.perf_counter() - start_wall
        steps += 1
        if steps % every == 0 or clock - curve[-1]["cpu_s"] >= gap:
            record()
    if curve[-1]["step"] != steps:
        record()
    return {"method": method, "model": model_name, "budget_cpu_s": budget, "batch": batch, "seed": seed,
            "curve": curve, "steps": steps, "evaluations": evaluations(), "cpu_s": clock, "wall_s": wall,
            "final_test_acc": curve[-1]["test_acc"], "best_test_acc": max(c["test_acc"] for c in curve)}


def acc_at(curve: list, seconds: float):
    """Test accuracy of the last record at or before ``seconds`` CPU seconds (None past the run)."""
    if curve[-1]["cpu_s"] < seconds * 0.98:
        return None
    return max((c for c in curve if c["cpu_s"] <= seconds), key=lambda c: c["cpu_s"])["test_acc"]


def first_reaching(curve: list, level: float):
    """``(cpu_s, step, evaluations)`` of the first record at or above ``level`` (None if never)."""
    hit = next((c for c in curve if c["test_acc"] >= level), None)
    return None if hit is None else (hit["cpu_s"], hit["step"], hit["evaluations"])


def report(res: dict, marks, level: float) -> str:
    lines = [f"{res['method']:9s} {'step':>6s} {'evals':>11s} {'cpu s':>7s} {'test':>6s}"]
    lines += [f"{'':9s} {c['step']:6d} {c['evaluations']:11d} {c['cpu_s']:7.1f} {c['test_acc']:6.3f}"
              for c in res["curve"]]
    at = ", ".join(f"{m:g} s: {acc_at(res['curve'], m)}" for m in marks)
    hit = first_reaching(res["curve"], level)
    lines.append(f"{res['method']} on {res['model']}: {res['steps']} steps, {res['evaluations']:,} evaluations, "
                 f"{res['cpu_s']:.1f} CPU s ({res['wall_s']:.1f} wall s, load {res['load']:.2f}), final "
                 f"{res['final_test_acc']:.3f}, best {res['best_test_acc']:.3f}; at {at}; "
                 f"{level:.0%} " + (f"after {hit[0]:.1f} CPU s, step {hit[1]}, {hit[2]:,} evaluations"
                                     if hit else "not reached"))
    return "\n".join(lines)


def plot(out: str, model_name: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    runs = []
    for path in sorted(glob.glob(os.path.join(out, "*.json"))):
        with open(path, encoding="utf-8") as fh:
            res = json.load(fh)
        if isinstance(res, dict) and res.get("model") == model_name and res.get("method") in METHODS:
            runs.append(res)
    if not runs:
        return
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4), sharey=True)
    for res in sorted(runs, key=lambda r: METHODS.index(r["method"])):
        acc = [c["test_acc"] for c in res["curve"]]
        for ax, key in zip(axes, ("step", "evaluations", "cpu_s")):
            ax.plot([max(c[key], 1) if key != "cpu_s" else c[key] for c in res["curve"]], acc,
                    label=LABELS[res["method"]])
    for ax, key in zip(axes, ("steps", "member evaluations", "process CPU seconds (1 thread)")):
        ax.set_xlabel(key)
        ax.grid(alpha=0.3)
    axes[0].set_xscale("log")
    axes[1].set_xscale("log")
    axes[0].set_ylabel("test accuracy")
    axes[0].set_title(f"{model_name} on digits", loc="left")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    from zoopt.atomic import atomic_open

    with atomic_open(os.path.join(out, "curves.png"), "wb") as fh:
        fig.savefig(fh, format="png", dpi=120)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="staircase", choices=("staircase", "snn"))
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {','.join(METHODS)}")
    ap.add_argument("--budget", type=float, default=None,
                    help="process CPU seconds per method (default: 90 for staircase, 360 for snn)")
    ap.add_argument("--every", type=int, default=25, help="test accuracy every this many steps")
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--marks", default="90,360", help="report the accuracy at these CPU seconds")
    ap.add_argument("--level", type=float, default=None,
                    help="report when the test accuracy first reaches this (default: 0.85 staircase, 0.70 snn)")
    ap.add_argument("--skip-official", action="store_true", help="drop 'official' from --methods")
    ap.add_argument("--out", default=None, help="default runs/bench_polystep_defaults/MODEL")
    args = ap.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m and not (args.skip_official and m == "official")]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        ap.error(f"unknown methods {bad}; choose from {METHODS}")
    budget = args.budget if args.budget is not None else (360.0 if args.model == "snn" else 90.0)
    level = args.level if args.level is not None else (0.70 if args.model == "snn" else 0.85)
    marks = [float(m) for m in args.marks.split(",") if m]
    out = args.out or os.path.join("runs", "bench_polystep_defaults", args.model)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    from zoopt.atomic import write_json
    from zoopt.problems.zoo import zoo_data

    data = zoo_data("digits")
    os.makedirs(out, exist_ok=True)
    results = []
    for method in methods:
        load = os.getloadavg()[0]
        res = train(method, args.model, budget, args.every, args.seed, args.batch, data)
        res.update(load=load, load_after=os.getloadavg()[0], threads=torch.get_num_threads(),
                   acc_at={f"{m:g}": acc_at(res["curve"], m) for m in marks},
                   first_reaching={f"{level:g}": first_reaching(res["curve"], level)})
        write_json(os.path.join(out, f"{method}.json"), res)
        print(report(res, marks, level), flush=True)
        results.append(res)
        plot(out, args.model)
    return results


if __name__ == "__main__":
    main()
