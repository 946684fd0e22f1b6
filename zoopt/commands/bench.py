"""``zoopt bench NAME [ARGS...]``: run ``scripts/bench_NAME.py`` from the source checkout."""
import os
import subprocess
import sys


def scripts_dir() -> str:
    import zoopt

    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(zoopt.__file__))), "scripts")


def available() -> list:
    folder = scripts_dir()
    if not os.path.isdir(folder):
        return []
    return sorted(f[len("bench_"):-3] for f in os.listdir(folder) if f.startswith("bench_") and f.endswith(".py"))


def register(sub) -> None:
    p = sub.add_parser("bench", help="run a benchmark script against the peers (see scripts/)")
    p.add_argument("name", nargs="?", help="benchmark name, e.g. blackbox; omit to list them")
    p.add_argument("args", nargs="...", help="arguments passed to the script")
    p.set_defaults(func=main)


def main(args) -> int:
    names = available()
    if not names:
        raise FileNotFoundError("the benchmark scripts live in the source checkout's scripts/ folder, "
                         "which this installation does not have; clone the repository and install it with pip -e")
    if not args.name:
        print("benchmarks:", " ".join(names))
        return 0
    if args.name not in names:
        raise ValueError(f"unknown benchmark {args.name!r}; choose one of {names}")
    return subprocess.call([sys.executable, os.path.join(scripts_dir(), f"bench_{args.name}.py"), *args.args])
