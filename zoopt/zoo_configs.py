"""Per-method settings for the zoo networks and RL policies, in one place.

* :data:`PAPER_CONFIGS`: PolyStep's per-model configs (polystep.md §3). Floats are
  flat values (radii multiplied by eps, the radius rule); ``(init, target)`` pairs
  are cosine schedules over all training steps.
* :func:`choose_polystep_config`: which PolyStep settings ``zoopt train`` uses,
  the paper's per-model config or ``zoopt.PolyStep(model)``'s model-scaled
  defaults (:mod:`zoopt.polystep.defaults`).
* :data:`ES_DEFAULTS`: the gradient-free baselines on zoo networks (polystep.md §4.1).
* :data:`RL_DEFAULTS`: strategy options per method for policy search (flat policy
  vectors with normalized observations).
"""
from __future__ import annotations

PAPER_CONFIGS = {
    "snn": dict(rank=4, epsilon=0.5, step_radius=2.0, probe_radius=1.0, biased_rotation=True, absorb_interval=20),
    "int8": dict(rank=8, epsilon=(5.0, 0.3), step_radius=(32.0, 8.0), probe_radius=(2.0, 0.5),
                 momentum=(0.3, 0.5)),
    "argmax": dict(rank=8, epsilon=(5.0, 0.3), step_radius=(32.0, 8.0), probe_radius=(2.0, 0.5)),
    "staircase": dict(rank=4, epsilon=(5.0, 1.0), step_radius=(64.0, 32.0), probe_radius=(2.0, 1.0)),
    "moe": dict(rank=4, epsilon=0.5, step_radius=(12.0, 4.0), probe_radius=1.0, biased_rotation=True,
                absorb_interval=20),
    "mlp": dict(rank=8, epsilon=(10.0, 0.1), step_radius=(5.0, 1.0), probe_radius=(10.0, 2.0), amortize=3),
}
POLYSTEP_COMMON = dict(polytope="orthoplex", particle_dim=8, num_probes=1, momentum=None, biased_rotation=False,
                       absorb_interval=0, amortize=1)
MOMENTUM_WARMUP = 50  # the reference's max_iterations: momentum ramps over the first 50 steps

ES_DEFAULTS = {
    "openai_es": dict(popsize=50, sigma=0.02, lr=0.01),
    "sep_cma_es": dict(popsize=16, sigma=0.5),
    "spsa": dict(a=0.1, c=0.1),
}

RL_DEFAULTS = {
    "openai_es": {"sigma": 0.1, "lr": 0.05},
    "cma_es": {"sigma": 0.5},
    "sep_cma_es": {"sigma": 0.5},
    "polystep": {},
    "eggroll": {"sigma": 0.1, "lr": 0.05},
    "random": {},
}


# PolyStep settings for a zoo network: "paper" is PAPER_CONFIGS (tuned for 30 epochs of 117 steps on the full
# MNIST training split; at a few epochs or on digits the schedules stay near chance), "scaled" is
# zoopt.PolyStep(model)'s defaults chosen from the model's size (zoopt.polystep.defaults; they learn in
# tens of steps), "auto" picks "paper" for the full MNIST training split and "scaled" for anything else.
POLYSTEP_CONFIG_CHOICES = ("auto", "paper", "scaled")


def choose_polystep_config(choice: str = "auto", data="mnist", limit_train=None) -> str:
    """``"paper"`` or ``"scaled"`` for ``choice`` (one of :data:`POLYSTEP_CONFIG_CHOICES`): ``"auto"`` is
    ``"paper"`` when ``data`` is ``"mnist"`` with its whole training split (``limit_train`` None), else
    ``"scaled"``."""
    if choice not in POLYSTEP_CONFIG_CHOICES:
        raise ValueError(f"polystep config must be one of {POLYSTEP_CONFIG_CHOICES}, got {choice!r}")
    if choice != "auto":
        return choice
    return "paper" if data == "mnist" and limit_train is None else "scaled"


def polystep_config(model_name: str, **overrides) -> dict:
    """The paper's PolyStep config for a zoo model; ``overrides`` (None values ignored) replace entries."""
    if model_name not in PAPER_CONFIGS:
        raise ValueError(f"model must be one of {sorted(PAPER_CONFIGS)}, got {model_name!r}")
    cfg = {**POLYSTEP_COMMON, **PAPER_CONFIGS[model_name]}
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    return cfg


def schedules(cfg: dict, total_steps: int, cosine) -> dict:
    """``epsilon``, ``step_radius`` and ``probe_radius`` of ``cfg``: floats as they are, ``(init, target)``
    pairs as ``cosine(init=, target=, total_steps=)`` over ``total_steps`` (ours and the official package's
    schedule class plug in here)."""
    return {k: (cosine(init=cfg[k][0], target=cfg[k][1], total_steps=max(1, total_steps))
                if isinstance(cfg[k], (tuple, list)) else float(cfg[k]))
            for k in ("epsilon", "step_radius", "probe_radius")}


def polystep_kwargs(cfg: dict, total_steps: int, seed: int) -> dict:
    """Keyword arguments of ``zoopt.PolyStep`` for a :func:`polystep_config`."""
    from zoopt.polystep.schedules import Cosine

    kw = dict(rank=cfg["rank"], particle_dim=cfg["particle_dim"], polytope=cfg["polytope"],
              num_probes=cfg["num_probes"], biased_rotation=cfg["biased_rotation"],
              absorb_interval=cfg["absorb_interval"], amortize=cfg["amortize"], seed=seed,
              **schedules(cfg, total_steps, Cosine))
    if cfg.get("momentum"):
        kw.update(momentum=tuple(cfg["momentum"]), momentum_warmup=MOMENTUM_WARMUP)
    return kw


# PolyStep on MAX-SAT (zoopt.maxsat; full space, 2-D particles, radii used as they are). "reference": the
# constants the paper's runs effectively used (polystep.md §6 item 4: swapped cosine arguments made every
# step after the first use the nominal initial values); "default": zoopt's, the same at every size, with a
# probe radius far above every |x| a run reaches (the reference 1M constants freeze; see zoopt/maxsat.py).
MAXSAT_LARGE_N = 1_000_000
MAXSAT_COMMON = dict(momentum=(0.5, 0.95), momentum_warmup=MOMENTUM_WARMUP, amortize=3, init_scale=0.1)


def maxsat_config(n_vars: int, preset: str = "default") -> dict:
    """``cost_scale``, ``epsilon``, ``step_radius``, ``probe_radius`` and ``steps`` for ``n_vars`` variables."""
    if preset == "default":
        return {"cost_scale": "count", "epsilon": 5.0, "step_radius": 5000.0, "probe_radius": 1e12, "steps": 3000}
    if preset != "reference":
        raise ValueError(f"preset must be 'default' or 'reference', got {preset!r}")
    if n_vars >= MAXSAT_LARGE_N:
        return {"cost_scale": "count", "epsilon": 5.0, "step_radius": 5000.0, "probe_radius": 500.0, "steps": 500}
    s = (n_vars / 100_000) ** 0.5
    return {"cost_scale": "fraction", "epsilon": 5.0, "step_radius": 3000.0 * s, "probe_radius": 100.0 * s,
            "steps": 3000}


__all__ = ["PAPER_CONFIGS", "POLYSTEP_COMMON", "ES_DEFAULTS", "RL_DEFAULTS", "POLYSTEP_CONFIG_CHOICES",
           "choose_polystep_config", "polystep_config", "schedules",
           "polystep_kwargs", "MAXSAT_COMMON", "maxsat_config"]
