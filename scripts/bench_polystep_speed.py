"""Time per PolyStep step: zoopt.PolyStep vs the official ``polystep`` package, side by side.

Same model (from ``zoopt.problems.zoo``, identical initial weights), same
batch, same hybrid-subspace rank, polytope, particle dimension and number of
candidates per step; both use one probe per vertex and the softmax solver.
Prints seconds per step for each and the ratio ours/official, and ours against a lower bound:
the arithmetic of one step's candidates after the shared prefix (``step_arithmetic``) at this
machine's measured GEMM and elementwise rates (``machine_rates``); writes JSON
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
CPU_TIMES = {}  # the last time_ours call's per-step process CPU seconds
HYPER = dict(epsilon=0.5, step_radius=2.0, probe_radius=1.0)  # the SNN recipe; radii multiplied by epsilon


# Elementwise ops per element of each stage's output, counting only what the hard forwards in
# problems/zoo/layers.py must compute, not how torch spells it: a LIF step is mem*beta, +current,
# >= threshold and the reset select (4; the float cast and the 1 - spike product of the torch
# spelling are not needed: the fused kernel does without them); the readout also adds each spike
# into the count (+1); ReLU 1; the loss per logit: subtract the row max, exp, sum, max (4; the
# per-row log and the picked logit are O(B), not O(B C)).
LIF_OPS, READOUT_OPS, RELU_OPS, LOSS_OPS = 4, 5, 1, 4


def candidate_work(model_name: str, batch: int, pdim: int, in_features=784, hidden=128, classes=10, steps=15,
                   antipodal: bool = True):
    """Per stage the route of ``zoopt.polystep.evaluate`` takes: (parameter shapes of the stage, GEMM flops,
    elementwise ops) one candidate needs after the shared work (the prefix and the per-coordinate responses,
    counted by :func:`shared_work`): its pre-activation, center plus a pdim-term combination of the shared
    responses, then the stages after it, on ``batch`` rows. With ``antipodal`` (orthoplex: vertex v + V/2 is
    -vertex v) a pair of candidates shares one combination, so each needs half its GEMM, plus one add or
    subtract per pre-activation element."""
    B, H, C, T = batch, hidden, classes, steps
    share = 0.5 if antipodal else 1.0
    loss = B * C * LOSS_OPS
    if model_name == "mlp":
        return {"fc1": ([(H, in_features), (H,)], share * 2 * B * H * pdim + 2 * B * H * C,
                        B * H + B * H * RELU_OPS + loss),
                "fc2": ([(C, H), (C,)], share * 2 * B * C * pdim, B * C + loss)}
    if model_name == "snn":
        return {"fc1": ([(H, in_features), (H,)], share * 2 * B * H * pdim + 2 * B * T * H * C,
                        B * H + T * B * H * LIF_OPS + T * B * C * READOUT_OPS + loss),
                "fc2": ([(C, H), (C,)], share * 2 * B * T * C * pdim,
                        B * T * C + T * B * C * READOUT_OPS + loss)}
    raise ValueError(f"no arithmetic count for model {model_name!r}")


def _map_kind(shape, n_coords: int) -> str:
    """The map ``HybridSubspace`` builds for a weight of ``shape`` with ``n_coords`` coordinates."""
    from zoopt.polystep.subspace import SPARSE_THRESHOLD_BYTES
    numel = 1
    for s in shape:
        numel *= s
    return "sparse" if numel * n_coords * 4 > SPARSE_THRESHOLD_BYTES else "dense"


def shared_work(model_name: str, rank: int, batch: int, in_features=784, hidden=128, classes=10, steps=15):
    """GEMM flops of one step's shared work, done once per step whatever the candidates: the center's
    forward and every subspace coordinate's response ``a_s M_j^T`` (a dense map's ``M_j`` is a full
    [d_out, d_in] matrix; a sparse one has int(sqrt(numel)) entries; a bias coordinate is a one-hot)."""
    import math

    from zoopt.polystep.subspace import _weight_coords
    B, H, C, T = batch, hidden, classes, steps
    rows = {"fc1": B, "fc2": B * T if model_name == "snn" else B}
    shapes = {"fc1": (H, in_features), "fc2": (C, H)}
    flops = 2 * B * in_features * H + 2 * rows["fc2"] * H * C  # the center's forward
    for stage, shape in shapes.items():
        n = _weight_coords(shape, rank)
        numel = shape[0] * shape[1]
        per = 2 * rows[stage] * numel if _map_kind(shape, n) == "dense" else 2 * rows[stage] * int(math.sqrt(numel))
        flops += n * per
    return flops


def step_arithmetic(model_name, rank, batch, pdim, candidates, polytope="orthoplex"):
    """(GEMM flops, elementwise ops) of one step: the candidates' own work (a stage's share of the
    candidates is its share of the subspace coordinates: every particle block of pdim coordinates has the
    same vertices) plus the shared work once."""
    from zoopt.polystep.subspace import _weight_coords

    work = candidate_work(model_name, batch, pdim, antipodal=polytope == "orthoplex")
    coords = {st: sum(_weight_coords(s, rank) if len(s) == 2 else s[0] for s in shapes)
              for st, (shapes, _, _) in work.items()}
    per_coord = candidates / sum(coords.values())
    flops = sum(coords[st] * per_coord * work[st][1] for st in work) + shared_work(model_name, rank, batch)
    elems = sum(coords[st] * per_coord * work[st][2] for st in work)
    return flops, elems


def machine_rates(seconds: float = 1.0):
    """This process's sustained GEMM (flop/s, 512^3 fp32 torch.mm) and elementwise (element-ops/s, a*b
    on 2^20 floats, in cache) throughput at the current thread setting, best of repeated calls."""
    a, b = torch.randn(512, 512), torch.randn(512, 512)
    u, v, w = torch.randn(1 << 20), torch.randn(1 << 20), torch.empty(1 << 20)

    def best(fn, work):
        fn()
        top, end = 0.0, time.perf_counter() + seconds
        while time.perf_counter() < end:
            t = time.perf_counter()
            fn()
            top = max(top, work / (time.perf_counter() - t))
        return top

    return best(lambda: torch.mm(a, b), 2 * 512 ** 3), best(lambda: torch.mul(u, v, out=w), 1 << 20)


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
    times, cpu = [], []
    for _ in range(steps + 1):  # the first step also verifies the stage protocol: not timed
        t, c = time.perf_counter(), time.process_time()
        opt.step((x, y), loss_fn)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    CPU_TIMES["ours"] = cpu[1:]  # this process's CPU seconds: on a loaded machine, closer to an idle one's wall time
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
    gemm_rate, elem_rate = machine_rates()
    print(f"machine: GEMM {gemm_rate / 1e9:.1f} GFLOP/s, elementwise {elem_rate / 1e9:.2f} G element-ops/s "
          f"({args.threads} thread(s))", flush=True)
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
        flops, elems = step_arithmetic(model_name, rank, args.batch, 8, n_ours, polytope)
        bound = flops / gemm_rate + elems / elem_rate
        cpu_step = sum(CPU_TIMES["ours"]) / len(CPU_TIMES["ours"])
        row.update(step_gflop=flops / 1e9, step_gelem_ops=elems / 1e9, gemm_gflops=gemm_rate / 1e9,
                   elem_gops=elem_rate / 1e9, lower_bound_s=bound, ours_cpu_s_per_step=cpu_step,
                   over_bound=row["ours_s_per_step"] / bound, cpu_over_bound=cpu_step / bound)
        print(f"{case:12s} bound: {flops / 1e9:.2f} GFLOP + {elems / 1e9:.2f} G element-ops -> {bound:.3f} s; "
              f"time per step / bound = {row['over_bound']:.1f} (wall), {row['cpu_over_bound']:.1f} "
              f"(process CPU time)", flush=True)
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
