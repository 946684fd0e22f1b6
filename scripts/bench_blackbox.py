"""Black-box benchmark: 100-D sphere, Rosenbrock and Rastrigin.

zoopt's OpenAI-ES and random search vs pycma (CMA-ES and sep-CMA-ES) and
nevergrad (its NGOpt wizard and its CMA) at equal evaluation budgets and seeds.
Prints final values and wall time with ratios to zoopt's OpenAI-ES, writes
JSON and a PNG of the final values.

    python scripts/bench_blackbox.py                 # CPU size: budget 20,000, 3 seeds
    python scripts/bench_blackbox.py --full          # budget 100,000, 5 seeds
"""
from __future__ import annotations

import argparse
import json
import os
import time

# one BLAS/OpenMP thread for every method (set before numpy loads): on a shared
# 2-core machine, spinning thread pools distort wall times by 10x or more
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np
import torch

import zoopt


def sphere(x):
    return (x ** 2).sum(-1)


def rosenbrock(x):
    return (100 * (x[..., 1:] - x[..., :-1] ** 2) ** 2 + (1 - x[..., :-1]) ** 2).sum(-1)


def rastrigin(x):
    return 10 * x.shape[-1] + (x ** 2 - 10 * np.cos(2 * np.pi * x)).sum(-1)


FUNCTIONS = {"sphere": (sphere, 3.0), "rosenbrock": (rosenbrock, 0.0), "rastrigin": (rastrigin, 3.0)}


def run_zoopt(method, fn, x0, budget, seed):
    opts = {"openai_es": dict(popsize=100, sigma=0.1, lr=0.05),
            "random": dict(popsize=100, sigma=1.0)}[method]
    r = zoopt.minimize(fn, x0, method=method, budget=budget, seed=seed, **opts)
    return r.fun


def run_pycma(fn, x0, budget, seed, diagonal):
    import cma

    opts = {"seed": seed + 1, "verbose": -9, "maxfevals": budget, "CMA_diagonal": diagonal}
    es = cma.CMAEvolutionStrategy(x0, 0.5, opts)
    best = np.inf
    while es.countevals < budget and not es.stop():
        X = es.ask()
        f = fn(np.asarray(X))
        es.tell(X, f.tolist())
        best = min(best, float(f.min()))
    return best


def run_nevergrad(fn, x0, budget, seed, name):
    import nevergrad as ng

    param = ng.p.Array(init=x0)
    param.random_state = np.random.RandomState(seed)
    opt = ng.optimizers.registry[name](parametrization=param, budget=budget)
    best = np.inf
    for _ in range(budget):
        cand = opt.ask()
        f = float(fn(cand.value[None, :])[0])
        opt.tell(cand, f)
        best = min(best, f)
    return best


def peers(args):
    out = {"zoopt OpenAI-ES": lambda fn, x0, s: run_zoopt("openai_es", fn, x0, args.budget, s),
           "zoopt random": lambda fn, x0, s: run_zoopt("random", fn, x0, args.budget, s),
           "pycma CMA-ES": lambda fn, x0, s: run_pycma(fn, x0, args.budget, s, False),
           "pycma sep-CMA-ES": lambda fn, x0, s: run_pycma(fn, x0, args.budget, s, True)}
    try:
        import nevergrad  # noqa: F401

        out["nevergrad NGOpt"] = lambda fn, x0, s: run_nevergrad(fn, x0, args.budget, s, "NGOpt")
        out["nevergrad DiagonalCMA"] = lambda fn, x0, s: run_nevergrad(fn, x0, args.budget, s, "DiagonalCMA")
    except ImportError:
        print("nevergrad is not installed (pip install 'zoopt-engine[bench]'); skipping it")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=100)
    ap.add_argument("--budget", type=int, default=20_000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--full", action="store_true", help="budget 100,000 and 5 seeds")
    ap.add_argument("--functions", nargs="+", default=list(FUNCTIONS), choices=list(FUNCTIONS))
    ap.add_argument("--out", default="runs/bench_blackbox")
    args = ap.parse_args()
    if args.full:
        args.budget, args.seeds = 100_000, 5
    torch.set_num_threads(1)
    zoopt.OpenAIES(dim=2)  # warm-up: torch.optim's first construction imports torch._dynamo (seconds)
    os.makedirs(args.out, exist_ok=True)
    methods = peers(args)
    results = {}
    for fname in args.functions:
        fn, start = FUNCTIONS[fname]
        x0 = np.full(args.dim, start)
        for mname, runner in methods.items():
            vals, secs = [], []
            for seed in range(args.seeds):
                t = time.perf_counter()
                vals.append(float(runner(fn, x0, seed)))
                secs.append(time.perf_counter() - t)
            results[(fname, mname)] = {"final_mean": float(np.mean(vals)), "final_std": float(np.std(vals)),
                                       "seconds": float(np.mean(secs)), "values": vals}
            print(f"  {fname:10s} {mname:22s} {np.mean(vals):12.4g} ± {np.std(vals):.3g}   {np.mean(secs):7.2f} s",
                  flush=True)
    ref = "zoopt OpenAI-ES"
    header = f"{'function':10s} {'method':22s} {'final (mean±std)':>22s} {'time s':>8s} {'time / ours':>11s}"
    print(f"\n{args.dim}-D, budget {args.budget} evaluations, {args.seeds} seeds\n{header}\n{'-' * len(header)}")
    for (fname, mname), r in results.items():
        ratio = r["seconds"] / results[(fname, ref)]["seconds"]
        print(f"{fname:10s} {mname:22s} {r['final_mean']:12.4g} ± {r['final_std']:<8.3g} {r['seconds']:8.2f} {ratio:11.2f}")
    payload = {"dim": args.dim, "budget": args.budget, "seeds": args.seeds,
               "results": [{"function": f, "method": m, **r} for (f, m), r in results.items()]}
    with open(os.path.join(args.out, "results.json"), "w") as fh:
        json.dump(payload, fh, indent=1)
    plot(results, args)


def plot(results, args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.functions), figsize=(5 * len(args.functions), 4), squeeze=False)
    for ax, fname in zip(axes[0], args.functions):
        names = [m for (f, m) in results if f == fname]
        vals = [max(results[(fname, m)]["final_mean"], 1e-12) for m in names]
        ax.barh(names, vals)
        ax.set_xscale("log")
        ax.set_title(f"{fname} ({args.dim}-D, {args.budget} evals)")
    fig.tight_layout()
    path = os.path.join(args.out, "final_values.png")
    fig.savefig(path, dpi=110)
    print(f"wrote {path} and results.json")


if __name__ == "__main__":
    main()
