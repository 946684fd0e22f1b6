"""The Ray actor behind ``RayEvaluator``: one problem copy, evaluated slice by slice.

Everything a task receives is small: the problem and the generation's
payload (the spec without its center, plus the center) arrive as object-store
references wrapped in a list, so Ray hands over the reference and the actor
fetches it only when its key changes — once per problem, once per generation.
"""
from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import torch


def members_of(block) -> torch.Tensor:
    """A task's members: ``(start, stop)`` for a contiguous range, else an index array."""
    if isinstance(block, tuple):
        return torch.arange(block[0], block[1])
    return torch.as_tensor(block, dtype=torch.int64)


class EvaluationActor:
    """Holds one problem copy; torch runs with ``threads`` threads so actors don't oversubscribe cores."""

    def __init__(self, threads: int):
        torch.set_num_threads(int(threads))
        self.problem = None
        self.problem_key = None
        self.payload_key = None
        self.spec = None

    def cpu_seconds(self) -> float:
        """CPU time this actor process has used (for benchmarks that must see through contention)."""
        import time

        return time.process_time()

    def load(self, key: int, problem_box: list) -> int:
        """Take a new problem (fetched from the object store); returns this process's pid."""
        import ray

        self.problem = ray.get(problem_box[0])
        self.problem_key = key
        return os.getpid()

    def _spec(self, key: int, payload_box: list):
        if key != self.payload_key:
            import ray

            small_spec, center = ray.get(payload_box[0])
            device = getattr(self.problem, "device", None) or "cpu"
            self.spec = small_spec.with_center(torch.tensor(center, device=device))
            self.payload_key = key
        return self.spec

    def evaluate(self, problem_key: int, payload_key: int, payload_box: list, block):
        """Fitness of the members in ``block`` as float32; with a problem that keeps per-member
        statistics (``stats()``, e.g. GymProblem), ``(fitness, those members' statistics)``."""
        if problem_key != self.problem_key:
            raise RuntimeError(f"actor holds problem {self.problem_key}, task wants {problem_key}")
        spec = self._spec(payload_key, payload_box)
        members = members_of(block)
        fitness = self.problem.evaluate(spec, members)
        fitness = torch.as_tensor(fitness, dtype=torch.float32).detach().cpu().reshape(-1).numpy()
        if not callable(getattr(self.problem, "stats", None)):
            return fitness
        stats = self.problem.stats()
        if isinstance(getattr(stats, "members", None), dict):  # only this block's members travel back
            wanted = set(members.tolist())
            stats = replace(stats, members={m: v for m, v in stats.members.items() if m in wanted})
        return fitness, stats

    def noise_sum(self, payload_key: int, payload_box: list, block, weights: np.ndarray) -> np.ndarray:
        """``sum_i w_i s_i eps_i`` over the members in ``block`` for a Gaussian spec.

        Antithetic ranges that start on an even member fold each pair into
        ``(w_2k - w_2k+1) eps_k``: one noise row per pair, the same arithmetic
        as ``OpenAIES.gradient`` on a chunk.
        """
        spec = self._spec(payload_key, payload_box)
        members = members_of(block)
        w = torch.tensor(weights, dtype=torch.float32)
        paired = (getattr(spec, "antithetic", False) and isinstance(block, tuple)
                  and block[0] % 2 == 0 and (block[1] - block[0]) % 2 == 0)
        if paired:
            pair_w = w[0::2] - w[1::2]
            eps = spec.noise(members[0::2])  # even members carry sign +1
            return (pair_w.to(eps.dtype) @ eps).cpu().numpy()
        eps = spec.noise(members)
        return (w.to(eps.dtype) @ eps).cpu().numpy()
