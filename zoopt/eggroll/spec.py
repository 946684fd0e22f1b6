"""LowRankSpec: an EGGROLL generation as a perturbation spec.

The flat center is cut into blocks. A ``"lowrank"`` block of shape
``(m, *rest)`` is perturbed as the matrix ``m x prod(rest)`` (a convolution
kernel seen as a matrix) by ``s * sigma * A B^T / sqrt(r)``, a ``"full"`` block
by ``s * sigma * eps``, a ``"frozen"`` block not at all. ``points(members)`` materializes full member
vectors: the generic fallback for problems that only take candidate vectors.
Population-aware layers never call it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Tuple

import torch

from zoopt.spec import PerturbationSpec, member_index

from zoopt.kernels import antithetic_pairs, lowrank_factors, normal

from .noise import MODES, noise_epoch


@dataclass(frozen=True)
class Block:
    """One tensor inside the flat vector."""

    name: str
    shape: Tuple[int, ...]
    offset: int
    tensor_id: int
    mode: str  # "lowrank" (2-D or more: the matrix view), "full" or "frozen"

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def matrix(self) -> Tuple[int, int]:
        """``(m, n)``: the block seen as a matrix, first dimension by the rest."""
        return self.shape[0], self.numel // self.shape[0]


def make_blocks(shapes, dim: int, tensor_ids=None, vectors: str = "full", modes=None, names=None) -> tuple:
    """Blocks for ``shapes`` (2-D shapes low-rank, others ``vectors``, unless ``modes`` names each
    block's mode); their sizes must sum to ``dim``."""
    if vectors not in ("full", "frozen"):
        raise ValueError(f"vectors must be 'full' or 'frozen', got {vectors!r}")
    blocks, offset = [], 0
    for i, shape in enumerate(shapes):
        shape = tuple(int(s) for s in (shape if isinstance(shape, (tuple, list, torch.Size)) else (shape,)))
        if not shape or any(s < 1 for s in shape):
            raise ValueError(f"shapes[{i}] must be a tuple of positive ints, got {shape}")
        mode = modes[i] if modes is not None else ("lowrank" if len(shape) == 2 else vectors)
        if mode not in MODES or (mode == "lowrank" and len(shape) < 2):
            raise ValueError(f"modes[{i}] must be one of {MODES} ('lowrank' for 2-D or more), got {mode!r}")
        tid = tensor_ids[i] if tensor_ids is not None else i + 1
        blocks.append(Block(names[i] if names is not None else f"block{i}", shape, offset, int(tid), mode))
        offset += math.prod(shape)
    if offset != dim:
        raise ValueError(f"shapes cover {offset} entries but x0 has {dim}")
    return tuple(blocks)


@dataclass
class LowRankSpec(PerturbationSpec):
    """Antithetic low-rank perturbations of ``center`` (see module doc)."""

    sigma: float = 0.05
    rank: int = 1
    noise_reuse: int = 1
    blocks: tuple = ()

    kind = "lowrank"

    @property
    def epoch(self) -> int:
        return noise_epoch(self.generation, self.noise_reuse)

    def perturbation(self, members=None) -> torch.Tensor:
        """``[len(members), dim]``: each member's ``x_i - center``."""
        idx = member_index(members, self.popsize)
        pairs, signs = antithetic_pairs(idx)
        device = self.center.device
        out = torch.zeros(idx.numel(), self.dim, device=device)
        scale = (signs * self.sigma).to(device)
        for b in self.blocks:
            if b.mode == MODES[2] or b.mode not in MODES:
                continue
            if b.mode == "lowrank":
                m, n = b.matrix
                A, B = lowrank_factors(self.seed, b.tensor_id, self.epoch, pairs, m, n, self.rank, device=device)
                delta = torch.bmm(A, B.transpose(1, 2)).reshape(idx.numel(), -1) / math.sqrt(self.rank)
            else:
                delta = normal(self.seed, b.tensor_id, self.epoch, pairs, b.numel, device=device)
            out[:, b.offset:b.offset + b.numel] = delta * scale[:, None]
        return out

    def points(self, members=None) -> torch.Tensor:
        return self.center[None, :] + self.perturbation(members).to(self.center.dtype)
