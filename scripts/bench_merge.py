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
    # issue 18's honest scale: 32 val / 64 test, seeds 42 43 44, 600 and 1,200 queries, every baseline
    python scripts/bench_merge.py --honest --progress --out runs/bench_merge_honest

The summary is mean +- std over targets x seeds (a method that does not depend
on the seed: over targets). Cost of --honest: 2 searches x (600 + 1,200) queries
x 3 seeds x 3 targets = 32,400 queries. Measured on SmolLM2-135M's shape (r 8,
7 projections, 10 adapters, ~18 tokens per example, one thread, CPU time): a
generation of 20 queries is 10.3 s at 4 validation examples and 69.8 s at 32,
i.e. 3.5 s per query, so --honest needs about 31 CPU-core hours (~16 h on two
cores, before the test decoding and the ~1 h pool build); minutes on a GPU.
That SmolLM2 command is the one to run on a GPU. On a CPU, the same benchmark (same
code, only the base differs) runs on the tiny byte-level Llama of
``build_merge_pool.py --tiny-base`` (2 layers, hidden 128, ~0.5 M parameters, trained
from scratch on the skill mixture): about 0.05-0.07 CPU-s per query at 32 val
examples, so --honest is ~35 CPU-minutes on one core:

    python scripts/build_merge_pool.py --tiny-base --out runs/merge_pool_tiny --steps 300 --batch 16 --threads 1
    python scripts/bench_merge.py --honest --pool runs/merge_pool_tiny --threads 1 --out runs/bench_merge_tiny
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from zoopt.atomic import write_json
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


SEARCHES = {"Evo-Merging": dict(),
            "LoRAHub (beta from 0)": dict(stages=("beta",), beta_init=0.0),
            "ablation: alpha only": dict(stages=("alpha",)),
            "ablation: beta only": dict(stages=("beta",)),
            "ablation: beta >= 0": dict(beta_nonneg=True)}


def run_target(target, slot_model, tokenizer, pool, args, on_row=None):
    """rows[method][str(seed)] -> metrics; methods that do not depend on the seed are run once
    (under the first seed). Searches are named "<method> @<budget>"."""
    val = make_records(target, args.val, seed=1)
    test = make_records(target, args.test, seed=2)
    val_ex, test_ex = encode_examples(tokenizer, val), encode_examples(tokenizer, test)
    n = pool.size
    rows = {}

    def record(name, seed, alpha, beta, val_loss, queries, seconds, delta=None, **extra):
        row = {"val_loss": val_loss, "queries": queries, "seconds": seconds,
               **test_metrics(slot_model, tokenizer, pool, test, test_ex, alpha, beta, delta), **extra}
        rows.setdefault(name, {})[str(seed)] = row
        print(f"  {target:15s} {name:28s} seed {seed:3d} val {val_loss:.4f}  test {row['test_loss']:.4f}  "
              f"exact {100 * row['test_exact']:5.1f}%  queries {queries:5d}  {seconds:6.0f} s", flush=True)
        if on_row:
            on_row(rows)

    fit = Fitness(slot_model, pool, val_ex, progress=args.progress)
    first = args.seeds[0]
    t = time.perf_counter()
    loss = fit([([1.0] * n, [1.0 / n] * n)])[0]
    record("uniform average", first, [1.0] * n, [1.0 / n] * n, loss, 1, time.perf_counter() - t)

    t, fit.queries = time.perf_counter(), 0
    singles = fit([([1.0] * n, list(np.eye(n)[i])) for i in range(n)])
    best = int(np.argmin(singles))
    record("best single", first, [1.0] * n, list(np.eye(n)[best]), singles[best], n, time.perf_counter() - t,
           adapter=pool.names[best])

    searches = {k: v for k, v in SEARCHES.items() if args.ablations or not k.startswith("ablation")}
    for budget in args.budgets:
        for seed in args.seeds:
            for name, opts in searches.items():
                stages = opts.get("stages", ("alpha", "beta"))
                budgets = ({"budget_alpha": budget // 3, "budget_beta": budget - budget // 3}
                           if len(stages) == 2 else {f"budget_{stages[0]}": budget})
                search = EvoMerge(n, popsize=args.popsize, seed=seed, **budgets, **opts)
                t, fit.queries = time.perf_counter(), 0
                fit.started = t
                result = search.run(fit)
                record(f"{name} @{budget}", seed, result["alpha"], result["beta"], result["loss"], fit.queries,
                       time.perf_counter() - t, history=result["history"], merge_alpha=result["alpha"],
                       merge_beta=result["beta"], stage=result["stage"])

    # white-box grids (density or drop rate x scale) through PEFT's merge utilities, picked on
    # validation; TIES is deterministic, DARE draws its drop mask from the seed
    for method, rates in (("TIES (white-box)", [0.2, 0.5, 1.0]), ("DARE (white-box)", [0.5, 0.9])):
        if not args.whitebox:
            break
        for seed in args.seeds if method.startswith("DARE") else [first]:
            t, best_cfg = time.perf_counter(), None
            slot_model.write(0, {m: (torch.zeros_like(pool.A[m][0]), torch.zeros_like(pool.B[m][0]))
                                 for m in pool.modules})
            for p in rates:
                unit = ties(pool, p) if method.startswith("TIES") else dare(pool, p, seed=seed)
                for scale in (0.3, 0.5, 1.0):
                    delta = {m: scale * d for m, d in unit.items()}
                    with DenseDelta(slot_model, delta):
                        loss = slot_model.losses([(0, val_ex)])[0]
                    if best_cfg is None or loss < best_cfg[0]:
                        best_cfg = (loss, delta, {"scale": scale, "p": p})
            record(method, seed, None, None, best_cfg[0], 0, time.perf_counter() - t, delta=best_cfg[1],
                   config=best_cfg[2])
    return rows


def summarize(results: dict) -> dict:
    """Per method: mean and std over targets and seeds (a seed-free method: over targets)."""
    methods = list(next(iter(results.values())))
    summary = {}
    for m in methods:
        runs = [row for t in results for row in results[t][m].values()]
        summary[m] = {"runs": len(runs)}
        for k in ("val_loss", "test_loss", "test_exact", "queries"):
            values = np.array([r[k] for r in runs], dtype=float)
            summary[m][k] = float(values.mean())
            summary[m][k + "_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return summary


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", default="runs/merge_pool", help="output of scripts/build_merge_pool.py")
    ap.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    ap.add_argument("--val", type=int, default=16)
    ap.add_argument("--test", type=int, default=48)
    ap.add_argument("--budgets", type=int, nargs="+", default=[240], help="queries per search, one run each")
    ap.add_argument("--seeds", type=int, nargs="+", default=[42], help="search seeds (and DARE's draw)")
    ap.add_argument("--popsize", type=int, default=20)
    ap.add_argument("--no-ablations", dest="ablations", action="store_false")
    ap.add_argument("--progress", action="store_true", help="print every generation of the searches")
    ap.add_argument("--no-whitebox", dest="whitebox", action="store_false", help="skip the TIES and DARE references")
    ap.add_argument("--honest", action="store_true",
                    help="issue 18's scale: 32 val / 64 test examples, seeds 42 43 44, budgets 600 and 1200, "
                         "no ablations")
    ap.add_argument("--full", action="store_true", help="the paper's 300 val examples, 400 + 800 queries")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="runs/bench_merge")
    args = ap.parse_args()
    if args.honest:
        args.val, args.test, args.seeds, args.budgets, args.ablations = 32, 64, [42, 43, 44], [600, 1200], False
    if args.full:
        args.val, args.test, args.budgets = 300, 300, [1200]
    if min(args.budgets) < 2 * args.popsize:
        raise SystemExit(f"--budgets must allow a generation per stage (>= {2 * args.popsize})")
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    model, tokenizer = load_base(os.path.join(args.pool, "base"))
    pool = load_pool(os.path.join(args.pool, "adapters"))
    print(f"pool: {pool.size} adapters {pool.names}")
    slot_model = SlotModel(model, pool.config, slots=args.popsize, rows_per_forward=256)
    results = {}
    for target in args.targets:
        def save(rows, target=target):  # saved as each method ends
            write_json(os.path.join(args.out, "results.json"),
                       {"args": vars(args), "per_target": {**results, target: rows}}, indent=1)

        results[target] = run_target(target, slot_model, tokenizer, pool, args, on_row=save)
    summary = summarize(results)
    print(f"\nmean +- std over {len(results)} held-out targets x seeds {args.seeds} "
          f"({args.val} val / {args.test} test examples)")
    print(f"{'method':34s} {'runs':>4s} {'val loss':>15s} {'test loss':>15s} {'exact %':>13s} {'queries':>8s}")
    for m, a in summary.items():
        print(f"{m[:34]:34s} {a['runs']:4d} {a['val_loss']:7.4f}+-{a['val_loss_std']:6.4f} "
              f"{a['test_loss']:7.4f}+-{a['test_loss_std']:6.4f} {100 * a['test_exact']:5.1f}+-"
              f"{100 * a['test_exact_std']:5.1f} {a['queries']:8.0f}")
    write_json(os.path.join(args.out, "results.json"), {"args": vars(args), "per_target": results,
                                                        "summary": summary}, indent=1)
    plot(summary, args.out)


def plot(summary, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.45 * len(names) + 1.5))
    axes[0].barh(names, [summary[n]["test_loss"] for n in names], xerr=[summary[n]["test_loss_std"] for n in names])
    axes[0].set_xlabel("test loss (mean +- std over targets x seeds)")
    axes[1].barh(names, [100 * summary[n]["test_exact"] for n in names],
                 xerr=[100 * summary[n]["test_exact_std"] for n in names])
    axes[1].set_xlabel("test exact match % (mean +- std)")
    axes[1].set_yticks([])
    fig.tight_layout()
    fig.savefig(os.path.join(out, "results.png"), dpi=110)


if __name__ == "__main__":
    main()
