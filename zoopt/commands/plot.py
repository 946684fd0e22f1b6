"""``zoopt plot RUN_DIR``: a PNG per metrics file."""
import glob
import os


def register(sub) -> None:
    p = sub.add_parser("plot", help="plot the metrics (JSON lines) of a run folder or file to PNG")
    p.add_argument("path", help="a run folder (every *.jsonl in it) or one .jsonl file")
    p.add_argument("--x", default=None, help="x-axis column (default: generation/step/epoch/nfev)")
    p.set_defaults(func=main)


def main(args) -> int:
    from zoopt.plot import plot_metrics

    if not os.path.exists(args.path):
        raise FileNotFoundError(f"{args.path}: no such file or folder")
    files = sorted(glob.glob(os.path.join(args.path, "*.jsonl"))) if os.path.isdir(args.path) else [args.path]
    if not files:
        raise FileNotFoundError(f"{args.path}: no metrics (.jsonl) files in this folder")
    for f in files:
        print(plot_metrics(f, x=args.x))
    return 0
