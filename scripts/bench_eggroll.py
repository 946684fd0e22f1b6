"""EGGROLL benchmark, all parts side by side in one run.

1. throughput: population forward (member-rows/s) / plain batched inference of the
   same model on the same number of rows, for a 4 x 1024 MLP and a 2-layer GRU,
   N members x T rows each (``--rows``, default 8; 1 is the paper's Fig. 2a
   setting), r in {1, 4}; the keyed noise is regenerated inside
   every timed call. Also vs naive full-rank ES that materializes each member's
   weights (timed on a sample of members, scaled linearly to N), and
   torcheggroll's step (materialized low-rank weights under vmap) where it installs.
2. quality at equal evaluations: EGGROLL vs OpenAI-ES on an MNIST MLP and on
   CartPole-v1 (when gymnasium is installed).
3. the low-rank update approaching the full-rank one: on f(W) = sum(W^4)/4 the
   expected ES gradient is W^3 + sigma^2 W E[e^4], with E[e^4] = 3 (full rank)
   and 3 + 6/r (EGGROLL), so the relative error falls as O(1/r).

Writes runs/bench_eggroll/results.json and results.png. The throughput part always
covers N = 64..4096 (about 3 CPU minutes on one idle core); ``--full`` makes the
other parts paper-sized (GPU). With one CPU thread the timer is the process's CPU
time (``--clock``), which on a busy machine stays close to an idle machine's wall time.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import zoopt  # noqa: E402
from zoopt.eggroll import EGGROLL  # noqa: E402
from zoopt.kernels import lowrank_factors, normal  # noqa: E402


CLOCK = {"fn": time.perf_counter}


def best_of(fns: dict, reps: int) -> dict:
    """Interleaved timing (one call of each per round), best of ``reps``: fair under CPU contention.
    The clock is wall time, or this process's CPU time (``--clock cpu``: one CPU thread only, where
    it equals the wall time of an idle machine but ignores time the scheduler gave to others)."""
    clock = CLOCK["fn"]
    best = {k: math.inf for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            sync()
            t = clock()
            fn()
            sync()
            best[k] = min(best[k], clock() - t)
    return best


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def mlp(width=1024, depth=4):
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


class GRUNet(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.gru = nn.GRU(width, width, num_layers=2, batch_first=True)

    def forward(self, x):
        return self.gru(x)[0]


def naive_member_forward(model, opt, x_member, member):
    """Naive full-rank ES: draw the member's full-rank noise and build its weights, then run."""
    pair, sign = member // 2, 1.0 - 2.0 * (member % 2)
    params = {}
    for pp in opt.plan.params:
        p = pp.param
        eps = normal(opt.seed, pp.tensor_id, opt.generation, [pair], p.numel(), device=p.device)
        params[pp.name] = p + (sign * opt.sigma) * eps.view(p.shape)
    return functional_call(model, params, (x_member,))


@torch.no_grad()
def throughput(args, device):
    rows = []
    width, T = args.width, args.rows
    for arch in ("mlp", "gru"):
        torch.manual_seed(0)
        model = (mlp(width) if arch == "mlp" else GRUNet(args.gru_width)).to(device)
        d_in = width if arch == "mlp" else args.gru_width
        for rank in (1, 4):
            opt = EGGROLL(model, popsize=max(args.pops), rank=rank, sigma=0.05, seed=0)
            for N in args.pops:
                shape = (N * T, d_in) if arch == "mlp" else (N, T, d_in)
                x = torch.randn(*shape, device=device)
                xs = x[:T] if arch == "mlp" else x[:1]
                members = torch.arange(N)

                def pop():
                    with opt.population(members):
                        model(x)

                def pop_shared():
                    with opt.population(members, shared=xs):
                        model(xs)

                fns = {"plain": lambda: model(x), "eggroll": pop, "eggroll_shared": pop_shared}
                t = best_of(fns, args.reps)
                row = {"arch": arch, "rank": rank, "N": N, "rows_per_member": T,
                       "plain_s": t["plain"], "eggroll_s": t["eggroll"], "eggroll_shared_s": t["eggroll_shared"],
                       "ratio": t["plain"] / t["eggroll"], "ratio_shared": t["plain"] / t["eggroll_shared"],
                       "member_rows_per_s": N * T / t["eggroll"]}
                if rank == 1 and N in args.naive_pops:
                    sample = min(N, args.naive_sample)
                    xm = x.view(N, T, d_in) if arch == "mlp" else x

                    def naive():
                        for i in range(sample):
                            naive_member_forward(model, opt, xm[i:i + 1].reshape(-1, *shape[1:]), i)

                    tn = best_of({"naive": naive}, max(1, args.reps // 2))["naive"] * N / sample
                    row["naive_fullrank_s"] = tn
                    row["speedup_vs_naive"] = tn / t["eggroll"]
                rows.append(row)
                print(f"[throughput] {arch} r={rank} N={N:5d}: plain {t['plain']*1e3:8.1f} ms  eggroll "
                      f"{t['eggroll']*1e3:8.1f} ms  ratio {row['ratio']:.3f}  shared-input ratio "
                      f"{row['ratio_shared']:.3f}" + (f"  vs naive full-rank ES x{row['speedup_vs_naive']:.0f}"
                                                      if "speedup_vs_naive" in row else ""), flush=True)
            opt.detach()
    return rows


@torch.no_grad()
def torcheggroll_step(args, device):
    """torcheggroll's step vs ours on the same MLP and batch (both: forward of every member + update)."""
    try:
        from torcheggroll import TorchEggrollES
    except ImportError:
        return {"skipped": "torcheggroll not installed"}
    out = []
    for N in args.tg_pops:
        torch.manual_seed(0)
        x = torch.randn(args.tg_rows, args.tg_width, device=device)
        y = torch.randn(args.tg_rows, args.tg_width, device=device)
        loss = lambda o, t: ((o - t) ** 2).mean()
        m1, m2 = mlp(args.tg_width).to(device), mlp(args.tg_width).to(device)
        theirs = TorchEggrollES(m1, pop_size=N, sigma=0.05, lr=0.05, rank=1)
        ours = EGGROLL(m2, popsize=N, rank=1, sigma=0.05, lr=0.05)
        with torch.enable_grad():
            t = best_of({"torcheggroll": lambda: theirs.step(x, loss, y),
                         "zoopt": lambda: ours.tell(ours.evaluate((x, y), loss))}, args.reps)
        out.append({"N": N, "width": args.tg_width, "torcheggroll_s": t["torcheggroll"], "zoopt_s": t["zoopt"],
                    "speedup": t["torcheggroll"] / t["zoopt"]})
        print(f"[torcheggroll] MLP 4x{args.tg_width} N={N}: torcheggroll step {t['torcheggroll']*1e3:.1f} ms, "
              f"zoopt step {t['zoopt']*1e3:.1f} ms, x{t['torcheggroll'] / t['zoopt']:.1f}", flush=True)
    return out


def mnist_quality(args):
    from zoopt.problems import ModuleProblem
    from zoopt.problems.data import load_mnist

    try:
        data = load_mnist(limit_train=args.mnist_train)
    except FileNotFoundError as exc:
        return {"skipped": str(exc)}
    xtr, ytr, xte, yte = data["x_train"], data["y_train"], data["x_test"], data["y_test"]
    loss = nn.CrossEntropyLoss()

    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(784, args.mnist_hidden), nn.ReLU(), nn.Linear(args.mnist_hidden, 10))

    def accuracy(model):
        with torch.no_grad():
            return float((model(xte).argmax(1) == yte).float().mean())

    from zoopt.problems.module import Batches, load_flat
    batches = Batches(xtr, ytr, batch_size=args.mnist_batch, seed=0)
    results = {}
    gens = args.mnist_evals // args.mnist_pop
    # EGGROLL (module optimizer, population-aware forward)
    model = net()
    opt = EGGROLL(model, popsize=args.mnist_pop, rank=1, sigma=args.egg_sigma, lr=args.egg_lr, optimizer="adam",
                  seed=0)
    t0 = time.perf_counter()
    curve = []
    for g in range(gens):
        opt.step(batches(g), loss)
        if (g + 1) % max(1, gens // 10) == 0:
            curve.append(((g + 1) * args.mnist_pop, accuracy(model)))
    results["eggroll"] = {"test_acc": accuracy(model), "seconds": time.perf_counter() - t0, "curve": curve}
    # OpenAI-ES (full-rank keyed noise, vmap over materialized members)
    model = net()
    problem = ModuleProblem(model, loss, batches, chunk=args.mnist_pop)
    es = zoopt.OpenAIES(problem.initial_point(), popsize=args.mnist_pop, sigma=args.oes_sigma, lr=args.oes_lr,
                        optimizer="adam", seed=0)
    t0 = time.perf_counter()
    curve = []

    def cb(strategy, stats):
        if strategy.generation % max(1, gens // 10) == 0:
            load_flat(model, strategy.center)
            curve.append((stats["nfev"], accuracy(model)))

    zoopt.run(es, problem, budget=gens * args.mnist_pop, callback=cb)
    load_flat(model, es.center)
    results["openai_es"] = {"test_acc": accuracy(model), "seconds": time.perf_counter() - t0, "curve": curve}
    results["evaluations"] = gens * args.mnist_pop
    print(f"[mnist] {gens * args.mnist_pop} evaluations: EGGROLL test acc {results['eggroll']['test_acc']:.3f} "
          f"({results['eggroll']['seconds']:.0f}s), OpenAI-ES {results['openai_es']['test_acc']:.3f} "
          f"({results['openai_es']['seconds']:.0f}s)", flush=True)
    return results


@torch.no_grad()
def cartpole_returns(policy_fn, n, seed, max_steps=500):
    """Run ``n`` CartPole-v1 episodes in lockstep; ``policy_fn(obs [n, 4]) -> actions [n]``."""
    import gymnasium as gym

    envs = [gym.make("CartPole-v1") for _ in range(n)]
    obs = np.stack([env.reset(seed=seed)[0] for env in envs])  # common random numbers: same start state
    alive = np.ones(n, bool)
    returns = np.zeros(n)
    for _ in range(max_steps):
        actions = policy_fn(torch.as_tensor(obs, dtype=torch.float32))
        for i in np.flatnonzero(alive):
            o, r, term, trunc, _ = envs[i].step(int(actions[i]))
            obs[i], returns[i] = o, returns[i] + r
            alive[i] = not (term or trunc)
        if not alive.any():
            break
    return returns


def cartpole_quality(args):
    try:
        import gymnasium  # noqa: F401
    except ImportError:
        return {"skipped": "gymnasium not installed (pip install 'gymnasium[classic-control]')"}

    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 2))

    N, gens = args.cp_pop, args.cp_evals // args.cp_pop
    eval_seeds = range(1000, 1000 + args.cp_eval_episodes)
    results = {}
    # EGGROLL: every member acts through the population-aware forward (obs rows are member-major)
    model = net()
    opt = EGGROLL(model, popsize=N, rank=1, sigma=0.2, lr=0.1, optimizer="sgd", seed=0)
    t0 = time.perf_counter()
    for g in range(gens):
        with opt.population():
            ret = cartpole_returns(lambda o: model(o).argmax(1), N, seed=g)
        opt.tell(-torch.as_tensor(ret))
    score = float(np.mean([cartpole_returns(lambda o: model(o).argmax(1), 1, seed=s)[0] for s in eval_seeds]))
    results["eggroll"] = {"center_return": score, "seconds": time.perf_counter() - t0}
    # OpenAI-ES: materialized members, one functional_call per member per step (vmap)
    from zoopt.problems.module import load_flat
    model = net()
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    es = zoopt.OpenAIES(torch.cat([p.detach().reshape(-1) for p in model.parameters()]), popsize=N, sigma=0.2,
                        lr=0.05, optimizer="adam", seed=0)
    t0 = time.perf_counter()
    for g in range(gens):
        pts = es.ask().points()
        params, off = {}, 0
        for name, shape in zip(names, shapes):
            k = math.prod(shape)
            params[name] = pts[:, off:off + k].reshape(N, *shape)
            off += k
        fwd = torch.vmap(lambda p, o: functional_call(model, p, (o[None],))[0])
        ret = cartpole_returns(lambda o: fwd(params, o).argmax(1), N, seed=g)
        es.tell(-torch.as_tensor(ret))
    load_flat(model, es.center)
    score_oes = float(np.mean([cartpole_returns(lambda o: model(o).argmax(1), 1, seed=s)[0] for s in eval_seeds]))
    results["openai_es"] = {"center_return": score_oes, "seconds": time.perf_counter() - t0}
    results["evaluations"] = gens * N
    print(f"[cartpole] {gens * N} episodes: EGGROLL center return {score:.1f}, OpenAI-ES {score_oes:.1f}", flush=True)
    return results


def lowrank_vs_fullrank(args):
    """Relative error of the EGGROLL expected update vs the full-rank one on f(W) = sum(W^4)/4."""
    m = n = args.conv_dim
    sigma = 1.0
    torch.manual_seed(0)
    W = torch.randn(m, n) * 0.5 + 0.5
    full = W ** 3 + 3 * sigma ** 2 * W                       # full-rank Gaussian ES expectation
    f = lambda X: (X ** 4).sum((-2, -1)) / 4
    pairs = args.conv_pairs
    out = []
    for r in args.conv_ranks:
        grad = torch.zeros(m, n)
        for start in range(0, pairs, 2048):
            idx = torch.arange(start, min(start + 2048, pairs))
            A, B = lowrank_factors(7, r, 0, idx, m, n, r)
            E = A @ B.transpose(1, 2) / math.sqrt(r)
            w = f(W + sigma * E) - f(W - sigma * E)          # pair weight f_2k - f_2k+1 (raw fitness)
            grad += torch.einsum("p,pij->ij", w, E)
        est = grad / (2 * pairs * sigma)
        theory = W ** 3 + sigma ** 2 * W * (3 + 6 / r)
        rel = float((est - full).norm() / full.norm())
        out.append({"rank": r, "rel_error": rel, "rel_error_theory": float((theory - full).norm() / full.norm()),
                    "rel_error_x_rank": rel * r})
        print(f"[low-rank -> full-rank] r={r:3d}: relative error {rel:.4f} (theory {out[-1]['rel_error_theory']:.4f})",
              flush=True)
    # Monte-Carlo floor: the same number of full-rank pairs
    grad = torch.zeros(m, n)
    for start in range(0, pairs, 2048):
        idx = torch.arange(start, min(start + 2048, pairs))
        E = normal(7, 999, 0, idx, m * n).view(-1, m, n)
        grad += torch.einsum("p,pij->ij", f(W + sigma * E) - f(W - sigma * E), E)
    floor = float((grad / (2 * pairs * sigma) - full).norm() / full.norm())
    ranks = np.array([o["rank"] for o in out], float)
    errs = np.array([o["rel_error"] for o in out])
    slope = float(np.polyfit(np.log(ranks), np.log(errs), 1)[0])
    print(f"[low-rank -> full-rank] log-log slope {slope:.2f} (O(1/r) = -1); full-rank MC floor {floor:.4f}", flush=True)
    return {"rows": out, "loglog_slope": slope, "fullrank_mc_floor": floor, "pairs": pairs, "dim": [m, n]}


def plot(results, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for arch, style in (("mlp", "-"), ("gru", "--")):
        for rank in (1, 4):
            rows = [r for r in results["throughput"] if r["arch"] == arch and r["rank"] == rank]
            if rows:
                axes[0].plot([r["N"] for r in rows], [r["ratio"] for r in rows], style, marker="o",
                             label=f"{arch} r={rank}")
    axes[0].axhline(0.85, color="gray", lw=0.8)
    axes[0].set(xscale="log", xlabel="population N", ylabel="throughput / plain inference", title="throughput")
    axes[0].legend()
    mn = results.get("mnist", {})
    for key in ("eggroll", "openai_es"):
        if isinstance(mn.get(key), dict) and mn[key].get("curve"):
            c = np.array(mn[key]["curve"])
            axes[1].plot(c[:, 0], c[:, 1], marker="o", label=key)
    axes[1].set(xlabel="evaluations", ylabel="MNIST test accuracy", title="quality at equal evaluations")
    axes[1].legend()
    conv = results.get("lowrank_vs_fullrank", {}).get("rows", [])
    if conv:
        axes[2].loglog([c["rank"] for c in conv], [c["rel_error"] for c in conv], marker="o", label="measured")
        axes[2].loglog([c["rank"] for c in conv], [c["rel_error_theory"] for c in conv], "--", label="6/r theory")
        axes[2].set(xlabel="rank r", ylabel="relative error vs full-rank update", title="O(1/r)")
        axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help="paper-sized run (GPU): N up to 4096, more evaluations")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is steadier on a shared machine)")
    p.add_argument("--parts", default="throughput,torcheggroll,mnist,cartpole,convergence")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--clock", choices=["auto", "wall", "cpu"], default="auto",
                   help="timer: wall, or process CPU time (auto: cpu for one CPU thread, else wall)")
    p.add_argument("--rows", type=int, default=8,
                   help="input rows per member in the throughput part (1 = the paper's Fig. 2a setting: one "
                        "input vector per member, batch = population)")
    p.add_argument("--out", default="runs/bench_eggroll")
    args = p.parse_args(argv)
    if args.rows < 1:
        p.error(f"--rows must be >= 1, got {args.rows}")
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    clock = args.clock if args.clock != "auto" else ("cpu" if device == "cpu" and args.threads == 1 else "wall")
    if clock == "cpu" and (device != "cpu" or args.threads != 1):
        p.error("--clock cpu needs the CPU device and --threads 1")
    CLOCK["fn"] = time.process_time if clock == "cpu" else time.perf_counter
    print(f"timing: {clock} clock, interleaved best of {args.reps}, {args.threads} thread(s), device {device}",
          flush=True)
    args.width, args.gru_width, args.tg_rows = 1024, 256, 8
    args.pops = [64, 256, 512, 1024, 2048, 4096]
    args.naive_pops, args.naive_sample = ([256, 1024, 4096], 32) if args.full else ([256, 1024], 8)
    args.tg_pops, args.tg_width = ([64, 256], 1024) if args.full else ([64], 256)
    args.mnist_train, args.mnist_hidden, args.mnist_batch = (None, 128, 512) if args.full else (10000, 32, 256)
    args.mnist_pop, args.mnist_evals = (512, 512 * 600) if args.full else (64, 64 * 150)
    args.egg_sigma, args.egg_lr, args.oes_sigma, args.oes_lr = 0.05, 0.02, 0.05, 0.01
    args.cp_pop, args.cp_evals, args.cp_eval_episodes = (256, 256 * 60, 20) if args.full else (32, 32 * 20, 5)
    args.conv_dim, args.conv_pairs = 8, (1 << 18) if args.full else (1 << 16)
    args.conv_ranks = [1, 2, 4, 8, 16, 32]
    parts = set(args.parts.split(","))
    os.makedirs(args.out, exist_ok=True)
    results = {"device": device, "threads": args.threads, "torch": torch.__version__, "clock": clock,
               "note": "CPU timings taken on a shared 2-core machine under contention; ratios are interleaved best-of"}
    if "throughput" in parts:
        results["throughput"] = throughput(args, device)
    if "torcheggroll" in parts:
        results["torcheggroll"] = torcheggroll_step(args, device)
    if "mnist" in parts:
        results["mnist"] = mnist_quality(args)
    if "cartpole" in parts:
        results["cartpole"] = cartpole_quality(args)
    if "convergence" in parts:
        results["lowrank_vs_fullrank"] = lowrank_vs_fullrank(args)
    with open(os.path.join(args.out, "results.json"), "w") as fh:
        json.dump(results, fh, indent=1)
    if "throughput" in results:
        plot(results, os.path.join(args.out, "results.png"))
    print(f"wrote {args.out}/results.json")


if __name__ == "__main__":
    main()
