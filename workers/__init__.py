"""Evaluators: split a generation's members into slices and run ``problem.evaluate``."""
import numbers

from .local import LocalEvaluator

EVALUATORS = ("local", "ray")


def resolve_backend(workers, backend=None) -> str:
    """``"local"`` or ``"ray"`` for a ``--workers``/``--backend`` pair (default: local for 1 worker, ray for more)."""
    if isinstance(workers, bool) or not isinstance(workers, numbers.Integral) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, got {workers!r}")
    backend = backend or ("ray" if workers > 1 else "local")
    if backend not in EVALUATORS:
        raise ValueError(f"backend must be one of {EVALUATORS}, got {backend!r}")
    if backend == "local" and workers > 1:
        raise ValueError(f"workers={workers} needs backend='ray' (--backend ray): the local backend is one process")
    return backend


def make_evaluator(evaluator, **kwargs):
    """``"local"`` (default), ``"ray"``, or an evaluator object (returned as is)."""
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


__all__ = ["LocalEvaluator", "make_evaluator", "resolve_backend", "EVALUATORS"]
