"""The merge operator of Evo-Merging:

    A_m = sum_i beta_i * S_{alpha_i}(A_i^m),    B_m = sum_i beta_i * B_i^m

``S_a`` keeps the fraction ``a`` of LoRA-A's entries with the largest
magnitude (per tensor, ``k = max(1, round(a * numel))``, ``a = 0`` gives zeros,
survivors are not rescaled); B is not sparsified. Options for ablations:
``mask="dare"`` (random Bernoulli keep-mask with rescaling by 1/a, seeded) and
``sparsify_b=True``.
"""
from __future__ import annotations

import torch

MASKS = ("topk", "dare")


def keep_counts(alpha: torch.Tensor, numel: int) -> torch.Tensor:
    """k_i = max(1, round(alpha_i * numel)), and 0 where alpha_i == 0."""
    k = torch.clamp(torch.round(alpha.double() * numel), min=1).long()
    return torch.where(alpha == 0, torch.zeros_like(k), k)


def topk_masks(x: torch.Tensor, alpha: torch.Tensor, sorted_abs: torch.Tensor | None = None) -> torch.Tensor:
    """Keep-masks ``[N, ...]`` for stacked tensors ``x [N, ...]``: entries with
    ``|x| >= tau_i``, the k_i-th largest magnitude of tensor i."""
    flat = x.reshape(x.shape[0], -1).abs()
    if sorted_abs is None:
        sorted_abs = flat.sort(dim=1, descending=True).values
    k = keep_counts(alpha, flat.shape[1])
    tau = sorted_abs.gather(1, (k - 1).clamp(min=0)[:, None])
    mask = (flat >= tau) & (k > 0)[:, None]
    return mask.reshape(x.shape)


def dare_masks(x: torch.Tensor, alpha: torch.Tensor, seed: int) -> torch.Tensor:
    """Random keep-masks with probability alpha_i, rescaled by 1/alpha_i (DARE)."""
    g = torch.Generator().manual_seed(int(seed))
    keep = torch.rand(x.shape, generator=g) < alpha.view(-1, *([1] * (x.dim() - 1)))
    scale = torch.where(alpha > 0, 1.0 / alpha.clamp(min=1e-12), torch.zeros_like(alpha))
    return keep * scale.view(-1, *([1] * (x.dim() - 1)))


def sparsify(x: torch.Tensor, alpha: torch.Tensor, mask: str = "topk", sorted_abs=None, seed: int = 0):
    if mask == "topk":
        return x * topk_masks(x, alpha, sorted_abs)
    if mask == "dare":
        return x * dare_masks(x, alpha, seed)
    raise ValueError(f"mask must be one of {MASKS}, got {mask!r}")


class ShapeGroups:
    """The pool's modules stacked by shape, so one top-k merge is a few tensor ops
    per shape instead of several per module (a 30-layer model has 210 modules
    but 7 shapes). Built once per pool and cached on it; the pool's per-module
    tensors become views of the stacks, so nothing is held twice."""

    def __init__(self, pool):
        by_shape = {}
        for module in pool.modules:
            key = (tuple(pool.A[module].shape[1:]), tuple(pool.B[module].shape[1:]))
            by_shape.setdefault(key, []).append(module)
        self.groups = []
        for (a_shape, b_shape), modules in by_shape.items():
            a = torch.stack([pool.A[m].reshape(pool.size, -1) for m in modules], 1)     # [N, L, numel_A]
            b = torch.stack([pool.B[m].reshape(pool.size, -1) for m in modules], 1)     # [N, L, numel_B]
            sorted_abs = torch.stack([pool.sorted_abs_A[m] for m in modules], 1)        # [N, L, numel_A]
            for j, m in enumerate(modules):
                pool.A[m], pool.B[m] = a[:, j].view(-1, *a_shape), b[:, j].view(-1, *b_shape)
                pool.sorted_abs_A[m] = sorted_abs[:, j]
            self.groups.append((modules, a_shape, b_shape, a, sorted_abs, b))

    def sparse_a(self, alpha: torch.Tensor) -> list:
        """Per group, the stacked S_alpha_i(A_i); the last alpha's result is kept,
        since stage 2 (and LoRAHub) query many betas with one alpha."""
        key = alpha.tolist()
        cached = getattr(self, "_cache", None)   # one (alpha, stacks) tuple: swapped atomically
        if cached is not None and cached[0] == key:
            return cached[1]
        stacks = []
        for _, _, _, a, sorted_abs, _ in self.groups:
            k = keep_counts(alpha, a.shape[2])                                           # [N]
            idx = (k - 1).clamp(min=0).view(-1, 1, 1).expand(-1, a.shape[1], 1)
            tau = sorted_abs.gather(2, idx)                                              # [N, L, 1]
            keep = (a.abs() >= tau) & (k > 0).view(-1, 1, 1)
            stacks.append(torch.where(keep, a, torch.zeros((), dtype=a.dtype)))
        self._cache = (key, stacks)
        return stacks

    def merge(self, alpha: torch.Tensor, beta: torch.Tensor) -> dict:
        out = {}
        for (modules, a_shape, b_shape, _, _, b), sa in zip(self.groups, self.sparse_a(alpha)):
            merged_a = torch.tensordot(beta, sa, dims=1)                                 # [L, numel_A]
            merged_b = torch.tensordot(beta, b, dims=1)                                  # [L, numel_B]
            for j, m in enumerate(modules):
                out[m] = (merged_a[j].view(a_shape), merged_b[j].view(b_shape))
        return out


def merge_factors(pool, alpha, beta, mask: str = "topk", sparsify_b: bool = False, seed: int = 0) -> dict:
    """``{module: (A [r, d_in], B [d_out, r])}`` of the merged adapter."""
    alpha = torch.as_tensor(alpha, dtype=torch.float32).reshape(-1)
    beta = torch.as_tensor(beta, dtype=torch.float32).reshape(-1)
    if alpha.numel() != pool.size or beta.numel() != pool.size:
        raise ValueError(f"alpha and beta must have {pool.size} entries (the pool size), "
                         f"got {alpha.numel()} and {beta.numel()}")
    if mask == "topk" and not sparsify_b:
        groups = getattr(pool, "_shape_groups", None)
        if groups is None:
            groups = pool._shape_groups = ShapeGroups(pool)
        return groups.merge(alpha, beta)
    out = {}
    for i, module in enumerate(pool.modules):
        a = sparsify(pool.A[module], alpha, mask, pool.sorted_abs_A.get(module) if mask == "topk" else None,
                     seed + 2 * i)
        b = sparsify(pool.B[module], alpha, mask, None, seed + 2 * i + 1) if sparsify_b else pool.B[module]
        out[module] = (torch.einsum("n,nrd->rd", beta, a), torch.einsum("n,ndr->dr", beta, b))
    return out
