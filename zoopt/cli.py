"""The ``zoopt`` command line. Each subcommand lives in its own module under
``zoopt/commands/`` and exposes ``register(subparsers)``, which adds its parser
and sets ``func``; modules are discovered, so adding a command touches no
shared file.

Bad input (a ValueError, TypeError or missing file raised by a command) prints
one line ``zoopt CMD: error: ...`` and exits with status 2, like argparse's own
usage errors; ``--debug`` (or ``ZOOPT_DEBUG=1``) shows the traceback instead.
Any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import zipfile

import zoopt.commands
from zoopt.loggers import MissingExtra

# what bad input raises (argument checks, unreadable, truncated or missing files); OSError
# subclasses only where the cause is the user's path, so a failing disk or network still shows
# its traceback
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError, IsADirectoryError,
               NotADirectoryError, PermissionError, EOFError, zipfile.BadZipFile, MissingExtra)
USAGE_EXIT = 2


def build_parser() -> argparse.ArgumentParser:
    from zoopt import __version__

    from zoopt.commands.options import HelpFormatter

    parser = argparse.ArgumentParser(
        prog="zoopt", description="Forward-only optimization engine.", formatter_class=HelpFormatter,
        epilog="Errors in your input print one line; --debug (or ZOOPT_DEBUG=1) shows the traceback.")
    parser.add_argument("--version", action="version", version=f"zoopt {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors in the input")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(zoopt.commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"zoopt.commands.{info.name}")
        if hasattr(module, "register"):  # commands register; helpers such as options.py do not
            module.register(sub)
    return parser


def one_line(exc: BaseException) -> str:
    """The exception as one line: its message's lines joined (a FileNotFoundError keeps its path)."""
    text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    return text or type(exc).__name__


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return USAGE_EXIT
    debug = args.debug or os.environ.get("ZOOPT_DEBUG", "") not in ("", "0")
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        if debug:
            raise
        print(f"zoopt {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return USAGE_EXIT
    except KeyboardInterrupt as exc:  # Ctrl-C is the user's choice, not a crash
        if debug:
            raise
        detail = one_line(exc) if str(exc) else ""
        print(f"zoopt {args.command}: interrupted{': ' + detail if detail else ''}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
