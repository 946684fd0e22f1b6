"""The Ray actor behind ``RayEvaluator``: one problem copy, evaluated slice by slice.

Everything a task receives is small: the problem arrives as an object-store
reference wrapped in a list (fetched once per problem). The generation's
payload (the spec without its center, plus the center) comes with the first
task an actor gets in that generation (a direct reference, which Ray resolves
before the task runs); later tasks carry the boxed reference, which the actor
fetches only if it lacks that payload.
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

    def pid(self) -> int:
        """This actor's process id (benchmarks account its CPU apart from Ray's own processes)."""
        return os.getpid()

    def load(self, key: int, problem_box: list) -> int:
        """Take a new problem (fetched from the object store); returns this process's pid."""
        import ray

        self.problem = ray.get(problem_box[0])
        self.problem_key = key
        return os.getpid()

    def _spec(self, key: int, payload):
        """The generation's spec; ``payload`` is ``(spec without center, center)`` itself (Ray resolved
        the reference the first task of a generation carries) or the boxed reference, fetched only
        when this actor does not hold payload ``key`` yet."""
        if key != self.payload_key:
            if isinstance(payload, list):
                import ray

                payload = ray.get(payload[0])
            small_spec, center = payload
            device = getattr(self.problem, "device", None) or "cpu"
            self.spec = small_spec.with_center(torch.tensor(center, device=device))
            self.payload_key = key
        return self.spec

    def evaluate(self, problem_key: int, payload_key: int, payload, block):
        """Fitness of the members in ``block`` as float32; with a problem that keeps per-member
        statistics (``stats()``, e.g. GymProblem), ``(fitness, those members' statistics)``."""
        if problem_key != self.problem_key:
            raise RuntimeError(f"actor holds problem {self.problem_key}, task wants {problem_key}")
        spec = self._spec(payload_key, payload)
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

    def noise_sum(self, payload_key: int, payload, block, weights: np.ndarray) -> np.ndarray:
        """``sum_i w_i s_i eps_i`` over the members in ``block`` for a Gaussian spec.

        Antithetic ranges that start on an even member fold each pair into
        ``(w_2k - w_2k+1) eps_k``: one noise row per pair, the same arithmetic
        as ``OpenAIES.gradient`` on a chunk.
        """
        spec = self._spec(payload_key, payload)
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
