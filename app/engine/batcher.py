"""Per-encoder micro-batching with a bounded queue, a row cap and a cost budget.

Items wait in the queue only while the device is busy: when the device lock is free
the batcher takes what is queued at once, up to `max_batch_size` rows and the cost
budget, so an idle device adds no wait. An item costlier than the whole budget runs
alone rather than waiting forever. Expired items and items whose caller went away
are dropped before the forward pass.
"""

import asyncio
import itertools
import logging
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from app import metrics
from app.encoders.base import Encoder, Prepared
from app.engine.worker import DeviceWorker
from app.errors import Overloaded, TimedOut

logger = logging.getLogger(__name__)

# How many batches' worth of queued items the batcher looks at when grouping by cost.
LOOKAHEAD_BATCHES = 4


@dataclass(slots=True)
class _Item:
    prepared: Prepared
    future: asyncio.Future[np.ndarray]
    deadline: float
    enqueued: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, slots=True)
class BatchLimits:
    max_batch_size: int
    max_batch_cost: int
    max_queue_items: int
    max_wait_s: float = 0.0
    refill_wait: float = 0.0
    """Maximum wait for a batch to refill, as a fraction of the last forward pass; 0 never waits."""


def largest_batch(encoder: Encoder, limits: BatchLimits) -> int:
    """Return the most rows of the encoder's example input that one batch may hold under the limits."""
    cost = encoder.preprocess(encoder.example_payload()).cost
    rows = limits.max_batch_size
    while rows > 1 and encoder.batch_cost([cost] * rows) > limits.max_batch_cost:
        rows -= 1
    return rows


class Batcher:
    def __init__(self, name: str, encoder: Encoder, worker: DeviceWorker, limits: BatchLimits) -> None:
        self.name = name
        self.encoder = encoder
        self.worker = worker
        self.limits = limits
        self._queue: deque[_Item] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._queue_gauge = metrics.QUEUE_DEPTH.labels(name)
        # Set by each forward pass: how many queued items the next batch waits for, until
        # when, and whether the cost budget cut the batch short.
        self._refill_target = 0
        self._refill_deadline = 0.0
        self._full_by_cost = False

    @property
    def queued(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def submit(self, prepared: Prepared, deadline: float) -> np.ndarray:
        """Queue one item and wait for its embedding; raise Overloaded when the queue is full."""
        if len(self._queue) >= self.limits.max_queue_items:
            metrics.ITEMS_REJECTED.labels(self.name).inc()
            raise Overloaded(
                f"the {self.name} queue holds {len(self._queue)} items, its limit; retry shortly",
                limit=self.limits.max_queue_items,
            )
        item = _Item(prepared, asyncio.get_running_loop().create_future(), deadline)
        self._queue.append(item)
        self._queue_gauge.set(len(self._queue))
        self._wakeup.set()
        return await item.future

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            if not self._queue:
                self._wakeup.clear()
                continue
            await self._maybe_wait_for_companions()
            async with self.worker.lock:
                batch = self._take_batch()
                if batch:
                    await self._forward(batch)

    async def _maybe_wait_for_companions(self) -> None:
        if len(self._queue) >= self.limits.max_batch_size:
            return
        if self.limits.max_wait_s > 0:  # off by default: an idle device should start at once
            await asyncio.sleep(self.limits.max_wait_s)
        else:
            await self._wait_for_refill()

    async def _wait_for_refill(self) -> None:
        """Right after a busy batch, wait briefly until as many items are queued as then.

        Under a steady load of n concurrent callers, the callers of the batch that just
        ended send their next items a moment later. Starting at once with the items
        already queued splits the n callers into two half-size batches that then take
        turns for good. So after a batch, the next one waits until the queue contains as
        many items as the batch and the queue together contained when it ended, for at
        most `refill_wait` times that batch's forward pass. After a batch of one item
        with nothing queued, as when the service is idle, nothing waits. Neither does a
        batch after one that the cost budget cut short, because a larger one cannot run.
        """
        try:
            async with asyncio.timeout(self._refill_deadline - time.monotonic()):
                while len(self._queue) < self._refill_target:
                    self._wakeup.clear()
                    await self._wakeup.wait()
        except TimeoutError:
            pass
        self._wakeup.set()  # the run loop relies on it while items are queued

    def _take_batch(self) -> list[_Item]:
        now = time.monotonic()
        self._drop_stale(now)
        chosen: list[_Item] = []
        costs: list[int] = []
        self._full_by_cost = False
        for item in self._candidates():
            if len(chosen) == self.limits.max_batch_size:
                break
            cost = self.encoder.batch_cost([*costs, item.prepared.cost])
            # The oldest item always runs, alone if it is costlier than the whole budget.
            if chosen and cost > self.limits.max_batch_cost:
                self._full_by_cost = True
                continue
            chosen.append(item)
            costs.append(item.prepared.cost)
        if chosen:
            taken = {id(item) for item in chosen}
            self._queue = deque(item for item in self._queue if id(item) not in taken)
            metrics.BATCH_SIZE.labels(self.name).observe(len(chosen))
            metrics.BATCH_COST.labels(self.name).observe(self.encoder.batch_cost(costs))
            for item in chosen:
                metrics.QUEUE_SECONDS.labels(self.name).observe(now - item.enqueued)
        self._queue_gauge.set(len(self._queue))
        return chosen

    def _candidates(self) -> list[_Item]:
        """Return the look-ahead window, oldest first, then by closeness in cost to it.

        For encoders that pad every row to the longest (text), grouping items of
        similar length cuts padding; the oldest item leads so that nothing starves.
        """
        window = list(itertools.islice(self._queue, self.limits.max_batch_size * LOOKAHEAD_BATCHES))
        if not window or not self.encoder.pads_to_longest:
            return window
        oldest = window[0]
        rest = sorted(window[1:], key=lambda item: abs(item.prepared.cost - oldest.prepared.cost))
        return [oldest, *rest]

    def _drop_stale(self, now: float) -> None:
        """Remove items whose caller went away or whose deadline passed."""
        kept: deque[_Item] = deque()
        for item in self._queue:
            if item.future.done():
                metrics.ITEMS_DROPPED.labels(self.name).inc()
            elif item.deadline <= now:
                metrics.ITEMS_EXPIRED.labels(self.name).inc()
                item.future.set_exception(TimedOut("the request waited past its deadline in the queue"))
            else:
                kept.append(item)
        self._queue = kept

    async def _forward(self, batch: list[_Item]) -> None:
        started = time.perf_counter()
        try:
            rows = await self.worker.run(self.encoder.forward, [item.prepared for item in batch])
        except Exception as exc:  # a failing forward pass is a bug; report it, keep serving
            logger.exception("forward pass of %s failed on a batch of %d", self.name, len(batch))
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        elapsed = time.perf_counter() - started
        # A batch that the cost budget cut short was as full as a batch gets.
        waiting = 0 if self._full_by_cost else len(self._queue)
        self._refill_target = min(len(batch) + waiting, self.limits.max_batch_size)
        self._refill_deadline = time.monotonic() + self.limits.refill_wait * elapsed
        metrics.FORWARD_SECONDS.labels(self.name).observe(elapsed)
        logger.debug("%s forward: %d items in %.1f ms", self.name, len(batch), 1000 * (time.perf_counter() - started))
        for item, row in zip(batch, rows, strict=True):
            if not item.future.done():
                item.future.set_result(row)
