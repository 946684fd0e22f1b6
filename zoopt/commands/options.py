"""The options the ``zoopt`` commands share: one spelling, one help text, defaults shown in ``--help``.

=================  ==========================================================================
``--out DIR``      the run folder (always a folder); each command names a default under runs/
``--force``        replace a run already in that folder (without it a run is never overwritten)
``--seed N``       the seed the run is a pure function of
``--quiet``        no progress bar (``--no-progress`` is kept as a hidden, deprecated alias)
``--threads N``    torch CPU threads
``--workers N``    evaluation workers, more than 1 on Ray actors, with ``--backend`` and
                   ``--address`` (join a running cluster), where the command can use Ray
``--method M``     one list of method names for every command that takes one; a method that
                   does not fit the command is refused with a one-line reason
``--logger NAME``  extra metrics loggers beside ``metrics.jsonl`` (tensorboard, mlflow, wandb)
=================  ==========================================================================

Run length: each command keeps its natural unit, and the flag says which kind it is.
A count of the optimizer's iterations is named by its unit (``--generations`` in
``demo``, ``--epochs`` in ``train``, ``--steps`` in ``maxsat``); a cap on what the run
pays for is ``--budget`` with its unit as the metavar and in the help (``--budget
ENV_STEPS`` in ``rl``, ``--budget QUERIES`` in ``merge``).
"""
from __future__ import annotations

import argparse
import copy

#: the options every command that makes a run folder takes, spelled the same everywhere
RUN_OPTIONS = ("--out", "--force", "--seed", "--quiet")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default (also for options without a help text), except where there is
    none to show (None, False, an empty list) or the help already says what it is."""

    @staticmethod
    def _shows_default(action) -> bool:
        return not (action.help is argparse.SUPPRESS or action.required or not action.option_strings
                    or action.default is None or action.default is False or action.default is argparse.SUPPRESS
                    or action.default == [] or "default" in (action.help or ""))

    def _format_action(self, action):
        if not action.help and self._shows_default(action):  # argparse skips an option without help text
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        return super()._format_action(action)

    def _get_help_string(self, action):
        return f"{action.help} (default: %(default)s)" if self._shows_default(action) else action.help


def add_command(sub, name: str, help: str, **kwargs) -> argparse.ArgumentParser:
    """A subcommand parser whose ``--help`` shows the defaults."""
    return sub.add_parser(name, help=help, description=kwargs.pop("description", help),
                          formatter_class=HelpFormatter, **kwargs)


def add_run_folder(p, default: str, resumable: bool = False, contents: str = "") -> None:
    """``--out DIR`` and ``--force`` (and ``--resume`` for commands that can go on from a checkpoint)."""
    p.add_argument("--out", metavar="DIR", default=None,
                   help=f"run folder{' (' + contents + ')' if contents else ''}; default {default}")
    p.add_argument("--force", action="store_true", help="replace a run already in the run folder")
    if resumable:
        p.add_argument("--resume", action="store_true", help="go on from the run folder's checkpoint")


def add_seed(p, default: int = 0, help: str = "seed of the run") -> None:
    p.add_argument("--seed", type=int, default=default, help=help)


def add_quiet(p) -> None:
    """``--quiet`` (``args.quiet``); ``--no-progress`` still works but is not shown."""
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--no-progress", dest="quiet", action="store_true", help=argparse.SUPPRESS)


def add_run_length(p, flag: str, default: int, unit: str, help: str) -> None:
    """The run's length in the command's natural unit (see the module doc)."""
    p.add_argument(flag, type=int, default=default, metavar=unit.upper().replace(" ", "_"), help=help)


def add_threads(p, default: int | None = None) -> None:
    p.add_argument("--threads", type=int, default=default, help="torch CPU threads")


def add_workers(p) -> None:
    """``--workers``, ``--backend`` and ``--address`` (see ``zoopt.workers``)."""
    from zoopt.workers import add_cluster_arguments

    p.add_argument("--workers", type=int, default=1, help="evaluation workers (more than 1: Ray actors)")
    p.add_argument("--backend", choices=("local", "ray"), default=None,
                   help="where members are evaluated (default: local for 1 worker, ray for more)")
    add_cluster_arguments(p)


def method_names() -> list:
    """Every method name a command can be asked for: the strategies of ``zoopt.minimize`` and
    the module optimizers of ``zoopt train``."""
    from zoopt.registry import METHODS
    from zoopt.rl import _import_methods
    from zoopt.training.methods import METHODS as MODULE_METHODS

    _import_methods()
    return sorted(set(METHODS) | set(MODULE_METHODS))


def add_method(p, default: str) -> None:
    """``--method``: the same list of names in every command; the library refuses, in one line, a name it
    does not know or a method that cannot work for this command (with the reason)."""
    p.add_argument("--method", default=default, metavar="METHOD",
                   help=f"one of {', '.join(method_names())}; one that cannot work here is refused with the "
                        "reason")


def add_loggers(p) -> None:
    from zoopt.loggers import BACKENDS

    p.add_argument("--logger", action="append", default=[], choices=sorted(BACKENDS), metavar="NAME",
                   help=f"also log the metrics to {', '.join(sorted(BACKENDS))} (repeatable; metrics.jsonl is "
                        "always written; each needs its package: pip install 'zoopt-engine[NAME]')")


def apply_threads(args) -> None:
    """``torch.set_num_threads(--threads)`` after checking it."""
    threads = getattr(args, "threads", None)
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    import torch

    torch.set_num_threads(threads)


def at_least(args, **lows) -> None:
    """One-line errors naming the flag for int options below their minimum (``generations=1``)."""
    for name, low in lows.items():
        value = getattr(args, name)
        if value is not None and value < low:
            raise ValueError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")


__all__ = ["HelpFormatter", "RUN_OPTIONS", "add_command", "add_run_folder", "add_seed", "add_quiet",
           "add_run_length", "add_threads", "add_workers", "add_method", "add_loggers", "method_names",
           "apply_threads", "at_least"]
