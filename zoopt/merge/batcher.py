"""A queue that batches concurrent evaluation requests into one forward.

Requests wait at most ``window_s`` for company; up to ``slots`` run together.
Each request brings a function that builds its merged factors; the merges and
the model run in a worker thread so the event loop keeps serving (health,
validation errors, other sessions) while a batch computes.
"""
from __future__ import annotations

import asyncio


class EvalBatcher:
    def __init__(self, slot_model, window_s: float = 0.01):
        self.slot_model = slot_model
        self.window_s = window_s
        self.queue: asyncio.Queue | None = None
        self.task = None
        self.batches = 0  # forwards run, for the batching test and the logs

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._worker())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()

    @property
    def pending(self) -> int:
        """Requests waiting for a forward (for the service's back-pressure)."""
        return self.queue.qsize() if self.queue is not None else 0

    async def evaluate(self, make_factors, examples: list) -> float:
        """``make_factors()`` -> ``{module: (A, B)}``, called in the worker thread."""
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((make_factors, examples, future))
        return await future

    async def _worker(self) -> None:
        while True:
            batch = [await self.queue.get()]
            deadline = asyncio.get_running_loop().time() + self.window_s
            while len(batch) < self.slot_model.slots:
                timeout = deadline - asyncio.get_running_loop().time()
                if timeout <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), timeout))
                except asyncio.TimeoutError:
                    break
            try:
                losses = await asyncio.to_thread(self._run, batch)
                for (_, _, fut), loss in zip(batch, losses):
                    if not fut.done():
                        fut.set_result(loss)
            except Exception as exc:  # reported to every waiting request, the worker keeps serving
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)

    def _run(self, batch) -> list:
        for slot, (make_factors, _, _) in enumerate(batch):
            self.slot_model.write(slot, make_factors())
        self.batches += 1
        return self.slot_model.losses([(slot, examples) for slot, (_, examples, _) in enumerate(batch)])
