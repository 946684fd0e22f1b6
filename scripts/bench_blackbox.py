"""Black-box benchmark: sphere, Rosenbrock and Rastrigin at 20 and 100 dimensions.

``zoopt.minimize``'s default method (no ``method=``: CMA-ES up to 100-D,
sep-CMA-ES above, see ``zoopt.run.default_method``), zoopt's OpenAI-ES and
random search vs pycma (CMA-ES and sep-CMA-ES) and nevergrad (its NGOpt wizard
and its DiagonalCMA) at equal evaluation budgets and seeds. zoopt's default and
pycma both stop early when pycma's default stop conditions hold (the budget
is then not spent). Prints final values, evaluations and wall time with ratios
to zoopt's default, writes JSON and a PNG of the final values.

    python scripts/bench_blackbox.py                 # CPU size: budget 100 x dim, 2 seeds
    python scripts/bench_blackbox.py --full          # budget 1,000 x dim, 5 seeds

Measured (CPU size, 2 seeds, final value mean; a 2-core machine at load 13-20, so
times are only roughly comparable): 20-D sphere: default 5.0e-6, pycma CMA-ES
8.0e-6, NGOpt 1.8e-5, zoopt OpenAI-ES 94; 20-D Rosenbrock 16.5 / 16.2 / 15.5;
20-D Rastrigin 40 / 84 / 134; 100-D sphere 5.7e-7 / 6.6e-7 / 2.2e-11 (NGOpt),
sep-CMA-ES 1.6e-7; 100-D Rosenbrock 97.5 / 97.1 / 97.1, sep-CMA-ES 94.2;
100-D Rastrigin 439 / 382 / 896, DiagonalCMA 317. The default runs pycma's
CMA-ES, so it matches pycma's values, at 1.3-2.5x its wall time on these
microsecond functions (torch/spec bookkeeping per generation); nevergrad took
4-11x longer than the default. NGOpt fails below ~20-D here with numpy 2
(its MetaModel calls float() on an array): the script records the error.
"""
from __future__ import annotations

import argparse
import os
import time

# one BLAS/OpenMP thread for every method (set before numpy loads): on a shared
# 2-core machine, spinning thread pools distort wall times by 10x or more
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np
import torch

import zoopt
from zoopt import atomic
from zoopt.run import default_method


def sphere(x):
    return (x ** 2).sum(-1)


def rosenbrock(x):
    return (100 * (x[..., 1:] - x[..., :-1] ** 2) ** 2 + (1 - x[..., :-1]) ** 2).sum(-1)


def rastrigin(x):
    return 10 * x.shape[-1] + (x ** 2 - 10 * np.cos(2 * np.pi * x)).sum(-1)


FUNCTIONS = {"sphere": (sphere, 3.0), "rosenbrock": (rosenbrock, 0.0), "rastrigin": (rastrigin, 3.0)}


def run_zoopt(method, fn, x0, budget, seed):
    """``method=None`` is minimize's default, with its default options."""
    opts = {None: {}, "openai_es": dict(popsize=100, sigma=0.1, lr=0.05),
            "random": dict(popsize=100, sigma=1.0)}[method]
    r = zoopt.minimize(fn, x0, method=method, budget=budget, seed=seed, **opts)
    return r.fun, r.nfev


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
    return best, es.countevals


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
    return best, budget


REF = "zoopt default"


def peers():
    """name -> runner(fn, x0, budget, seed) -> (best value, evaluations spent)."""
    out = {REF: lambda fn, x0, b, s: run_zoopt(None, fn, x0, b, s),
           "zoopt OpenAI-ES": lambda fn, x0, b, s: run_zoopt("openai_es", fn, x0, b, s),
           "zoopt random": lambda fn, x0, b, s: run_zoopt("random", fn, x0, b, s),
           "pycma CMA-ES": lambda fn, x0, b, s: run_pycma(fn, x0, b, s, False),
           "pycma sep-CMA-ES": lambda fn, x0, b, s: run_pycma(fn, x0, b, s, True)}
    try:
        import nevergrad  # noqa: F401

        out["nevergrad NGOpt"] = lambda fn, x0, b, s: run_nevergrad(fn, x0, b, s, "NGOpt")
        out["nevergrad DiagonalCMA"] = lambda fn, x0, b, s: run_nevergrad(fn, x0, b, s, "DiagonalCMA")
    except ImportError:
        print("nevergrad is not installed (pip install 'zoopt-engine[bench]'); skipping it")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dims", type=int, nargs="+", default=[20, 100])
    ap.add_argument("--budget-per-dim", type=int, default=100, help="evaluation budget = this x dim")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--full", action="store_true", help="budget 1,000 x dim and 5 seeds")
    ap.add_argument("--functions", nargs="+", default=list(FUNCTIONS), choices=list(FUNCTIONS))
    ap.add_argument("--methods", nargs="+", default=None, help="a subset of the method names")
    ap.add_argument("--out", default="runs/bench_blackbox")
    args = ap.parse_args()
    if args.full:
        args.budget_per_dim, args.seeds = 1000, 5
    torch.set_num_threads(1)
    zoopt.OpenAIES(dim=2)  # warm-up: torch.optim's first construction imports torch._dynamo (seconds)
    zoopt.CMAES(dim=2)     # and pycma's first import, so neither is charged to the first method timed
    os.makedirs(args.out, exist_ok=True)
    methods = {k: v for k, v in peers().items() if args.methods is None or k in args.methods}
    results = {}
    for dim in args.dims:
        budget = args.budget_per_dim * dim
        for fname in args.functions:
            fn, start = FUNCTIONS[fname]
            x0 = np.full(dim, start)
            for mname, runner in methods.items():
                vals, evals, secs, errors = [], [], [], []
                for seed in range(args.seeds):
                    t = time.perf_counter()
                    try:
                        best, nfev = runner(fn, x0, budget, seed)
                    except Exception as exc:  # a peer's own bug (e.g. nevergrad's MetaModel on numpy 2) is a result
                        best, nfev = float("nan"), 0
                        errors.append(f"seed {seed}: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
                        print(f"  {mname} failed on {fname} {dim}-D, {errors[-1]}", flush=True)
                    secs.append(time.perf_counter() - t)
                    vals.append(float(best))
                    evals.append(int(nfev))
                results[(dim, fname, mname)] = {
                    "budget": budget, "final_mean": float(np.mean(vals)), "final_std": float(np.std(vals)),
                    "evals_mean": float(np.mean(evals)), "seconds": float(np.mean(secs)), "values": vals,
                    "errors": errors}
                print(f"  {dim:4d}-D {fname:10s} {mname:22s} {np.mean(vals):12.4g} ± {np.std(vals):<9.3g}"
                      f" {np.mean(evals):8.0f} evals {np.mean(secs):7.2f} s", flush=True)
    header = (f"{'dim':>4s} {'function':10s} {'method':22s} {'final (mean ± std)':>24s} {'evals':>8s} "
              f"{'time s':>8s} {'time / default':>14s}")
    print(f"\nbudget {args.budget_per_dim} x dim evaluations, {args.seeds} seeds\n{header}\n{'-' * len(header)}")
    for (dim, fname, mname), r in results.items():
        ref = results.get((dim, fname, REF))
        ratio = f"{r['seconds'] / ref['seconds']:14.2f}" if ref else f"{'':14s}"
        print(f"{dim:4d} {fname:10s} {mname:22s} {r['final_mean']:12.4g} ± {r['final_std']:<9.3g} "
              f"{r['evals_mean']:8.0f} {r['seconds']:8.2f} {ratio}")
    payload = {"dims": args.dims, "budget_per_dim": args.budget_per_dim, "seeds": args.seeds,
               "default_method": {str(d): default_method(d) for d in args.dims},
               "results": [{"dim": d, "function": f, "method": m, **r} for (d, f, m), r in results.items()]}
    atomic.write_json(os.path.join(args.out, "results.json"), _nan_to_none(payload), indent=1)
    plot(results, args)


def _nan_to_none(obj):
    """JSON has no NaN: a failed run's value is null."""
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return obj


def plot(results, args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(args.dims), len(args.functions), figsize=(5 * len(args.functions),
                             3.5 * len(args.dims)), squeeze=False)
    for row, dim in zip(axes, args.dims):
        for ax, fname in zip(row, args.functions):
            names = [m for (d, f, m) in results if f == fname and d == dim]
            vals = [max(np.nan_to_num(results[(dim, fname, m)]["final_mean"], nan=0.0), 1e-12) for m in names]
            ax.barh(names, vals)
            ax.set_xscale("log")
            ax.set_title(f"{fname} ({dim}-D, {args.budget_per_dim * dim} evals)")
    fig.tight_layout()
    path = os.path.join(args.out, "final_values.png")
    with atomic.atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)
    print(f"wrote {path} and results.json")


if __name__ == "__main__":
    main()
