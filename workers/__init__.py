"""Evaluators: split a generation's members into slices and run ``problem.evaluate``."""
from .local import LocalEvaluator

EVALUATORS = ("local", "ray")


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


__all__ = ["LocalEvaluator", "make_evaluator", "EVALUATORS"]
