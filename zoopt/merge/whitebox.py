"""White-box merging references computed on the server side: TIES and DARE over
the adapters' dense updates ``dW_i = scaling * B_i A_i``, through PEFT's own merge
utilities (``peft.utils.merge_utils``). They need the weights, so a black-box
user cannot run them; the benchmark uses them as references. Dense updates are
built one module at a time to bound memory."""
from __future__ import annotations

import warnings

import torch


def task_vectors(pool, module: str) -> torch.Tensor:
    """[N, d_out, d_in] dense updates of one module."""
    return pool.scaling * torch.einsum("nor,nri->noi", pool.B[module], pool.A[module])


def ties(pool, density: float, scale: float = 1.0) -> dict:
    """TIES (PEFT's ``ties``): keep each update's top ``density`` by magnitude, elect
    the sign of the sum, average the agreeing entries; times ``scale``."""
    from peft.utils.merge_utils import ties as peft_ties

    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    ones = torch.ones(pool.size)
    with warnings.catch_warnings():  # PEFT warns that density 1 prunes nothing, which is the point
        warnings.simplefilter("ignore", UserWarning)
        return {m: scale * peft_ties(list(task_vectors(pool, m)), ones, density) for m in pool.modules}


def dare(pool, drop: float, scale: float = 1.0, seed: int = 0) -> dict:
    """DARE (PEFT's ``dare_linear``): drop entries with probability ``drop``, rescale
    the survivors by 1/(1-drop), sum; times ``scale``. PEFT draws from torch's global
    RNG, so the draw runs under a forked RNG seeded with ``seed`` (the caller's RNG is untouched)."""
    from peft.utils.merge_utils import dare_linear

    if not 0 <= drop < 1:
        raise ValueError(f"drop must be in [0, 1), got {drop}")
    ones = torch.ones(pool.size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return {m: scale * dare_linear(list(task_vectors(pool, m)), ones, 1.0 - drop) for m in pool.modules}
