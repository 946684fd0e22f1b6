"""``RayEvaluator``: a generation's members evaluated on Ray actors, faults survived.

Drop-in for ``LocalEvaluator``: ``evaluator(problem, spec, members=None) -> fitness``.
The work is split by concern: ``ray_cluster`` starts or joins the cluster,
``ray_plan`` cuts a generation into member ranges, ``ray_pool`` runs the
actors (queue, deaths, hangs), ``ray_actor`` is the actor itself; this module
configures them and moves a generation's data.

What crosses process boundaries:

- the problem, once (``ray.put``), into every actor; a different problem
  object is loaded into the same actors;
- per generation, one object-store payload: the spec without its center plus
  the center (``spec.with_center(empty)``, center as a numpy array), fetched
  once per actor. Each actor's first task of a generation carries the
  payload's reference as a direct argument, so Ray hands the payload over with
  the task (no extra fetch round trip); its later tasks reuse the copy it holds;
- per task, keys and a member range ``(start, stop)`` (an index array only when
  ``members`` is not contiguous); back, float32 fitness for that range.

No per-member vector is ever sent, except that a ``PointsSpec`` (CMA-ES and
other samplers that own their RNG) carries its candidates by construction:
they travel in the per-generation payload, once.

Same seed, same fitness as ``LocalEvaluator`` holds for problems whose
per-member result does not depend on how members are batched (ranges are
multiples of a problem's ``chunk``) or on torch's thread count (actors run
with ``threads_per_actor`` threads, the driver with its own; a BLAS
reduction may round differently). A problem with a ``device`` attribute gets
the center on that device; a GPU actor sees its GPU as ``cuda:0``.

Problems that keep per-member statistics across generations
(``keeps_member_stats``, the protocol declared on ``Problem``; GymProblem's
observation normalization and env-step count) are coordinated here: the
driver copy's ``share_stats(spec)`` puts its frozen statistics in the spec,
each range's ``stats(members)`` come back with its fitness and are merged into
the driver copy, so the statistics equal an in-process run's even when ranges
were re-run.
"""
from __future__ import annotations

import time

import numpy as np
import ray
import torch

from zoopt.spec import member_index

from .ray_cluster import cluster_counts, connect, shutdown
from .ray_plan import blocks_of, range_sizes
from .ray_pool import ActorPool, serialized_bytes

NUM_ACTORS_WORDS = ("max", "num_cpus", "num_gpus")


def _positive_number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and value > 0


class RayEvaluator:
    """Evaluate on ``num_actors`` Ray actors, each holding one copy of the problem.

    ``num_actors``: an int, ``"max"``/``"num_cpus"`` (one per cluster CPU) or
    ``"num_gpus"`` (one per GPU, each with one GPU). ``num_gpus_per_actor``: a
    number or ``"max"`` (the cluster's GPUs shared evenly). ``actor_config``:
    extra ``.options()`` for the actors (``num_cpus``, ``resources``,
    ``scheduling_strategy``, ``runtime_env``...). GPUs are only requested when
    Ray sees them and, for a cluster this process starts, torch does too: Ray
    waits forever for a GPU that isn't there, so that is a ValueError here.

    ``address``: None starts a private local cluster (loopback only, token
    authentication; or reuses the Ray this process already has), ``"auto"`` or
    ``"host:port"`` joins a running cluster with its own credentials (see
    ``ray_cluster``).
    ``chunk``: members per task (default: the factoring plan of ``ray_plan``,
    ranges a multiple of the problem's own ``chunk`` when it has one so batched
    forwards see the same batches as in-process evaluation).
    ``ranges_per_actor``: the tail range is ``N / (num_actors * ranges_per_actor)``
    members (bigger: finer balance at the end, more round trips and smaller
    batches). ``pipeline``: tasks queued per actor; 2 hides the driver round
    trip, 1 keeps ranges in the queue for whichever actor frees first. None
    (default) picks 2 while ranges take under ``SHORT_TASK_S`` (the round trip
    matters) and 1 once they take longer (it does not; balancing does).
    ``timeout_s``: a range (one task; with one actor, the whole generation)
    running longer is treated as hung: its actor is killed and replaced, the
    range re-run. None (default) sets the limit from measured range times:
    ``HANG_FACTOR`` (10) times the slowest finished range per member, at least
    ``min_timeout_s`` (see ``ray_pool``). ``max_retries``: re-runs of one
    range before the generation fails with RuntimeError.
    """

    name = "ray"
    merges_problem_stats = True  # problems with keeps_member_stats get their workers' statistics back

    def __init__(self, num_actors="max", *, num_gpus_per_actor=None, actor_config: dict | None = None,
                 address: str | None = None, num_cpus: int | None = None, threads_per_actor: int | None = None,
                 chunk: int | None = None, ranges_per_actor: int = 2, pipeline: int | None = None,
                 timeout_s: float | None = None, min_timeout_s: float = 30.0, max_retries: int = 3,
                 start_timeout_s: float = 300.0, connect_timeout_s: float = 10.0):
        self._check_args(num_actors, num_gpus_per_actor, actor_config, threads_per_actor, chunk,
                         ranges_per_actor, pipeline, timeout_s, min_timeout_s, max_retries, start_timeout_s)
        self.chunk, self.ranges_per_actor = chunk, int(ranges_per_actor)
        self.started_ray = connect(address, num_cpus=num_cpus, connect_timeout_s=connect_timeout_s)
        self._local_cluster = address is None
        num_actors, options, threads = self._plan(num_actors, num_gpus_per_actor, dict(actor_config or {}),
                                                  threads_per_actor)
        self.pool = ActorPool(num_actors, options, threads, timeout_s=timeout_s, min_timeout_s=min_timeout_s,
                              max_retries=int(max_retries), start_timeout_s=float(start_timeout_s),
                              pipeline=pipeline if pipeline is None else int(pipeline))
        self._payload_key = 0
        self._payload = None  # (spec, [ref]) of the latest generation

    # the pool's settings and records, readable and settable here
    num_actors = property(lambda self: self.pool.size)
    actor_options = property(lambda self: self.pool.options)
    threads = property(lambda self: self.pool.threads)
    replaced = property(lambda self: self.pool.replaced)
    faults = property(lambda self: self.pool.faults)
    traffic = property(lambda self: self.pool.traffic)
    timeout_s = property(lambda self: self.pool.timeout_s, lambda self, v: setattr(self.pool, "timeout_s", v))

    # -- configuration ------------------------------------------------------------
    @staticmethod
    def _check_args(num_actors, num_gpus_per_actor, actor_config, threads_per_actor, chunk, ranges_per_actor,
                    pipeline, timeout_s, min_timeout_s, max_retries, start_timeout_s) -> None:
        if isinstance(num_actors, str):
            if num_actors not in NUM_ACTORS_WORDS:
                raise ValueError(f"num_actors must be an int >= 1 or one of {NUM_ACTORS_WORDS}, got {num_actors!r}")
        elif isinstance(num_actors, bool) or not isinstance(num_actors, (int, np.integer)) or num_actors < 1:
            raise ValueError(f"num_actors must be an int >= 1 or one of {NUM_ACTORS_WORDS}, got {num_actors!r}")
        if num_gpus_per_actor is not None and num_gpus_per_actor != "max":
            if isinstance(num_gpus_per_actor, bool) or not isinstance(num_gpus_per_actor, (int, float)) \
                    or not num_gpus_per_actor >= 0:
                raise ValueError(f"num_gpus_per_actor must be a number >= 0, 'max' or None, got {num_gpus_per_actor!r}")
        if actor_config is not None and not isinstance(actor_config, dict):
            raise TypeError(f"actor_config must be a dict of actor options, got {type(actor_config).__name__}")
        for name, value in (("threads_per_actor", threads_per_actor), ("chunk", chunk)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be an int >= 1 or None, got {value!r}")
        if pipeline is not None and (isinstance(pipeline, bool) or not isinstance(pipeline, int) or pipeline < 1):
            raise ValueError(f"pipeline must be an int >= 1 or None (automatic), got {pipeline!r}")
        if isinstance(ranges_per_actor, bool) or not isinstance(ranges_per_actor, int) or ranges_per_actor < 1:
            raise ValueError(f"ranges_per_actor must be an int >= 1, got {ranges_per_actor!r}")
        if timeout_s is not None and not _positive_number(timeout_s):
            raise ValueError(f"timeout_s must be a number > 0 or None (automatic), got {timeout_s!r}")
        if not _positive_number(min_timeout_s):
            raise ValueError(f"min_timeout_s must be a number > 0, got {min_timeout_s!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an int >= 0, got {max_retries!r}")
        if not _positive_number(start_timeout_s):
            raise ValueError(f"start_timeout_s must be a number > 0, got {start_timeout_s!r}")

    def _plan(self, num_actors, num_gpus_per_actor, options: dict, threads):
        """Actor count, ``.options()`` and torch threads, checked against what the cluster has."""
        cpus, gpus = cluster_counts()
        if self._local_cluster and not torch.cuda.is_available():
            gpus = 0.0  # Ray may count GPUs a CPU-only torch cannot use
        if num_actors in ("max", "num_cpus"):
            num_actors = max(1, int(cpus))
        elif num_actors == "num_gpus":
            if gpus < 1:
                raise ValueError("num_actors='num_gpus' needs GPUs, but "
                                 + ("torch.cuda.is_available() is False" if not torch.cuda.is_available()
                                    else "the Ray cluster has none"))
            num_actors = int(gpus)
            if num_gpus_per_actor is None:
                num_gpus_per_actor = 1
        num_actors = int(num_actors)
        if num_gpus_per_actor == "max":
            num_gpus_per_actor = gpus / num_actors if gpus else 0.0
        gpu_each = float(options.pop("num_gpus", num_gpus_per_actor or 0.0))
        if gpu_each > 0:
            if not torch.cuda.is_available() and self._local_cluster:
                raise ValueError(f"num_gpus_per_actor={gpu_each} but torch.cuda.is_available() is False: "
                                 "Ray would wait forever for the GPU")
            if gpu_each * num_actors > gpus + 1e-9:
                raise ValueError(f"{num_actors} actors x {gpu_each} GPUs each exceeds the {gpus:g} GPUs Ray sees: "
                                 "Ray would wait forever for them")
            options["num_gpus"] = gpu_each
        cpu_each = float(options.pop("num_cpus", min(1.0, cpus / num_actors)))
        if cpu_each * num_actors > cpus + 1e-9:
            raise ValueError(f"{num_actors} actors x {cpu_each:g} CPUs each exceeds the {cpus:g} CPUs Ray sees: "
                             "Ray would wait forever for them; lower num_actors or actor_config['num_cpus']")
        options["num_cpus"] = cpu_each
        if self._local_cluster:
            self._check_free_cpus(cpu_each * num_actors)
        threads = threads or max(1, int(cpu_each))
        return num_actors, options, int(threads)

    @staticmethod
    def _check_free_cpus(needed: float, wait_s: float = 5.0) -> None:
        """On a local cluster, actors that can never be placed are an error now rather than a hang later."""
        deadline = time.monotonic() + wait_s  # CPUs of actors killed a moment ago come back asynchronously
        while True:
            free = float(ray.available_resources().get("CPU", 0.0))
            if free + 1e-9 >= needed:
                return
            if time.monotonic() > deadline:
                raise ValueError(f"the actors need {needed:g} CPUs but only {free:g} of the local cluster's are free "
                                 "(other actors hold them: close() other evaluators, or lower num_actors or "
                                 "actor_config['num_cpus'])")
            time.sleep(0.2)

    # -- per generation -----------------------------------------------------------
    def _put_payload(self, spec) -> tuple[int, list]:
        if self._payload is not None and self._payload[0] is spec:
            return self._payload_key, self._payload[1]
        center = spec.center.detach().to("cpu", torch.float32).numpy()
        small = spec.with_center(torch.empty(0, dtype=spec.center.dtype))
        self._payload_key += 1
        box = [ray.put((small, center))]
        self._payload = (spec, box)
        self.traffic["payload_bytes"] += serialized_bytes((small, center))
        return self._payload_key, box

    @staticmethod
    def _payload_arg(slot, key: int, box: list):
        """The payload reference itself for an actor's first task with this payload (Ray resolves it
        and hands the value over with the task), the boxed reference (not fetched) after that."""
        if slot.payload_key == key:
            return box
        slot.payload_key = key
        return box[0]

    def __call__(self, problem, spec, members=None) -> torch.Tensor:
        idx = member_index(members, spec.popsize)
        if idx.numel() == 0:
            return torch.empty(0)
        self.pool.load(problem)
        keeps_stats = getattr(problem, "keeps_member_stats", False)
        if keeps_stats:
            problem.share_stats(spec)  # the driver copy's frozen statistics ride in spec.extras
        key, box = self._put_payload(spec)
        sizes = range_sizes(problem, idx.numel(), len(self.pool.slots), self.chunk, self.ranges_per_actor)
        blocks = blocks_of(idx, sizes)
        problem_key = self.pool.problem_key

        def submit(slot, block):
            return slot.actor.evaluate, (problem_key, key, self._payload_arg(slot, key, box), block)

        parts = self.pool.run(blocks, submit, f"{type(problem).__name__}.evaluate")
        if keeps_stats:  # (fitness, the range's per-member statistics) per range
            problem.merge_stats([p[1] for p in parts])
            parts = [p[0] for p in parts]
        fitness = torch.tensor(np.concatenate(parts), dtype=torch.float32)
        self.traffic["result_bytes"] += sum(p.nbytes for p in parts)
        if fitness.shape != (idx.numel(),):
            raise ValueError(f"problem returned {fitness.numel()} fitness values for {idx.numel()} members")
        return fitness

    # -- inspection and lifecycle -------------------------------------------------
    def actor_cpu_seconds(self) -> float:
        """CPU seconds used so far by the live actors' processes, summed."""
        return float(sum(ray.get([slot.actor.cpu_seconds.remote() for slot in self.pool.slots])))

    def actors(self) -> list:
        """The live actor handles (for inspection and fault-injection tests)."""
        return [slot.actor for slot in self.pool.slots]

    def close(self) -> None:
        """Kill the actors; shut Ray down only if this evaluator started it."""
        self.pool.close()
        self._payload = None
        if self.started_ray:
            shutdown()
        self.started_ray = False

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RayEvaluator(num_actors={self.num_actors}, options={self.actor_options}, threads={self.threads})"
