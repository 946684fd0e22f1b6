"""How a generation's members are cut into ranges for Ray actors.

The queue is planned by factoring self-scheduling: each round gives every
actor one range of half of what remains split evenly, down to a tail range of
``1/ranges_per_actor`` of an actor's share. Ranges are kept large on purpose:
a batched problem (GymProblem steps a range's episodes in one vector env with
one policy forward per step) pays a fixed cost per step of each range, so
splitting a generation finely makes every member dearer, not just adds round
trips. The default (2 ranges per actor) gives 2 actors four ranges of N/4;
``ranges_per_actor=8`` gives N/4, N/4, N/8, N/8, then N/16 ranges, for work
whose cost varies a lot per member. One actor gets the whole generation as
one range (the same batches as in-process evaluation).

A block is ``(start, stop)`` for a contiguous range of members, else an index
array (members given out of order).
"""
from __future__ import annotations

import math

import numpy as np
import torch


def factoring_sizes(n: int, actors: int, ranges_per_actor: int = 2, align: int = 2) -> list[int]:
    """Range sizes for ``n`` members on ``actors`` actors by factoring self-scheduling.

    Each round deals one range per actor of half the remaining members split
    evenly, never below the tail size ``n / (actors * ranges_per_actor)``;
    sizes are multiples of ``align`` (the last may be shorter). One actor gets
    one range of everything.
    """
    if n <= 0:
        return []
    if actors <= 1:
        return [n]
    tail = math.ceil(n / (actors * ranges_per_actor))
    sizes, remaining = [], n
    while remaining > 0:
        size = max(tail, math.ceil(remaining / (2 * actors)))
        size = math.ceil(size / align) * align
        for _ in range(actors):
            if remaining <= 0:
                break
            sizes.append(min(size, remaining))
            remaining -= sizes[-1]
    return sizes


def range_sizes(problem, n: int, actors: int, chunk: int | None, ranges_per_actor: int) -> list[int]:
    """A generation's range sizes in queue order: ``chunk`` members each when given, else the factoring
    plan aligned to the problem's own ``chunk`` (batched forwards then see the in-process batches) or
    to 2 (antithetic pairs stay together)."""
    if chunk:
        return [chunk] * math.ceil(n / chunk)
    align = getattr(problem, "chunk", None)
    align = align if isinstance(align, int) and align > 0 else 2
    return factoring_sizes(n, actors, ranges_per_actor, align)


def blocks_of(idx: torch.Tensor, sizes) -> list:
    """Consecutive slices of ``idx`` with the given sizes: ``(start, stop)`` when ``idx`` is a contiguous
    range, else index arrays."""
    n = idx.numel()
    contiguous = n > 0 and bool(torch.equal(idx, torch.arange(int(idx[0]), int(idx[0]) + n)))
    blocks, s = [], 0
    for size in sizes:
        e = min(s + size, n)
        blocks.append((int(idx[0]) + s, int(idx[0]) + e) if contiguous else idx[s:e].numpy())
        s = e
    return blocks


def block_size(block) -> int:
    return block[1] - block[0] if isinstance(block, tuple) else len(block)


def members_of(block) -> torch.Tensor:
    """A block's members as an int64 tensor."""
    if isinstance(block, tuple):
        return torch.arange(block[0], block[1])
    return torch.as_tensor(block, dtype=torch.int64)


def describe(block) -> str:
    """``[start, stop)`` for a range, the first indices for an index array."""
    if isinstance(block, tuple):
        return f"[{block[0]}, {block[1]})"
    shown = ", ".join(str(int(m)) for m in np.asarray(block)[:4])
    return f"[{shown}{', ...' if len(block) > 4 else ''}] ({len(block)} members)"
