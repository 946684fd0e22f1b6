#!/usr/bin/env python
"""MAX-SAT benchmark on random 3-SAT (m = 4.27 n).

* PolyStep full-space (zoopt.maxsat; --preset default or reference) -- the yardstick;
* OpenAI-ES and sep-CMA-ES (zoopt.OpenAIES; zoopt.CMAES(diagonal=True) for n <= 1e5) on the same
  sign encoding through MaxSATProblem, given PolyStep's number of evaluations
  (capped by --es-seconds of wall time; the table says when the cap bit);
* probSAT and WalkSAT-SKC compiled from scripts/maxsat_sls.c (built once with the system C
  compiler, $CC or cc, into a cache folder: $ZOOPT_CACHE or ~/.cache/zoopt), given PolyStep's wall
  time; where no compiler is found the pure-Python zoopt.walksat runs instead (about 100x fewer
  flips/s) and the table says so. Flips/s are reported per CPU second and per wall second;
* RC2 (python-sat) for the optimum where it finishes (n <= 1000, --rc2-timeout).

Every method runs in its own spawned process so that its peak memory
(getrusage ru_maxrss) is its own. Prints satisfied %, evaluations (flips for
the local searches), evaluations/s, time and peak memory; writes JSON + PNG to --out.

    python scripts/bench_maxsat.py                      # n = 100, 1000, 10000 (CPU default)
    python scripts/bench_maxsat.py --sizes 100000       # one size
    python scripts/bench_maxsat.py --full               # n = 100 .. 1,000,000

Measured on this 2-core machine (random 3-SAT, one thread; flips/s per CPU second):
n = 10,000 (load ~7, PolyStep 3000 steps in 30 s wall): PolyStep 98.614%, compiled WalkSAT
99.724% and probSAT 99.867% in the same wall time (2.7-2.8M flips/s); at n = 1,000 the C
local search makes 7.2M flips/s, the Python fallback ~48K (n = 100,000). n = 1,000,000 (quiet):
compiled probSAT 99.346% in 60 s (20.4M flips, 342K flips/s), WalkSAT 99.182% (306K flips/s);
PolyStep (zoopt maxsat, default preset, 3000 steps) 98.682% in 928 CPU s.
"""
from __future__ import annotations

import argparse
import hashlib
import multiprocessing as mp
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

SIZES = [100, 1_000, 10_000]
FULL_SIZES = [100, 1_000, 10_000, 100_000, 1_000_000]
ES_MAX_N = {"openai_es": 1_000_000, "sep_cma_es": 100_000}   # pycma's sep-CMA stops at 1e5 here
RC2_MAX_N = 1_000
SLS_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "maxsat_sls.c")


def peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def make_instance(n, seed):
    from zoopt.problems.maxsat import random_ksat

    return random_ksat(n, seed=seed)


def run_polystep(cfg):
    from zoopt.maxsat import PolyStepMaxSAT

    inst = make_instance(cfg["n"], cfg["instance_seed"])
    solver = PolyStepMaxSAT(inst, seed=cfg["seed"], steps=cfg.get("steps"), preset=cfg.get("preset", "default"))
    c0 = time.process_time()
    res = solver.run()
    return {"satisfied": res.satisfied_fraction, "evaluations": res.evaluations, "seconds": res.seconds,
            "cpu_seconds": time.process_time() - c0, "steps": res.steps, "preset": solver.preset,
            "epsilon": solver.epsilon, "step_radius": solver.step_radius, "probe_radius": solver.probe_radius,
            "cost_scale": solver.cost_scale}


def run_es(cfg):
    import torch

    import zoopt
    from zoopt.problems.maxsat import MaxSATProblem

    inst = make_instance(cfg["n"], cfg["instance_seed"])
    problem = MaxSATProblem(inst)
    g = torch.Generator().manual_seed(cfg["seed"])
    x0 = torch.randn(inst.n_vars, generator=g) * 0.1
    if cfg["method"] == "openai_es":  # the reference's settings: antithetic, pop 50, sigma 1, lr 0.1, z-score
        es = zoopt.OpenAIES(x0, popsize=50, sigma=1.0, lr=0.1, optimizer="sgd", fitness_shaping="zscore",
                            seed=cfg["seed"])
    else:                              # sep-CMA-ES, pop 50, sigma0 1
        es = zoopt.CMAES(x0, popsize=50, sigma=1.0, diagonal=True, seed=cfg["seed"])
    budget, cap = cfg["budget"], cfg["es_seconds"]
    evals, t0, capped = 0, time.perf_counter(), False
    while evals < budget:
        spec = es.ask()
        es.tell(problem.evaluate(spec))
        evals += spec.popsize
        if time.perf_counter() - t0 > cap:
            capped = evals < budget
            break
    seconds = time.perf_counter() - t0
    best = es.best_x if es.best_x is not None else es.center
    rep = inst.evaluate(problem.hard(best))
    return {"satisfied": rep["satisfied_fraction"], "evaluations": evals, "seconds": seconds, "capped": capped}


def cache_dir() -> str:
    return os.environ.get("ZOOPT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser(os.path.join("~", ".cache")), "zoopt")


def build_sls(source: str = SLS_SOURCE):
    """Path of the compiled local search (built on first use, named by the source's hash), or None
    when there is no C compiler."""
    with open(source, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()[:16]
    binary = os.path.join(cache_dir(), f"maxsat_sls-{digest}")
    if os.path.exists(binary):
        return binary
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        return None
    os.makedirs(cache_dir(), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".maxsat_sls-", dir=cache_dir())
    os.close(fd)
    try:
        subprocess.run([cc, "-O2", "-o", tmp, source, "-lm"], check=True, capture_output=True, text=True)
        os.replace(tmp, binary)   # atomic: a concurrent build never sees half a binary
    except subprocess.CalledProcessError as exc:
        os.unlink(tmp)
        raise RuntimeError(f"{cc} failed on {source}: {exc.stderr.strip()}") from None
    return binary


def run_sls_c(binary: str, inst, method: str, seed: int, seconds: float = 0.0, max_flips: int = 0) -> dict:
    """Run the compiled probSAT / WalkSAT on ``inst`` (unweighted) and check its claimed cost."""
    from zoopt.problems.maxsat import parse_solution, write_dimacs

    if inst.is_weighted or inst.is_partial:
        raise ValueError("the compiled local search takes unweighted CNF only")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "instance.cnf")
        write_dimacs(inst, path)
        out = subprocess.run([binary, path, method, str(seed), str(int(max_flips)), repr(float(seconds))],
                             check=True, capture_output=True, text=True).stdout
    info = {}
    for line in out.splitlines():
        if line.startswith("c "):
            key, value = line[2:].split()
            info[key] = float(value)
        elif line.startswith("o "):
            info["cost"] = float(line[2:])
    assign = parse_solution(out, inst.n_vars)
    rep = inst.evaluate(assign)
    if rep["cost"] != info["cost"]:
        raise RuntimeError(f"{binary} claims cost {info['cost']:g}, its assignment costs {rep['cost']:g}")
    flips = int(info["flips"])
    return {"satisfied": rep["satisfied_fraction"], "evaluations": flips, "flips": flips,
            "seconds": info["seconds"], "cpu_seconds": info["cpu_seconds"], "assign": assign,
            "flips_per_cpu_s": flips / max(info["cpu_seconds"], 1e-9), "compiled": True}


def run_sls(cfg):
    inst = make_instance(cfg["n"], cfg["instance_seed"])
    binary = build_sls()
    if binary is not None:
        out = run_sls_c(binary, inst, cfg["method"], cfg["seed"], seconds=cfg["seconds"])
        out.pop("assign")
        return out
    from zoopt.walksat import local_search   # fallback: no C compiler

    c0 = time.process_time()
    res = local_search(inst, method=cfg["method"], seed=cfg["seed"], seconds=cfg["seconds"])
    cpu = time.process_time() - c0
    return {"satisfied": res.satisfied_fraction, "evaluations": res.flips, "seconds": res.seconds,
            "flips": res.flips, "cpu_seconds": cpu, "flips_per_cpu_s": res.flips / max(cpu, 1e-9),
            "compiled": False}


def _rc2_solve(cfg, queue):
    from pysat.examples.rc2 import RC2
    from pysat.formula import WCNF

    inst = make_instance(cfg["n"], cfg["instance_seed"])
    wcnf = WCNF()
    for clause in inst.clauses():
        wcnf.append(clause, weight=1)
    t0 = time.perf_counter()
    with RC2(wcnf) as solver:
        solver.compute()
        queue.put({"cost": solver.cost, "seconds": time.perf_counter() - t0, "n_clauses": inst.n_clauses})


def run_rc2(cfg):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_rc2_solve, args=(cfg, queue))
    proc.start()
    proc.join(cfg["rc2_timeout"])
    if proc.is_alive():
        proc.terminate()
        proc.join()
        return {"satisfied": None, "seconds": cfg["rc2_timeout"], "timed_out": True, "evaluations": None}
    out = queue.get()
    return {"satisfied": 1.0 - out["cost"] / out["n_clauses"], "seconds": out["seconds"], "timed_out": False,
            "evaluations": None, "optimum_unsat": out["cost"]}


RUNNERS = {"polystep": run_polystep, "openai_es": run_es, "sep_cma_es": run_es, "walksat": run_sls,
           "probsat": run_sls, "rc2": run_rc2}


def _child(cfg, queue):
    import torch

    torch.set_num_threads(cfg["threads"])
    try:
        out = RUNNERS[cfg["method"]](cfg)
        out["peak_rss_mib"] = peak_rss_mib()
        queue.put(out)
    except Exception as exc:  # reported in the table rather than killing the whole benchmark
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def run_isolated(cfg) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(cfg, queue))
    proc.start()
    out = queue.get()
    proc.join()
    return out


def fmt_row(name, r, ref_sat):
    if "error" in r:
        return f"  {name:11s} error: {r['error']}"
    sat = r.get("satisfied")
    sat_s = "   -    " if sat is None else f"{100 * sat:8.3f}"
    ev = r.get("evaluations")
    ev_s = f"{ev:>13,}" if ev is not None else f"{'-':>13}"
    eps = f"{ev / max(r['seconds'], 1e-9):>12,.0f}" if ev is not None else f"{'-':>12}"
    gap = "" if sat is None or ref_sat is None or name == "polystep" else f"  ({100 * (sat - ref_sat):+.3f} pp vs polystep)"
    note = "  [evaluation budget cut by --es-seconds]" if r.get("capped") else ""
    note += "  [timed out]" if r.get("timed_out") else ""
    unit = " flips" if name in ("walksat", "probsat") else ""
    if "flips_per_cpu_s" in r:
        note += f"  [{'C' if r['compiled'] else 'Python fallback'}: {r['flips_per_cpu_s']:,.0f} flips per CPU s]"
    return (f"  {name:11s} {sat_s} %  evals{unit} {ev_s}  /s {eps}  time {r['seconds']:8.1f}s  "
            f"peak {r.get('peak_rss_mib', 0):7.0f} MiB{gap}{note}")


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = ["polystep", "openai_es", "sep_cma_es", "walksat", "probsat", "rc2"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for m in methods:
        xs, ys = [], []
        for n, res in results.items():
            r = res.get(m, {})
            if r.get("satisfied") is not None:
                xs.append(int(n))
                ys.append(100 * r["satisfied"])
        if xs:
            ax.plot(xs, ys, marker="o", label=m)
    ax.set_xscale("log")
    ax.set_xlabel("variables n (random 3-SAT, m = 4.27 n)")
    ax.set_ylabel("clauses satisfied (%)")
    ax.set_title("MAX-SAT: PolyStep vs ES (equal evals) vs compiled SLS (equal time)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=float, nargs="+", default=None, help="variable counts (default 100 1000 10000)")
    ap.add_argument("--full", action="store_true", help="n = 100, 1e3, 1e4, 1e5, 1e6")
    ap.add_argument("--methods", nargs="+", default=list(RUNNERS), choices=list(RUNNERS))
    ap.add_argument("--seed", type=int, default=0, help="optimizer seed")
    ap.add_argument("--instance-seed", type=int, default=42, help="instance seed")
    ap.add_argument("--steps", type=int, default=None, help="PolyStep steps (default: the preset's budget)")
    ap.add_argument("--preset", choices=["default", "reference"], default="default", help="PolyStep constants")
    ap.add_argument("--es-seconds", type=float, default=60.0, help="wall-time cap per ES run (default 60)")
    ap.add_argument("--rc2-timeout", type=float, default=60.0, help="seconds before RC2 is stopped (default 60)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per method (default 1)")
    ap.add_argument("--budget-seconds", type=float, default=None,
                    help="without polystep: SLS wall time (PolyStep's time from an earlier run)")
    ap.add_argument("--budget-evals", type=int, default=None, help="without polystep: ES evaluation budget")
    ap.add_argument("--budget-satisfied", type=float, default=None,
                    help="without polystep: its satisfied fraction, for the comparison column")
    ap.add_argument("--out", default=os.path.join("runs", "bench_maxsat"))
    args = ap.parse_args(argv)
    from zoopt.atomic import write_json

    sizes = [int(s) for s in (args.sizes or (FULL_SIZES if args.full else SIZES))]
    os.makedirs(args.out, exist_ok=True)
    results = {}
    print("timings share the CPU with whatever else runs on this machine")
    for n in sizes:
        base = {"n": n, "seed": args.seed, "instance_seed": args.instance_seed, "threads": args.threads}
        res = {}
        print(f"n = {n:,} variables, {int(4.27 * n):,} clauses", flush=True)
        if "polystep" in args.methods:  # the yardstick for the other budgets
            res["polystep"] = run_isolated({**base, "method": "polystep", "steps": args.steps, "preset": args.preset})
            print(fmt_row("polystep", res["polystep"], None), flush=True)
            ref = res["polystep"]
        else:  # budgets given by hand, e.g. from an earlier `zoopt maxsat` run of the same instance
            if args.budget_seconds is None or args.budget_evals is None:
                ap.error("without polystep in --methods give --budget-seconds and --budget-evals")
            ref = {"seconds": args.budget_seconds, "evaluations": args.budget_evals,
                   "satisfied": args.budget_satisfied}
        ref_sat = ref.get("satisfied")
        for m in ("openai_es", "sep_cma_es"):
            if m in args.methods and n <= ES_MAX_N[m] and "error" not in ref:
                res[m] = run_isolated({**base, "method": m, "budget": ref["evaluations"],
                                       "es_seconds": args.es_seconds})
                print(fmt_row(m, res[m], ref_sat), flush=True)
        for m in ("walksat", "probsat"):
            if m in args.methods and "error" not in ref:
                res[m] = run_isolated({**base, "method": m, "seconds": max(1.0, ref["seconds"])})
                print(fmt_row(m, res[m], ref_sat), flush=True)
        if "rc2" in args.methods and n <= RC2_MAX_N:
            res["rc2"] = run_isolated({**base, "method": "rc2", "rc2_timeout": args.rc2_timeout})
            print(fmt_row("rc2", res["rc2"], ref_sat), flush=True)
        results[str(n)] = res
        write_json(os.path.join(args.out, "results.json"),
                   {"sizes": sizes, "seed": args.seed, "instance_seed": args.instance_seed, "preset": args.preset,
                    "threads": args.threads, "es_seconds": args.es_seconds, "load": os.getloadavg(),
                    "results": results})
    plot(results, os.path.join(args.out, "maxsat.png"))
    print(f"wrote {args.out}/results.json and {args.out}/maxsat.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
