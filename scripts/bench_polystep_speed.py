"""Time per PolyStep step: zoopt.PolyStep vs the official ``polystep`` package, side by side.

Same model (from ``zoopt.problems.zoo``, identical initial weights), same
batch, same hybrid-subspace rank, polytope, particle dimension and number of
candidates per step; both use one probe per vertex and the softmax solver.
Prints seconds per step for each and the ratio ours/official, writes JSON
(and a PNG bar chart when matplotlib is present) under ``runs/bench_polystep_speed/``.

    python scripts/bench_polystep_speed.py                 # CPU default: mlp rank 8, snn rank 4 (simplex+orthoplex)
    python scripts/bench_polystep_speed.py --models mlp --steps 3
    python scripts/bench_polystep_speed.py --full          # paper size on a GPU (more steps)
"""
from __future__ import annotations

import argparse
import json
import os
import time
import warnings

import torch
from torch import nn

CASES = {  # name -> (zoo model, rank, polytope, official figure measured by the lead, s/step)
    "mlp": ("mlp", 8, "orthoplex", 4.1),
    "snn-simplex": ("snn", 4, "simplex", 10.8),
    "snn": ("snn", 4, "orthoplex", 18.5),
}
HYPER = dict(epsilon=0.5, step_radius=2.0, probe_radius=1.0)  # the SNN recipe; radii multiplied by epsilon


def make_pair(model_name: str, seed: int):
    from zoopt.problems.zoo import make_model
    return make_model(model_name, seed=seed), make_model(model_name, seed=seed)


def batch(size: int, device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(size, 784, generator=g)
    y = torch.randint(0, 10, (size,), generator=g)
    try:  # real MNIST when available (spike counts depend on the input statistics)
        from zoopt.problems.zoo import zoo_data
        data = zoo_data("mnist", limit_train=size)
        x, y = data["x_train"][:size].float(), data["y_train"][:size].long()
    except Exception:
        pass
    return x.to(device), y.to(device)


def time_ours(model, rank, polytope, x, y, steps):
    import zoopt
    opt = zoopt.PolyStep(model, rank=rank, polytope=polytope, particle_dim=8, seed=0, **HYPER)
    loss_fn = nn.CrossEntropyLoss()
    times = []
    for _ in range(steps + 1):  # the first step also verifies the stage protocol: not timed
        t = time.perf_counter()
        opt.step((x, y), loss_fn)
        times.append(time.perf_counter() - t)
    return times[1:], opt.evaluations_per_step


def time_official(model, rank, polytope, x, y, steps):
    from polystep import HybridSubspace, ParamLayout, PolyStepOptimizer
    sub = HybridSubspace.from_layout(ParamLayout.from_module(model), rank=rank, rotation_interval=0)
    opt = PolyStepOptimizer(model, subspace=sub, polytope_type=polytope, subspace_particle_dim=8, solver="softmax",
                            num_probe=1, seed=0, **HYPER)
    loss_fn = nn.CrossEntropyLoss()
    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        opt.step_batch(x, y, loss_fn=loss_fn)
        times.append(time.perf_counter() - t)
    evals = getattr(opt, "function_evals", None) or getattr(getattr(opt, "_state", None), "function_evals", None)
    return times[1:], evals


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["mlp", "snn-simplex", "snn"], choices=sorted(CASES))
    ap.add_argument("--steps", type=int, default=2, help="timed steps per implementation (after one warm-up)")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--full", action="store_true", help="paper size on a GPU: 5 timed steps on cuda")
    ap.add_argument("--skip-official", action="store_true")
    ap.add_argument("--out", default="runs/bench_polystep_speed")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    device = "cuda" if args.full and torch.cuda.is_available() else "cpu"
    steps = 5 if args.full else args.steps
    x, y = batch(args.batch, device)
    results = []
    for case in args.models:
        model_name, rank, polytope, reference = CASES[case]
        ours_model, off_model = make_pair(model_name, seed=0)
        ours_model.to(device)
        off_model.to(device)
        ours, n_ours = time_ours(ours_model, rank, polytope, x, y, steps)
        print(f"{case:12s} ours: {[round(t, 2) for t in ours]} s/step ({n_ours} candidates)", flush=True)
        row = {"case": case, "model": model_name, "rank": rank, "polytope": polytope, "batch": args.batch,
               "candidates_per_step": n_ours, "ours_s_per_step": sum(ours) / len(ours), "ours_times": ours,
               "official_reference_s_per_step": reference, "device": device, "threads": args.threads}
        if not args.skip_official:
            off, _ = time_official(off_model, rank, polytope, x, y, steps)
            print(f"{case:12s} official: {[round(t, 2) for t in off]} s/step", flush=True)
            row.update(official_s_per_step=sum(off) / len(off), official_times=off,
                       ratio=row["ours_s_per_step"] / (sum(off) / len(off)))
        results.append(row)
        msg = f"{case:12s} {n_ours:6d} cand/step  ours {row['ours_s_per_step']:7.2f} s/step"
        if "ratio" in row:
            msg += f"  official {row['official_s_per_step']:7.2f} s/step  ratio ours/official {row['ratio']:.2f}"
        print(msg, flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as fh:
        json.dump(results, fh, indent=2)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 3))
        names = [r["case"] for r in results]
        ax.bar([i - 0.2 for i in range(len(names))], [r["ours_s_per_step"] for r in results], 0.4, label="zoopt")
        if all("official_s_per_step" in r for r in results):
            ax.bar([i + 0.2 for i in range(len(names))], [r["official_s_per_step"] for r in results], 0.4,
                   label="polystep (official)")
        ax.set_xticks(range(len(names)), names)
        ax.set_ylabel("s / step")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(args.out, "speed.png"), dpi=120)
    except ImportError:
        pass
    return results


if __name__ == "__main__":
    main()
