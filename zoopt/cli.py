"""The ``zoopt`` command line. Each subcommand lives in its own module under
``zoopt/commands/`` and exposes ``register(subparsers)``, which adds its parser
and sets ``func``; modules are discovered, so adding a command touches no
shared file."""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import zoopt.commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zoopt", description="Forward-only optimization engine.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(zoopt.commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"zoopt.commands.{info.name}")
        module.register(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
