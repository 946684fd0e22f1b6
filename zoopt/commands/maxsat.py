"""``zoopt maxsat``: solve a MAX-SAT instance with PolyStep (full-space mode) into a run folder.

    zoopt maxsat --random 100000 --seed 0          # random 3-SAT, m = 4.27 n
    zoopt maxsat --wcnf file.wcnf.xz                # (weighted, partial) DIMACS WCNF, or --cnf file.cnf(.gz)
    zoopt maxsat --random 100000 --resume           # continue the run in its folder

Shows a progress bar, prints the satisfied fraction, evaluations, time and
peak memory (``resource.getrusage``). The run folder (``--out``, default
``runs/maxsat-NAME-seedS``) gets ``solution.sol`` (the best assignment in the
MaxSAT-evaluation format: ``o`` cost, ``s`` status, ``v`` literals),
``summary.json`` and ``checkpoint.pt`` (every ``--checkpoint-every`` steps
and at the end; ``--resume`` continues from it, ``--force`` replaces the run).
Every file is written atomically.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time

from zoopt.commands import options

RUN_FILES = ("checkpoint.pt", "summary.json", "solution.sol")


def peak_rss_mib() -> float:
    """Peak resident memory of this process in MiB (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _int_at_least(lo):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {value}")
        return value
    return parse


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def register(sub) -> None:
    p = options.add_command(sub, "maxsat", help="solve MAX-SAT with PolyStep (random k-SAT or a DIMACS CNF/WCNF file)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--random", type=_int_at_least(1), metavar="N", help="random 3-SAT instance with N variables")
    src.add_argument("--wcnf", metavar="FILE", help="DIMACS WCNF file (weighted / partial MAX-SAT; .gz/.xz/.bz2 read)")
    src.add_argument("--cnf", metavar="FILE", help="DIMACS CNF file (.gz/.xz/.bz2 read)")
    p.add_argument("--ratio", type=_positive_float, default=4.27, help="clauses per variable for --random")
    p.add_argument("--k", type=_int_at_least(1), default=3, help="literals per clause for --random")
    p.add_argument("--instance-seed", type=_int_at_least(0), default=None,
                   help="seed of the random instance (default: --seed)")
    p.add_argument("--seed", type=_int_at_least(0), default=0, help="optimizer seed")
    p.add_argument("--preset", choices=["default", "reference"], default="default",
                   help="constants: zoopt's (count cost, probe radius above every |x|) or the reference runs'")
    p.add_argument("--steps", type=_int_at_least(0), default=None, metavar="STEPS",
                   help="PolyStep steps, coast steps included (default: 3000; reference preset: 500 from 1M)")
    p.add_argument("--epsilon", type=_positive_float, default=None, help="softmax temperature (default: preset)")
    p.add_argument("--step-radius", type=_positive_float, default=None, help="step radius alpha (default: preset)")
    p.add_argument("--probe-radius", type=_positive_float, default=None, help="probe radius rho (default: preset)")
    p.add_argument("--cost-scale", choices=["fraction", "count"], default=None,
                   help="cost seen by the softmax: unsatisfied fraction or count (default: preset)")
    p.add_argument("--amortize", type=_int_at_least(1), default=3, help="1 evaluated step per AMORTIZE steps")
    p.add_argument("--no-momentum", action="store_true", help="turn momentum off")
    p.add_argument("--encoding", choices=["sign", "sigmoid"], default="sign",
                   help="hard value of x: x > 0 (sign) or round(sigmoid(x))")
    p.add_argument("--threads", type=_int_at_least(1), default=1, help="torch CPU threads")
    p.add_argument("--out", default=None, metavar="DIR", help="run folder (default: runs/maxsat-NAME-seedS)")
    p.add_argument("--checkpoint-every", type=_int_at_least(0), default=300,
                   help="write checkpoint.pt every N steps (0: only at the end)")
    p.add_argument("--resume", action="store_true", help="continue the run in the run folder")
    p.add_argument("--force", action="store_true", help="replace a run already in the run folder")
    options.add_quiet(p)
    p.set_defaults(func=main)


def _load_instance(args):
    from zoopt.maxsat import check_memory
    from zoopt.problems.maxsat import random_ksat, read_dimacs

    if args.random is not None:
        iseed = args.seed if args.instance_seed is None else args.instance_seed
        m = int(args.ratio * args.random)
        check_memory(args.random, m, m * args.k, what="--random instance")
        return random_ksat(args.random, ratio=args.ratio, k=args.k, seed=iseed), \
            f"random{args.random}_k{args.k}_seed{iseed}"
    path = args.wcnf or args.cnf
    name = os.path.basename(path)
    for ext in (".gz", ".xz", ".bz2"):
        name = name[:-len(ext)] if name.endswith(ext) else name
    return read_dimacs(path), os.path.splitext(name)[0]


def main(args) -> int:
    import torch

    from zoopt.atomic import write_json
    from zoopt.maxsat import PolyStepMaxSAT
    from zoopt.problems.maxsat import write_solution

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    instance, name = _load_instance(args)
    out = args.out or os.path.join("runs", f"maxsat-{name}-seed{args.seed}")
    ckpt = os.path.join(out, "checkpoint.pt")
    if args.resume and not os.path.exists(ckpt):
        raise ValueError(f"--resume: no checkpoint in {out}")
    if not args.resume and not args.force and any(os.path.exists(os.path.join(out, f)) for f in RUN_FILES):
        raise ValueError(f"--out: {out} already holds a run; pass --resume to continue it or --force to replace it")
    load_s = time.perf_counter() - t0
    print(f"instance {name}: {instance.n_vars} variables, {instance.n_clauses} clauses"
          f"{' (weighted)' if instance.is_weighted else ''}"
          f"{f', {int(instance.hard.sum())} hard' if instance.is_partial else ''}; built in {load_s:.1f}s")
    solver = PolyStepMaxSAT(instance, seed=args.seed, preset=args.preset, epsilon=args.epsilon,
                            step_radius=args.step_radius, probe_radius=args.probe_radius, cost_scale=args.cost_scale,
                            steps=args.steps, amortize=args.amortize, momentum=not args.no_momentum,
                            encoding=args.encoding)
    os.makedirs(out, exist_ok=True)
    if args.resume:
        solver.load(ckpt)
        print(f"resumed at step {solver.it} (best cost {solver.best_cost:g})")
    print(f"polystep ({args.preset}): {solver.n_particles} particles x 4 vertices, eps={solver.epsilon:g}, "
          f"alpha={solver.step_radius:g}, rho={solver.probe_radius:g}, cost={solver.cost_scale}, "
          f"steps={solver.steps}, amortize={solver.amortize}")
    result = solver.run(progress=not args.quiet, log_every=max(1, solver.steps // 50),
                        checkpoint=ckpt, checkpoint_every=args.checkpoint_every)
    rep = result.report
    peak = peak_rss_mib()
    print(f"satisfied {100 * rep['satisfied_fraction']:.3f}% of clauses "
          f"({instance.n_clauses - rep['unsat_clauses']}/{instance.n_clauses})"
          + (f", soft weight {100 * rep['satisfied_soft_weight_fraction']:.3f}%" if instance.is_weighted else "")
          + (f", hard violated {rep['hard_violated']}" if instance.is_partial else ""))
    print(f"cost {rep['cost']:g}  evaluations {result.evaluations:,}  "
          f"({result.evaluations / max(result.seconds, 1e-9):,.0f}/s)  time {result.seconds:.1f}s  "
          f"peak memory {peak:,.0f} MiB")
    sol = os.path.join(out, "solution.sol")
    write_solution(sol, result.assign, cost=rep["cost"],
                   status="OPTIMUM FOUND" if rep["unsat_clauses"] == 0 else "UNKNOWN")
    write_json(os.path.join(out, "summary.json"), {
        "instance": name, "n_vars": instance.n_vars, "n_clauses": instance.n_clauses, **rep,
        "evaluations": result.evaluations, "steps": result.steps, "seconds": result.seconds, "peak_rss_mib": peak,
        **solver.config(), "history": result.history, "solution": sol})
    print(f"run folder {out}: solution.sol, summary.json, checkpoint.pt")
    return 0
