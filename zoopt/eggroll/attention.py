"""Population-aware ``nn.MultiheadAttention``: perturbed through its projections.

The input projection (``in_proj_weight [3E, E]``, or ``q/k/v_proj_weight``
when key/value widths differ) and ``out_proj`` are low-rank population linear
maps; ``in_proj_bias`` takes full-rank noise. The attention itself
(``softmax(q k^T / sqrt(d) + mask) v`` per head) has no parameters and runs on
every member's rows at once. A population forward is an evaluation: attention
dropout is not applied. ``bias_k``/``bias_v`` and ``add_zero_attn`` are not
supported (their parameters stay frozen; EGGROLL names them).

Layouts follow the module's ``batch_first``; rows are member-major along the
batch dimension (``[N * B, T, E]``, or ``[T, N * B, E]``). Query, key and value
may each be shared (every member sees them) or member-major. A shared
unbatched input ``[T, E]`` gives ``[N * T, E]``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .layers import _PopulationAware, population_linear
from .population import Population


def _additive(mask, dtype):
    """MultiheadAttention's masks (bool True = masked out, or float added) as a float mask."""
    if mask is None or mask.is_floating_point():
        return mask if mask is None else mask.to(dtype)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))


def _per_member_rows(pop: Population, t: torch.Tensor, rows: int) -> torch.Tensor:
    """A mask with one entry per sample: tiled to every member's rows when it holds only ``rows``."""
    return t.repeat(pop.n, *([1] * (t.dim() - 1))) if t.shape[0] == rows and pop.n > 1 else t


class PopMultiheadAttention(_PopulationAware, nn.MultiheadAttention):
    """``nn.MultiheadAttention`` for a population (see module doc)."""

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        pop = self._population()
        if pop is None:
            return super().forward(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                                   attn_mask=attn_mask, average_attn_weights=average_attn_weights,
                                   is_causal=is_causal)
        if self.bias_k is not None or self.add_zero_attn:
            raise NotImplementedError("a population forward does not support bias_k/bias_v or add_zero_attn")
        unbatched = query.dim() == 2
        shared = [pop.is_shared(t) for t in (query, key, value)]
        q_in, k_in, v_in = (t.unsqueeze(0) if unbatched else (t if self.batch_first else t.transpose(0, 1))
                            for t in (query, key, value))
        if unbatched and not all(shared):
            raise ValueError("an unbatched population input to MultiheadAttention must be shared by every member")
        rows = q_in.shape[0] if shared[0] else pop.rows_per_member(q_in, "query")
        q, k, v = self._projections(pop, (q_in, k_in, v_in), shared)           # [N * B, T|S, E]
        H, E = self.num_heads, self.embed_dim
        hd = E // H
        T, S = q.shape[1], k.shape[1]
        q, k, v = (t.reshape(t.shape[0], t.shape[1], H, -1).transpose(1, 2) for t in (q, k, v))
        mask = _additive(attn_mask, q.dtype)
        if is_causal and mask is None:
            mask = torch.full((T, S), float("-inf"), dtype=q.dtype, device=q.device).triu_(1)
        if mask is not None and mask.dim() == 3:                                # [B * H, T, S]
            mask = _per_member_rows(pop, mask.view(-1, H, T, S), rows)
        if key_padding_mask is not None:
            kpm = _additive(key_padding_mask.reshape(-1, S), q.dtype)
            kpm = _per_member_rows(pop, kpm, rows).view(-1, 1, 1, S)
            mask = kpm if mask is None else mask + kpm
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(hd)                       # [N * B, H, T, S]
        if mask is not None:
            scores = scores + mask
        weights = torch.softmax(scores, -1)
        out = (weights @ v).transpose(1, 2).reshape(q.shape[0], T, E)
        out = self.out_proj(out)                                                 # member-major rows
        if unbatched:
            out = out.reshape(pop.n * T, E)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        return out, (weights.mean(1) if average_attn_weights else weights)

    def _projections(self, pop, inputs, shared):
        """q, k, v: each input through its rows of the input projection, plus the member's bias."""
        E = self.embed_dim
        ids, modes = self._eggroll_ids, self._eggroll_modes
        if self._qkv_same_embed_dim:
            parts = [(self.in_proj_weight, "in_proj_weight", slice(j * E, (j + 1) * E)) for j in range(3)]
        else:
            parts = [(getattr(self, n), n, slice(None)) for n in ("q_proj_weight", "k_proj_weight", "v_proj_weight")]
        done = {}
        outs = []
        for x, is_shared, (weight, name, rows) in zip(inputs, shared, parts):
            key = (id(x), name)
            if key not in done:  # self-attention: one projection serves q, k and v
                done[key] = population_linear(pop, x, weight, None, weight_id=ids.get(name, 0),
                                              weight_mode=modes.get(name, "frozen"), shared=is_shared)
            outs.append(done[key][..., rows])
        if self.in_proj_bias is not None:
            bias = self.in_proj_bias.unsqueeze(0)
            if modes.get("in_proj_bias") == "full":
                bias = bias + pop.vector_noise(ids["in_proj_bias"], (3 * E,), dtype=bias.dtype)
            outs = [o.reshape(pop.n, -1, *o.shape[1:]) + bias[:, None, None, j * E:(j + 1) * E]
                    for j, o in enumerate(outs)]
            outs = [o.reshape(-1, *o.shape[2:]) for o in outs]
        return outs


SWAPS = {nn.MultiheadAttention: PopMultiheadAttention}
