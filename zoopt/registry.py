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
    return METHODS[method](x0=x0, seed=seed, **options)


def _register_builtins() -> None:
    from zoopt.cma_es import CMAES
    from zoopt.openai_es import OpenAIES
    from zoopt.random_search import RandomSearch

    register("openai_es", OpenAIES)
    register("random", RandomSearch)
    register("cma_es", CMAES)
    register("sep_cma_es", lambda **kw: CMAES(diagonal=True, **kw))


_register_builtins()
