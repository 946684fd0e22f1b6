"""The Ray actors behind ``RayEvaluator``: each holds one problem copy; ranges are dealt to them from a
queue, and a range whose actor dies or hangs is run again on a fresh actor.

Ranges go to whichever actor has room (``pipeline`` tasks queued per actor,
filled breadth-first), so fast actors take more. A range whose actor dies
(its process, or its whole node) or that runs past its time limit (the actor
is then killed) is re-queued and the actor replaced; results are kept by
range, so the caller gets exactly the fault-free run's. ``run`` either
returns every range's result or raises.

Time limit of a range (the clock starts when it reaches the head of its
actor's queue): ``timeout_s`` when given; by default (``timeout_s=None``)
``HANG_FACTOR`` times the slowest finished range's seconds per member times
the range's members, at least ``min_timeout_s``, measured over the current
problem (no limit until one of its ranges has finished). Each re-run of a
range doubles its limit, so a range that was only slow is not killed forever.
"""
from __future__ import annotations

import time
from collections import deque

import ray
from ray.exceptions import GetTimeoutError, ObjectLostError, RayActorError, RayTaskError

from .ray_actor import EvaluationActor
from .ray_plan import block_size, describe

ACTOR_FAULTS = (RayActorError, ObjectLostError, GetTimeoutError)
SHORT_TASK_S = 0.05  # automatic pipelining: tasks shorter than this get a second one queued behind them
HANG_FACTOR = 10.0   # default time limit: this many times the slowest finished range (per member)


def serialized_bytes(obj) -> int:
    """Bytes Ray's serializer produces for ``obj`` (what a task argument costs on the wire)."""
    context = ray._private.worker.global_worker.get_serialization_context()
    return int(context.serialize(obj).total_bytes)


def task_error(exc: RayTaskError, label: str, block) -> Exception:
    """The problem's own exception, re-raised as the same type when it can be, with a first line that
    names the problem and the member range instead of Ray's banner (Ray's full report stays chained)."""
    cause = getattr(exc, "cause", None) or exc
    first = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    message = f"{label} failed on members {describe(block)}: {type(cause).__name__}: {first}"
    try:
        error = type(cause)(message)
        if str(error) != message:
            raise TypeError
    except Exception:  # an exception type that does not take one message
        error = RuntimeError(message)
    return error


class _Slot:
    """One actor, its problem load in flight (``start_ref``) and its queued tasks.

    ``tasks`` holds ``[ref, block index, since]``; actor tasks run in order, so
    only ``tasks[0]`` runs, and its clock starts when it reaches the head.
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


class ActorPool:
    """``size`` actors with ``.options(**options)``, torch on ``threads`` threads each."""

    def __init__(self, size: int, options: dict, threads: int, *, timeout_s, min_timeout_s: float,
                 max_retries: int, start_timeout_s: float, pipeline):
        self.size, self.options, self.threads = size, options, threads
        self.timeout_s, self.min_timeout_s = timeout_s, float(min_timeout_s)
        self.max_retries, self.start_timeout_s, self.pipeline = max_retries, start_timeout_s, pipeline
        self._remote_class = ray.remote(max_restarts=0, max_task_retries=0)(EvaluationActor)
        self.slots: list[_Slot] = []
        self.problem = None
        self.problem_box = None
        self.problem_key = 0
        self._task_s = None  # running mean of how long a task takes once at the head of its actor's queue
        self._seconds_per_member = None  # the current problem's slowest finished range
        self.replaced = 0  # actors replaced after a death or a timeout, over the pool's life
        self.faults: list[str] = []  # why each range was re-run, oldest first
        self.traffic = {"problem_bytes": 0, "payload_bytes": 0, "task_bytes": 0, "result_bytes": 0, "tasks": 0}

    # -- actors -------------------------------------------------------------------
    def load(self, problem) -> None:
        """Make every actor hold ``problem`` (a new object is shipped once, through the object store)."""
        if problem is self.problem and self.slots:
            return
        if problem is not self.problem:
            self.problem = problem
            self.problem_key += 1
            self.problem_box = [ray.put(problem)]
            self.traffic["problem_bytes"] = serialized_bytes(problem)
            self._seconds_per_member = None
            for slot in self.slots:
                self._start(slot)
        while len(self.slots) < self.size:
            self.slots.append(self._new_slot())

    def _new_slot(self) -> _Slot:
        slot = _Slot(self._remote_class.options(**self.options).remote(self.threads))
        if self.problem_box is not None:
            self._start(slot)
        return slot

    def _start(self, slot: _Slot) -> None:
        slot.start_ref = slot.actor.load.remote(self.problem_key, self.problem_box)
        slot.start_since = time.monotonic()

    def _replace(self, slot: _Slot) -> None:
        try:
            ray.kill(slot.actor, no_restart=True)
        except Exception:  # already gone
            pass
        self.slots[self.slots.index(slot)] = self._new_slot()
        self.replaced += 1

    def close(self) -> None:
        for slot in self.slots:
            try:
                ray.kill(slot.actor, no_restart=True)
            except Exception:
                pass
        self.slots, self.problem, self.problem_box = [], None, None

    # -- the queue ----------------------------------------------------------------
    def run(self, blocks: list, submit, label: str) -> list:
        """Run the ``(method, args)`` that ``submit(slot, block)`` names for every block; results in block order.

        Each actor gets up to ``pipeline`` tasks queued so it never idles on a
        round trip, dealt breadth-first (every actor's first task before any
        second one, so the big ranges at the head of the queue are spread).
        ``label`` names the work in errors (e.g. ``"GymProblem.evaluate"``).
        """
        queue = deque(range(len(blocks)))
        results = [None] * len(blocks)
        failures = [0] * len(blocks)
        start_failures = 0
        for slot in self.slots:
            slot.tasks = []  # leftovers of a generation that raised: their results are not wanted
        self._note_started()
        while queue or any(slot.tasks for slot in self.slots):
            self._deal(queue, blocks, submit)
            in_flight = {}
            for slot in self.slots:
                if slot.starting:
                    in_flight[slot.start_ref] = (slot, None)
                for task in slot.tasks:
                    in_flight[task[0]] = (slot, task)
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=self._next_deadline(blocks, failures))
            for ref in ready:
                slot, task = in_flight[ref]
                if slot not in self.slots or (task is not None and task not in slot.tasks):
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
                    if isinstance(exc, RayTaskError):  # the problem itself raised: re-running would not help
                        raise task_error(exc, label, blocks[task[1]]) from exc
                    raise
                if task is None:
                    slot.start_ref = None
                    continue
                self._finished(slot, task, blocks[task[1]])
                results[task[1]] = value
            self._reap_overdue(blocks, failures, queue)
        return results

    def _deal(self, queue, blocks, submit) -> None:
        # while an actor is still loading the problem, nobody gets a second task: the big ranges at the
        # head of the queue would all go to whichever actor happened to start first
        depth_now = 1 if any(slot.starting for slot in self.slots) else self._pipeline_depth()
        for depth in range(1, depth_now + 1):
            for slot in self.slots:
                if slot.starting or not queue or len(slot.tasks) >= depth:
                    continue
                i = queue.popleft()
                method, args = submit(slot, blocks[i])
                slot.tasks.append([method.remote(*args), i, time.monotonic()])
                self.traffic["task_bytes"] += serialized_bytes(args)
                self.traffic["tasks"] += 1

    def _finished(self, slot: _Slot, task, block) -> None:
        """Account a finished task: its time (pipelining, the default time limit); the next one starts now."""
        head = slot.tasks[0] is task
        slot.tasks.remove(task)
        if not head:
            return
        now = time.monotonic()
        took = now - task[2]
        self._task_s = took if self._task_s is None else 0.8 * self._task_s + 0.2 * took
        rate = took / max(1, block_size(block))
        self._seconds_per_member = max(rate, self._seconds_per_member or 0.0)
        if slot.tasks:
            slot.tasks[0][2] = now

    def _note_started(self) -> None:
        """Mark actors whose problem load finished since the last generation as ready (a failed load stays
        pending: the queue loop reports it)."""
        starting = [slot for slot in self.slots if slot.starting]
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

    def time_limit(self, block, tries: int):
        """Seconds the range ``block`` may run on its ``tries``-th re-run, or None (no limit yet)."""
        if self.timeout_s is not None:
            limit = float(self.timeout_s)
        elif self._seconds_per_member is None:
            return None
        else:
            limit = max(self.min_timeout_s, HANG_FACTOR * self._seconds_per_member * block_size(block))
        return limit * 2 ** tries

    def _next_deadline(self, blocks, failures):
        deadlines = []
        for slot in self.slots:
            if slot.starting:
                deadlines.append(slot.start_since + self.start_timeout_s)
            elif slot.tasks:
                i = slot.tasks[0][1]
                limit = self.time_limit(blocks[i], failures[i])
                if limit is not None:
                    deadlines.append(slot.tasks[0][2] + limit)
        return max(0.01, min(deadlines) - time.monotonic()) if deadlines else None

    def _reap_overdue(self, blocks, failures, queue) -> None:
        now = time.monotonic()
        for slot in list(self.slots):
            if slot.starting and now - slot.start_since > self.start_timeout_s:
                raise RuntimeError(f"a Ray actor did not start within start_timeout_s={self.start_timeout_s:g} s; "
                                   f"the cluster may lack the resources {self.options}")
            if slot.starting or not slot.tasks:
                continue
            i = slot.tasks[0][1]
            limit = self.time_limit(blocks[i], failures[i])
            if limit is not None and now - slot.tasks[0][2] > limit:
                self._slot_failed(slot, blocks, failures, queue, f"it ran past its time limit of {limit:.3g} s "
                                  + ("(timeout_s)" if self.timeout_s is not None else "(automatic: timeout_s=None)"))

    def _slot_failed(self, slot, blocks, failures, queue, why: str) -> None:
        """The running block failed: re-queue it and the blocks queued behind it, replace the actor."""
        i = slot.tasks[0][1]
        failures[i] += 1
        self.faults.append(f"members {describe(blocks[i])}: {why}")
        queue.extendleft(reversed([task[1] for task in slot.tasks]))
        slot.tasks = []
        self._replace(slot)
        if failures[i] > self.max_retries:
            raise RuntimeError(f"members {describe(blocks[i])} failed {failures[i]} times, the last because "
                               f"{why}; giving up after max_retries={self.max_retries} (no generation was applied)")

    def _start_failed(self, slot, count: int, exc) -> int:
        count += 1
        if count > self.max_retries * max(1, self.size):
            raise RuntimeError(f"Ray actors keep dying while starting ({type(exc).__name__}: {exc})") from exc
        self._replace(slot)
        return count
