"""``zoopt maxsat``: solve a MAX-SAT instance with PolyStep (full-space mode) and write the ``v`` lines.

    zoopt maxsat --random 100000 --seed 0          # random 3-SAT, m = 4.27 n
    zoopt maxsat --wcnf file.wcnf                   # (weighted, partial) DIMACS WCNF, or --cnf file.cnf

Shows a progress bar, prints the satisfied fraction, evaluations, time and
peak memory (``resource.getrusage``), and writes the best assignment in the
MaxSAT-evaluation format (``o`` cost, ``s`` status, ``v`` literals) to
``--out`` (default ``runs/maxsat/<name>.sol``) plus a JSON summary beside it.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time


def peak_rss_mib() -> float:
    """Peak resident memory of this process in MiB (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def register(sub) -> None:
    p = sub.add_parser("maxsat", help="solve MAX-SAT with PolyStep (random k-SAT or a DIMACS CNF/WCNF file)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--random", type=int, metavar="N", help="random 3-SAT instance with N variables")
    src.add_argument("--wcnf", metavar="FILE", help="DIMACS WCNF file (weighted / partial MAX-SAT)")
    src.add_argument("--cnf", metavar="FILE", help="DIMACS CNF file")
    p.add_argument("--ratio", type=float, default=4.27, help="clauses per variable for --random (default 4.27)")
    p.add_argument("--k", type=int, default=3, help="literals per clause for --random (default 3)")
    p.add_argument("--instance-seed", type=int, default=None,
                   help="seed of the random instance (default: --seed)")
    p.add_argument("--seed", type=int, default=0, help="optimizer seed (default 0)")
    p.add_argument("--steps", type=int, default=None,
                   help="PolyStep steps (default 3000 below 1M variables, 500 from 1M)")
    p.add_argument("--epsilon", type=float, default=None, help="softmax temperature (default 5)")
    p.add_argument("--step-radius", type=float, default=None, help="step radius alpha (default: reference)")
    p.add_argument("--probe-radius", type=float, default=None, help="probe radius rho (default: reference)")
    p.add_argument("--cost-scale", choices=["fraction", "count"], default=None,
                   help="cost seen by the softmax: unsatisfied fraction or count (default: reference)")
    p.add_argument("--amortize", type=int, default=3, help="1 evaluating step per AMORTIZE steps (default 3)")
    p.add_argument("--no-momentum", action="store_true", help="turn momentum off")
    p.add_argument("--encoding", choices=["sign", "sigmoid"], default="sign",
                   help="hard value of x: x > 0 (sign) or round(sigmoid(x)) (default sign)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--out", default=None, help="solution file (default runs/maxsat/<name>.sol)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=main)


def main(args) -> int:
    import torch

    from zoopt.maxsat import PolyStepMaxSAT
    from zoopt.problems.maxsat import random_ksat, read_dimacs, write_solution

    if args.threads < 1:
        raise SystemExit(f"zoopt maxsat: --threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.random is not None:
        if args.random < 1:
            raise SystemExit(f"zoopt maxsat: --random must be >= 1, got {args.random}")
        iseed = args.seed if args.instance_seed is None else args.instance_seed
        instance = random_ksat(args.random, ratio=args.ratio, k=args.k, seed=iseed)
        name = f"random{args.random}_k{args.k}_seed{iseed}"
    else:
        path = args.wcnf or args.cnf
        try:
            instance = read_dimacs(path)
        except (OSError, ValueError) as exc:
            raise SystemExit(f"zoopt maxsat: {exc}")
        name = os.path.splitext(os.path.basename(path))[0]
    load_s = time.perf_counter() - t0
    print(f"instance {name}: {instance.n_vars} variables, {instance.n_clauses} clauses"
          f"{' (weighted)' if instance.is_weighted else ''}"
          f"{f', {int(instance.hard.sum())} hard' if instance.is_partial else ''}; built in {load_s:.1f}s")
    solver = PolyStepMaxSAT(instance, seed=args.seed, epsilon=args.epsilon, step_radius=args.step_radius,
                            probe_radius=args.probe_radius, cost_scale=args.cost_scale, steps=args.steps,
                            amortize=args.amortize, momentum=not args.no_momentum, encoding=args.encoding)
    print(f"polystep: {solver.n_particles} particles x 4 vertices, eps={solver.epsilon:g}, "
          f"alpha={solver.step_radius:g}, rho={solver.probe_radius:g}, cost={solver.cost_scale}, "
          f"steps={solver.default_steps}, amortize={solver.amortize}")
    result = solver.run(progress=not args.no_progress)
    rep = result.report
    peak = peak_rss_mib()
    print(f"satisfied {100 * rep['satisfied_fraction']:.3f}% of clauses "
          f"({instance.n_clauses - rep['unsat_clauses']}/{instance.n_clauses})"
          + (f", soft weight {100 * rep['satisfied_soft_weight_fraction']:.3f}%" if instance.is_weighted else "")
          + (f", hard violated {rep['hard_violated']}" if instance.is_partial else ""))
    print(f"cost {rep['cost']:g}  evaluations {result.evaluations:,}  "
          f"({result.evaluations / max(result.seconds, 1e-9):,.0f}/s)  time {result.seconds:.1f}s  "
          f"peak memory {peak:,.0f} MiB")
    out = args.out or os.path.join("runs", "maxsat", f"{name}.sol")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    write_solution(out, result.assign, cost=rep["cost"],
                   status="OPTIMUM FOUND" if rep["unsat_clauses"] == 0 else "UNKNOWN")
    summary = {"instance": name, "n_vars": instance.n_vars, "n_clauses": instance.n_clauses, "seed": args.seed,
               **rep, "evaluations": result.evaluations, "steps": result.steps, "seconds": result.seconds,
               "peak_rss_mib": peak, "epsilon": solver.epsilon, "step_radius": solver.step_radius,
               "probe_radius": solver.probe_radius, "cost_scale": solver.cost_scale, "solution": out}
    with open(os.path.splitext(out)[0] + ".json", "w") as fh:
        json.dump(summary, fh, indent=1)
    print(f"solution written to {out}")
    return 0
