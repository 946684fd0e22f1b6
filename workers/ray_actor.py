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

import torch

from .ray_plan import members_of


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
        """Fitness of the members in ``block`` as float32; for a problem that keeps per-member
        statistics (``keeps_member_stats``, e.g. GymProblem), ``(fitness, stats(those members))``."""
        if problem_key != self.problem_key:
            raise RuntimeError(f"actor holds problem {self.problem_key}, task wants {problem_key}")
        spec = self._spec(payload_key, payload)
        members = members_of(block)
        fitness = self.problem.evaluate(spec, members)
        fitness = torch.as_tensor(fitness, dtype=torch.float32).detach().cpu().reshape(-1).numpy()
        if not getattr(self.problem, "keeps_member_stats", False):
            return fitness
        return fitness, self.problem.stats(members)  # only this block's members travel back
