"""Population-aware norms: the shared normalisation, then each member's affine with full-rank noise.

``LayerNorm`` and ``RMSNorm`` normalise each row on its own, ``GroupNorm`` each
sample, so the normalisation runs once over all rows (once over the shared
rows when every member sees the same input) and only the affine vectors
``w + s sigma eps_w``, ``b + s sigma eps_b`` differ per member.

``BatchNorm1d/2d/3d`` in training mode (or without running statistics)
normalises with statistics of each member's own batch, as that member's
plain module would; a population forward is an evaluation, so running
statistics are not updated (the center's forward in ``EGGROLL.step`` updates
them). In eval mode it uses the running statistics.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import _PopulationAware
from .population import Population


def _member_vector(pop: Population, layer, name: str, dtype) -> torch.Tensor:
    """``[N, *shape]`` (``[1, *shape]`` when not perturbed) of parameter ``name`` for every member."""
    v = getattr(layer, name).unsqueeze(0).to(dtype)
    if layer._eggroll_modes.get(name) == "full":
        v = v + pop.vector_noise(layer._eggroll_ids[name], tuple(v.shape[1:]), dtype=dtype)
    return v


def _per_member(pop: Population, normed: torch.Tensor, shared: bool) -> torch.Tensor:
    """``[N, rows, ...]`` view of normalised rows (shared rows are seen by every member)."""
    if shared:
        return normed.unsqueeze(0).expand(pop.n, *normed.shape)
    return normed.reshape(pop.n, -1, *normed.shape[1:])


def _affine(pop, layer, view: torch.Tensor, shape_at: int) -> torch.Tensor:
    """``view * w + b`` with member vectors broadcast at dimension ``shape_at`` of ``view`` onwards."""
    def place(v):
        ones = view.dim() - shape_at - (v.dim() - 1)
        return v.view(v.shape[0], *([1] * (shape_at - 1)), *v.shape[1:], *([1] * ones))
    if layer.weight is not None:
        view = view * place(_member_vector(pop, layer, "weight", view.dtype))
    if getattr(layer, "bias", None) is not None:
        view = view + place(_member_vector(pop, layer, "bias", view.dtype))
    return view


def _out(pop, view: torch.Tensor) -> torch.Tensor:
    pop.expanded = True
    return view.reshape(-1, *view.shape[2:])


class _PopRowNorm(_PopulationAware):
    """Norms whose statistics stay within a row (LayerNorm, RMSNorm, GroupNorm): the normalisation runs once
    over all rows, then each member's affine. Subclasses give ``_normalise(x)``, ``_affine_at(view)`` (the
    dimension where the affine vectors' shape starts) and ``_has_affine()``."""

    def forward(self, x):
        pop = self._population()
        if pop is None:
            return super().forward(x)
        shared = pop.is_shared(x)
        if not shared:
            pop.rows_per_member(x, "input")
        view = _per_member(pop, self._normalise(x), shared)
        return _out(pop, _affine(pop, self, view, self._affine_at(view)) if self._has_affine() else view)


class _PopTrailingNorm(_PopRowNorm):
    """LayerNorm / RMSNorm: normalised over the trailing ``normalized_shape``."""

    def _affine_at(self, view):
        return view.dim() - len(self.normalized_shape)

    def _has_affine(self):
        return self.elementwise_affine


class PopLayerNorm(_PopTrailingNorm, nn.LayerNorm):
    """``nn.LayerNorm`` whose affine vectors get per-member full-rank noise."""

    def _normalise(self, x):
        return F.layer_norm(x, self.normalized_shape, None, None, self.eps)


class PopRMSNorm(_PopTrailingNorm, nn.RMSNorm):
    """``nn.RMSNorm`` whose weight gets per-member full-rank noise."""

    def _normalise(self, x):
        return F.rms_norm(x, self.normalized_shape, None, self.eps)


class PopGroupNorm(_PopRowNorm, nn.GroupNorm):
    """``nn.GroupNorm`` (statistics per sample) with per-member affine noise on the channels."""

    def _normalise(self, x):
        return F.group_norm(x, self.num_groups, None, None, self.eps)

    def _affine_at(self, view):
        return 2

    def _has_affine(self):
        return self.affine


class _PopBatchNorm(_PopulationAware):
    """BatchNorm with each member's own batch statistics (see module doc)."""

    def forward(self, x):
        pop = self._population()
        if pop is None:
            return super().forward(x)
        self._check_input_dim(x)
        shared = pop.is_shared(x)
        batch_stats = self.training or self.running_mean is None
        if shared or not batch_stats:   # rows normalised alike: one pass over all of them
            rm, rv = (None, None) if batch_stats else (self.running_mean, self.running_var)
            if not shared:
                pop.rows_per_member(x, "input")
            normed = F.batch_norm(x, rm, rv, None, None, batch_stats, 0.0, self.eps)
            view = _per_member(pop, normed, shared)
        else:                           # [N * B, C, ...] -> [B, N * C, ...]: per-member statistics
            rows = pop.rows_per_member(x, "input")
            xs = x.reshape(pop.n, rows, *x.shape[1:]).transpose(0, 1).reshape(rows, -1, *x.shape[2:])
            normed = F.batch_norm(xs, None, None, None, None, True, 0.0, self.eps)
            view = normed.reshape(rows, pop.n, *x.shape[1:]).transpose(0, 1)
        return _out(pop, _affine(pop, self, view, 2) if self.affine else view)


class PopBatchNorm1d(_PopBatchNorm, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` for a population."""


class PopBatchNorm2d(_PopBatchNorm, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` for a population."""


class PopBatchNorm3d(_PopBatchNorm, nn.BatchNorm3d):
    """``nn.BatchNorm3d`` for a population."""


SWAPS = {nn.LayerNorm: PopLayerNorm, nn.RMSNorm: PopRMSNorm, nn.GroupNorm: PopGroupNorm,
         nn.BatchNorm1d: PopBatchNorm1d, nn.BatchNorm2d: PopBatchNorm2d, nn.BatchNorm3d: PopBatchNorm3d}
NORMS = tuple(SWAPS)
