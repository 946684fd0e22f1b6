"""Population-aware layers: one shared GEMM ``x W^T`` plus each member's rank-r correction.

For member ``i`` with factors ``A_i`` (m x r), ``B_i`` (n x r) and sign ``s_i``::

    y_i = x_i W^T + b + s_i * sigma / sqrt(r) * (x_i B_i) A_i^T

The base product runs once over all members' rows; the correction is two
small batched products. Nobody builds a member's W. When every member sees
the same rows (``shared``), ``x B`` for all members is one GEMM against the
concatenated ``B`` factors and the base GEMM runs on the shared rows only.

On CUDA tensors the correction is :func:`zoopt.kernels.lowrank_correction` (the
fused kernel draws each member's factors in registers); elsewhere it is the
batched torch products below, on factors from :func:`zoopt.kernels.lowrank_factors`.

The classes subclass the torch layers they replace (same parameters, same
state_dict keys); with no active population they run the plain forward.
Rows are member-major (see :mod:`.population`).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from zoopt.kernels import fuses, lowrank_correction

from .population import Population


def _member_major(out: torch.Tensor, pop: Population, lead) -> torch.Tensor:
    """``[N, R, d]`` (R = prod(lead)) -> ``[N * lead[0], *lead[1:], d]``."""
    pop.expanded = True
    return out.reshape(pop.n * lead[0], *lead[1:], out.shape[-1]) if len(lead) else out.reshape(pop.n, out.shape[-1])


def _correction_terms(pop: Population, lhs_rows: torch.Tensor, weight, bias, weight_id, bias_id, weight_mode,
                      member_bias: bool, rows: int, dtype, center_bias: bool = False):
    """Operands ``(L [G, g*rows, k], R^T [G, k, m])`` of the members' correction ``L @ R^T``, or None.

    Rank ``r`` columns carry ``s sigma/sqrt(r) (x B) A^T``; a member's bias noise
    ``s sigma eps`` rides along as one more column (``s sigma`` times ``eps``), so the
    output is touched by a single batched product. ``R^T`` is built row-wise (rows of
    length m): for r = 1 every piece is a contiguous row, so assembling it is a plain copy.
    """
    G, g = pop.groups, pop.group
    m, n = weight.shape
    left, right = [], []
    if weight_mode == "lowrank":
        A, B = pop.factors(weight_id, m, n, dtype=dtype)
        r = A.shape[-1]
        if lhs_rows.dim() == 2:   # shared rows [R, n]: x B for every member in one GEMM
            R = lhs_rows.shape[0]
            xB = (lhs_rows @ B.permute(1, 0, 2).reshape(n, G * r)).view(R, G, r).permute(1, 0, 2)
            xB = (xB.unsqueeze(1) * pop.lowrank_scale[:, :, None, None].to(dtype)).reshape(G, g * R, r)
        else:                      # member-major rows [G, g*rows, n]
            xB = torch.bmm(lhs_rows, B)
            xB.view(G, g, rows, r).mul_(pop.lowrank_scale[:, :, None, None].to(dtype))
        left.append(xB)
        right.append(A.transpose(1, 2))
    if member_bias:
        eps = pop.pair_noise(bias_id, m, dtype=dtype)                                   # [G, m]
        key = ("col", rows, dtype)
        if key not in pop._cache:
            pop._cache[key] = pop.vector_scale.to(dtype)[:, :, None, None].expand(G, g, rows, 1).reshape(G, g * rows, 1)
        col = pop._cache[key]
        left.append(col)
        right.append(eps.unsqueeze(1))
    if not left:
        return None
    if center_bias:   # the center bias as one more column (ones x b)
        key = ("ones", rows, dtype)
        if key not in pop._cache:
            pop._cache[key] = torch.ones(G, g * rows, 1, dtype=dtype, device=lhs_rows.device)
        left.append(pop._cache[key])
        right.append(bias.view(1, 1, m).expand(G, 1, m).to(dtype))
    if len(left) == 1:
        return left[0], right[0]
    key = ("right", weight_id, bias_id, center_bias)   # a recurrent layer reuses it at every step
    if key not in pop._cache:
        pop._cache[key] = torch.cat(right, 1)
    return torch.cat(left, -1), pop._cache[key]


def population_linear(pop: Population, x: torch.Tensor, weight: torch.Tensor, bias, *, weight_id: int,
                      bias_id: int = 0, weight_mode: str = "lowrank", bias_mode: str = "full",
                      shared: bool | None = None) -> torch.Tensor:
    """``x [..., n]`` through ``W [m, n]`` for every member of ``pop`` (see module doc)."""
    m, n = weight.shape
    if shared is None:
        shared = pop.is_shared(x)
    member_bias = bias is not None and bias_mode == "full"
    if weight_mode == "lowrank" and fuses(x.device, x.dtype, pop.rank):
        return _fused_linear(pop, x, weight, bias, weight_id, bias_id, member_bias, shared)
    G, g = pop.groups, pop.group
    if shared:
        lead = tuple(x.shape[:-1])
        x2 = x.reshape(-1, n)
        R = x2.shape[0]
        base = F.linear(x2, weight, bias)                              # [R, m], once for all members
        terms = _correction_terms(pop, x2, weight, bias, weight_id, bias_id, weight_mode, member_bias, R, x2.dtype)
        if terms is None:
            out = base.unsqueeze(0).expand(pop.n, R, m)
        else:
            out = torch.baddbmm(base.repeat(g, 1) if g > 1 else base, terms[0], terms[1])
        return _member_major(out.reshape(pop.n, R, m), pop, lead)
    if x.dim() < 2:
        raise ValueError(f"input must be member-major [N*T, ..., {n}], got shape {tuple(x.shape)}")
    pop.rows_per_member(x, "input")
    rows = x.numel() // (pop.n * n)
    x3 = x.reshape(G, g * rows, n)
    if weight_mode != "lowrank" and not member_bias:
        out = F.linear(x3, weight, bias)                               # one GEMM over every row
    else:
        # one batched product writes every member's correction and the center bias, then the one
        # shared GEMM accumulates onto it (beta = 1): the output is written once and read once
        left, right = _correction_terms(pop, x3, weight, bias, weight_id, bias_id, weight_mode, member_bias, rows,
                                        x3.dtype, center_bias=bias is not None)
        out = torch.bmm(left, right)
        out.view(-1, m).addmm_(x3.view(-1, n), weight.t())
    pop.expanded = True
    return out.reshape(*x.shape[:-1], m)


def _fused_linear(pop: Population, x, weight, bias, weight_id, bias_id, member_bias, shared):
    """CUDA tensors: the shared GEMM, then the fused kernel adds every member's rank-r term
    with its factors drawn in registers (:func:`zoopt.kernels.lowrank_correction`)."""
    m, n = weight.shape
    if shared:
        lead = tuple(x.shape[:-1])
        x2 = x.reshape(-1, n)
        xm = x2.unsqueeze(0).expand(pop.n, *x2.shape).contiguous()            # [N, R, n]
        out = F.linear(x2, weight, bias).unsqueeze(0).repeat(pop.n, 1, 1)     # [N, R, m]
    else:
        if x.dim() < 2:
            raise ValueError(f"input must be member-major [N*T, ..., {n}], got shape {tuple(x.shape)}")
        pop.rows_per_member(x, "input")
        lead = None
        xm = x.reshape(pop.n, -1, n).contiguous()
        out = F.linear(xm, weight, bias)
    scales = pop.signs * (pop.sigma / math.sqrt(pop.rank))
    lowrank_correction(out, xm, pop.seed, weight_id, pop.epoch, pop.members // 2, scales, pop.rank)
    if member_bias:
        out += pop.vector_noise(bias_id, (m,), dtype=out.dtype).unsqueeze(1)
    if shared:
        return _member_major(out, pop, lead)
    pop.expanded = True
    return out.reshape(*x.shape[:-1], m)


def population_embedding(pop: Population, idx: torch.Tensor, weight: torch.Tensor, *, weight_id: int,
                         weight_mode: str = "lowrank", padding_idx=None, shared: bool | None = None) -> torch.Tensor:
    """Rows ``W[t] + s sigma / sqrt(r) * A[t] B^T`` of each member (A indexes the vocabulary)."""
    V, D = weight.shape
    if shared is None:
        shared = pop.is_shared(idx)
    base = F.embedding(idx, weight, padding_idx)
    G, g = pop.groups, pop.group
    if shared:
        lead = tuple(idx.shape)
        R = idx.numel()
        if weight_mode != "lowrank":
            return _member_major(base.reshape(1, R, D).expand(pop.n, R, D), pop, lead)
        A, B = pop.factors(weight_id, V, D, dtype=weight.dtype)
        r = A.shape[-1]
        a = A[:, idx.reshape(-1)].unsqueeze(1) * pop.lowrank_scale[:, :, None, None].to(weight.dtype)
        base2 = base.reshape(R, D)
        out = torch.baddbmm(base2.repeat(g, 1) if g > 1 else base2, a.reshape(G, g * R, r), B.transpose(1, 2))
        return _member_major(out.view(pop.n, R, D), pop, lead)
    rows = pop.rows_per_member(idx, "input") * (idx[0].numel() if idx.dim() > 1 else 1)
    pop.expanded = True
    if weight_mode != "lowrank":
        return base
    A, B = pop.factors(weight_id, V, D, dtype=weight.dtype)
    r = A.shape[-1]
    flat = idx.reshape(G, g * rows)
    a = torch.gather(A, 1, flat.unsqueeze(-1).expand(G, g * rows, r))
    a.view(G, g, rows, r).mul_(pop.lowrank_scale[:, :, None, None].to(weight.dtype))
    out = base.reshape(G, g * rows, D).baddbmm(a, B.transpose(1, 2))
    return out.reshape(*idx.shape, D)


class _PopulationAware:
    """Mixin: the holder, tensor ids and modes a swap attaches to a layer."""

    _eggroll_holder = None
    _eggroll_ids: dict = {}
    _eggroll_modes: dict = {}

    def _population(self):
        holder = self._eggroll_holder
        return None if holder is None else holder.current

    def _linear(self, pop, x, wname, bname, shared=None):
        weight = getattr(self, wname)
        bias = getattr(self, bname) if bname is not None else None
        return population_linear(pop, x, weight, bias, weight_id=self._eggroll_ids.get(wname, 0),
                                 bias_id=self._eggroll_ids.get(bname, 0) if bname else 0,
                                 weight_mode=self._eggroll_modes.get(wname, "frozen"),
                                 bias_mode=self._eggroll_modes.get(bname, "frozen") if bname else "frozen",
                                 shared=shared)


class PopLinear(_PopulationAware, nn.Linear):
    """``nn.Linear`` that evaluates a whole EGGROLL population when one is active."""

    def forward(self, x):
        pop = self._population()
        if pop is None:
            return super().forward(x)
        return self._linear(pop, x, "weight", "bias" if self.bias is not None else None)


class PopEmbedding(_PopulationAware, nn.Embedding):
    """``nn.Embedding`` with low-rank member rows (max_norm and sparse are not supported)."""

    def forward(self, idx):
        pop = self._population()
        if pop is None:
            return super().forward(idx)
        if self.max_norm is not None:
            raise NotImplementedError("PopEmbedding does not support max_norm")
        return population_embedding(pop, idx, self.weight, weight_id=self._eggroll_ids.get("weight", 0),
                                    weight_mode=self._eggroll_modes.get("weight", "frozen"),
                                    padding_idx=self.padding_idx)


SWAPS = {nn.Linear: PopLinear, nn.Embedding: PopEmbedding,
         nn.modules.linear.NonDynamicallyQuantizableLinear: PopLinear}  # the last: attention's out_proj
# the norms live in .norms, the convolutions in .conv, the recurrent layers in .recurrent
