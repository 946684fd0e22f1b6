"""Structure-aware evaluation of PolyStep candidates on a torch model.

Candidate ``(i, v, k)`` moves only block ``i`` of the subspace coordinates,
so its parameters differ from the current model only in the layers that
block maps to. Protocol (shared with ``problems.zoo``): a model may define
``stages()`` returning ``[(name, module), ...]`` (or plain modules) in forward
order, with ``model(x)`` equal to the modules applied one after another to
``x.flatten(1)`` (or to ``x``; checked numerically on the first batch) and
every trainable parameter owned by exactly one stage. ``nn.Sequential``
models are read as their children. Each stage must treat the leading
dimension of its input as the batch (intermediate layouts are free, e.g.
the SNN's ``[T, B, H]`` spike train), so stacking candidates into the batch
is just a bigger batch.

Routes, per particle block, for a block whose first touched stage is ``s``:

* ``linear``: stage ``s`` is affine — ``nn.Linear``, a stage class with
  ``zoopt_affine = True`` (forward ``activation(F.linear(x, weight, bias))``)
  or the zoo's ``Dense`` — and the block touches only its weight and bias.
  The stage input ``a_s`` and the center's pre-activation are computed once
  per batch; each coordinate ``j`` gives the response ``a_s M_j^T`` once (the
  map's column reshaped, sparse or dense), a candidate's pre-activation is the
  center's plus its offset times those responses (a small batched GEMM),
  and stages ``s+1..`` run once on all candidates stacked into the batch with
  the shared weights. On CPU (``compile="auto"`` or False) the tail is eager
  with compiled kernels where the stages allow (:mod:`zoopt.kernels.fused_tails`,
  built once per cache folder, so no compile warm-up lands on a short run): a
  single plain ``nn.Linear`` after a ReLU/identity affine stage (the MLP) runs
  responses, combination, ReLU and readout per tile of rows in cache, feature-major;
  a stage offering ``zoopt_fused_tail`` (the SNN's LIF pair) runs its kernel;
  other stages run as modules (a narrow ``nn.Linear`` as a 16-wide GEMM).
  ``torch.compile`` is used with ``compile=True``, or on a GPU with "auto"
  when the stack is large. A plain mean cross-entropy is computed per
  candidate as ``logsumexp - picked logit``. No per-candidate weight is ever built.
* ``generic``: stages ``0..s-1`` run once; stages ``s..`` run under
  ``torch.vmap`` with per-candidate copies of only the touched tensors.
* models without stages: the whole model under ``torch.vmap`` with
  per-candidate copies of the touched tensors (the fallback).

:func:`naive_losses` is the reference (full per-candidate parameter vectors
through ``functional_call``); tests check every route against it.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.func import functional_call

from .subspace import HybridSubspace

# Per chunk: stacked candidate activations. On CPU a chunk that stays in cache beats a big one
# (MLP rank 8, batch 512: 2.2 s per step at 16 MiB against 5.3 s at 512 MiB); a GPU wants big launches.
ACTIVATION_BYTES = {"cpu": 16 * 2 ** 20, "cuda": 512 * 2 ** 20}
PARAM_BYTES = 256 * 2 ** 20        # per chunk: per-candidate copies of touched tensors
COMPILE_MIN_ROWS = 2 ** 20         # compile="auto" on a GPU: torch.compile a tail that runs this many rows per step
NARROW_PAD = 16                    # an nn.Linear with fewer outputs runs as a GEMM padded to this many


def _identity(h):
    return h


def _narrow_linear(module: nn.Module):
    """``module`` itself, or for a plain ``nn.Linear`` with fewer than ``NARROW_PAD`` outputs on CPU the same
    map as one GEMM whose weight is zero-padded to ``NARROW_PAD`` rows (MKL is several times faster at 16
    outputs than at 10; the extra columns are dropped, the kept ones equal ``F.linear`` to rounding)."""
    if type(module) is not nn.Linear or module.out_features >= NARROW_PAD or module.weight.device.type != "cpu":
        return module
    out, weight = module.out_features, module.weight.detach()
    padded = weight.new_zeros(NARROW_PAD, weight.shape[1])
    padded[:out] = weight
    bias = weight.new_zeros(NARROW_PAD)
    if module.bias is not None:
        bias[:out] = module.bias.detach()
    padded_t = padded.T

    def run(h):
        if h.dim() != 2 or h.dtype != padded.dtype or h.device.type != "cpu":
            return module(h)
        return torch.addmm(bias, h, padded_t)[:, :out]
    return run


def _empty_csr(rows: int, dtype):
    return torch.zeros(rows + 1, dtype=torch.int64), torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=dtype)


def _cross_entropy_labels(loss_fn, y, classes: int, batch: int) -> Optional[torch.Tensor]:
    """``y`` when ``loss_fn`` is a plain mean cross-entropy (no class weights, no label smoothing) and
    every label of ``y [batch]`` is a class in ``0..classes-1`` (none ignored), else None."""
    if type(loss_fn) is nn.CrossEntropyLoss:
        if loss_fn.weight is not None or loss_fn.reduction != "mean" or loss_fn.label_smoothing != 0:
            return None
        ignore = loss_fn.ignore_index
    elif loss_fn is nn.functional.cross_entropy:
        ignore = -100
    else:
        return None
    if not (torch.is_tensor(y) and y.dim() == 1 and y.dtype == torch.int64 and y.numel() == batch > 0):
        return None
    if bool((y < 0).any()) or bool((y >= classes).any()) or bool((y == ignore).any()):
        return None  # the reference reports (or ignores) these
    return y


def _cross_entropy_means(loss_fn, outputs: torch.Tensor, y, class_dim: int = 2) -> Optional[torch.Tensor]:
    """Per-candidate mean cross-entropy of ``outputs [N, B, C]`` (``[N, C, B]`` with ``class_dim=1``)
    against class indices ``y [B]`` as ``logsumexp - picked logit``, or None unless ``loss_fn`` is a
    plain mean cross-entropy (:func:`_cross_entropy_labels`). Equal to ``vmap(loss_fn)`` to rounding
    and several times faster: torch's log-softmax over a last dimension of 10 is slow on CPU."""
    batch_dim = 3 - class_dim
    if not (outputs.dim() == 3 and outputs.is_floating_point() and torch.is_tensor(y)
            and y.device == outputs.device and y.numel() == outputs.shape[batch_dim]):
        return None
    if _cross_entropy_labels(loss_fn, y, outputs.shape[class_dim], outputs.shape[batch_dim]) is None:
        return None
    n, b = outputs.shape[0], y.numel()
    picked = outputs.gather(class_dim, y.expand(n, b).unsqueeze(class_dim)).squeeze(class_dim)
    top = outputs.amax(dim=class_dim, keepdim=True)
    if not bool(torch.isfinite(top).all()):  # logsumexp's rules for infinite logits
        return (torch.logsumexp(outputs, dim=class_dim) - picked).mean(dim=1)
    lse = (outputs - top).exp_().sum(dim=class_dim).log_().add_(top.squeeze(class_dim))
    return lse.sub_(picked).mean(dim=1)


def _dense_forward():
    try:
        from zoopt.problems.zoo.layers import Dense
    except Exception:  # the zoo is optional for the engine
        return None
    return Dense.forward


def affine_parts(stage: nn.Module) -> Optional[Callable]:
    """The elementwise function applied after the stage's affine map, or None when the stage is not affine."""
    cls = type(stage)
    if not isinstance(stage, nn.Linear):
        return None
    if cls.forward is nn.Linear.forward:
        return _identity
    if getattr(cls, "zoopt_affine", False) or (_dense_forward() is not None and cls.forward is _dense_forward()):
        act = getattr(stage, "activation", None)
        return _identity if act is None or type(act) is nn.Identity else act
    return None


def model_stages(model: nn.Module) -> Optional[List[Tuple[str, nn.Module]]]:
    """``[(name, module)]`` from ``model.stages()`` or an ``nn.Sequential``; None when neither applies."""
    if hasattr(model, "stages") and callable(model.stages):
        raw = list(model.stages())
    elif isinstance(model, nn.Sequential):
        raw = list(model.named_children())
    else:
        return None
    out = []
    for k, item in enumerate(raw):
        name, module = item if isinstance(item, tuple) else (str(k), item)
        if not isinstance(module, nn.Module):
            return None
        out.append((name, module))
    return out


@dataclass
class Route:
    kind: str                 # "linear", "generic" or "model"
    stage: int                # first touched stage (0 for "model")
    layers: Tuple[int, ...]   # indices of the subspace layers the block touches


def naive_losses(model: nn.Module, loss_fn, x, y, thetas: torch.Tensor, names: List[str],
                 shapes: List[torch.Size]) -> torch.Tensor:
    """Reference: one full parameter set per candidate ``thetas [N, num_params]`` through ``functional_call``."""
    out = []
    for theta in thetas:
        params, at = {}, 0
        for name, shape in zip(names, shapes):
            n = math.prod(shape)
            params[name] = theta[at:at + n].reshape(shape)
            at += n
        out.append(loss_fn(functional_call(model, params, (x,)), y).reshape(()))
    return torch.stack(out)


class BlockEvaluator:
    """Costs of all candidates of a PolyStep proposal on one batch (see the module docstring)."""

    def __init__(self, model: nn.Module, subspace: HybridSubspace, particle_dim: int, structured: bool = True,
                 activation_bytes: Optional[int] = None, param_bytes: int = PARAM_BYTES, compile="auto"):
        self.model, self.subspace, self.d = model, subspace, int(particle_dim)
        # None: by the device of the batch (ACTIVATION_BYTES)
        self.activation_bytes = None if activation_bytes is None else int(activation_bytes)
        self.param_bytes = int(param_bytes)
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.names = [l.name for l in subspace.layers]
        if list(self.params) != self.names:
            raise ValueError("the subspace layout does not match the model's trainable parameters")
        self.stages = model_stages(model) if structured else None
        self.owner: Dict[str, Tuple[int, str]] = {}
        if self.stages is not None:
            ids = {id(p): n for n, p in self.params.items()}
            for k, (_, module) in enumerate(self.stages):
                for local, p in module.named_parameters():
                    if id(p) in ids:
                        self.owner[ids[id(p)]] = (k, local)
            if set(self.owner) != set(self.names):
                self.stages = None  # a parameter outside every stage: no staged evaluation
        if compile not in (True, False, "auto"):
            raise ValueError(f"compile must be True, False or 'auto', got {compile!r}")
        self.compile = compile
        self._compiled: Dict[int, object] = {}
        self._batch: Dict[int, tuple] = {}
        self._device_type = "cpu"
        self.input_mode: Optional[str] = None   # "flatten", "plain" once verified, "model" when stages don't compose
        self.num_particles = math.ceil(subspace.dim / self.d)
        self.routes = [self._route(i) for i in range(self.num_particles)]

    # -- routing ---------------------------------------------------------------------------------
    def _route(self, particle: int) -> Route:
        start, stop = particle * self.d, min((particle + 1) * self.d, self.subspace.dim)
        layers = tuple(self.subspace.layers.index(l) for l in self.subspace.layers_touching(start, stop))
        if self.stages is None:
            return Route("model", 0, layers)
        stages = sorted({self.owner[self.names[i]][0] for i in layers})
        s = stages[0]
        module = self.stages[s][1]
        if len(stages) == 1 and affine_parts(module) is not None and \
                all(self.owner[self.names[i]][1] in ("weight", "bias") for i in layers):
            return Route("linear", s, layers)
        return Route("generic", s, layers)

    def route_counts(self) -> Dict[str, int]:
        counts: Dict[str, int] = {}
        for r in self.routes:
            counts[r.kind] = counts.get(r.kind, 0) + 1
        return counts

    # -- prefix ----------------------------------------------------------------------------------
    def _stage_inputs(self, x: torch.Tensor) -> Optional[List[torch.Tensor]]:
        """``[a_0, ..., a_n]`` with the current weights, or None when the stages don't compose to the model."""
        if self.stages is None or self.input_mode == "model":
            return None
        reference = self.model(x) if self.input_mode is None else None
        modes = [self.input_mode] if self.input_mode else (["flatten", "plain"] if x.dim() > 2 else ["plain"])
        for mode in modes:
            h = x.flatten(1) if mode == "flatten" else x
            acts = [h]
            for _, module in self.stages:
                h = module(h)
                acts.append(h)
            if reference is None or (h.shape == reference.shape and torch.equal(h, reference)):
                self.input_mode = mode
                return acts
        self.input_mode = "model"
        return None

    # -- evaluation ------------------------------------------------------------------------------
    @torch.no_grad()
    def losses(self, x, y, loss_fn, offsets: torch.Tensor, theta: torch.Tensor, first: int = 0) -> torch.Tensor:
        """Costs ``[n, V, K]`` for the probe offsets ``[n, V, K, d]`` of particles ``first .. first + n - 1``
        around the current model ``theta`` (the model's parameters must hold ``theta``)."""
        p, v, k, d = offsets.shape
        if not 0 <= first and first + p <= self.num_particles:
            raise ValueError(f"particles {first}..{first + p - 1} outside 0..{self.num_particles - 1}")
        acts = self._stage_inputs(x)
        self._batch, self._device_type = {}, x.device.type  # per-call caches of the linear route
        out = torch.empty(p, v * k, dtype=torch.promote_types(torch.float32, theta.dtype))
        i = 0
        while i < p:
            route = self.routes[first + i]
            route = route if acts is not None else Route("model", 0, route.layers)
            j = i + 1
            limit = self._chunk_particles(route, acts, x, v * k)
            while j < p and j - i < limit and self._same_group(route, first + j, acts):
                j += 1
            deltas = offsets[i:j].reshape(j - i, v * k, d)
            if route.kind == "linear":
                out[i:j] = self._linear(route, acts, y, loss_fn, first + i, deltas)
            else:
                out[i:j] = self._vmapped(route, acts, x, y, loss_fn, first + i, deltas, theta)
            i = j
        self._batch = {}
        return out.reshape(p, v, k)

    def _same_group(self, route: Route, particle: int, acts) -> bool:
        other = self.routes[particle]
        if acts is None:
            return set(other.layers) == set(route.layers)
        return other.kind == route.kind and other.stage == route.stage and \
            (route.kind == "linear" or set(other.layers) == set(route.layers))

    def _chunk_particles(self, route: Route, acts, x, per_particle: int) -> int:
        """Particles per chunk so stacked activations and weight copies stay within budget."""
        batch = x.shape[0]
        if acts is not None and route.kind == "linear" and \
                self._fused_linear_tail(route, affine_parts(self.stages[route.stage][1]), acts) is not None:
            floats = acts[-1].numel() / max(1, batch)  # the kernel keeps activations in cache: only logits
        elif acts is not None:
            floats = sum(a.numel() for a in acts[route.stage + 1:]) / max(1, batch)
            if route.kind == "linear":  # the stacked pre-activations, which an activation may shrink (a LIF readout)
                a_in = acts[route.stage]
                floats += a_in.numel() // a_in.shape[-1] * self.stages[route.stage][1].out_features / max(1, batch)
        else:
            floats = x[0].numel() * 8  # unknown internals: a rough guess
        budget = self.activation_bytes
        if budget is None:
            budget = ACTIVATION_BYTES["cpu" if x.device.type == "cpu" else "cuda"]
        cand = budget / max(1.0, floats * batch * 4)
        if route.kind != "linear":
            touched = sum(self.subspace.layers[l].numel for l in route.layers)
            cand = min(cand, self.param_bytes / (touched * 4))
        return max(1, int(cand // per_particle))

    def _particle_coords(self, first: int, count: int):
        lo = first * self.d
        return lo, lo + count * self.d

    def _center(self, stage: int, acts):
        """``(flat stage input [B', d_in], its transpose, center pre-activation [B', d_out])`` of an affine
        stage, computed once per :meth:`losses` call and shared by all its chunks."""
        found = self._batch.get(stage)
        if found is None:
            module = self.stages[stage][1]
            a_in = acts[stage]
            flat_in = a_in.reshape(-1, a_in.shape[-1])
            pre = nn.functional.linear(flat_in, module.weight, module.bias)  # [B', d_out]
            found = self._batch[stage] = (flat_in, flat_in.T.contiguous(), pre)
        return found

    def _responses(self, stage: int, flat_in, flat_t, lo: int, hi: int, rows: int, d_out: int, dtype):
        """``[hi - lo, B', d_out]``: the response ``a_s M_j^T`` of every coordinate ``j`` in ``[lo, hi)``
        (zero for coordinates of other stages and the padding past the subspace); from the compiled CSR
        kernel on CPU (:func:`zoopt.kernels.fused_tails.csr_responses`) when the map is sparse."""
        kernel = self._csr_kernel(stage, lo, hi, flat_in)
        if kernel is not None:
            key = ("xa", stage)
            if key not in self._batch:
                self._batch[key] = torch.cat([flat_t, flat_t.new_ones(1, rows)]).to(dtype)
            crow, col, vals = self._chunk_csr(stage, lo, hi, d_out, flat_in.shape[1], dtype)
            return kernel.csr_responses(self._batch[key], crow, col, vals, d_out)
        resp = torch.empty(hi - lo, rows, d_out, dtype=dtype, device=flat_in.device)
        written = torch.zeros(hi - lo, dtype=torch.bool, device=flat_in.device)
        for layer in self.subspace.layers:
            a, b = max(lo, layer.coord_start), min(hi, layer.coord_stop)
            if a >= b or self.owner[layer.name][0] != stage:
                continue
            j0, j1 = a - layer.coord_start, b - layer.coord_start
            if self.owner[layer.name][1] == "weight":
                resp[a - lo:b - lo] = self._weight_responses(layer, flat_in, flat_t, j0, j1)
            else:  # bias coordinate c moves output unit c
                units = self.subspace.identity_units(layer, j0, j1)
                resp[a - lo:b - lo] = 0.0
                resp[torch.arange(a - lo, b - lo), :, units] = 1.0
            written[a - lo:b - lo] = True
        if not bool(written.all()):
            resp[~written] = 0.0
        return resp

    def _fused_linear_tail(self, route: Route, post, acts):
        """The readout ``nn.Linear`` when the stages after an affine stage are exactly one plain linear layer,
        the activation is ReLU or none and the compiled kernel (:func:`zoopt.kernels.fused_tails.relu_linear_csr`)
        takes the tensors; else None."""
        if self.compile is True or not (type(post) is nn.ReLU or post is _identity):
            return None
        rest = self.stages[route.stage + 1:]
        if len(rest) != 1 or type(rest[0][1]) is not nn.Linear:
            return None
        readout = rest[0][1]
        a_in = acts[route.stage]
        if a_in.dim() != 2 or a_in.dtype != readout.weight.dtype:
            return None
        try:
            from zoopt.kernels import fused_tails
        except ImportError:
            return None
        return readout if fused_tails.supports(a_in, readout.weight) else None

    def _chunk_csr(self, stage: int, lo: int, hi: int, d_out: int, d_in: int, dtype):
        """The responses of coordinates ``[lo, hi)`` as one CSR map over ``[x | 1]``: row ``(j - lo) d_out + o``
        holds ``M_j[o, :]`` (a bias coordinate reads the ones column ``d_in``; padding rows are empty)."""
        pieces, at = [], lo
        for layer in self.subspace.layers:
            a, b = max(lo, layer.coord_start), min(hi, layer.coord_stop)
            if a >= b or self.owner[layer.name][0] != stage:
                continue
            if a > at:
                pieces.append(_empty_csr((a - at) * d_out, dtype))
            j0, j1 = a - layer.coord_start, b - layer.coord_start
            n = j1 - j0
            if self.owner[layer.name][1] != "weight" or layer.kind == "identity":
                idx = torch.arange(j0, j1)
                if self.owner[layer.name][1] == "weight":  # M_j: the one-hot at flat index j
                    rows, cols = torch.arange(n) * d_out + idx // d_in, idx % d_in
                else:  # bias coordinate c moves output unit c: the ones column
                    rows, cols = torch.arange(n) * d_out + self.subspace.identity_units(layer, j0, j1), \
                        torch.full((n,), d_in)
                counts = torch.zeros(n * d_out, dtype=torch.int64)
                counts[rows] = 1
                pieces.append((torch.cat([counts.new_zeros(1), counts.cumsum(0)]), cols, torch.ones(n, dtype=dtype)))
            elif layer.kind == "sparse":
                crow, col, vals = self.subspace._sparse_csr(layer)
                r0, r1 = j0 * d_out, j1 * d_out
                e0, e1 = int(crow[r0]), int(crow[r1])
                pieces.append((crow[r0:r1 + 1] - e0, col[e0:e1], vals[e0:e1].to(dtype)))
            else:  # dense: every entry of M_j
                pieces.append((torch.arange(n * d_out + 1) * d_in, torch.arange(d_in).repeat(n * d_out),
                               layer.basis[j0:j1].reshape(-1).to(dtype)))
            at = b
        if hi > at:
            pieces.append(_empty_csr((hi - at) * d_out, dtype))
        crows, offset = [pieces[0][0][:1]], 0
        for crow, col, _ in pieces:
            crows.append(crow[1:] + offset)
            offset += col.numel()
        return torch.cat(crows), torch.cat([p[1] for p in pieces]), torch.cat([p[2] for p in pieces])

    def _linear_fused(self, route: Route, acts, y, loss_fn, first: int, deltas, readout, post) -> torch.Tensor:
        """The ``linear`` route through the compiled ReLU-linear kernel, feature-major throughout; the
        responses come from the subspace map in cache (:func:`zoopt.kernels.fused_tails.relu_linear_csr`)."""
        from zoopt.kernels import fused_tails
        n_part, n_cand, d = deltas.shape
        flat_in, flat_t, pre = self._center(route.stage, acts)
        rows, d_out = pre.shape
        key = ("fm", route.stage)
        if key not in self._batch:
            self._batch[key] = (pre.T.contiguous(), torch.cat([flat_t, flat_t.new_ones(1, rows)]))
        pre_t, x_aug = self._batch[key]
        lo, hi = self._particle_coords(first, n_part)
        crow, col, vals = self._chunk_csr(route.stage, lo, hi, d_out, flat_in.shape[1], pre.dtype)
        half = n_cand // 2
        antipodal = n_cand % 2 == 0 and torch.equal(deltas[:, half:], -deltas[:, :half])
        used = (deltas[:, :half] if antipodal else deltas).to(pre.dtype)
        if pre.dtype == torch.float32 and readout.out_features <= fused_tails.CK and \
                _cross_entropy_labels(loss_fn, y, readout.out_features, rows) is not None:
            return fused_tails.relu_linear_csr(pre_t, x_aug, crow, col, vals, used, readout.weight, readout.bias,
                                               antipodal, relu=type(post) is nn.ReLU, labels=y).reshape(n_part, n_cand)
        logits = fused_tails.relu_linear_csr(pre_t, x_aug, crow, col, vals, used, readout.weight, readout.bias,
                                             antipodal, relu=type(post) is nn.ReLU)
        logits = logits.reshape(n_part * n_cand, -1, rows)  # [N, C, B]
        fast = _cross_entropy_means(loss_fn, logits, y, class_dim=1)
        if fast is None:
            fast = self._per_candidate_loss(loss_fn, logits.transpose(1, 2), y)
        return fast.reshape(n_part, n_cand)

    def _csr_kernel(self, stage: int, lo: int, hi: int, flat_in):
        """The compiled kernels' module when coordinates ``[lo, hi)`` of ``stage`` map through sparse or
        identity maps only (dense maps are a GEMM's job) and it takes ``flat_in``; else None."""
        if flat_in.device.type != "cpu" or flat_in.dtype not in (torch.float32, torch.float64):
            return None
        for layer in self.subspace.layers:
            if max(lo, layer.coord_start) < min(hi, layer.coord_stop) and layer.kind == "dense" \
                    and self.owner[layer.name][0] == stage:
                return None
        try:
            from zoopt.kernels import fused_tails
        except ImportError:
            return None
        return fused_tails if fused_tails.available() else None

    def _weight_responses(self, layer, flat_in, flat_t, j0: int, j1: int) -> torch.Tensor:
        """``x M_j^T`` for local coordinates ``[j0, j1)`` (``HybridSubspace.linear_responses``), with the
        sparse map's transposed input shared by all chunks instead of rebuilt per call."""
        if layer.kind != "sparse":
            return self.subspace.linear_responses(layer, flat_in, j0, j1)
        crow, col, vals = self.subspace._sparse_csr(layer)
        d_out, d_in = layer.d_out, layer.d_in
        r0, r1 = j0 * d_out, j1 * d_out
        a, b = int(crow[r0]), int(crow[r1])
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            sub = torch.sparse_csr_tensor(crow[r0:r1 + 1] - a, col[a:b], vals[a:b].to(flat_in.dtype),
                                          size=(r1 - r0, d_in))
            out = torch.sparse.mm(sub, flat_t)  # [n * d_out, B']
        return out.reshape(j1 - j0, d_out, flat_in.shape[0]).transpose(1, 2)

    def _linear(self, route: Route, acts, y, loss_fn, first: int, deltas: torch.Tensor) -> torch.Tensor:
        """The ``linear`` route: responses ``a_s M_j^T`` per coordinate, combined per candidate."""
        n_part, n_cand, d = deltas.shape
        stage = self.stages[route.stage][1]
        post = affine_parts(stage)
        readout = self._fused_linear_tail(route, post, acts)
        if readout is not None:
            return self._linear_fused(route, acts, y, loss_fn, first, deltas, readout, post)
        flat_in, flat_t, pre = self._center(route.stage, acts)
        rows, d_out = pre.shape
        lo, hi = self._particle_coords(first, n_part)
        resp = self._responses(route.stage, flat_in, flat_t, lo, hi, rows, d_out, pre.dtype)
        # orthoplex: vertex v + V/2 is -vertex v, so half the candidates are the other half negated
        half = n_cand // 2
        antipodal = n_cand % 2 == 0 and torch.equal(deltas[:, half:], -deltas[:, :half])
        used = deltas[:, :half] if antipodal else deltas
        change = torch.bmm(used.to(pre.dtype), resp.reshape(n_part, d, rows * d_out))  # [np, m, B' d_out]
        a_in = acts[route.stage]  # [B, *inner, d_in]: candidates stack along B, the inner axes stay
        inner, batch = tuple(a_in.shape[1:-1]), a_in.shape[0]
        tail, pad_to = self._tail(route.stage, post, d_out, n_part, rows, n_cand, antipodal, inner)
        if pad_to > n_part:  # keep one shape per compiled tail
            change = torch.cat([change, change.new_zeros(pad_to - n_part, *change.shape[1:])])
        h = tail(change, pre.reshape(1, 1, rows * d_out))
        h = h.reshape(-1, batch, *h.shape[1:])[:n_part * n_cand]
        return self._per_candidate_loss(loss_fn, h, y).reshape(n_part, n_cand)

    def _tail(self, stage: int, post, d_out: int, n_part: int, rows: int, n_cand: int, antipodal: bool,
              inner: tuple = ()):
        """``(change [np, m, B' d_out], pre) -> output`` of the stages after ``stage`` for all stacked candidates.

        With ``antipodal`` the change holds the first half of each particle's
        candidates and the second half is ``pre - change``. Eager by default:
        the pre-activations are formed in place, an in-place ReLU, a stage
        chain that offers a fused kernel (``zoopt_fused_tail``, the SNN's LIF
        layers) runs it, and a narrow ``nn.Linear`` runs as a GEMM padded to 16
        outputs (several times faster in MKL than 10). ``torch.compile`` only
        with ``compile=True``, or ``"auto"`` on a GPU when the tail runs at
        least ``COMPILE_MIN_ROWS`` rows per step.
        """
        modules = [m for _, m in self.stages[stage + 1:]]
        compile_it = self.compile is True or (
            self.compile == "auto" and self._device_type != "cpu"
            and sum(1 for r in self.routes if r.kind == "linear" and r.stage == stage) * n_cand * rows
            >= COMPILE_MIN_ROWS)
        if not compile_it:
            return self._eager_tail(post, d_out, modules, antipodal, inner), n_part

        def tail(change, pre):
            if antipodal:
                stacked = torch.stack([pre + change, pre - change], dim=1)  # [np, 2, m, B' d_out]
            else:
                stacked = pre + change
            h = post(stacked.reshape(-1, *inner, d_out))
            for module in modules:
                h = module(h)
            return h

        key = (stage, antipodal)
        entry = self._compiled.get(key)
        if entry is False:
            return tail, n_part
        if entry is None:  # the first chunk of a group is its largest: compile for that size
            entry = self._compiled[key] = (torch.compile(tail, dynamic=False), n_part)
        compiled, size = entry
        if n_part > size or 2 * n_part < size:
            return tail, n_part  # a small last chunk runs eager rather than padded

        def guarded(change, pre):
            try:
                return compiled(change, pre)
            except Exception:  # no working compiler here: eager from now on
                self._compiled[key] = False
                return tail(change, pre)
        return guarded, size

    def _eager_tail(self, post, d_out: int, modules, antipodal: bool, inner: tuple = ()):
        fused = None
        if modules and callable(getattr(modules[0], "zoopt_fused_tail", None)):
            fused = modules[0].zoopt_fused_tail(modules[1:])
        steps = [fused] if fused is not None else [_narrow_linear(m) for m in modules]

        def tail(change, pre):
            if antipodal:  # the same roundings as pre + change and pre - change
                stacked = torch.empty(change.shape[0], 2, *change.shape[1:], dtype=change.dtype, device=change.device)
                torch.add(pre, change, out=stacked[:, 0])
                torch.sub(pre, change, out=stacked[:, 1])
            else:
                stacked = change.add_(pre)  # float addition commutes: the bits of pre + change
            if type(post) is nn.ReLU:
                h = stacked.relu_().reshape(-1, *inner, d_out)
            elif post is _identity:
                h = stacked.reshape(-1, *inner, d_out)
            else:
                h = post(stacked.reshape(-1, *inner, d_out))
            for step in steps:
                h = step(h)
            return h
        return tail

    @staticmethod
    def _per_candidate_loss(loss_fn, outputs: torch.Tensor, y) -> torch.Tensor:
        fast = _cross_entropy_means(loss_fn, outputs, y)
        if fast is not None:
            return fast
        try:
            return torch.vmap(lambda o: loss_fn(o, y).reshape(()))(outputs)
        except Exception:  # a loss that vmap cannot trace: loop
            return torch.stack([loss_fn(o, y).reshape(()) for o in outputs])

    def _vmapped(self, route: Route, acts, x, y, loss_fn, first: int, deltas: torch.Tensor,
                 theta: torch.Tensor) -> torch.Tensor:
        """``generic`` and ``model`` routes: vmap with per-candidate copies of the touched tensors only."""
        n_part, n_cand, d = deltas.shape
        lo = first * self.d
        flat = torch.zeros(n_part, n_cand, self.num_particles * self.d, dtype=deltas.dtype)
        for q in range(n_part):
            flat[q, :, lo + q * self.d: lo + (q + 1) * self.d] = deltas[q]
        z = flat.reshape(n_part * n_cand, -1)[:, :self.subspace.dim]
        batched = {}
        for li in route.layers:
            layer = self.subspace.layers[li]
            delta = self.subspace.layer_param_delta(layer, z[:, layer.coord_start:layer.coord_stop])
            base = theta[layer.param_start:layer.param_start + layer.numel]
            batched[layer.name] = (base[None] + delta).reshape(-1, *layer.shape).to(self.params[layer.name].dtype)
        if route.kind == "model":
            def one(params):
                return loss_fn(functional_call(self.model, params, (x,), strict=False), y).reshape(())
            losses = torch.vmap(one)(batched)
        else:
            stage_params = {}
            for name, value in batched.items():
                k, local = self.owner[name]
                stage_params.setdefault(k, {})[local] = value
            a_in = acts[route.stage]

            def one(params):
                h = a_in
                for k in range(route.stage, len(self.stages)):
                    module = self.stages[k][1]
                    h = functional_call(module, params[k], (h,), strict=False) if k in params else module(h)
                return loss_fn(h, y).reshape(())
            losses = torch.vmap(one)(stage_params)
        return losses.reshape(n_part, n_cand)


__all__ = ["BlockEvaluator", "naive_losses", "model_stages", "affine_parts", "Route"]
