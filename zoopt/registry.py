"""Method names for ``zoopt.minimize`` and the CLI.

Methods from other modules register themselves here; a name maps to a factory
``(x0, popsize, sigma, seed, **options) -> Strategy``.
"""
from __future__ import annotations

from typing import Callable, Dict

METHODS: Dict[str, Callable] = {}


def register(name: str, factory: Callable) -> None:
    METHODS[name] = factory


def make_strategy(method: str, x0, seed: int = 0, **options):
    if not isinstance(method, str):
        raise TypeError(f"method must be a string, got {type(method).__name__}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
    factory = METHODS[method]
    allowed = accepted_options(factory)
    unknown = sorted(set(options) - set(allowed)) if allowed is not None else []
    if unknown:
        raise TypeError(f"method {method!r} has no option {', '.join(map(repr, unknown))}; "
                        f"its options: {', '.join(allowed) or 'none'}")
    return factory(x0=x0, seed=seed, **options)


def accepted_options(factory: Callable):
    """The keyword options a method's factory names, or None when its signature does not
    say (it takes ``**kwargs`` and names nothing else)."""
    import inspect

    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return None
    named = [n for n, p in params.items()
             if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and n not in ("self", "x0", "seed")]
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return None
    return named


def _register_builtins() -> None:
    import functools

    from zoopt.cma_es import CMAES
    from zoopt.openai_es import OpenAIES
    from zoopt.random_search import RandomSearch

    register("openai_es", OpenAIES)
    register("random", RandomSearch)
    register("cma_es", CMAES)
    register("sep_cma_es", functools.partial(CMAES, diagonal=True))


_register_builtins()
