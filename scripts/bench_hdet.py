"""HDET vs plain data-parallel OneCycleLR on a byte-level LM of Python's stdlib.

(1) Stability/quality: plain data-parallel OneCycleLR (torch's own scheduler) at 5 peak LRs,
    each with the same compute as one HDET run (N micro-batches forward+backward per step,
    gradients averaged, the same number of steps; HDET adds no extra forward passes), vs one
    HDET run (exact single-process simulation of N replicas) whose OneCycle peak is the highest
    of the 5, and two HDET ablations (no auto-LR; no signal, i.e. spread and averaging on but
    uniform weights, Δ = 0, on the controller's hold-and-decay schedule). A "no spread" ablation
    ran until HDET became a true drop-in: with spread 0 it is now plain OneCycle. Reports
    the final validation loss and whether each run diverged (non-finite, or no better than the
    unigram predictor).
(2) Overhead: per-step wall time of HDET vs plain data-parallel (DDP over 2 gloo processes)
    at T = 100 and T = 1000, measured in interleaved blocks, plus a component estimate
    (per-step bookkeeping + per-sync cost / T) that is less sensitive to a shared machine.

Benchmark design (fixed on the TUNING seed 0, reported on other seeds, default --seeds 5 6 7 8):
  * the grid is geometric, x3 apart, ending at 0.4 = the lowest LR tried at which plain
    OneCycle diverged on seed 0 (0.3: 3.02 nats/byte, 0.4: 4.40, unigram 3.14), so the best
    LR lies inside the grid: 0.4/81 .. 0.4.
  * HDET's settings were chosen on seed 0 among the alternatives in TUNING_LOG: the controller
    owns the base LR from step 0 ('controller' schedule: hold at max_lr/div_factor, decay γ
    towards the floor, zero-order steps), floor = 0.03 x peak, paper defaults σ = 0.1,
    β = 0.9, λ = 0.5, T = 10. Note what this means: HDET starts at 0.4/25 = 0.016, which is
    inside the sweep's good range; with a top of 1.0 it starts at 0.04 and loses by ~0.4.
  * history of the spread α: α = 0.5 was fixed before any report run; on seeds 1-4 HDET was
    at or below the best sweep run on 2 of 4 (mean +0.013 nats/byte) and its 'no signal'
    ablation suggested the wide spread itself cost accuracy. α was then set to the paper's
    1/9 (0.1111) after seeing seeds 1-4, so those seeds no longer count as a report; the
    default report seeds 5-8 were first run after that change.
  * a result on seed 0 is marked "tuning_seed": true in the JSON; only other seeds are reports.
  * single runs are chaotic: the same schedule with a different float summation order ends
    about ±0.05 nats/byte apart after 200 steps, so compare over several report seeds.

    python scripts/bench_hdet.py                    # CPU size: about 3 min per seed on one core
    python scripts/bench_hdet.py --skip overhead    # the sweep only
    python scripts/bench_hdet.py --full             # longer runs, bigger model
Writes runs/bench_hdet/results.json and bench_hdet_seed<N>.png.

(3) Does the signal help? (``--study signal``, issue 18): 8 simulated replicas, 300 steps with
    T = 5, so the controller (from its default start, the end of OneCycle's rise at step 90) makes
    42 syncs; 5 seeds (1-5; none used for tuning). Per seed: plain data-parallel OneCycleLR at the
    peaks --signal-lrs (same compute: 8 micro-batches averaged per step), and at each of
    --signal-hdet-lrs HDET with its defaults (α = 1/9, σ = 0.1, β = 0.9, λ = 0.5, floor 0.22 of
    the start) next to "no signal" (the same spread, averaging and schedule, uniform weights:
    Δ = 0). Reports mean ± 95% t-interval over seeds of the final validation loss and of the paired
    differences HDET − no signal and HDET − best plain (the best peak of each seed, and the peak
    best on average).

    nohup python scripts/bench_hdet.py --study signal --out runs/hdet_signal > runs/hdet_signal.log &

    Measured (2026-12-03, defaults above; one process with 1 thread on the shared 2-core machine,
    load average 7-21; about 15 min of CPU, 58 min wall). Final validation nats/byte, mean ± 95%
    CI over seeds 1-5: plain 0.01 2.125 ± 0.026, 0.02 2.041 ± 0.031, 0.04 2.052 ± 0.057, 0.08
    2.221 ± 0.190, best plain peak of each seed 2.033 ± 0.033; HDET 0.04 2.038 ± 0.082, no signal
    0.04 2.028 ± 0.070; HDET 0.08 2.237 ± 0.242, no signal 0.08 2.262 ± 0.248. Paired: HDET − no
    signal +0.010 ± 0.018 at 0.04 and −0.025 ± 0.057 at 0.08; HDET − best plain of each seed
    +0.005 ± 0.063 (0.04) and +0.204 ± 0.252 (0.08). Every paired interval holds 0: the
    signal's effect is not distinguishable from zero here. HDET's base LR ended at or just above
    its floor (0.22-0.24 of the peak) in every run, so the zero-order steps moved it little.
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import socket
import statistics
import sys
import time
import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import hdet_charlm as lm  # noqa: E402

from zoopt import HDETOneCycleLR, HDETSimulation  # noqa: E402
from zoopt.atomic import write_json  # noqa: E402

warnings.filterwarnings("ignore", message=".*lr_scheduler.*")
TUNING_SEED = 0      # the seed the grid and HDET settings were chosen on
# What was tried on the tuning seed (200 steps, 4 replicas, T = 10 unless said; final validation
# nats/byte). Kept so the choice of defaults can be checked; none of it was run on a report seed.
TUNING_LOG = {
    "plain x3 grid": {"0.0049": 2.320, "0.0148": 2.282, "0.0444": 2.245, "0.133": 2.647, "0.4": "4.397 diverged"},
    "plain half-decade grid": {"0.01": 2.290, "0.03": 2.243, "0.1": 2.623, "0.3": 3.018, "1.0": "21.2 diverged"},
    "float-order noise": "plain 0.03 vs the simulation with α = 0 and no auto-LR (same maths): 2.243 vs 2.196",
    "HDET peak 0.4, controller schedule, S_warm 0, α 0.5": {
        "σ .1 β .9 λ .5 floor .03 (chosen)": 2.192, "same, floor .01": 2.220, "same, floor .003": 2.292,
        "σ .02 β .5 λ 1 floor .01": 2.229, "no spread (Δ = 0) floor .01": 2.255},
    "HDET peak 1.0 (half-decade grid), controller schedule": {
        "S_warm 20 floor .01": 2.848, "S_warm 20 floor .001": 2.859, "S_warm 0 floor .01": 2.550,
        "S_warm 0 floor .001": 2.618, "S_warm 0 floor .005 σ .02 β .5 λ 1": 2.573,
        "S_warm 0 floor .001 α .8 β 0 λ 1": 2.647, "no spread S_warm 0 floor .01": 2.573,
        "signal = loss of all replicas on one shared 32-sequence batch at the window end, σ .1": 2.542,
        "same, T 20": 2.561, "same, floor .005 σ .02 β .5 λ 1": 2.625},
    "HDET peak 1.0, 'onecycle' schedule (controller scales the running curve), S_warm 0": {
        "σ .1 β .5 λ 1": 3.754, "σ .1 β 0 λ 1": 3.140, "σ .1 β .9 λ .5": 4.530, "T 5 β 0 λ 1": 2.892,
        "α .8 β 0 λ 1": 2.954, "T 5 α .8 σ .03 β 0 λ 1": 2.825, "σ .02 β .5 λ 1": 3.095,
        "same, T 5": 2.883, "same, shared-batch signal": 2.913},
    "spread + averaging without auto-LR, peak 0.4": {"α .5": "3.45 diverged", "α .9": "3.60 diverged"},
    "seeds 1-4 with α .5 (then the report seeds; HDET minus best sweep run)": {
        "1": -0.0025, "2": 0.0229, "3": 0.0465, "4": -0.0157, "no spread minus HDET (mean)": -0.028,
        "no signal minus HDET (mean)": -0.004},
    "seeds 1-4 with α 1/9, run after seeing the line above (HDET minus best sweep run)": {
        "1": -0.0177, "2": -0.0157, "3": 0.0176, "4": -0.0085},
}


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--replicas", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8, help="sequences per replica per step")
    ap.add_argument("--context", type=int, default=64)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--lrs", type=float, nargs=5, default=[0.4 / 3 ** k for k in (4, 3, 2, 1, 0)],
                    help="the 5 plain peaks; HDET starts at the highest (default x3 grid ending at 0.4)")
    ap.add_argument("--spread", type=float, default=0.1111, help="α (paper: 1/9)")
    ap.add_argument("--sync-every", type=int, default=10)
    ap.add_argument("--auto-lr-start", type=int, default=0,
                    help="S_warm (0: the controller owns the LR from the first step)")
    ap.add_argument("--temperature", type=float, default=0.1)
    ap.add_argument("--momentum", type=float, default=0.9, help="β of the LR controller")
    ap.add_argument("--floor", type=float, default=3e-2, help="LR floor as a fraction of the peak ('controller')")
    ap.add_argument("--meta-lr", type=float, default=0.5, help="λ of the LR controller")
    ap.add_argument("--schedule-after-start", default="controller", choices=["controller", "onecycle"])
    ap.add_argument("--overhead-steps", type=int, default=1000, help="steps per round (>= 1000: one T=1000 sync)")
    ap.add_argument("--overhead-rounds", type=int, default=2, help="rounds of --overhead-steps steps")
    ap.add_argument("--skip", choices=["sweep", "overhead"], default=None)
    ap.add_argument("--only-hdet", action="store_true", help="skip the plain sweep (for tuning HDET)")
    ap.add_argument("--no-ablations", dest="ablations", action="store_false",
                    help="skip the HDET runs without controller / without spread")
    ap.add_argument("--seeds", type=int, nargs="+", default=[5, 6, 7, 8],
                    help=f"seeds to report on (settings were tuned on seed {TUNING_SEED})")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="runs/bench_hdet")
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--study", choices=["bench", "signal"], default="bench",
                    help="bench: sweep + overhead above; signal: does the zero-order signal help (3)")
    ap.add_argument("--signal-seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    ap.add_argument("--signal-lrs", type=float, nargs="+", default=[0.01, 0.02, 0.04, 0.08],
                    help="plain OneCycle peaks of the signal study")
    ap.add_argument("--signal-hdet-lrs", type=float, nargs="+", default=[0.04, 0.08],
                    help="peaks at which HDET and 'no signal' run in the signal study")
    ap.add_argument("--signal-replicas", type=int, default=8)
    ap.add_argument("--signal-steps", type=int, default=300)
    ap.add_argument("--signal-sync-every", type=int, default=5)
    ap.add_argument("--signal-batch", type=int, default=4, help="sequences per replica per step")
    args = ap.parse_args(argv)
    if args.full:
        args.steps, args.batch, args.context, args.d_model, args.layers = 3000, 32, 128, 256, 4
        args.sync_every, args.overhead_rounds = 50, 3
    args.seed = args.seeds[0]
    return args


# ----------------------------------------------------------------------------- (1) sweep
def build(args):
    torch.manual_seed(args.seed)
    model = lm.CharTransformer(args.d_model, args.layers, 4, args.context)
    return model, torch.optim.Adam(lm.param_groups(model), lr=1e-3)


def run_plain(args, data, peak):
    """Data-parallel OneCycleLR: the N replicas' gradients averaged, one update (torch's scheduler)."""
    train, val = data
    model, opt = build(args)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=peak, total_steps=args.steps)
    curve = []
    for step in range(args.steps):
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for r in range(args.replicas):
            loss = lm.lm_loss(model, lm.sample_batch(train, args.batch, args.context, args.seed, step, r))
            (loss / args.replicas).backward()
            total += loss.item() / args.replicas
        opt.step()
        sched.step()
        curve.append(total)
        if not math.isfinite(total):
            break
    return model, curve, None


def run_hdet(args, data, peak, **override):
    train, val = data
    model, opt = build(args)
    floor = None if args.schedule_after_start == "onecycle" or args.floor is None else peak * args.floor
    options = {"spread": args.spread, "auto_lr": True, "temperature": args.temperature, **override}
    sim = HDETSimulation(model, opt, args.replicas, max_lr=peak, total_steps=args.steps, spread=options["spread"],
                         auto_lr=options["auto_lr"],
                         sync_every=args.sync_every, auto_lr_start=args.auto_lr_start,
                         temperature=options["temperature"], schedule_after_start=args.schedule_after_start,
                         momentum=args.momentum, meta_lr=args.meta_lr,
                         lr_floor=floor)
    curve, base = [], []
    for step in range(args.steps):
        base.append(sim.ensemble.base_lr()[0].item())
        losses = sim.step([lm.sample_batch(train, args.batch, args.context, args.seed, step, r)
                           for r in range(args.replicas)], lm.lm_loss)
        curve.append(float(losses.mean()))
        if not torch.isfinite(losses).any():
            break
    syncs = [{"step": h["step"], "base": h["base"], "delta": h["delta"]} for h in sim.history]
    return model, curve, base, syncs


def sweep(args):
    data = lm.split(lm.stdlib_corpus())
    unigram = lm.unigram_entropy(data[0])
    runs = []
    top = max(args.lrs)
    jobs = [("plain", lr, {}) for lr in args.lrs if not args.only_hdet] + [("hdet", top, {})]
    if args.ablations:
        # where does HDET's behaviour come from? no controller (spread + averaging on the plain
        # curve); no signal (spread and averaging on, but σ so large that the weights are uniform:
        # Δ = 0, the controller's hold-and-decay schedule without its zero-order steps)
        jobs += [("hdet-no-autolr", top, {"auto_lr": False}), ("hdet-no-signal", top, {"temperature": 1e12})]
    for kind, peak, override in jobs:
        t0 = time.perf_counter()
        model, curve, base, *syncs = (run_plain(args, data, peak) if kind == "plain"
                                      else run_hdet(args, data, peak, **override))
        val = lm.evaluate(model, data[1], args.context, batches=16)
        diverged = (not math.isfinite(val)) or val >= unigram or len(curve) < args.steps
        runs.append({"kind": kind, "peak_lr": peak, "final_val": val, "diverged": diverged, "train": curve,
                     "base_lr": base, "controller_syncs": syncs[0] if syncs else None,
                     "seconds": time.perf_counter() - t0})
        print(f"{kind:14s} peak {peak:.0e}: final val {val:.4f} nats/byte  diverged={diverged}  "
              f"({runs[-1]['seconds']:.0f}s)", flush=True)
    if args.only_hdet:
        return runs, {r["kind"]: {"final_val": r["final_val"], "diverged": r["diverged"]} for r in runs}
    plain_ok = [r["final_val"] for r in runs if r["kind"] == "plain" and not r["diverged"]]
    hdet = next(r for r in runs if r["kind"] == "hdet")
    summary = {"seed": args.seed, "tuning_seed": args.seed == TUNING_SEED, "unigram_entropy": unigram, "best_plain_val": min(plain_ok) if plain_ok else None,
               "hdet_val": hdet["final_val"], "hdet_diverged": hdet["diverged"],
               "plain_at_hdet_peak_diverged": next(r for r in runs if r["kind"] == "plain" and r["peak_lr"] == top)[
                   "diverged"],
               "ablations": {r["kind"]: {"final_val": r["final_val"], "diverged": r["diverged"]}
                             for r in runs if r["kind"].startswith("hdet-")},
               "best_plain_peak": min((r for r in runs if r["kind"] == "plain" and not r["diverged"]),
                                      key=lambda r: r["final_val"])["peak_lr"] if plain_ok else None,
               "hdet_minus_best_plain": hdet["final_val"] - min(plain_ok) if plain_ok else None,
               "hdet_at_or_below_best_plain": bool(plain_ok) and hdet["final_val"] <= min(plain_ok)}
    print(json.dumps(summary), flush=True)
    return runs, summary


# ----------------------------------------------------------------------------- (2) overhead
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _overhead_worker(rank, world, port, args, out_file):
    """Plain DDP + OneCycleLR and HDET at T=100 and T=1000, stepped in lockstep: every step runs
    one step of each configuration (in rotating order), so a shared machine's load drifts hit
    all three alike. Each configuration has its own model, DDP wrapper and optimizer."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    train, _ = lm.split(lm.stdlib_corpus(300_000))
    steps = args.overhead_steps * args.overhead_rounds
    configs = {"plain": None, "T100": 100, "T1000": 1000}
    runs = {}
    for name, T in configs.items():
        model, opt = build(args)
        opt = torch.optim.Adam(lm.param_groups(model), lr=1e-4)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        if T is None:
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-4, total_steps=steps + 1)
        else:
            sched = HDETOneCycleLR(opt, max_lr=1e-4, total_steps=steps + 1, spread=0.1, sync_every=T,
                                   auto_lr_start=0, lr_floor=1e-4 / 25 / 10)
        runs[name] = (ddp, opt, sched, T)
    seconds = {k: 0.0 for k in configs}
    names = list(configs)
    for step in range(steps):
        batch = lm.sample_batch(train, 4, 32, 0, step, rank)
        for name in names[step % 3:] + names[:step % 3]:
            ddp, opt, sched, T = runs[name]
            dist.barrier()
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = lm.lm_loss(ddp, batch)
            loss.backward()
            opt.step()
            sched.step() if T is None else sched.step(loss)
            seconds[name] += time.perf_counter() - t0
    times = {k: [v / steps] for k, v in seconds.items()}
    model, opt = build(args)
    # component estimate: bookkeeping per step and the cost of one sync, timed in isolation
    opt = torch.optim.Adam(lm.param_groups(model), lr=1e-4)
    sched = HDETOneCycleLR(opt, max_lr=1e-4, total_steps=10 ** 7, spread=0.1, sync_every=10 ** 6, auto_lr_start=0,
                           lr_floor=1e-4 / 25 / 10)
    one = torch.tensor(1.0)
    t0 = time.perf_counter()
    for _ in range(2000):
        sched.step(one)
    bookkeeping = (time.perf_counter() - t0) / 2000
    plain_sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-4, total_steps=10 ** 7)
    t0 = time.perf_counter()
    for _ in range(2000):
        plain_sched.step()
    plain_bookkeeping = (time.perf_counter() - t0) / 2000
    sync_sched = HDETOneCycleLR(opt, max_lr=1e-4, total_steps=10 ** 6, spread=0.1, sync_every=1, auto_lr_start=0,
                                lr_floor=1e-4 / 25 / 10)
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(50):
        sync_sched.step(one)
    sync_cost = (time.perf_counter() - t0) / 50
    dist.barrier()                     # no rank may leave while another still has collectives in flight
    if rank == 0:
        write_json(out_file, {"block_seconds_per_step": times, "bookkeeping_s": bookkeeping,
                              "plain_bookkeeping_s": plain_bookkeeping, "sync_s": sync_cost,
                              "params": sum(p.numel() for p in model.parameters())})
    dist.barrier()
    dist.destroy_process_group()


def overhead(args, out):
    out_file = str(out / "overhead_raw.json")
    build(args)                                      # parent imports torch's lazy modules before fork
    mp.start_processes(_overhead_worker, args=(2, _free_port(), args, out_file), nprocs=2, join=True,
                       start_method="fork")
    raw = json.load(open(out_file))
    med = {k: statistics.mean(v) for k, v in raw["block_seconds_per_step"].items()}
    step = med["plain"]
    extra = raw["bookkeeping_s"] - raw["plain_bookkeeping_s"]
    result = {"mean_s_per_step": med,
              "measured_overhead_T100": med["T100"] / step - 1, "measured_overhead_T1000": med["T1000"] / step - 1,
              "estimated_overhead_T100": (extra + raw["sync_s"] / 100) / step,
              "estimated_overhead_T1000": (extra + raw["sync_s"] / 1000) / step, **raw}
    print(json.dumps({k: v for k, v in result.items() if k.startswith(("measured", "estimated", "mean"))}), flush=True)
    return result


# ----------------------------------------------------------------------------- (3) signal study
def t_interval(values):
    """Mean and half-width of the two-sided 95% Student-t interval."""
    from scipy.stats import t as student_t

    n = len(values)
    mean = statistics.mean(values)
    if n < 2:
        return mean, float("nan")
    return mean, float(student_t.ppf(0.975, n - 1)) * statistics.stdev(values) / math.sqrt(n)


def signal_study(args, out):
    """Final validation loss of plain OneCycle peaks, HDET and HDET without signal, per seed."""
    data = lm.split(lm.stdlib_corpus())
    unigram = lm.unigram_entropy(data[0])
    study = argparse.Namespace(**vars(args))
    study.steps, study.replicas, study.batch = args.signal_steps, args.signal_replicas, args.signal_batch
    study.sync_every, study.auto_lr_start, study.floor = args.signal_sync_every, None, None   # HDET defaults
    study.schedule_after_start = "controller"
    jobs = [("plain", p, {}) for p in args.signal_lrs]
    for p in args.signal_hdet_lrs:
        jobs += [("hdet", p, {}), ("no-signal", p, {"temperature": 1e12})]
    results = {"args": vars(args), "unigram_entropy": unigram, "runs": []}
    for seed in args.signal_seeds:
        study.seed = seed
        for kind, peak, override in jobs:
            t0 = time.perf_counter()
            if kind == "plain":
                model, curve, _ = run_plain(study, data, peak)
                base, syncs = None, []
            else:
                model, curve, base, syncs = run_hdet(study, data, peak, **override)
            val = lm.evaluate(model, data[1], study.context, batches=16)
            diverged = (not math.isfinite(val)) or val >= unigram or len(curve) < study.steps
            run = {"seed": seed, "kind": kind, "peak_lr": peak, "final_val": val, "diverged": diverged,
                   "controller_syncs": len(syncs), "final_base_lr": base[-1] if base else None,
                   "seconds": time.perf_counter() - t0}
            results["runs"].append(run)
            print(json.dumps(run), flush=True)
            write_json(str(out / "results.json"), results)           # kept as each run ends
    results["summary"] = summarise_signal(results["runs"], args)
    write_json(str(out / "results.json"), results)
    print(signal_table(results["summary"]), flush=True)
    return results


def summarise_signal(runs, args):
    seeds = sorted({r["seed"] for r in runs})
    val = {(r["kind"], r["peak_lr"], r["seed"]): (r["final_val"] if not r["diverged"] else float("inf"))
           for r in runs}

    def arm(kind, peak):
        return [val[(kind, peak, s)] for s in seeds]

    summary = {"seeds": seeds, "arms": {}, "differences": {}}
    for kind, peaks in (("plain", args.signal_lrs), ("hdet", args.signal_hdet_lrs),
                        ("no-signal", args.signal_hdet_lrs)):
        for p in peaks:
            summary["arms"][f"{kind} {p:g}"] = t_interval(arm(kind, p))
    best_seed = [min(val[("plain", p, s)] for p in args.signal_lrs) for s in seeds]
    best_avg = min(args.signal_lrs, key=lambda p: statistics.mean(arm("plain", p)))
    summary["best_plain_peak_on_average"] = best_avg
    summary["arms"]["plain, best peak of each seed"] = t_interval(best_seed)
    for p in args.signal_hdet_lrs:
        hdet, none = arm("hdet", p), arm("no-signal", p)
        pairs = {f"hdet {p:g} - no-signal {p:g}": [a - b for a, b in zip(hdet, none)],
                 f"hdet {p:g} - best plain of each seed": [a - b for a, b in zip(hdet, best_seed)],
                 f"hdet {p:g} - plain {best_avg:g} (best on average)": [
                     a - b for a, b in zip(hdet, arm("plain", best_avg))],
                 f"no-signal {p:g} - best plain of each seed": [a - b for a, b in zip(none, best_seed)]}
        for name, diffs in pairs.items():
            summary["differences"][name] = t_interval(diffs) + (diffs,)
        bases = {k: [r["final_base_lr"] for r in runs if r["kind"] == k and r["peak_lr"] == p]
                 for k in ("hdet", "no-signal")}
        summary[f"final base LR / peak at {p:g}"] = {k: [b / p for b in v] for k, v in bases.items()}
    return summary


def signal_table(summary):
    lines = ["| final validation loss (nats/byte) | mean ± 95% CI |", "|---|---|"]
    lines += [f"| {k} | {m:.4f} ± {h:.4f} |" for k, (m, h) in summary["arms"].items()]
    lines += ["", "| paired difference | mean ± 95% CI | per seed |", "|---|---|---|"]
    lines += [f"| {k} | {m:+.4f} ± {h:.4f} | {' '.join(f'{d:+.3f}' for d in ds)} |"
              for k, (m, h, ds) in summary["differences"].items()]
    return "\n".join(lines)


def plot(runs, out, name="bench_hdet.png"):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in runs:
        k = min(10, len(r["train"]))
        sm = torch.nn.functional.avg_pool1d(torch.tensor(r["train"])[None, None], k, 1).flatten()
        style = "k-" if r["kind"] == "hdet" else ":" if r["kind"].startswith("hdet-") else "-"
        ax.plot(range(k - 1, len(r["train"])), sm, style, lw=1.6 if r["kind"] == "hdet" else 1,
                label=f"{r['kind']} peak {r['peak_lr']:.0e} (val {r['final_val']:.3f})")
    low = min(min(r["train"]) for r in runs if r["train"])
    ax.set(xlabel="step", ylabel="train loss (avg 10)", title="plain DP OneCycle sweep vs HDET", ylim=(low - 0.2, 6))
    ax.legend(fontsize=7)
    hdet = next(r for r in runs if r["kind"] == "hdet")
    ax2.plot(hdet["base_lr"], "k-", label="HDET base LR")
    plain_top = torch.optim.lr_scheduler.OneCycleLR(
        torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), max_lr=hdet["peak_lr"],
        total_steps=len(hdet["base_lr"]) or 1)
    curve = []
    for _ in range(len(hdet["base_lr"])):
        curve.append(plain_top.get_last_lr()[0])
        plain_top.optimizer.step()
        plain_top.step()
    ax2.plot(curve, "r--", label="plain OneCycle at the same peak")
    ax2.set(xlabel="step", ylabel="LR", yscale="log", title="learning rate")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)


def main(argv=None):
    args = parse(argv)
    torch.set_num_threads(args.threads)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.study == "signal":
        signal_study(args, out)
        return
    results = {"args": vars(args), "note": "timings taken on a shared 2-core machine under contention"}
    results["tuning_seed"] = TUNING_SEED
    results["tuning_log"] = TUNING_LOG
    results["report_seeds"] = [s for s in args.seeds if s != TUNING_SEED]
    if args.skip != "sweep":
        results["sweeps"] = {}
        for seed in args.seeds:
            args.seed = seed
            runs, summary = sweep(args)
            results["sweeps"][seed] = {"runs": runs, "summary": summary}
            plot(runs, out, f"bench_hdet_seed{seed}.png")
            write_json(str(out / "results.json"), results, indent=1)      # saved as each seed ends
        if not args.only_hdet:
            reports = [results["sweeps"][s]["summary"] for s in results["report_seeds"]]
            gaps = [r["hdet_minus_best_plain"] for r in reports if r["hdet_minus_best_plain"] is not None]
            results["report_summary"] = {
                "seeds": results["report_seeds"],
                "hdet_stable_where_plain_diverged": [not r["hdet_diverged"] and r["plain_at_hdet_peak_diverged"]
                                                     for r in reports],
                "hdet_at_or_below_best_plain": [r["hdet_at_or_below_best_plain"] for r in reports],
                "mean_hdet_minus_best_plain": statistics.mean(gaps) if gaps else None,
                **{f"mean_{k.replace('hdet-', '').replace('-', '_')}_minus_hdet": statistics.mean(
                    r["ablations"][k]["final_val"] - r["hdet_val"] for r in reports)
                   for k in ("hdet-no-signal",) if reports and args.ablations}}
            print(json.dumps(results["report_summary"]), flush=True)
    if args.skip != "overhead":
        results["overhead"] = overhead(args, out)
    write_json(str(out / "results.json"), results, indent=1)


if __name__ == "__main__":
    main()
