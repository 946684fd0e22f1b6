"""Converge step and small collectives over ``torch.distributed`` (gloo on CPU, NCCL on GPU).

Launch with ``torchrun --nproc_per_node N script.py`` and call
``torch.distributed.init_process_group("gloo" | "nccl")`` before building the scheduler.
With NCCL every tensor handed to a collective must live on the rank's CUDA device; the helpers
take a ``device`` for that (the parameters' device by default).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors


def is_distributed(group=None) -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def rank_and_world(group=None) -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group)
    return 0, 1


def collective_device(group=None, fallback=None) -> torch.device:
    """CUDA device of this rank for NCCL, else CPU (gloo)."""
    if is_distributed(group) and dist.get_backend(group) == "nccl":
        return fallback if fallback is not None and fallback.type == "cuda" else torch.device(
            "cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_rows(x: torch.Tensor, group=None, device=None) -> torch.Tensor:
    """Stack every rank's ``x`` (same shape on all ranks) into ``[world, *x.shape]`` on CPU."""
    if not is_distributed(group):
        return x.detach().cpu().unsqueeze(0)
    local = x.detach().to(device or collective_device(group)).contiguous()
    out = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, local, group=group)
    return torch.stack(out).cpu()


def _buckets(params):
    by_key = {}
    for p in params:
        by_key.setdefault((p.device, p.dtype), []).append(p)
    return by_key.values()


@torch.no_grad()
def average_parameters(params, group=None, weight: float = 1.0) -> float:
    """θ ← Σ_r w_r θ_r / Σ_r w_r over ranks, in place (one flat all-reduce per device/dtype).

    ``weight`` is this rank's weight: 1 for a healthy replica, 0 for one to leave out (its
    parameters are replaced by the others' average). Returns the total weight; raises
    FloatingPointError if it is 0 (no healthy replica left).
    """
    params = [p for p in params]
    if not is_distributed(group):
        return 1.0
    device = collective_device(group, params[0].device if params else None)
    total = torch.tensor([float(weight)], dtype=torch.float64, device=device)
    dist.all_reduce(total, group=group)
    total = float(total.item())
    if total <= 0:
        raise FloatingPointError("every replica's parameters or loss are non-finite: nothing left to average")
    for bucket in _buckets(params):
        flat = _flatten_dense_tensors([p.data for p in bucket])
        if weight == 0:
            flat.zero_()
        elif weight != 1:
            flat.mul_(weight)
        moved = flat.to(device)
        dist.all_reduce(moved, group=group)
        moved.div_(total)
        flat = moved.to(flat.device)
        for p, avg in zip(bucket, _unflatten_dense_tensors(flat, [p.data for p in bucket])):
            p.data.copy_(avg)
    return total


def all_reduce_gradients(params, group=None) -> None:
    """Average ``.grad`` over ranks in place (what DDP does; for tests and plain loops)."""
    if not is_distributed(group):
        return
    grads = [p.grad for p in params if p.grad is not None]
    world = dist.get_world_size(group)
    for bucket in _buckets(grads):
        flat = _flatten_dense_tensors(bucket)
        dist.all_reduce(flat, group=group)
        flat.div_(world)
        for g, avg in zip(bucket, _unflatten_dense_tensors(flat, bucket)):
            g.copy_(avg)
