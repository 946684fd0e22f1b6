"""Evaluators: split a generation's members into slices and run ``problem.evaluate``."""
import numbers

from .local import LocalEvaluator

EVALUATORS = ("local", "ray")


def resolve_backend(workers, backend=None, address=None) -> str:
    """``"local"`` or ``"ray"`` for a ``--workers``/``--backend``/``--address`` triple (default: local for
    1 worker, ray for more or when a cluster ``address`` is given)."""
    if isinstance(workers, bool) or not isinstance(workers, numbers.Integral) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, got {workers!r}")
    if address is not None and (not isinstance(address, str) or not address.strip()):
        raise ValueError(f"address must be 'auto' or 'host:port', got {address!r}")
    backend = backend or ("ray" if workers > 1 or address is not None else "local")
    if backend not in EVALUATORS:
        raise ValueError(f"backend must be one of {EVALUATORS}, got {backend!r}")
    if backend == "local" and workers > 1:
        raise ValueError(f"workers={workers} needs backend='ray' (--backend ray): the local backend is one process")
    if backend == "local" and address is not None:
        raise ValueError(f"address={address!r} joins a Ray cluster: it needs backend='ray', not 'local'")
    return backend


def add_cluster_arguments(parser) -> None:
    """The ``--address`` option every command that can evaluate on Ray takes (pair it with ``--workers``);
    pass ``args.address`` on as ``address=`` to ``resolve_backend`` and ``make_evaluator``."""
    parser.add_argument("--address", default=None, metavar="HOST:PORT",
                        help="join a running Ray cluster ('auto' or its head's host:port) instead of starting a "
                             "private one; its authentication is kept (RAY_AUTH_MODE=token with its token in "
                             "RAY_AUTH_TOKEN_PATH, RAY_AUTH_TOKEN or ~/.ray/auth_token). Implies --backend ray")


def make_evaluator(evaluator, address=None, **kwargs):
    """``"local"`` (default), ``"ray"``, or an evaluator object (returned as is). ``address`` (a Ray
    cluster to join, see ``RayEvaluator``) is for ``"ray"`` only."""
    if address is not None and evaluator != "ray":
        raise ValueError(f"address={address!r} needs evaluator='ray', got evaluator={evaluator!r}")
    if address is not None:
        kwargs["address"] = address
    if evaluator is None or evaluator == "local":
        return LocalEvaluator(**kwargs)
    if evaluator == "ray":
        try:
            from .ray_evaluator import RayEvaluator
        except ImportError as exc:
            raise ImportError(f"evaluator='ray' needs the ray extra: pip install 'zoopt-engine[ray]' ({exc})") from None
        return RayEvaluator(**kwargs)
    if isinstance(evaluator, str):
        raise ValueError(f"evaluator must be one of {EVALUATORS} or an evaluator object, got {evaluator!r}")
    if not callable(evaluator):
        raise TypeError(f"evaluator must be callable as evaluator(problem, spec), got {type(evaluator).__name__}")
    return evaluator


__all__ = ["LocalEvaluator", "make_evaluator", "resolve_backend", "add_cluster_arguments", "EVALUATORS"]
