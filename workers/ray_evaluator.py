"""``RayEvaluator``: a generation's members evaluated on Ray actors, faults survived.

Drop-in for ``LocalEvaluator``: ``evaluator(problem, spec, members=None) -> fitness``.

What crosses process boundaries:

- the problem, once (``ray.put``), into every actor; a different problem
  object is loaded into the same actors;
- per generation, one object-store payload: the spec without its center plus
  the center (``spec.with_center(empty)``, center as a numpy array), fetched
  once per actor;
- per task, keys and a member range ``(start, stop)`` (an index array only when
  ``members`` is not contiguous); back, float32 fitness for that range.

No per-member vector is ever sent, except that a ``PointsSpec`` (CMA-ES and
other samplers that own their RNG) carries its candidates by construction:
they travel in the per-generation payload, once.

Ranges come from a queue and go to whichever actor has room (``pipeline``
tasks queued per actor, filled breadth-first), so fast actors take more. The
queue is planned by factoring self-scheduling: each round gives every actor
one range of half of what remains split evenly, down to a tail range of
``1/ranges_per_actor`` of an actor's share. Ranges are kept large on purpose:
a batched problem (GymProblem steps a range's episodes in one vector env with
one policy forward per step) pays a fixed cost per step of each range, so
splitting a generation finely makes every member dearer, not just adds round
trips. The default (2 ranges per actor) gives 2 actors four ranges of N/4,
two each, queued at once; ``ranges_per_actor=8`` gives N/4, N/4, N/8, N/8,
then N/16 ranges, for work whose cost varies a lot per member. One actor
gets the whole generation as one range (the same batches as in-process
evaluation).
Each actor's first task of a generation carries the payload's reference as a
direct argument, so Ray hands the payload over with the task (no extra fetch
round trip); its later tasks reuse the copy it holds. A range whose actor dies
(or whose evaluation exceeds ``timeout_s``, after which the actor is killed)
is re-queued and the actor is replaced; fitness is assembled by member index,
so the result equals the fault-free run's. The call either returns every
member's fitness or raises: nothing reaches the strategy half done.

Same seed, same fitness as ``LocalEvaluator`` holds for problems whose
per-member result does not depend on how members are batched (ranges are
multiples of a problem's ``chunk``) or on torch's thread count (actors run
with ``threads_per_actor`` threads, the driver with its own; a BLAS
reduction may round differently). A problem with a ``device`` attribute gets
the center on that device; a GPU actor sees its GPU as ``cuda:0``.

Problems that keep per-member statistics across generations (GymProblem's
observation normalization and env-step count: ``share_stats(spec)``,
``stats()``, ``merge_stats()``) are coordinated here: the driver copy's
frozen statistics ride in the spec, each block's member statistics come back
with its fitness and are merged into the driver copy in member order, so the
statistics equal an in-process run's even when blocks were re-run.

ES methods with very large populations can have actors reduce instead of the
driver: after fitness is known (ranking needs all of it),
``weighted_noise_sum(spec, weights)`` returns ``sum_i w_i s_i eps_i`` with each
actor regenerating its range's keyed noise and sending back one vector per
range. For OpenAI-ES, ``gradient = weighted_noise_sum(spec, w) / (N * sigma)``.
"""
from __future__ import annotations

import math
import time
from collections import deque

import numpy as np
import ray
import torch
from ray.exceptions import GetTimeoutError, ObjectLostError, RayActorError

from zoopt.spec import member_index

from .ray_actor import EvaluationActor
from .ray_cluster import cluster_counts, connect, shutdown

ACTOR_FAULTS = (RayActorError, ObjectLostError, GetTimeoutError)
NUM_ACTORS_WORDS = ("max", "num_cpus", "num_gpus")
SHORT_TASK_S = 0.05  # automatic pipelining: tasks shorter than this get a second one queued behind them


def _serialized_bytes(obj) -> int:
    """Bytes Ray's serializer produces for ``obj`` (what a task argument costs on the wire)."""
    context = ray._private.worker.global_worker.get_serialization_context()
    return int(context.serialize(obj).total_bytes)


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


class _Slot:
    """One actor, its problem load in flight (``start_ref``) and its queued tasks.

    ``tasks`` holds ``[ref, block index, since]``; actor tasks run in order, so
    only ``tasks[0]`` runs, and its timeout clock starts when it reaches the head.
    """

    def __init__(self, actor):
        self.actor = actor
        self.start_ref = None
        self.start_since = 0.0
        self.tasks: list = []
        self.payload_key = None  # the latest payload this actor was sent (it keeps a copy)

    @property
    def starting(self) -> bool:
        return self.start_ref is not None


class RayEvaluator:
    """Evaluate on ``num_actors`` Ray actors, each holding one copy of the problem.

    ``num_actors``: an int, ``"max"``/``"num_cpus"`` (one per cluster CPU) or
    ``"num_gpus"`` (one per GPU, each with one GPU). ``num_gpus_per_actor``: a
    number or ``"max"`` (the cluster's GPUs shared evenly). ``actor_config``:
    extra ``.options()`` for the actors (``num_cpus``, ``resources``,
    ``runtime_env``...). GPUs are only requested when Ray sees them and, for a
    cluster this process starts, torch does too: Ray waits forever for a GPU
    that isn't there, so that is a ValueError here instead.

    ``address``: None starts a private local cluster on 127.0.0.1 (or reuses
    the Ray this process already has), ``"auto"`` or ``"host:port"`` joins one.
    ``chunk``: members per task (default: the factoring plan above, ranges
    a multiple of the problem's own ``chunk`` when it has one so batched
    forwards see the same batches as in-process evaluation).
    ``ranges_per_actor``: the tail range is ``N / (num_actors * ranges_per_actor)``
    members (bigger: finer balance at the end, more round trips and smaller
    batches). ``pipeline``: tasks queued per actor; 2 hides the driver round
    trip, 1 keeps ranges in the queue for whichever actor frees first. None
    (default) picks 2 while ranges take under ``SHORT_TASK_S`` (the round trip
    matters) and 1 once they take longer (it does not; balancing does).
    ``timeout_s``: an evaluation task (one range: with one actor, the whole
    generation) running longer is treated as hung: its actor is killed and
    replaced, its range re-run. ``max_retries``: re-runs of
    one range before the generation fails with RuntimeError.
    """

    name = "ray"
    merges_problem_stats = True  # problems with stats()/merge_stats() get their workers' statistics back

    def __init__(self, num_actors="max", *, num_gpus_per_actor=None, actor_config: dict | None = None,
                 address: str | None = None, num_cpus: int | None = None, threads_per_actor: int | None = None,
                 chunk: int | None = None, ranges_per_actor: int = 2, pipeline: int | None = None, sum_chunk: int = 512,
                 timeout_s: float | None = None, max_retries: int = 3, start_timeout_s: float = 300.0,
                 connect_timeout_s: float = 10.0):
        self._check_args(num_actors, num_gpus_per_actor, actor_config, threads_per_actor, chunk,
                         ranges_per_actor, pipeline, sum_chunk, timeout_s, max_retries, start_timeout_s)
        self.chunk, self.ranges_per_actor, self.sum_chunk = chunk, int(ranges_per_actor), int(sum_chunk)
        self.pipeline = pipeline if pipeline is None else int(pipeline)
        self._task_s = None  # running mean of how long a task takes once at the head of its actor's queue
        self.timeout_s, self.max_retries, self.start_timeout_s = timeout_s, int(max_retries), float(start_timeout_s)
        self.started_ray = connect(address, num_cpus=num_cpus, connect_timeout_s=connect_timeout_s)
        self._local_cluster = address is None
        self.num_actors, self.actor_options, self.threads = self._plan(
            num_actors, num_gpus_per_actor, dict(actor_config or {}), threads_per_actor)
        self._remote_class = ray.remote(max_restarts=0, max_task_retries=0)(EvaluationActor)
        self._slots: list[_Slot] = []
        self._problem = None
        self._problem_box = None
        self._problem_key = 0
        self._payload_key = 0
        self._payload = None     # (spec, [ref]) of the latest generation
        self.replaced = 0        # actors replaced after a death or a timeout, over the evaluator's life
        self.faults: list[str] = []  # why each range was re-run, oldest first
        self.traffic = {"problem_bytes": 0, "payload_bytes": 0, "task_bytes": 0, "result_bytes": 0, "tasks": 0}

    # -- configuration ------------------------------------------------------------
    @staticmethod
    def _check_args(num_actors, num_gpus_per_actor, actor_config, threads_per_actor, chunk, ranges_per_actor,
                    pipeline, sum_chunk, timeout_s, max_retries, start_timeout_s) -> None:
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
        for name, value in (("ranges_per_actor", ranges_per_actor), ("sum_chunk", sum_chunk)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if timeout_s is not None and not (isinstance(timeout_s, (int, float)) and timeout_s > 0):
            raise ValueError(f"timeout_s must be a number > 0 or None, got {timeout_s!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an int >= 0, got {max_retries!r}")
        if not (isinstance(start_timeout_s, (int, float)) and start_timeout_s > 0):
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

    # -- actors -------------------------------------------------------------------
    def _new_slot(self) -> _Slot:
        slot = _Slot(self._remote_class.options(**self.actor_options).remote(self.threads))
        if self._problem_box is not None:
            self._start(slot)
        return slot

    def _start(self, slot: _Slot) -> None:
        slot.start_ref = slot.actor.load.remote(self._problem_key, self._problem_box)
        slot.start_since = time.monotonic()

    def _use_problem(self, problem) -> None:
        if problem is self._problem and self._slots:
            return
        if problem is not self._problem:
            self._problem = problem
            self._problem_key += 1
            ref = ray.put(problem)
            self._problem_box = [ref]
            self.traffic["problem_bytes"] = _serialized_bytes(problem)
            for slot in self._slots:
                self._start(slot)
        while len(self._slots) < self.num_actors:
            self._slots.append(self._new_slot())

    def _replace(self, slot: _Slot) -> None:
        try:
            ray.kill(slot.actor, no_restart=True)
        except Exception:  # already gone
            pass
        self._slots[self._slots.index(slot)] = self._new_slot()
        self.replaced += 1

    def actor_cpu_seconds(self) -> float:
        """CPU seconds used so far by the live actors' processes, summed."""
        return float(sum(ray.get([slot.actor.cpu_seconds.remote() for slot in self._slots])))

    def actors(self) -> list:
        """The live actor handles (for inspection and fault-injection tests)."""
        return [slot.actor for slot in self._slots]

    # -- per generation -----------------------------------------------------------
    def _put_payload(self, spec) -> tuple[int, list]:
        if self._payload is not None and self._payload[0] is spec:
            return self._payload_key, self._payload[1]
        center = spec.center.detach().to("cpu", torch.float32).numpy()
        small = spec.with_center(torch.empty(0, dtype=spec.center.dtype))
        self._payload_key += 1
        box = [ray.put((small, center))]
        self._payload = (spec, box)
        self.traffic["payload_bytes"] += _serialized_bytes((small, center))
        return self._payload_key, box

    @staticmethod
    def _blocks(idx: torch.Tensor, sizes) -> list:
        """Consecutive slices of ``idx`` with the given sizes: ``(start, stop)`` when ``idx`` is a
        contiguous range, else index arrays."""
        n = idx.numel()
        contiguous = n > 0 and bool(torch.equal(idx, torch.arange(int(idx[0]), int(idx[0]) + n)))
        blocks, s = [], 0
        for size in sizes:
            e = min(s + size, n)
            blocks.append((int(idx[0]) + s, int(idx[0]) + e) if contiguous else idx[s:e].numpy())
            s = e
        return blocks

    def _block_sizes(self, problem, n: int) -> list[int]:
        """The generation's range sizes, in queue order (see the module docstring)."""
        if self.chunk:
            return [self.chunk] * math.ceil(n / self.chunk)
        align = getattr(problem, "chunk", None)
        align = align if isinstance(align, int) and align > 0 else 2  # antithetic pairs stay together
        return factoring_sizes(n, len(self._slots) or self.num_actors, self.ranges_per_actor, align)

    def __call__(self, problem, spec, members=None) -> torch.Tensor:
        idx = member_index(members, spec.popsize)
        if idx.numel() == 0:
            return torch.empty(0)
        self._use_problem(problem)
        keeps_stats = callable(getattr(problem, "stats", None)) and callable(getattr(problem, "merge_stats", None))
        if keeps_stats and callable(getattr(problem, "share_stats", None)):
            problem.share_stats(spec)  # the driver copy's frozen statistics ride in spec.extras
        key, box = self._put_payload(spec)
        blocks = self._blocks(idx, self._block_sizes(problem, idx.numel()))
        problem_key = self._problem_key

        def submit(slot, block):
            return slot.actor.evaluate, (problem_key, key, self._payload_arg(slot, key, box), block)

        parts = self._schedule(blocks, submit)
        if parts and isinstance(parts[0], tuple):  # (fitness, per-member statistics) per block
            parts, stats = [p[0] for p in parts], [p[1] for p in parts]
            if keeps_stats:
                problem.merge_stats(stats)
        fitness = torch.tensor(np.concatenate(parts), dtype=torch.float32)
        self.traffic["result_bytes"] += sum(p.nbytes for p in parts)
        if fitness.shape != (idx.numel(),):
            raise ValueError(f"problem returned {fitness.numel()} fitness values for {idx.numel()} members")
        return fitness

    def weighted_noise_sum(self, spec, weights, members=None) -> torch.Tensor:
        """``sum_i w_i s_i eps_i`` over ``members`` of a Gaussian spec, reduced on the actors.

        Call it after fitness is known (the weights are the shaped fitness of
        the whole generation). Ranges of ``sum_chunk`` members are summed on
        the driver in member order, so the result does not depend on which
        actor ran what. With ``sum_chunk = 2 * noise_chunk`` it does the same
        arithmetic as ``OpenAIES.gradient(spec, w) * N * sigma``; the two agree
        to rounding (a BLAS product may round differently under another torch
        thread count, and actors run with fewer threads than the driver).
        """
        if not hasattr(spec, "noise"):
            raise TypeError(f"weighted_noise_sum needs a spec with keyed noise (GaussianSpec), got {type(spec).__name__}")
        if not self._slots:
            raise RuntimeError("weighted_noise_sum needs actors: evaluate the generation first")
        idx = member_index(members, spec.popsize)
        w = torch.as_tensor(weights, dtype=torch.float32).reshape(-1).cpu().numpy()
        if w.shape != (idx.numel(),):
            raise ValueError(f"weights must have one entry per member ({idx.numel()}), got shape {w.shape}")
        key, box = self._put_payload(spec)
        blocks = self._blocks(idx, [self.sum_chunk] * math.ceil(idx.numel() / self.sum_chunk))
        offsets = np.cumsum([0] + [b[1] - b[0] if isinstance(b, tuple) else len(b) for b in blocks])
        weight_of = {i: w[offsets[i]:offsets[i + 1]] for i in range(len(blocks))}
        blocks = [(i, b) for i, b in enumerate(blocks)]

        def submit(slot, item):
            i, block = item
            return slot.actor.noise_sum, (key, self._payload_arg(slot, key, box), block, weight_of[i])

        parts = self._schedule(blocks, submit)
        total = torch.zeros(spec.dim, dtype=torch.float32)
        for part in parts:
            total += torch.tensor(part)
        self.traffic["result_bytes"] += sum(p.nbytes for p in parts)
        return total

    @staticmethod
    def _payload_arg(slot: _Slot, key: int, box: list):
        """The payload reference itself for an actor's first task with this payload (Ray resolves it
        and hands the value over with the task), the boxed reference (not fetched) after that."""
        if slot.payload_key == key:
            return box
        slot.payload_key = key
        return box[0]

    # -- the queue ----------------------------------------------------------------
    def _schedule(self, blocks: list, submit) -> list:
        """Run the ``(method, args)`` that ``submit(slot, block)`` names for every block; results in block order.

        Each actor gets up to ``pipeline`` tasks queued so it never idles on a
        round trip, dealt breadth-first (every actor's first task before any
        second one, so the big ranges at the head of the queue are spread);
        blocks go to whichever actor has room, so fast actors take more.
        """
        queue = deque(range(len(blocks)))
        results = [None] * len(blocks)
        failures = [0] * len(blocks)
        start_failures = 0
        for slot in self._slots:
            slot.tasks = []  # leftovers of a generation that raised: their results are not wanted
        self._note_started()
        while queue or any(slot.tasks for slot in self._slots):
            # while an actor is still loading the problem, nobody gets a second task: the big ranges at the
            # head of the queue would all go to whichever actor happened to start first
            depth_now = 1 if any(slot.starting for slot in self._slots) else self._pipeline_depth()
            for depth in range(1, depth_now + 1):
                for slot in self._slots:
                    if slot.starting or not queue or len(slot.tasks) >= depth:
                        continue
                    i = queue.popleft()
                    method, args = submit(slot, blocks[i])
                    slot.tasks.append([method.remote(*args), i, time.monotonic()])
                    self.traffic["task_bytes"] += _serialized_bytes(args)
                    self.traffic["tasks"] += 1
            in_flight = {}
            for slot in self._slots:
                if slot.starting:
                    in_flight[slot.start_ref] = (slot, None)
                for task in slot.tasks:
                    in_flight[task[0]] = (slot, task)
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=self._next_deadline())
            for ref in ready:
                slot, task = in_flight[ref]
                if slot not in self._slots or (task is not None and task not in slot.tasks):
                    continue  # the slot was replaced meanwhile: its blocks are queued again
                try:
                    value = ray.get(ref)
                except ACTOR_FAULTS as exc:
                    if task is None:
                        start_failures = self._start_failed(slot, start_failures, exc)
                    else:
                        self._slot_failed(slot, blocks, failures, queue, f"its actor died ({type(exc).__name__})")
                    continue
                except Exception as exc:
                    if task is None:
                        raise RuntimeError(
                            f"a Ray actor could not load the problem ({type(exc).__name__}: {exc}). Workers import "
                            "the problem's class by module name: install that module, or call "
                            "ray.cloudpickle.register_pickle_by_value(module) before evaluating") from exc
                    raise  # the problem itself raised: deterministic, so re-running would not help
                if task is None:
                    slot.start_ref = None
                    continue
                head = slot.tasks[0] is task
                slot.tasks.remove(task)
                now = time.monotonic()
                if head:
                    took = now - task[2]
                    self._task_s = took if self._task_s is None else 0.8 * self._task_s + 0.2 * took
                    if slot.tasks:
                        slot.tasks[0][2] = now  # the next task starts running now
                results[task[1]] = value
            self._reap_overdue(blocks, failures, queue)
        return results

    def _note_started(self) -> None:
        """Mark actors whose problem load finished since the last generation as ready (a failed load stays
        pending: the queue loop reports it)."""
        starting = [slot for slot in self._slots if slot.starting]
        if not starting:
            return
        ready, _ = ray.wait([slot.start_ref for slot in starting], num_returns=len(starting), timeout=0)
        for slot in starting:
            if slot.start_ref in ready:
                try:
                    ray.get(slot.start_ref)
                except Exception:
                    continue
                slot.start_ref = None

    def _pipeline_depth(self) -> int:
        if self.pipeline is not None:
            return self.pipeline
        return 2 if self._task_s is None or self._task_s < SHORT_TASK_S else 1

    def _next_deadline(self):
        deadlines = []
        for slot in self._slots:
            if slot.starting:
                deadlines.append(slot.start_since + self.start_timeout_s)
            elif slot.tasks and self.timeout_s is not None:
                deadlines.append(slot.tasks[0][2] + self.timeout_s)
        return max(0.01, min(deadlines) - time.monotonic()) if deadlines else None

    def _reap_overdue(self, blocks, failures, queue) -> None:
        now = time.monotonic()
        for slot in list(self._slots):
            if slot.starting and now - slot.start_since > self.start_timeout_s:
                raise RuntimeError(f"a Ray actor did not start within start_timeout_s={self.start_timeout_s:g} s; "
                                   f"the cluster may lack the resources {self.actor_options}")
            if not slot.starting and slot.tasks and self.timeout_s is not None \
                    and now - slot.tasks[0][2] > self.timeout_s:
                self._slot_failed(slot, blocks, failures, queue, f"it ran past timeout_s={self.timeout_s:g} s")

    def _slot_failed(self, slot, blocks, failures, queue, why: str) -> None:
        """The running block failed: re-queue it and the blocks queued behind it, replace the actor."""
        i = slot.tasks[0][1]
        failures[i] += 1
        self.faults.append(f"members {self._describe(blocks[i])}: {why}")
        queue.extendleft(reversed([task[1] for task in slot.tasks]))
        slot.tasks = []
        self._replace(slot)
        if failures[i] > self.max_retries:
            raise RuntimeError(f"members {self._describe(blocks[i])} failed {failures[i]} times, the last because "
                               f"{why}; giving up after max_retries={self.max_retries} (no generation was applied)")

    def _start_failed(self, slot, count: int, exc) -> int:
        count += 1
        if count > self.max_retries * max(1, self.num_actors):
            raise RuntimeError(f"Ray actors keep dying while starting ({type(exc).__name__}: {exc})") from exc
        self._replace(slot)
        return count

    @staticmethod
    def _describe(block) -> str:
        if isinstance(block, tuple) and len(block) == 2 and isinstance(block[1], (int, np.integer)):
            return f"[{block[0]}, {block[1]})"
        if isinstance(block, tuple):  # (index, block) from weighted_noise_sum
            return RayEvaluator._describe(block[1])
        return f"{list(block[:4])}..."

    # -- lifecycle ----------------------------------------------------------------
    def close(self) -> None:
        """Kill the actors; shut Ray down only if this evaluator started it."""
        for slot in self._slots:
            try:
                ray.kill(slot.actor, no_restart=True)
            except Exception:
                pass
        self._slots, self._problem, self._problem_box, self._payload = [], None, None, None
        if self.started_ray:
            shutdown()
        self.started_ray = False

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RayEvaluator(num_actors={self.num_actors}, options={self.actor_options}, threads={self.threads})"
