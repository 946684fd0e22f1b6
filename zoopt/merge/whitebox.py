"""White-box merging references computed on the server side: TIES and DARE
over the adapters' dense updates ``dW_i = scaling * B_i A_i``. They need the
weights, so a black-box user cannot run them; the benchmark uses them as
references. Dense updates are built one module at a time to bound memory."""
from __future__ import annotations

import torch


def task_vectors(pool, module: str) -> torch.Tensor:
    """[N, d_out, d_in] dense updates of one module."""
    return pool.scaling * torch.einsum("nor,nri->noi", pool.B[module], pool.A[module])


def trim_topk(tv: torch.Tensor, density: float) -> torch.Tensor:
    """Keep each task's top ``density`` fraction of entries by magnitude."""
    if density >= 1:
        return tv
    flat = tv.reshape(tv.shape[0], -1)
    k = max(1, int(round(density * flat.shape[1])))
    # the k-th largest is the (numel - k + 1)-th smallest; kthvalue is linear time, topk(k) is not
    tau = flat.abs().kthvalue(flat.shape[1] - k + 1, dim=1, keepdim=True).values
    return (flat * (flat.abs() >= tau)).reshape(tv.shape)


def ties(pool, density: float, scale: float = 1.0) -> dict:
    """TIES: trim, elect the sign of the summed trimmed updates, disjoint mean."""
    out = {}
    for m in pool.modules:
        trimmed = trim_topk(task_vectors(pool, m), density)
        sign = torch.sign(trimmed.sum(0))
        agree = (torch.sign(trimmed) == sign) & (trimmed != 0)
        out[m] = scale * (trimmed * agree).sum(0) / agree.sum(0).clamp(min=1)
    return out


def dare(pool, drop: float, scale: float = 1.0, seed: int = 0) -> dict:
    """DARE: drop entries with probability ``drop``, rescale survivors by 1/(1-drop), sum."""
    if not 0 <= drop < 1:
        raise ValueError(f"drop must be in [0, 1), got {drop}")
    g = torch.Generator().manual_seed(seed)
    out = {}
    for m in pool.modules:
        tv = task_vectors(pool, m)
        keep = torch.rand(tv.shape, generator=g) >= drop
        out[m] = scale * (tv * keep).sum(0) / (1.0 - drop)
    return out
