"""Fan-out multipliers ρ and the dedicated generator that reassigns them to ranks.

ρ_r = 1 + α·(r − (N−1)/2)/δ with δ = max((N−1)/2, 0.5): symmetric, arithmetic, mean exactly 1,
values in [1−α, 1+α]. Rank r uses ρ[π(r)]; π starts as the identity and is redrawn at every
auto-LR sync from a generator of its own (never the global RNG), so every rank draws the same π
whatever else consumes random numbers. :func:`check_same_on_all_ranks` verifies that at each sync.
"""
from __future__ import annotations

import torch


def spread_multipliers(n: int, spread: float) -> torch.Tensor:
    """The N multipliers ρ (float64) for spread ratio α = ``spread`` (0 ≤ α < 1)."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"number of replicas must be a positive integer, got {n!r}")
    if not 0.0 <= float(spread) < 1.0:
        raise ValueError(f"spread must be in [0, 1) so every value stays positive, got {spread!r}")
    center = (n - 1) / 2
    delta = max(center, 0.5)
    r = torch.arange(n, dtype=torch.float64)
    return 1.0 + float(spread) * (r - center) / delta


class PermutationStream:
    """Seeded CPU ``torch.Generator`` drawing one permutation of ``n`` per explored value."""

    def __init__(self, n: int, seed: int):
        if not isinstance(seed, int):
            raise TypeError(f"perm_seed must be an int, got {type(seed).__name__}")
        self.n = n
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(seed)
        self.draws = 0

    def draw(self, count: int) -> torch.Tensor:
        """``[count, n]`` int64 permutations (row k for the k-th group / hyperparameter)."""
        self.draws += 1
        return torch.stack([torch.randperm(self.n, generator=self.generator) for _ in range(count)])

    def state_dict(self) -> dict:
        return {"n": self.n, "rng": self.generator.get_state(), "draws": self.draws}

    def load_state_dict(self, state: dict) -> None:
        if state["n"] != self.n:
            raise ValueError(f"permutation state is for {state['n']} replicas, this run has {self.n}")
        self.generator.set_state(state["rng"])
        self.draws = state["draws"]


class PermutationMismatchError(RuntimeError):
    """Ranks drew different multiplier permutations (their generators are out of step)."""


def check_same_on_all_ranks(perms: torch.Tensor, what: str, group=None, device=None) -> None:
    """All-gather ``perms`` and raise :class:`PermutationMismatchError` unless every rank holds the same."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return
    local = perms.to(device=device, dtype=torch.int64).contiguous()
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, local, group=group)
    bad = [r for r, p in enumerate(gathered) if not torch.equal(p, gathered[0])]
    if bad:
        raise PermutationMismatchError(
            f"{what}: ranks {bad} drew permutations {[gathered[r].tolist() for r in bad]} but rank 0 drew "
            f"{gathered[0].tolist()}; every rank must build the scheduler with the same perm_seed and "
            f"resume from the same checkpoint step")
