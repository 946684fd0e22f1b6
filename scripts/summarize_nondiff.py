"""Merge several ``bench_nondiff.py`` runs (one per seed, or per model subset) into one table:
ours vs the official package per model, mean over the seeds found, with each seed's difference.

    python scripts/summarize_nondiff.py runs/bench_nondiff_s0 runs/bench_nondiff_s1 runs/bench_nondiff_s2

A model counts once per (seed, size): runs of the same model at different ranks/epochs are listed
as separate rows, so a table never mixes sizes.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys


def collect(dirs):
    """{(model, rank, epochs): {seed: (ours best, official best, ours/official time per step)}}"""
    table = {}
    for d in dirs:
        with open(os.path.join(d, "results.json")) as fh:
            run = json.load(fh)
        cfg = run["config"]
        for model, res in run["results"].items():
            ours, theirs = res.get("polystep", {}), res.get("polystep_official", {})
            if "best_test_acc" not in ours or "best_test_acc" not in theirs:
                continue
            size = res.get("size", {"rank": cfg["rank"], "epochs": cfg["epochs"]})
            key = (model, size["rank"], size["epochs"])
            if cfg["seed"] in table.setdefault(key, {}):
                raise ValueError(f"{d}: {model} seed {cfg['seed']} at rank {size['rank']} appears twice")
            table[key][cfg["seed"]] = (100 * ours["best_test_acc"], 100 * theirs["best_test_acc"],
                                       ours["time_per_step_s"] / theirs["time_per_step_s"])
    return table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dirs", nargs="+", help="bench_nondiff output folders (each holds results.json)")
    args = p.parse_args(argv)
    table = collect(args.dirs)
    print(f"{'model':<10} {'rank':>4} {'ep':>3} {'seeds':>6} {'ours':>7} {'official':>9} {'diff pp':>8} "
          f"{'per seed (pp)':>24} {'time/step ratio':>16}")
    for (model, rank, epochs), seeds in sorted(table.items()):
        ours = statistics.mean(v[0] for v in seeds.values())
        theirs = statistics.mean(v[1] for v in seeds.values())
        per_seed = " ".join(f"{v[0] - v[1]:+.2f}" for _, v in sorted(seeds.items()))
        ratio = statistics.mean(v[2] for v in seeds.values())
        print(f"{model:<10} {rank:>4} {epochs:>3} {len(seeds):>6} {ours:>7.2f} {theirs:>9.2f} {ours - theirs:>+8.2f} "
              f"{per_seed:>24} {ratio:>16.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
