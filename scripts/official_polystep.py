"""Adapter for the official ``polystep`` package (PyPI), for side-by-side benchmark runs.

Importing this module registers the method ``polystep_official`` with
:func:`zoopt.training.register_method`: the official ``PolyStepOptimizer`` with the
same paper config (``zoopt.zoo_configs``) and the same cosine schedules as
``zoopt.PolyStep``, behind the same ``step((x, y), loss_fn)`` as every module optimizer.
It cannot be checkpointed (the package has no state_dict), so it never runs with a
run folder.
"""
from __future__ import annotations

import warnings

from zoopt.training import register_method
from zoopt.zoo_configs import polystep_config, schedules


def available() -> str | None:
    """None when the package imports, else the reason it does not."""
    try:
        import polystep  # noqa: F401
    except ImportError as exc:
        return f"the official polystep package is not installed ({exc}); pip install polystep"
    return None


def official_cosine(init, target, total_steps):
    """The package's cosine schedule with the settings that match ``zoopt.polystep.schedules.Cosine``."""
    from polystep import CosineEpsilon

    return CosineEpsilon(init=init, target=target, decay=abs(init - target) / total_steps, total_steps=total_steps)


class OfficialPolyStep:
    name = "polystep_official"

    def __init__(self, model, cfg: dict, total_steps: int, seed: int = 0):
        from polystep import HybridSubspace, ParamLayout, PolyStepOptimizer

        warnings.filterwarnings("ignore", module="polystep")
        warnings.filterwarnings("ignore", message=".*biased_rotation.*")
        warnings.filterwarnings("ignore", message=".*Sparse CSR.*")
        sub = HybridSubspace.from_layout(ParamLayout.from_module(model), rank=cfg["rank"], rotation_mode="random",
                                         rotation_interval=0, absorb_mode="periodic",
                                         absorb_interval=cfg["absorb_interval"])
        kw = dict(subspace=sub, polytope_type=cfg["polytope"], subspace_particle_dim=cfg["particle_dim"],
                  num_probe=cfg["num_probes"], solver="softmax", chunk_size=1024, seed=seed,
                  biased_rotation=cfg["biased_rotation"], amortize_steps=cfg["amortize"], compile=False,
                  **schedules(cfg, total_steps, official_cosine))
        if cfg.get("momentum"):
            kw.update(use_momentum=True, momentum_init=cfg["momentum"][0], momentum_final=cfg["momentum"][1])
        self.model = model
        self.opt = PolyStepOptimizer(model, **kw)

    @property
    def evaluations(self) -> int:
        return int(sum(self.opt.state.evals))

    def step(self, batch, loss_fn) -> float:
        x, y = batch
        return float(self.opt.step_batch(x, y, loss_fn=loss_fn))

    def state_dict(self):
        raise ValueError("the official polystep optimizer cannot be checkpointed (no state_dict)")

    def load_state_dict(self, state):
        raise ValueError("the official polystep optimizer cannot resume from a checkpoint")


def _build(model, *, model_name, total_steps, seed, options, polystep_overrides, placement):
    if placement.get("evaluator") not in (None, "local"):
        raise ValueError("polystep_official evaluates in process")
    return OfficialPolyStep(model, polystep_config(model_name, **(polystep_overrides or {})), total_steps, seed=seed)


register_method("polystep_official", _build)
