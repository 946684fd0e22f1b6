"""``zoopt plot RUN_DIR``: redraw a run folder's ``learning_curve.png`` (the figure ``zoopt demo``,
``train`` and ``rl`` write, by the same function); a single ``.jsonl`` file (or a folder that is
not a run folder) gets one panel per numeric series."""
import glob
import os

from zoopt.commands import options


def register(sub) -> None:
    p = options.add_command(sub, "plot", help="redraw a run folder's learning_curve.png, or plot a metrics "
                                              "(JSON lines) file to PNG")
    p.add_argument("path", help="a run folder of zoopt demo/train/rl, or a .jsonl file")
    p.add_argument("--x", default=None, help="x-axis column for a .jsonl file (default: generation/step/epoch/nfev)")
    p.set_defaults(func=main)


def main(args) -> int:
    from zoopt.plot import plot_metrics
    from zoopt.training.figures import plot_run

    if not os.path.exists(args.path):
        raise FileNotFoundError(f"{args.path}: no such file or folder")
    if os.path.isdir(args.path) and os.path.exists(os.path.join(args.path, "metrics.jsonl")) and args.x is None:
        print(plot_run(args.path))
        return 0
    files = sorted(glob.glob(os.path.join(args.path, "*.jsonl"))) if os.path.isdir(args.path) else [args.path]
    if not files:
        raise FileNotFoundError(f"{args.path}: no metrics (.jsonl) files in this folder")
    for f in files:
        print(plot_metrics(f, x=args.x))
    return 0
