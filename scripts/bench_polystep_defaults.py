"""PolyStep with no tuning: ``zoopt.PolyStep(model, seed=0)`` vs the official ``polystep.PolyStepOptimizer(model, seed=0)``.

The net of issue 17: 64 -> 32 -> 10 with the staircase activation
``floor(5 sigmoid(x)) / 5`` between the layers, on scikit-learn's digits
(standardized, the seeded train/val/test split of ``zoopt.problems.data``),
minibatches of 200 drawn by a seeded shuffle, cross-entropy, one thread.
Each optimizer trains for the same budget of *process CPU seconds* (with one
thread that is the wall time of a quiet machine; on a shared machine the wall
time is longer and noisier, so the CPU clock keeps the comparison fair), and
the test accuracy is recorded every ``--every`` steps (evaluation time not
counted). Prints accuracy against steps, candidate evaluations and seconds,
writes ``results.json`` and ``curves.png`` under ``--out``.

    python scripts/bench_polystep_defaults.py                  # 90 s each, both
    python scripts/bench_polystep_defaults.py --budget 30 --skip-official
"""
from __future__ import annotations

import argparse
import os
import time
import warnings

import torch
from torch import nn


def staircase_net(seed: int) -> nn.Module:
    from zoopt.problems.zoo.layers import Staircase

    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 32), Staircase(5), nn.Linear(32, 10))


def train(kind: str, budget: float, every: int, seed: int, batch: int, data: dict) -> dict:
    import zoopt

    xtr, ytr = data["x_train"].float(), data["y_train"].long()
    xte, yte = data["x_test"].float(), data["y_test"].long()
    model = staircase_net(seed)
    loss_fn = nn.CrossEntropyLoss()
    if kind == "ours":
        opt = zoopt.PolyStep(model, seed=seed)
        evaluations = lambda: opt.evaluations  # noqa: E731
        step = lambda x, y: opt.step((x, y), loss_fn)  # noqa: E731
    else:
        from polystep import PolyStepOptimizer
        opt = PolyStepOptimizer(model, seed=seed)
        evaluations = lambda: int(sum(opt.state.evals))  # noqa: E731
        step = lambda x, y: opt.step_batch(x, y, loss_fn=loss_fn)  # noqa: E731
    gen = torch.Generator().manual_seed(seed)
    order, at = torch.randperm(len(xtr), generator=gen), 0
    curve, clock, steps = [], 0.0, 0

    def record():
        with torch.no_grad():
            acc = float((model(xte).argmax(1) == yte).float().mean())
        curve.append({"step": steps, "evaluations": evaluations(), "cpu_s": round(clock, 2), "test_acc": acc})

    record()
    while clock < budget:
        if at + batch > len(xtr):
            order, at = torch.randperm(len(xtr), generator=gen), 0
        rows = order[at:at + batch]
        at += batch
        start = time.process_time()
        step(xtr[rows], ytr[rows])
        clock += time.process_time() - start
        steps += 1
        if steps % every == 0:
            record()
    if curve[-1]["step"] != steps:
        record()
    return {"kind": kind, "curve": curve, "steps": steps, "evaluations": evaluations(),
            "final_test_acc": curve[-1]["test_acc"], "best_test_acc": max(c["test_acc"] for c in curve),
            "seconds_to_85": next((c["cpu_s"] for c in curve if c["test_acc"] >= 0.85), None)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=90.0, help="process CPU seconds per optimizer")
    ap.add_argument("--every", type=int, default=25, help="test accuracy every this many steps")
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-official", action="store_true")
    ap.add_argument("--out", default="runs/bench_polystep_defaults")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    from zoopt.atomic import write_json
    from zoopt.problems.data import load_digits_split

    data = load_digits_split()
    kinds = ["ours"] + ([] if args.skip_official else ["official"])
    results = {"budget_cpu_s": args.budget, "batch": args.batch, "seed": args.seed, "load": os.getloadavg()[0],
               "runs": []}
    for kind in kinds:
        res = train(kind, args.budget, args.every, args.seed, args.batch, data)
        results["runs"].append(res)
        print(f"{kind:9s} {'step':>6s} {'evals':>10s} {'cpu s':>7s} {'test':>6s}")
        for c in res["curve"]:
            print(f"{'':9s} {c['step']:6d} {c['evaluations']:10d} {c['cpu_s']:7.1f} {c['test_acc']:6.3f}")
        print(f"{kind}: {res['steps']} steps, {res['evaluations']} evaluations, final {res['final_test_acc']:.3f}, "
              f"85% after {res['seconds_to_85']} CPU s", flush=True)
    results["load_after"] = os.getloadavg()[0]
    os.makedirs(args.out, exist_ok=True)
    write_json(os.path.join(args.out, "results.json"), results)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return results
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2), sharey=True)
    for res in results["runs"]:
        label = "zoopt.PolyStep" if res["kind"] == "ours" else "polystep (official)"
        acc = [c["test_acc"] for c in res["curve"]]
        for ax, key in zip(axes, ("step", "evaluations", "cpu_s")):
            ax.plot([c[key] for c in res["curve"]], acc, label=label)
            ax.set_xlabel(key.replace("_", " "))
    axes[0].set_ylabel("test accuracy")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "curves.png"), dpi=120)
    return results


if __name__ == "__main__":
    main()
