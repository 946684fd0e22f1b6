"""Optimizers for the zoo networks by method name: one object with ``step(batch, loss_fn)``,
``state_dict()`` / ``load_state_dict()`` and ``evaluations`` per method.

``polystep`` (``zoopt.PolyStep`` with the paper's per-model config, or with its model-scaled
defaults when ``polystep_overrides["config"]`` is ``"scaled"``; see
:func:`zoopt.zoo_configs.choose_polystep_config`), ``eggroll``
(``zoopt.EGGROLL``), ``openai_es`` / ``sep_cma_es`` / ``spsa`` (a strategy on the
flat parameter vector, :class:`StrategyModule`) and ``adam`` (backprop on the smooth
twin, the ceiling). ``evaluator``, ``data`` and ``data_seed`` follow the facades'
contract; a method that evaluates in process only refuses an out-of-process evaluator.
Benchmarks add methods with :func:`register_method` (e.g. the official ``polystep``
package's adapter in ``scripts/official_polystep.py``).
"""
from __future__ import annotations

import inspect
from typing import Callable, Dict

from zoopt.zoo_configs import ES_DEFAULTS, polystep_config, polystep_kwargs

from .strategy_module import StrategyModule
from .twin import TwinAdam

# name -> build(model, *, model_name, total_steps, seed, options, polystep_overrides, placement) -> optimizer
METHODS: Dict[str, Callable] = {}
LOCAL_ONLY = ("adam",)


def register_method(name: str, build: Callable) -> None:
    METHODS[name] = build


def _placement_kwargs(cls, method: str, placement: dict) -> dict:
    """The evaluator/data arguments for a facade class, or {} when everything stays in process."""
    remote = placement.get("evaluator") not in (None, "local")
    if "evaluator" in inspect.signature(cls).parameters:
        return {k: v for k, v in placement.items() if v is not None}
    if remote:
        raise ValueError(f"method {method!r} evaluates in process in this checkout "
                         f"({cls.__name__} takes no evaluator); use one worker")
    return {}


def _polystep(model, *, model_name, total_steps, seed, options, polystep_overrides, placement):
    import zoopt

    overrides = dict(polystep_overrides or {})
    config = overrides.pop("config", None) or "paper"
    placed = _placement_kwargs(zoopt.PolyStep, "polystep", placement)
    if config == "scaled":  # zoopt.PolyStep's own defaults; only the explicit overrides replace them
        chosen = {k: v for k, v in overrides.items() if v is not None}
        return zoopt.PolyStep(model, seed=seed, **chosen, **options, **placed)
    if config != "paper":
        raise ValueError(f"polystep config must be 'paper' or 'scaled', got {config!r}")
    cfg = polystep_config(model_name, **overrides)
    return zoopt.PolyStep(model, **polystep_kwargs(cfg, total_steps, seed), **options, **placed)


def _eggroll(model, *, model_name, total_steps, seed, options, polystep_overrides, placement):
    import zoopt

    return zoopt.EGGROLL(model, seed=seed, **options, **_placement_kwargs(zoopt.EGGROLL, "eggroll", placement))


def _adam(model, *, model_name, total_steps, seed, options, polystep_overrides, placement):
    _placement_kwargs(TwinAdam, "adam", placement)
    return TwinAdam(model, lr=options.get("lr", 1e-3))


def _strategy(method):
    def build(model, *, model_name, total_steps, seed, options, polystep_overrides, placement):
        from zoopt.problems import flatten_params

        opts = {**ES_DEFAULTS[method], **options}
        x0 = flatten_params(model).cpu()
        if method == "openai_es":
            from zoopt.openai_es import OpenAIES
            strategy = OpenAIES(x0, seed=seed, optimizer="sgd", **opts)
        elif method == "sep_cma_es":
            from zoopt.cma_es import CMAES
            strategy = CMAES(x0, seed=seed, diagonal=True, **opts)
        else:
            from zoopt.spsa import SPSA
            strategy = SPSA(x0, seed=seed, iterations=max(1, total_steps), **opts)
        strategy.name = method
        return StrategyModule(model, strategy, **{k: v for k, v in placement.items() if v is not None})

    return build


register_method("polystep", _polystep)
register_method("eggroll", _eggroll)
for _name in ES_DEFAULTS:
    register_method(_name, _strategy(_name))
register_method("adam", _adam)


# strategy names of ``zoopt.minimize`` / ``zoopt rl`` that cannot train a zoo network, with the reason
NOT_FOR_NETWORKS = {
    "cma_es": "full CMA-ES keeps a D x D covariance over every weight and decomposes it (O(D^3)); a zoo "
              "network has 10^4-10^5 weights; use sep_cma_es (diagonal CMA-ES)",
    "random": "random search samples around the start and never moves its center; use openai_es or polystep",
}


def check_method(method: str) -> None:
    """A one-line ValueError for a method ``make_optimizer`` cannot build (with the reason when known)."""
    if method in NOT_FOR_NETWORKS:
        raise ValueError(f"method {method!r} cannot train a network here: {NOT_FOR_NETWORKS[method]}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {tuple(METHODS)}, got {method!r}")


def make_optimizer(method: str, model, *, model_name: str, total_steps: int, seed: int = 0,
                   options: dict | None = None, polystep_overrides: dict | None = None, evaluator=None,
                   evaluator_options: dict | None = None, data=None, data_seed: int = 0):
    """The optimizer ``method`` for ``model`` (a zoo net named ``model_name``), trained for ``total_steps``."""
    check_method(method)
    placement = {"evaluator": evaluator, "evaluator_options": evaluator_options, "data": data,
                 "data_seed": data_seed if data is not None else None}
    return METHODS[method](model, model_name=model_name, total_steps=total_steps, seed=seed,
                           options={k: v for k, v in (options or {}).items() if v is not None},
                           polystep_overrides=polystep_overrides, placement=placement)


def evaluations(opt) -> int:
    """Member forward passes ``opt`` has spent (EGGROLL counts generations of ``popsize`` members)."""
    if hasattr(opt, "evaluations"):
        return int(opt.evaluations)
    if hasattr(opt, "generation") and hasattr(opt, "popsize"):
        return int(opt.generation) * int(opt.popsize)
    return 0


__all__ = ["METHODS", "NOT_FOR_NETWORKS", "check_method", "make_optimizer", "register_method", "evaluations"]
