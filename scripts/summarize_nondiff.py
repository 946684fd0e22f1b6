"""The markdown tables of a ``bench_nondiff.py`` run: model x method, mean ± std over the seeds of the
val-selected test accuracy (the test accuracy of the epoch with the best validation accuracy), then
the same for the test-selected figure (the best test accuracy over the epochs, as the paper
reports), then ours vs the official package per model (time per step ratio, accuracy difference
per seed at equal steps). Chance is 10% (ten classes).

    python scripts/summarize_nondiff.py runs/bench_nondiff [more run folders ...] [--png curves.png]

Several folders (e.g. one per model subset or per seed) are merged; a (model, seed, method) that
appears twice, or a model run at two sizes, is an error, so a table never mixes sizes.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

METHODS = ("polystep", "polystep_official", "openai_es", "eggroll", "sep_cma_es", "spsa", "adam")
HEADERS = {"polystep": "PolyStep (ours)", "polystep_official": "PolyStep (official)", "openai_es": "OpenAI-ES",
           "eggroll": "EGGROLL", "sep_cma_es": "sep-CMA-ES", "spsa": "SPSA", "adam": "Adam (smooth twin)"}


def merge(dirs) -> tuple[dict, list]:
    """``{model: {"size": ..., "seeds": {seed: {method: summary}}}}`` over the folders, and their configs."""
    merged, configs = {}, []
    for d in dirs:
        with open(os.path.join(d, "results.json")) as fh:
            run = json.load(fh)
        configs.append(run.get("config", {}))
        for model, res in run["results"].items():
            entry = merged.setdefault(model, {"size": res.get("size"), "seeds": {}})
            if entry["size"] != res.get("size"):
                raise ValueError(f"{d}: {model} at size {res.get('size')}, elsewhere at {entry['size']}")
            for seed, runs in res.get("seeds", {}).items():
                have = entry["seeds"].setdefault(seed, {})
                for method, summary in runs.items():
                    if "error" in summary:
                        continue
                    if method in have:
                        raise ValueError(f"{d}: {model} seed {seed} {method} appears twice")
                    have[method] = summary
    return merged, configs


def cell(stats, digits=1) -> str:
    if not stats:
        return "–"
    if stats["n"] == 1:
        return f"{stats['mean']:.{digits}f}"
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def tables(merged) -> str:
    from bench_nondiff import aggregate

    agg = aggregate(merged)
    models = list(merged)
    methods = [m for m in METHODS if any(m in agg[k] for k in models)]
    out = []
    for key, title in (("val_selected_test_acc", "val-selected test accuracy % (best-validation epoch)"),
                       ("test_selected_test_acc", "test-selected test accuracy % (best test epoch, the paper's "
                                                  "figure; optimistic)")):
        out.append(f"**{title}**, mean ± std over seeds (one seed: its value); chance = 10%\n")
        out.append("| model | rank | epochs | seeds | " + " | ".join(HEADERS[m] for m in methods) + " |")
        out.append("|" + "---|" * (4 + len(methods)))
        for k in models:
            size = merged[k].get("size") or {}
            seeds = len(merged[k]["seeds"])
            cells = []
            for m in methods:
                a = agg[k].get(m, {})
                c = cell(a.get(key))
                if m == "adam" and a:  # the ceiling is the twin's accuracy; the hard model with its weights beside
                    c = f"{cell(a.get('twin_' + key))} (hard {c})"
                cells.append(c)
            out.append(f"| {k} | {size.get('rank', '?')} | {size.get('epochs', '?')} | {seeds} | " + " | ".join(cells) + " |")
        out.append("")
    out.append("**ours vs official at equal steps** (per seed: ours − official, pp; time per step ours/official)\n")
    out.append("| model | steps | ours s/step | official s/step | time/step ratio | val-sel diff pp (mean) | "
               "per seed val-sel pp | test-sel diff pp (mean) | within 0.5 pp |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    for k in models:
        r = agg[k].get("ours_over_official")
        if not r:
            continue
        ours, theirs = agg[k]["polystep"], agg[k]["polystep_official"]
        per = " ".join(f"{v['val_selected_pp']:+.1f}" for _, v in sorted(r["per_seed"].items()))
        diff = r["val_selected_pp"]["mean"]
        out.append(f"| {k} | {ours['steps']['mean']:.0f} | {ours['time_per_step_s']['mean']:.3f} | "
                   f"{theirs['time_per_step_s']['mean']:.3f} | {r['time_per_step']['mean']:.2f} | {diff:+.2f} | {per} | "
                   f"{r['test_selected_pp']['mean']:+.2f} | {'yes' if diff >= -0.5 else 'NO'} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dirs", nargs="+", help="bench_nondiff output folders (each holds results.json)")
    p.add_argument("--png", help="also draw the merged learning curves (one panel per model) to this file")
    args = p.parse_args(argv)
    merged, configs = merge(args.dirs)
    if args.png:
        from bench_nondiff import plot

        plot(merged, args.png, configs[0].get("clock", "cpu") if configs else "cpu")
    for c in configs:
        code = c.get("code", {})
        print(f"run: {c.get('data')}, batch {c.get('batch_size')}, seeds {c.get('seeds')}, {c.get('clock', 'wall')} "
              f"clock, start {c.get('start')}, code {str(code.get('commit', '?'))[:10]}"
              f"{' (+uncommitted ' + ', '.join(code['uncommitted']) + ')' if code.get('uncommitted') else ''}\n")
    print(tables(merged))
    return 0


if __name__ == "__main__":
    sys.exit(main())
