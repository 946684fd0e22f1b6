"""Hybrid random subspace: ``theta(z) = theta_base + Pi z`` with a fixed per-layer map.

Per weight tensor (>= 2 dims, trailing dims folded into ``d_in``) with
``r_eff = min(rank, d_out, d_in)`` there are ``d_out r_eff + r_eff d_in``
coordinates mapped by a dense Gaussian matrix whose columns are
QR-orthonormalized when the matrix is tall (scaled by ``1/sqrt(n_coords)``
when wide). A layer whose dense map would exceed ``sparse_threshold_bytes``
(1 GB, as in the reference) uses a sparse Johnson-Lindenstrauss map instead:
``nnz = max(1, int(sqrt(n_params)))`` random rows per column with random signs,
scaled by ``1/sqrt(nnz)``. Biases and other 1-D parameters keep one coordinate
per element (identity). ``max_subspace_dim`` shrinks the projected layers'
coordinate counts proportionally (1-D parameters stay whole).

The maps are drawn from ``seed`` (default 0, independent of the run seed, as
in the paper runs) and never change, so *absorb* (``theta_base += Pi z``,
``z = 0``) leaves the model unchanged.

Each column ``j`` of a weight map, reshaped to the weight's shape, is a basis
matrix ``M_j``; :meth:`HybridSubspace.linear_responses` computes ``x M_j^T``
for a range of coordinates without building any per-candidate weight.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

SPARSE_THRESHOLD_BYTES = 1_000_000_000


@dataclass
class LayerMap:
    """How one parameter tensor is reached from the coordinates ``z[coord_start : coord_start + n_coords]``."""

    name: str
    shape: Tuple[int, ...]
    param_start: int          # offset of this tensor in the flat parameter vector
    coord_start: int
    n_coords: int
    kind: str                 # "identity", "dense" or "sparse"
    basis: Optional[torch.Tensor] = None    # dense: [n_coords, numel], row j = column j of Pi
    rows: Optional[torch.Tensor] = None     # sparse: [n_coords, nnz] flat indices into the tensor
    values: Optional[torch.Tensor] = None   # sparse: [n_coords, nnz]
    _csr: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def d_out(self) -> int:
        return self.shape[0]

    @property
    def d_in(self) -> int:
        return self.numel // self.shape[0]

    @property
    def coord_stop(self) -> int:
        return self.coord_start + self.n_coords


def _layer_seed(seed: int, index: int) -> int:
    return (int(seed) * 1_000_003 + 7919 * (index + 1)) % (2 ** 63)


def _weight_coords(shape, rank: int) -> int:
    d_out, d_in = shape[0], math.prod(shape[1:])
    r = min(rank, d_out, d_in)
    return d_out * r + r * d_in


class HybridSubspace:
    """The fixed map ``Pi`` from subspace coordinates ``z [dim]`` to flat parameters ``[num_params]``.

    ``layout`` is a sequence of ``(name, shape)`` in flat-parameter order.
    ``rank=None`` is full-space mode: every tensor is identity-mapped.
    """

    def __init__(self, layout: Sequence[Tuple[str, Tuple[int, ...]]], rank: int = 4,
                 max_subspace_dim: Optional[int] = None, seed: int = 0,
                 sparse_threshold_bytes: int = SPARSE_THRESHOLD_BYTES, dtype=torch.float32):
        if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
            raise ValueError(f"rank must be None (full space) or an int >= 1, got {rank!r}")
        if max_subspace_dim is not None and (not isinstance(max_subspace_dim, int) or max_subspace_dim < 1):
            raise ValueError(f"max_subspace_dim must be None or an int >= 1, got {max_subspace_dim!r}")
        layout = [(str(n), tuple(int(s) for s in shape)) for n, shape in layout]
        if not layout:
            raise ValueError("layout must name at least one parameter")
        self.rank, self.seed, self.dtype = rank, int(seed), dtype
        counts = [(_weight_coords(s, rank) if len(s) >= 2 and rank is not None else math.prod(s)) for _, s in layout]
        counts = self._cap(layout, counts, max_subspace_dim)
        self.layers: List[LayerMap] = []
        param_at = coord_at = 0
        for index, ((name, shape), n) in enumerate(zip(layout, counts)):
            numel = math.prod(shape)
            layer = LayerMap(name, shape, param_at, coord_at, n, "identity")
            if len(shape) >= 2 and rank is not None:
                gen = torch.Generator().manual_seed(_layer_seed(seed, index))
                if numel * n * 4 > sparse_threshold_bytes:
                    self._init_sparse(layer, gen)
                else:
                    self._init_dense(layer, gen)
            self.layers.append(layer)
            param_at += numel
            coord_at += n
        self.num_params, self.dim = param_at, coord_at
        self._coord_layer = torch.repeat_interleave(torch.arange(len(self.layers)),
                                                    torch.tensor([l.n_coords for l in self.layers]))

    @classmethod
    def from_module(cls, model: torch.nn.Module, **kwargs) -> "HybridSubspace":
        """Layout of a model's trainable parameters in ``named_parameters()`` order."""
        layout = [(n, tuple(p.shape)) for n, p in model.named_parameters() if p.requires_grad]
        return cls(layout, **kwargs)

    @staticmethod
    def _cap(layout, counts, cap):
        if cap is None or sum(counts) <= cap:
            return counts
        fixed = sum(c for (_, s), c in zip(layout, counts) if len(s) < 2)
        weights = [i for i, (_, s) in enumerate(layout) if len(s) >= 2]
        budget = max(cap - fixed, len(weights))
        total = sum(counts[i] for i in weights)
        out = list(counts)
        for i in weights:
            out[i] = max(1, round(counts[i] * budget / total))
        return out

    def _init_dense(self, layer: LayerMap, gen: torch.Generator) -> None:
        layer.kind = "dense"
        gauss = torch.randn(layer.numel, layer.n_coords, generator=gen, dtype=torch.float32)
        if self.dtype == torch.float64:
            gauss = gauss.double()
        if layer.numel >= layer.n_coords:
            basis, _ = torch.linalg.qr(gauss)  # orthonormal columns
        else:
            basis = gauss / math.sqrt(layer.n_coords)
        layer.basis = basis.T.contiguous().to(self.dtype)

    def _init_sparse(self, layer: LayerMap, gen: torch.Generator) -> None:
        layer.kind = "sparse"
        nnz = max(1, int(math.sqrt(layer.numel)))
        layer.rows = torch.randint(0, layer.numel, (layer.n_coords, nnz), generator=gen)
        signs = torch.randint(0, 2, (layer.n_coords, nnz), generator=gen).to(torch.float32) * 2 - 1
        layer.values = (signs / math.sqrt(nnz)).to(self.dtype)

    # -- basic maps ----------------------------------------------------------------------------
    def layer_of(self, coord: int) -> int:
        return int(self._coord_layer[coord])

    def layer_param_delta(self, layer: LayerMap, coeffs: torch.Tensor) -> torch.Tensor:
        """``Pi_layer c`` for coefficient rows ``[N, n_coords]`` -> ``[N, numel]``."""
        coeffs = coeffs.to(self.dtype)
        if layer.kind == "identity":
            return coeffs.clone()
        if layer.kind == "dense":
            return coeffs @ layer.basis
        out = torch.zeros(coeffs.shape[0], layer.numel, dtype=coeffs.dtype, device=coeffs.device)
        contrib = coeffs[:, :, None] * layer.values[None].to(coeffs.device)
        out.index_add_(1, layer.rows.reshape(-1).to(coeffs.device), contrib.reshape(coeffs.shape[0], -1))
        return out

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """``Pi z``: ``[dim]`` -> ``[num_params]`` (also ``[N, dim]`` -> ``[N, num_params]``)."""
        single = z.dim() == 1
        zz = z[None] if single else z
        if zz.shape[1] < self.dim:
            raise ValueError(f"z must have at least {self.dim} coordinates, got {zz.shape[1]}")
        parts = [self.layer_param_delta(l, zz[:, l.coord_start:l.coord_stop]) for l in self.layers]
        out = torch.cat(parts, dim=1)
        return out[0] if single else out

    def block_delta(self, start: int, deltas: torch.Tensor) -> torch.Tensor:
        """``Pi[:, start:start+d] delta`` for candidate offsets ``[N, d]`` -> ``[N, num_params]``.

        Coordinates past ``dim`` (padding) are ignored.
        """
        n, d = deltas.shape
        z = torch.zeros(n, self.dim, dtype=deltas.dtype, device=deltas.device)
        stop = min(start + d, self.dim)
        z[:, start:stop] = deltas[:, :stop - start]
        out = torch.zeros(n, self.num_params, dtype=self.dtype, device=deltas.device)
        for layer in self.layers_touching(start, stop):
            lo, hi = layer.param_start, layer.param_start + layer.numel
            out[:, lo:hi] = self.layer_param_delta(layer, z[:, layer.coord_start:layer.coord_stop])
        return out

    def layers_touching(self, start: int, stop: int) -> List[LayerMap]:
        """The layers whose coordinates intersect ``[start, stop)``."""
        return [l for l in self.layers if l.coord_start < stop and start < l.coord_stop]

    # -- structure-aware evaluation --------------------------------------------------------------
    def _sparse_csr(self, layer: LayerMap):
        """CSR of ``M_j`` stacked over j: row ``j * d_out + o``, column ``i``, duplicates summed."""
        if layer._csr is None:
            d_out, d_in = layer.d_out, layer.d_in
            j = torch.arange(layer.n_coords)[:, None].expand_as(layer.rows)
            o, i = layer.rows // d_in, layer.rows % d_in
            key = ((j * d_out + o) * d_in + i).reshape(-1)
            uniq, inverse = torch.unique(key, return_inverse=True)  # sorted: rows, then columns
            vals = torch.zeros(uniq.numel(), dtype=layer.values.dtype).index_add_(0, inverse, layer.values.reshape(-1))
            row = uniq // d_in
            crow = torch.zeros(layer.n_coords * d_out + 1, dtype=torch.int64)
            crow[1:] = torch.cumsum(torch.bincount(row, minlength=layer.n_coords * d_out), 0)
            layer._csr = (crow, uniq % d_in, vals)
        return layer._csr

    @staticmethod
    def identity_units(layer: LayerMap, lo: int, hi: int) -> torch.Tensor:
        """Flat indices moved by local coordinates ``[lo, hi)`` of an identity-mapped tensor."""
        if layer.kind != "identity":
            raise ValueError(f"{layer.name} is not identity-mapped")
        return torch.arange(lo, hi)

    def linear_responses(self, layer: LayerMap, x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        """``x M_j^T`` for local coordinates ``j`` in ``[lo, hi)`` of a 2-D weight layer: ``[hi-lo, B, d_out]``.

        ``x`` is the layer input ``[B, d_in]``; ``M_j`` is column ``j`` of the
        layer's map reshaped to ``[d_out, d_in]``.
        """
        if len(layer.shape) < 2:
            raise ValueError(f"{layer.name} is not a weight matrix")
        n, d_out, d_in = hi - lo, layer.d_out, layer.d_in
        if layer.kind == "identity":  # M_j is the one-hot at flat index j = o * d_in + i
            idx = torch.arange(lo, hi)
            out = torch.zeros(n, x.shape[0], d_out, dtype=x.dtype, device=x.device)
            out[torch.arange(n), :, idx // d_in] = x[:, idx % d_in].T
            return out
        if layer.kind == "dense":
            mats = layer.basis[lo:hi].reshape(n * d_out, d_in).to(x.dtype)
            return (x @ mats.T).reshape(x.shape[0], n, d_out).permute(1, 0, 2)
        crow, col, vals = self._sparse_csr(layer)
        r0, r1 = lo * d_out, hi * d_out
        a, b = int(crow[r0]), int(crow[r1])
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            sub = torch.sparse_csr_tensor(crow[r0:r1 + 1] - a, col[a:b], vals[a:b].to(x.dtype), size=(r1 - r0, d_in))
            out = torch.sparse.mm(sub, x.T.contiguous())  # [n * d_out, B]
        return out.reshape(n, d_out, x.shape[0]).transpose(1, 2)


__all__ = ["HybridSubspace", "LayerMap", "SPARSE_THRESHOLD_BYTES"]
