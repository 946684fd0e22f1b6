"""Population-aware recurrent layers: ``nn.RNN``, ``nn.GRU``, ``nn.LSTM`` and their cells.

Every matrix product inside a recurrence is a population-aware linear map
(:func:`.layers.population_linear`): the input-to-hidden product of all time
steps runs as one shared GEMM plus the members' rank-r corrections, the
hidden-to-hidden (and LSTM projection) product as one GEMM over every
member's hidden rows plus the corrections. Factors are drawn once per call and
reused at every step. The gate equations are torch's.

Input layouts inside a population (rows member-major, as everywhere):

* batched ``[N * B, T, in]`` (``batch_first``) or ``[T, N * B, in]``: ``B``
  sequences per member; ``[N, T, in]`` is one sequence per member;
* unbatched ``[N * T, in]``: one sequence of length ``T`` per member (the
  plain module would read ``[T, in]``); the output is ``[N * T, D * H]`` and
  the final states ``[L * D, N, H]``;
* shared (every member reads the same rows): the plain module's own shapes,
  ``[B, T, in]`` / ``[T, B, in]`` / ``[T, in]``; outputs are member-major.

An initial state ``hx`` may hold every member's rows or, when all members
start alike, just the plain module's rows (tiled). Inter-layer dropout is not
applied: a population forward is an evaluation. Packed sequences are not
supported.
"""
from __future__ import annotations

import torch
from torch import nn

from .layers import _PopulationAware
from .population import Population


def _gru_update(gi: torch.Tensor, gh: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """torch's GRU gate equations (r, z, n order) in five fused passes:
    ``r, z = sigmoid(gi + gh)``, ``n = tanh(gi_n + r * gh_n)``, ``h' = n + z (h - n)``."""
    H = h.shape[-1]
    rz = torch.add(gi[..., :2 * H], gh[..., :2 * H]).sigmoid_()
    n = torch.addcmul(gi[..., 2 * H:], rz[..., :H], gh[..., 2 * H:]).tanh_()
    return torch.lerp(n, h, rz[..., H:])


def _lstm_update(gi: torch.Tensor, gh: torch.Tensor, c: torch.Tensor):
    """torch's LSTM gate equations (i, f, g, o order): ``(o * tanh(c'), c')`` with
    ``c' = sigmoid(f) c + sigmoid(i) tanh(g)``."""
    H = c.shape[-1]
    gates = torch.add(gi, gh)
    g = torch.tanh(gates[..., 2 * H:3 * H])
    gates.sigmoid_()                                   # the g slot is not read after this
    c = torch.addcmul(gates[..., H:2 * H] * c, gates[..., :H], g)
    return gates[..., 3 * H:] * torch.tanh(c), c


def _member_hidden(pop: Population, hx, rows: int, width: int, like: torch.Tensor):
    """Initial state rows ``[N * rows, width]``: zeros, every member's rows, or ``rows`` rows tiled per member."""
    if hx is None:
        return like.new_zeros(pop.n * rows, width)
    if hx.dim() != 2 or hx.shape[-1] != width:
        raise ValueError(f"initial state must be [rows, {width}] per layer, got shape {tuple(hx.shape)}")
    if hx.shape[0] == pop.n * rows:
        return hx
    if hx.shape[0] == rows:
        return hx.repeat(pop.n, 1)
    raise ValueError(f"initial state has {hx.shape[0]} rows; expected {pop.n * rows} (member-major) "
                     f"or {rows} (the same for every member)")


class _PopCell(_PopulationAware):
    """Common forward of the cells: ``x [rows, in]`` (shared) or ``[N * rows, in]``."""

    def _pop_cell(self, pop, x, states):
        unbatched = x.dim() == 1
        if unbatched:
            x = x.unsqueeze(0)
            states = [None if s is None else s.unsqueeze(0) for s in states]
        if x.dim() != 2:
            raise ValueError(f"cell input must be [rows, {self.input_size}], got shape {tuple(x.shape)}")
        shared = pop.is_shared(x)
        rows = x.shape[0] if shared else pop.rows_per_member(x, "input")
        gi = self._linear(pop, x, "weight_ih", "bias_ih" if self.bias else None, shared=shared)
        states = [_member_hidden(pop, s, rows, self.hidden_size, gi) for s in states]
        gh = self._linear(pop, states[0], "weight_hh", "bias_hh" if self.bias else None, shared=False)
        return gi, gh, states


class PopRNNCell(_PopCell, nn.RNNCell):
    """``nn.RNNCell`` for a population (tanh or relu)."""

    def forward(self, x, hx=None):
        pop = self._population()
        if pop is None:
            return super().forward(x, hx)
        gi, gh, (h,) = self._pop_cell(pop, x, [hx])
        return torch.tanh(gi + gh) if self.nonlinearity == "tanh" else torch.relu(gi + gh)


class PopGRUCell(_PopCell, nn.GRUCell):
    """``nn.GRUCell`` for a population: both products are population-aware."""

    def forward(self, x, hx=None):
        pop = self._population()
        if pop is None:
            return super().forward(x, hx)
        gi, gh, (h,) = self._pop_cell(pop, x, [hx])
        return _gru_update(gi, gh, h)


class PopLSTMCell(_PopCell, nn.LSTMCell):
    """``nn.LSTMCell`` for a population; ``hx = (h, c)`` as in torch."""

    def forward(self, x, hx=None):
        pop = self._population()
        if pop is None:
            return super().forward(x, hx)
        gi, gh, (h, c) = self._pop_cell(pop, x, [None, None] if hx is None else list(hx))
        return _lstm_update(gi, gh, c)


class _PopRecurrent(_PopulationAware):
    """Common forward of ``nn.RNN`` / ``nn.GRU`` / ``nn.LSTM`` (see module doc)."""

    def _step(self, pop, gi_t, states, sfx):
        raise NotImplementedError

    def _pop_layers(self, pop, x, hx: list):
        """``hx``: the initial state tensors (``[L * D, rows, width]`` each, or None)."""
        if not isinstance(x, torch.Tensor):
            raise NotImplementedError(f"{type(self).__name__} does not take packed sequences in a population")
        if x.dim() not in (2, 3):
            raise ValueError(f"input must be 2-D (unbatched) or 3-D, got shape {tuple(x.shape)}")
        D = 2 if self.bidirectional else 1
        shared = pop.is_shared(x)
        unbatched = x.dim() == 2
        if unbatched:   # one sequence per member: [N * T, in] -> [N, T, in]
            if shared:
                seq = x.unsqueeze(0)
            else:
                pop.rows_per_member(x, "input")
                seq = x.reshape(pop.n, -1, x.shape[-1])
            hx = [None if h is None else (h.unsqueeze(1) if h.dim() == 2 else h) for h in hx]
        else:
            seq = x if self.batch_first else x.transpose(0, 1)       # [rows or N * rows, T, in]
        rows = seq.shape[0] if shared else pop.rows_per_member(seq, "input")
        widths = self._state_widths()
        layer_in, finals = seq, [[] for _ in widths]
        for layer in range(self.num_layers):
            outs = []
            for direction in range(D):
                sfx = f"_l{layer}" + ("_reverse" if direction else "")
                gi = self._linear(pop, layer_in, "weight_ih" + sfx, ("bias_ih" + sfx) if self.bias else None,
                                  shared=shared and layer == 0)                  # [N * rows, T, gates]
                k = layer * D + direction
                states = [_member_hidden(pop, None if h is None else h[k], rows, w, gi) for h, w in zip(hx, widths)]
                steps = range(gi.shape[1] - 1, -1, -1) if direction else range(gi.shape[1])
                out = [None] * gi.shape[1]
                for t in steps:
                    states = self._step(pop, gi[:, t], states, sfx)
                    out[t] = states[0]
                outs.append(torch.stack(out, 1))
                for final, s in zip(finals, states):
                    final.append(s)
            layer_in = outs[0] if D == 1 else torch.cat(outs, -1)
        finals = [torch.stack(f, 0) for f in finals]                   # [L * D, N * rows, width]
        if unbatched:
            out = layer_in.reshape(-1, layer_in.shape[-1])
        else:
            out = layer_in if self.batch_first else layer_in.transpose(0, 1)
        return out, finals

    def _state_widths(self):
        return [self.hidden_size]


class _PopOneState(_PopRecurrent):
    """RNN and GRU: one hidden state per layer and direction."""

    def forward(self, x, hx=None):
        pop = self._population()
        if pop is None:
            return super().forward(x, hx)
        out, (h_n,) = self._pop_layers(pop, x, [hx])
        return out, h_n


class PopRNN(_PopOneState, nn.RNN):
    """``nn.RNN`` (tanh or relu; any layers, directions) for a population."""

    def _step(self, pop, gi_t, states, sfx):
        gh = self._linear(pop, states[0], "weight_hh" + sfx, ("bias_hh" + sfx) if self.bias else None, shared=False)
        return [torch.tanh(gi_t + gh) if self.nonlinearity == "tanh" else torch.relu(gi_t + gh)]


class PopGRU(_PopOneState, nn.GRU):
    """``nn.GRU`` (any layers, directions) for a population."""

    def _step(self, pop, gi_t, states, sfx):
        gh = self._linear(pop, states[0], "weight_hh" + sfx, ("bias_hh" + sfx) if self.bias else None, shared=False)
        return [_gru_update(gi_t, gh, states[0])]


class PopLSTM(_PopRecurrent, nn.LSTM):
    """``nn.LSTM`` (any layers, directions, ``proj_size``) for a population; ``hx = (h_0, c_0)``."""

    def _state_widths(self):
        return [self.proj_size or self.hidden_size, self.hidden_size]

    def _step(self, pop, gi_t, states, sfx):
        h, c = states
        gh = self._linear(pop, h, "weight_hh" + sfx, ("bias_hh" + sfx) if self.bias else None, shared=False)
        h, c = _lstm_update(gi_t, gh, c)
        if self.proj_size:
            h = self._linear(pop, h, "weight_hr" + sfx, None, shared=False)
        return [h, c]

    def forward(self, x, hx=None):
        pop = self._population()
        if pop is None:
            return super().forward(x, hx)
        out, (h_n, c_n) = self._pop_layers(pop, x, [None, None] if hx is None else list(hx))
        return out, (h_n, c_n)


SWAPS = {nn.RNN: PopRNN, nn.GRU: PopGRU, nn.LSTM: PopLSTM,
         nn.RNNCell: PopRNNCell, nn.GRUCell: PopGRUCell, nn.LSTMCell: PopLSTMCell}
