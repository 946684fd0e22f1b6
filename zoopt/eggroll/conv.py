"""Population-aware convolutions: one shared convolution plus a rank-r term per member.

A kernel ``W [out, in/groups, *k]`` is perturbed as the matrix
``W.view(out, n)`` (``n = in/groups * prod(k)``) by ``s sigma / sqrt(r) A B^T``,
so a member's output is::

    conv(x, W) + s sigma / sqrt(r) * sum_c A[:, c] * conv(x, B_c)

where ``B_c`` (column c of ``B``, viewed as one ``[in/groups, *k]`` filter per
convolution group) is a filter with r output channels. The r-channel
convolutions of every member run as one grouped convolution; nobody builds a
member's kernel. Shared inputs (every member sees the same rows) run the base
convolution once and the factor filters once per antithetic pair.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import _PopulationAware
from .population import Population

CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def population_conv(pop: Population, layer: nn.modules.conv._ConvNd, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` for every member of ``pop``: member-major ``[N * B, out, *L']``."""
    d = len(layer.kernel_size)
    conv = CONV[d]
    weight, bias = layer.weight, layer.bias
    modes, ids = layer._eggroll_modes, layer._eggroll_ids
    shared = pop.is_shared(x)
    if x.dim() == d + 1:          # unbatched: one sample
        if not shared:
            raise ValueError(f"a population input to {type(layer).__name__} must be batched [N*B, C, ...], "
                             f"got shape {tuple(x.shape)}")
        x = x.unsqueeze(0)
    if x.dim() != d + 2:
        raise ValueError(f"{type(layer).__name__} input must be [B, C, ...] with {d} spatial dims, got {tuple(x.shape)}")
    padding = layer.padding
    if layer.padding_mode != "zeros":
        x = F.pad(x, layer._reversed_padding_repeated_twice, mode=layer.padding_mode)
        padding = 0
    args = (layer.stride, padding, layer.dilation)
    out = conv(x, weight, bias, *args, layer.groups)                    # the shared convolution
    N, o = pop.n, weight.shape[0]
    if shared:
        rows = x.shape[0]
        out = out.unsqueeze(0).expand(N, *out.shape)                    # [N, B, out, *L']
    else:
        rows = pop.rows_per_member(x, "input")
        out = out.view(N, rows, *out.shape[1:])
    if modes.get("weight") == "lowrank":
        out = out + _lowrank_term(pop, layer, x, conv, args, shared, rows)
    if bias is not None and modes.get("bias") == "full":
        eps = pop.vector_noise(ids["bias"], (o,), dtype=out.dtype)        # [N, out]
        out = out + eps.view(N, 1, o, *([1] * d))
    pop.expanded = True
    return out.reshape(N * rows, *out.shape[2:])


def _lowrank_term(pop, layer, x, conv, args, shared, rows):
    """``[N, B, out, *L']``: every member's ``s sigma / sqrt(r) sum_c A[:, c] conv(x, B_c)``."""
    weight = layer.weight
    o, cg, k = weight.shape[0], weight.shape[1], tuple(weight.shape[2:])
    gc, G, g = layer.groups, pop.groups, pop.group
    A, B = pop.factors(layer._eggroll_ids["weight"], o, weight[0].numel(), dtype=x.dtype)   # [G, o, r], [G, n, r]
    r = A.shape[-1]
    filters = B.permute(0, 2, 1).reshape(G, r, cg, *k)                   # one r-channel filter per pair
    scale = pop.lowrank_scale.to(x.dtype)                                # [G, g]
    A4 = A.view(G, gc, o // gc, r)
    if shared:                          # conv groups outermost: [gc, G, r] output channels
        w = filters.unsqueeze(0).expand(gc, G, r, cg, *k).reshape(gc * G * r, cg, *k)
        y = conv(x, w, None, *args, gc)                                  # [B, gc * G * r, *L']
        y = y.view(rows, gc, G, r, *y.shape[2:])
        term = torch.einsum("bqgc...,gqjc->gbqj...", y, A4)              # [G, B, gc, o/gc, *L']
        spatial = tuple(term.shape[4:])
        term = term.reshape(G, 1, rows, o, *spatial) * scale.view(G, g, 1, 1, *([1] * len(spatial)))
        return term.reshape(pop.n, rows, o, *spatial)
    N = pop.n
    member_filters = filters.repeat_interleave(g, 0)                     # [N, r, cg, *k]
    w = member_filters.unsqueeze(1).expand(N, gc, r, cg, *k).reshape(N * gc * r, cg, *k)
    xs = x.view(N, rows, *x.shape[1:]).transpose(0, 1).reshape(rows, N * x.shape[1], *x.shape[2:])
    y = conv(xs, w, None, *args, N * gc)                                 # [B, N * gc * r, *L']
    y = y.view(rows, N, gc, r, *y.shape[2:])
    A_members = (A4.repeat_interleave(g, 0) * scale.reshape(N, 1, 1, 1))  # [N, gc, o/gc, r]
    term = torch.einsum("bnqc...,nqjc->nbqj...", y, A_members)           # [N, B, gc, o/gc, *L']
    return term.reshape(N, rows, o, *term.shape[4:])


class _PopConv(_PopulationAware):
    def forward(self, x):
        pop = self._population()
        if pop is None:
            return super().forward(x)
        return population_conv(pop, self, x)


class PopConv1d(_PopConv, nn.Conv1d):
    """``nn.Conv1d`` for a population."""


class PopConv2d(_PopConv, nn.Conv2d):
    """``nn.Conv2d`` for a population."""


class PopConv3d(_PopConv, nn.Conv3d):
    """``nn.Conv3d`` for a population."""


SWAPS = {nn.Conv1d: PopConv1d, nn.Conv2d: PopConv2d, nn.Conv3d: PopConv3d}
