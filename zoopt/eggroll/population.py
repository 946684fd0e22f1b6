"""One population forward pass: which members run, their noise key, and the factors it regenerated.

Rows are *member-major*: a tensor's leading dimension is ``len(members) * k``,
the ``k`` rows of member 0 first. Population-aware layers view it as
``[G, g * k, ...]`` where members are grouped ``g`` at a time: when the slice
is made of whole antithetic pairs (the usual case) ``g = 2`` and one factor
draw serves both members of a pair; otherwise ``g = 1``.

An input is *shared* when every member sees the same rows (a supervised
minibatch): the first layer then runs its base GEMM once and produces
member-major output from it. Views of a shared tensor (``x[:, t]`` in a
per-time-step loop, a transpose) are shared too: sharing follows the storage.
"""
from __future__ import annotations

import math

import torch

from zoopt.kernels import antithetic_pairs, lowrank_factors, normal


class Population:
    """Context of one population forward (see module doc). Built per call: factors are
    regenerated from the key every time, cached only for the duration of the call
    (a recurrent weight used at every time step is drawn once)."""

    def __init__(self, members, *, seed: int, epoch: int, sigma: float, rank: int, device=None,
                 shared=None):
        members = torch.as_tensor(members, dtype=torch.int64).reshape(-1)
        if members.numel() == 0:
            raise ValueError("members must not be empty")
        self.members = members
        self.n = members.numel()
        self.seed, self.epoch, self.sigma, self.rank = int(seed), int(epoch), float(sigma), int(rank)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        pairs, signs = antithetic_pairs(members)
        even = members[0::2]
        paired = (self.n % 2 == 0 and bool((even % 2 == 0).all()) and bool((members[1::2] == even + 1).all()))
        self.group = 2 if paired else 1
        self.group_pairs = pairs[0::2] if paired else pairs
        signs = signs.view(-1, self.group)
        self.lowrank_scale = (signs * (self.sigma / math.sqrt(self.rank))).to(self.device)  # [G, g]
        self.vector_scale = (signs * self.sigma).to(self.device)                           # [G, g]
        self.signs = signs.reshape(-1)
        self._cache: dict = {}
        self._shared_storages: set = set()
        self.shared_rows = None
        self.expanded = False
        if shared is not None:
            self.mark_shared(shared)

    @property
    def groups(self) -> int:
        return self.n // self.group

    # -- shared inputs ------------------------------------------------------------
    def mark_shared(self, x) -> None:
        """Declare ``x`` (and views of it) as rows every member sees."""
        if isinstance(x, torch.Tensor) and x.dim() >= 1:
            self._shared_storages.add(x.untyped_storage().data_ptr())
            if self.shared_rows is None:
                self.shared_rows = x.shape[0]

    def is_shared(self, x: torch.Tensor) -> bool:
        if x.untyped_storage().data_ptr() in self._shared_storages:
            return True   # the shared batch or a view of it (population outputs are fresh tensors)
        # preprocessing before the first population-aware layer (x / 255, a flatten) keeps the row count
        return (not self.expanded and self.shared_rows is not None and x.dim() >= 1
                and x.shape[0] == self.shared_rows)

    def rows_per_member(self, x: torch.Tensor, what: str) -> int:
        lead = x.shape[0]
        if lead % self.n:
            raise ValueError(f"{what}: leading dimension {lead} is not a multiple of the {self.n} members "
                             f"(rows must be member-major: [N, T, ...] or [N*T, ...])")
        return lead // self.n

    # -- noise ----------------------------------------------------------------------
    def factors(self, tensor_id: int, m: int, n: int, dtype=torch.float32):
        """``A [G, m, r]``, ``B [G, n, r]`` for this slice's groups (cached for the call)."""
        key = ("lr", tensor_id)
        if key not in self._cache:
            self._cache[key] = lowrank_factors(self.seed, tensor_id, self.epoch, self.group_pairs, m, n,
                                               self.rank, device=self.device, dtype=dtype)
        return self._cache[key]

    def pair_noise(self, tensor_id: int, numel: int, dtype=torch.float32) -> torch.Tensor:
        """Unit full-rank noise ``[G, numel]`` of this slice's groups (no sign, no sigma)."""
        key = ("p", tensor_id)
        if key not in self._cache:
            self._cache[key] = normal(self.seed, tensor_id, self.epoch, self.group_pairs, numel,
                                          device=self.device, dtype=dtype)
        return self._cache[key]

    def vector_noise(self, tensor_id: int, shape, dtype=torch.float32) -> torch.Tensor:
        """Per-member perturbation ``s * sigma * eps`` of a vector parameter, ``[N, *shape]``."""
        key = ("v", tensor_id)
        if key not in self._cache:
            eps = self.pair_noise(tensor_id, math.prod(shape), dtype)
            delta = eps[:, None, :] * self.vector_scale[:, :, None].to(dtype)
            self._cache[key] = delta.reshape(self.n, *shape)
        return self._cache[key]


class PopulationHolder:
    """What swapped layers read: the active :class:`Population`, or None for the plain forward."""

    def __init__(self):
        self.current: Population | None = None

    def activate(self, population: Population | None):
        return _Activation(self, population)


class _Activation:
    def __init__(self, holder: PopulationHolder, population):
        self.holder, self.population, self.previous = holder, population, None

    def __enter__(self):
        self.previous, self.holder.current = self.holder.current, self.population
        return self.population

    def __exit__(self, *exc):
        self.holder.current = self.previous
        return False
