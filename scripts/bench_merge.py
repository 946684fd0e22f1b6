"""Evo-Merging on a real pool (scripts/build_merge_pool.py) against its references.

For each held-out target task (zoopt/merge/tasks.py TARGETS): Evo-Merging
(alpha then beta) vs the uniform average, LoRAHub (stage 2 alone, from 0), the
best single adapter (picked on validation), and the white-box TIES and DARE
(grid over scale and density, picked on validation), plus the ablations
alpha only / beta only / beta >= 0. Reports validation and test loss,
exact-match accuracy on test (greedy), queries and wall time; JSON + PNG.

The fitness is computed in process exactly as the service computes it
(SlotModel, the same merge operator, queries batched into one forward); the
HTTP path itself is exercised by tests/test_merge.py.

    python scripts/bench_merge.py                    # CPU: 16 val / 48 test examples, 240 queries, ~1 h
    python scripts/bench_merge.py --full             # the paper's 300 val examples, popsize 20, 400+800 queries
    # the 1,200-query comparison on one shared CPU core (~1.5 h): Evo-Merging vs LoRAHub vs best single
    python scripts/bench_merge.py --val 4 --test 32 --budget 1200 --popsize 20 --threads 1 \
        --no-ablations --no-whitebox --progress --out runs/bench_merge_1200
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from zoopt.merge.lm import DenseDelta, SlotModel, encode_examples, greedy_answers, load_base
from zoopt.merge.operator import merge_factors
from zoopt.merge.pool import load_pool
from zoopt.merge.search import EvoMerge
from zoopt.merge.tasks import TARGETS, make_records
from zoopt.merge.whitebox import dare, ties


class Fitness:
    """evaluate_many over the slot model; counts queries."""

    def __init__(self, slot_model, pool, examples, progress=False):
        self.slot_model, self.pool, self.examples, self.queries = slot_model, pool, examples, 0
        self.progress, self.started = progress, time.perf_counter()

    def __call__(self, pairs):
        losses = []
        for start in range(0, len(pairs), self.slot_model.slots):
            chunk = pairs[start:start + self.slot_model.slots]
            for slot, (a, b) in enumerate(chunk):
                self.slot_model.write(slot, merge_factors(self.pool, a, b))
            losses += self.slot_model.losses([(slot, self.examples) for slot in range(len(chunk))])
        self.queries += len(pairs)
        if self.progress:
            print(f"    {self.queries:5d} queries  min loss {min(losses):.4f}  {time.perf_counter() - self.started:6.0f} s",
                  flush=True)
        return losses


def test_metrics(slot_model, tokenizer, pool, test_records, test_examples, alpha=None, beta=None, delta=None):
    """Test loss and exact match for a LoRA merge (alpha, beta) or a dense delta."""
    zero = {m: (torch.zeros_like(pool.A[m][0]), torch.zeros_like(pool.B[m][0])) for m in pool.modules}
    if delta is None:
        slot_model.write(0, merge_factors(pool, alpha, beta))
        ctx = torch.no_grad()
    else:
        slot_model.write(0, zero)
        ctx = DenseDelta(slot_model, delta)
    with ctx:
        loss = slot_model.losses([(0, test_examples)])[0]
        preds = greedy_answers(slot_model, tokenizer, [r["prompt"] for r in test_records], 0)
    exact = float(np.mean([p.strip() == r["answer"].strip() for p, r in zip(preds, test_records)]))
    return {"test_loss": loss, "test_exact": exact}


def run_target(target, slot_model, tokenizer, pool, args, on_row=None):
    val = make_records(target, args.val, seed=1)
    test = make_records(target, args.test, seed=2)
    val_ex, test_ex = encode_examples(tokenizer, val), encode_examples(tokenizer, test)
    n = pool.size
    rows = {}

    def record(name, alpha, beta, val_loss, queries, seconds, delta=None, **extra):
        rows[name] = {"val_loss": val_loss, "queries": queries, "seconds": seconds,
                      **test_metrics(slot_model, tokenizer, pool, test, test_ex, alpha, beta, delta), **extra}
        print(f"  {target:15s} {name:22s} val {val_loss:.4f}  test {rows[name]['test_loss']:.4f}  "
              f"exact {100 * rows[name]['test_exact']:5.1f}%  queries {queries:5d}  {seconds:6.0f} s", flush=True)
        if on_row:
            on_row(rows)

    fit = Fitness(slot_model, pool, val_ex, progress=args.progress)
    t = time.perf_counter()
    loss = fit([([1.0] * n, [1.0 / n] * n)])[0]
    record("uniform average", [1.0] * n, [1.0 / n] * n, loss, 1, time.perf_counter() - t)

    t, fit.queries = time.perf_counter(), 0
    singles = fit([([1.0] * n, list(np.eye(n)[i])) for i in range(n)])
    best = int(np.argmin(singles))
    record("best single", [1.0] * n, list(np.eye(n)[best]), singles[best], n, time.perf_counter() - t,
           adapter=pool.names[best])

    searches = {"Evo-Merging": dict(),
                "LoRAHub (beta from 0)": dict(stages=("beta",), beta_init=0.0),
                "ablation: alpha only": dict(stages=("alpha",)),
                "ablation: beta only": dict(stages=("beta",)),
                "ablation: beta >= 0": dict(beta_nonneg=True)}
    if not args.ablations:
        searches = {k: v for k, v in searches.items() if not k.startswith("ablation")}
    for name, opts in searches.items():
        stages = opts.get("stages", ("alpha", "beta"))
        budgets = ({"budget_alpha": args.budget // 3, "budget_beta": args.budget - args.budget // 3}
                   if len(stages) == 2 else {f"budget_{stages[0]}": args.budget})
        search = EvoMerge(n, popsize=args.popsize, seed=args.seed, **budgets, **opts)
        t, fit.queries = time.perf_counter(), 0
        fit.started = t
        result = search.run(fit)
        record(name, result["alpha"], result["beta"], result["loss"], fit.queries, time.perf_counter() - t,
               history=result["history"], merge_alpha=result["alpha"], merge_beta=result["beta"])

    # white-box grids (density or drop rate x scale), picked on validation
    for method, rates in (("TIES (white-box)", [0.2, 0.5, 1.0]), ("DARE (white-box)", [0.5, 0.9])):
        if not args.whitebox:
            break
        t, best_cfg = time.perf_counter(), None
        slot_model.write(0, {m: (torch.zeros_like(pool.A[m][0]), torch.zeros_like(pool.B[m][0]))
                             for m in pool.modules})
        for p in rates:
            unit = ties(pool, p) if method.startswith("TIES") else dare(pool, p, seed=args.seed)
            for scale in (0.3, 0.5, 1.0):
                delta = {m: scale * d for m, d in unit.items()}
                with DenseDelta(slot_model, delta):
                    loss = slot_model.losses([(0, val_ex)])[0]
                if best_cfg is None or loss < best_cfg[0]:
                    best_cfg = (loss, delta, {"scale": scale, "p": p})
        record(method, None, None, best_cfg[0], 0, time.perf_counter() - t, delta=best_cfg[1], config=best_cfg[2])
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", default="runs/merge_pool", help="output of scripts/build_merge_pool.py")
    ap.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    ap.add_argument("--val", type=int, default=16)
    ap.add_argument("--test", type=int, default=48)
    ap.add_argument("--budget", type=int, default=240, help="queries per search")
    ap.add_argument("--popsize", type=int, default=20)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--no-ablations", dest="ablations", action="store_false")
    ap.add_argument("--progress", action="store_true", help="print every generation of the searches")
    ap.add_argument("--no-whitebox", dest="whitebox", action="store_false", help="skip the TIES and DARE references")
    ap.add_argument("--full", action="store_true", help="300 val examples, 400 + 800 queries")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="runs/bench_merge")
    args = ap.parse_args()
    if args.full:
        args.val, args.test, args.budget = 300, 300, 1200
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    model, tokenizer = load_base(os.path.join(args.pool, "base"))
    pool = load_pool(os.path.join(args.pool, "adapters"))
    print(f"pool: {pool.size} adapters {pool.names}")
    slot_model = SlotModel(model, pool.config, slots=args.popsize, rows_per_forward=256)
    results = {}
    for target in args.targets:
        def save(rows, target=target):  # saved as each method ends
            with open(os.path.join(args.out, "results.json"), "w") as fh:
                json.dump({"args": vars(args), "per_target": {**results, target: rows}}, fh, indent=1)

        results[target] = run_target(target, slot_model, tokenizer, pool, args, on_row=save)
    methods = list(next(iter(results.values())))
    print(f"\naverage over {len(results)} held-out targets ({args.val} val / {args.test} test examples, "
          f"budget {args.budget} queries)")
    print(f"{'method':30s} {'val loss':>9s} {'test loss':>9s} {'exact %':>8s} {'queries':>8s}")
    summary = {}
    for m in methods:
        avg = {k: float(np.mean([results[t][m][k] for t in results]))
               for k in ("val_loss", "test_loss", "test_exact", "queries")}
        summary[m] = avg
        print(f"{m[:30]:30s} {avg['val_loss']:9.4f} {avg['test_loss']:9.4f} {100 * avg['test_exact']:8.1f} "
              f"{avg['queries']:8.0f}")
    with open(os.path.join(args.out, "results.json"), "w") as fh:
        json.dump({"args": vars(args), "per_target": results, "average": summary}, fh, indent=1)
    plot(summary, args.out)


def plot(summary, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.45 * len(names) + 1.5))
    axes[0].barh(names, [summary[n]["test_loss"] for n in names])
    axes[0].set_xlabel("test loss (avg over targets)")
    axes[1].barh(names, [100 * summary[n]["test_exact"] for n in names])
    axes[1].set_xlabel("test exact match % (avg)")
    axes[1].set_yticks([])
    fig.tight_layout()
    fig.savefig(os.path.join(out, "results.png"), dpi=110)


if __name__ == "__main__":
    main()
