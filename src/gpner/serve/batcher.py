"""Micro-batching: concurrent requests share one model call, run off the event loop.

Requests put their texts on a queue. One worker task takes the first waiting request, gathers
more for at most ``max_wait`` seconds or until ``max_batch`` texts are in hand, and runs the
prediction function for all of them in a single-thread executor, so the event loop keeps
answering (health checks, new requests queueing up) while the model computes. Under load the
queue fills while the model runs, so batches grow with the number of concurrent clients.

The window is waited for only when more requests are likely: while another request is on its
way (announced with :meth:`MicroBatcher.arriving`, e.g. while its body is read and parsed), or
when the last batch held more than one request (the server is under load). A lone client's
request runs at once instead of paying the window. Nor is it waited for when requests queued
while the model ran (a backlog): the model is the bottleneck then, so it starts on them at once,
and computes while the event loop writes the last batch's answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

__all__ = ["BatchStats", "MicroBatcher", "QueueFull"]

log = logging.getLogger("gpner.serve")

# predict(texts, threshold, flat) -> one result per text, in order
PredictFn = Callable[[list[str], "float | None", "bool | None"], list]


class QueueFull(RuntimeError):
    """More texts are waiting than ``max_queue`` allows."""


@dataclass
class _Job:
    texts: list[str]
    threshold: float | None
    flat: bool | None
    future: asyncio.Future


@dataclass
class BatchStats:
    """Counters since start: model calls, texts predicted, and the largest batch seen."""

    batches: int = 0
    texts: int = 0
    largest: int = 0
    failures: int = 0
    sizes: dict[int, int] = field(default_factory=dict)  # batch size -> how many batches

    def record(self, size: int) -> None:
        self.batches += 1
        self.texts += size
        self.largest = max(self.largest, size)
        self.sizes[size] = self.sizes.get(size, 0) + 1


class MicroBatcher:
    """Gathers concurrent :meth:`submit` calls into batched calls of ``predict``.

    ``max_batch`` caps the texts gathered for one call (a single request larger than that still
    runs whole); ``max_wait`` is the gathering window in seconds; ``max_queue`` caps the texts
    waiting, past which :meth:`submit` raises :class:`QueueFull`. Requests with different
    ``threshold``/``flat`` in one batch are predicted group by group.
    """

    def __init__(
        self,
        predict: PredictFn,
        max_batch: int = 32,
        max_wait: float = 0.002,
        max_queue: int = 4096,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait < 0:
            raise ValueError(f"max_wait must be >= 0, got {max_wait}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.predict = predict
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.max_queue = max_queue
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Job] | None = None
        self._waiting = 0  # texts queued, not yet taken by the worker
        self._arriving = 0  # requests announced, not yet submitted
        self._last_jobs = 0  # requests in the last batch
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def alive(self) -> bool:
        return self._worker is not None and not self._worker.done()

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpner-model")
        self._worker = asyncio.create_task(self._run(), name="gpner-batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        if self._queue is not None:
            while not self._queue.empty():
                job = self._queue.get_nowait()
                if not job.future.done():
                    job.future.set_exception(RuntimeError("server shutting down"))

    @contextlib.contextmanager
    def arriving(self):
        """Announce a request that will (probably) :meth:`submit` soon, e.g. while its body is
        read and parsed, so that a batch being gathered waits for it."""
        self._arriving += 1
        try:
            yield
        finally:
            self._arriving -= 1

    def enqueue(
        self, texts: Sequence[str], threshold: float | None = None, flat: bool | None = None
    ) -> asyncio.Future:
        """Queue ``texts`` now; the future gets their predictions, computed in some batch."""
        if not self.alive:
            raise RuntimeError("the batching worker is not running")
        if self._waiting + len(texts) > self.max_queue:
            raise QueueFull(f"{self._waiting} texts already waiting (max_queue={self.max_queue})")
        future = asyncio.get_running_loop().create_future()
        self._waiting += len(texts)
        self._queue.put_nowait(_Job(list(texts), threshold, flat, future))
        return future

    async def submit(
        self, texts: Sequence[str], threshold: float | None = None, flat: bool | None = None
    ) -> list:
        """The predictions for ``texts``, computed in some batch with other requests' texts."""
        return await self.enqueue(texts, threshold, flat)

    async def _gather(self) -> list[_Job]:
        # A backlog (requests queued while the model ran) is the next batch as it stands: waiting
        # for more would idle the model, and stall it behind the answers of the last batch, which
        # the event loop writes as soon as this task yields.
        backlog = not self._queue.empty()
        jobs = [await self._queue.get()]
        count = len(jobs[0].texts)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while count < self.max_batch:
            if self._queue.empty():
                if backlog:
                    break
                left = deadline - loop.time()
                busy = self._arriving or self._last_jobs > 1
                if left <= 0 or not busy:  # nobody else on the way: run now
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), left)
                except asyncio.TimeoutError:
                    break
            else:
                job = self._queue.get_nowait()
            jobs.append(job)
            count += len(job.texts)
        self._waiting -= count
        self._last_jobs = len(jobs)
        return jobs

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._gather()
            groups: dict[tuple, list[_Job]] = {}
            for job in jobs:
                if not job.future.done():  # a cancelled request (client gone) needs no work
                    groups.setdefault((job.threshold, job.flat), []).append(job)
            for (threshold, flat), group in groups.items():
                texts = [t for job in group for t in job.texts]
                try:
                    results = await loop.run_in_executor(
                        self._executor, self.predict, texts, threshold, flat
                    )
                except Exception as error:  # a failed batch fails its requests, not the worker
                    log.exception("prediction failed for a batch of %d texts", len(texts))
                    self.stats.failures += 1
                    for job in group:
                        if not job.future.done():
                            job.future.set_exception(error)
                    continue
                self.stats.record(len(texts))
                pos = 0
                for job in group:
                    part = results[pos : pos + len(job.texts)]
                    pos += len(job.texts)
                    if not job.future.done():
                        job.future.set_result(part)
