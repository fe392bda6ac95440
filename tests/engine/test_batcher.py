"""The micro-batcher on the real MiniLM encoder: caps, budgets, 429, deadlines, dropped items."""

import asyncio
import time
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from app.encoders.base import Prepared
from app.encoders.sources import resolve_source
from app.encoders.text_hf import HFTextEncoder
from app.engine.batcher import Batcher, BatchLimits
from app.engine.worker import DeviceWorker
from app.errors import Overloaded, TimedOut
from app.pipeline import read_config
from app.settings import PROJECT_ROOT

DEFAULT_PIPELINE = PROJECT_ROOT / "models" / "default"


class RecordingEncoder(HFTextEncoder):
    """The real text encoder, also recording the rows and cost of every forward pass."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.batches: list[list[Prepared]] = []

    def forward(self, batch: list[Prepared]) -> np.ndarray:
        self.batches.append(list(batch))
        return super().forward(batch)


@pytest.fixture(scope="module")
def encoder() -> Iterator[RecordingEncoder]:
    spec = read_config(DEFAULT_PIPELINE).encoders["text"]
    options = spec.options()
    source = resolve_source(options.pop("source"), DEFAULT_PIPELINE)
    yield RecordingEncoder(
        source=source, model_id=spec.model, device=torch.device("cpu"), max_chars=20_000, **options
    )


def make_batcher(encoder: RecordingEncoder, **limits: float) -> tuple[Batcher, DeviceWorker]:
    worker = DeviceWorker(torch.device("cpu"))
    settings = {"max_batch_size": 4, "max_batch_cost": 10_000, "max_queue_items": 100, **limits}
    batcher = Batcher("test/text", encoder, worker, BatchLimits(**settings))  # type: ignore[arg-type]
    return batcher, worker


def texts(count: int, words: int = 5) -> list[str]:
    return [f"sentence {i} " + "word " * words for i in range(count)]


async def submit_all(batcher: Batcher, encoder: RecordingEncoder, items: list[str], timeout: float = 60):
    deadline = time.monotonic() + timeout
    prepared = [encoder.preprocess(text) for text in items]
    return await asyncio.gather(*(batcher.submit(p, deadline) for p in prepared), return_exceptions=True)


def run(coro):
    return asyncio.run(coro)


def test_batches_respect_row_cap(encoder: RecordingEncoder) -> None:
    async def scenario():
        batcher, worker = make_batcher(encoder, max_batch_size=4)
        encoder.batches.clear()
        async with worker.lock:  # the device is busy: everything queues up
            batcher.start()
            pending = asyncio.ensure_future(submit_all(batcher, encoder, texts(10)))
            await asyncio.sleep(0.05)
        results = await pending
        await batcher.stop()
        return results

    results = run(scenario())
    assert all(isinstance(r, np.ndarray) for r in results)
    sizes = [len(batch) for batch in encoder.batches]
    assert max(sizes) == 4
    assert sum(sizes) == 10


def test_batches_respect_token_budget(encoder: RecordingEncoder) -> None:
    async def scenario():
        # Each text is 34 tokens; a budget of 100 padded tokens fits two of them.
        batcher, worker = make_batcher(encoder, max_batch_size=32, max_batch_cost=100)
        encoder.batches.clear()
        async with worker.lock:
            batcher.start()
            pending = asyncio.ensure_future(submit_all(batcher, encoder, texts(6, words=30)))
            await asyncio.sleep(0.05)
        results = await pending
        await batcher.stop()
        return results

    results = run(scenario())
    assert all(isinstance(r, np.ndarray) for r in results)
    for batch in encoder.batches:
        assert encoder.batch_cost([p.cost for p in batch]) <= 100
    assert sum(len(batch) for batch in encoder.batches) == 6


def test_oversize_item_runs_alone(encoder: RecordingEncoder) -> None:
    async def scenario():
        batcher, worker = make_batcher(encoder, max_batch_size=32, max_batch_cost=50)
        encoder.batches.clear()
        async with worker.lock:
            batcher.start()
            long_first = asyncio.ensure_future(submit_all(batcher, encoder, ["long " * 200]))
            await asyncio.sleep(0.01)
            short_after = asyncio.ensure_future(submit_all(batcher, encoder, texts(3, words=2)))
            await asyncio.sleep(0.05)
        results = (await long_first) + (await short_after)
        await batcher.stop()
        return results

    results = run(scenario())
    assert all(isinstance(r, np.ndarray) for r in results)
    assert [len(batch) for batch in encoder.batches][0] == 1
    assert encoder.batches[0][0].cost == 202
    assert sum(len(batch) for batch in encoder.batches[1:]) == 3


def test_full_queue_raises_overloaded(encoder: RecordingEncoder) -> None:
    async def scenario():
        batcher, worker = make_batcher(encoder, max_queue_items=3)
        async with worker.lock:
            batcher.start()
            pending = asyncio.ensure_future(submit_all(batcher, encoder, texts(5)))
            await asyncio.sleep(0.05)
        results = await pending
        await batcher.stop()
        return results

    results = run(scenario())
    assert sum(isinstance(r, np.ndarray) for r in results) == 3
    rejected = [r for r in results if isinstance(r, Overloaded)]
    assert len(rejected) == 2
    assert rejected[0].limit == 3
    assert rejected[0].retry_after_s >= 1


def test_expired_item_never_reaches_encoder(encoder: RecordingEncoder) -> None:
    async def scenario():
        batcher, worker = make_batcher(encoder)
        encoder.batches.clear()
        async with worker.lock:
            batcher.start()
            doomed = asyncio.ensure_future(submit_all(batcher, encoder, ["expires in the queue"], timeout=0.01))
            patient = asyncio.ensure_future(submit_all(batcher, encoder, ["waits patiently"]))
            await asyncio.sleep(0.1)
        results = (await doomed) + (await patient)
        await batcher.stop()
        return results

    doomed, patient = run(scenario())
    assert isinstance(doomed, TimedOut)
    assert isinstance(patient, np.ndarray)
    seen = [p.data.input_ids for batch in encoder.batches for p in batch]
    assert seen == [encoder.preprocess("waits patiently").data.input_ids]


def test_cancelled_item_is_dropped(encoder: RecordingEncoder) -> None:
    async def scenario():
        batcher, worker = make_batcher(encoder)
        encoder.batches.clear()
        async with worker.lock:
            batcher.start()
            gone = asyncio.ensure_future(submit_all(batcher, encoder, ["client went away"]))
            kept = asyncio.ensure_future(submit_all(batcher, encoder, ["client stayed"]))
            await asyncio.sleep(0.05)
            gone.cancel()
            await asyncio.sleep(0.01)
        result = await kept
        await batcher.stop()
        return result, batcher.queued

    (kept,), queued = run(scenario())
    assert isinstance(kept, np.ndarray)
    assert queued == 0
    seen = [p.data.input_ids for batch in encoder.batches for p in batch]
    assert seen == [encoder.preprocess("client stayed").data.input_ids]


def test_batched_result_equals_alone(encoder: RecordingEncoder) -> None:
    async def scenario():
        batcher, worker = make_batcher(encoder, max_batch_size=8)
        batcher.start()
        alone = await submit_all(batcher, encoder, ["the same sentence"])
        async with worker.lock:
            pending = asyncio.ensure_future(
                submit_all(batcher, encoder, ["much longer text " * 30, "the same sentence", "x " * 90])
            )
            await asyncio.sleep(0.05)
        together = await pending
        await batcher.stop()
        return alone[0], together[1]

    alone, together = run(scenario())
    assert np.abs(alone - together).max() <= 1e-5


def test_text_grouped_by_length(encoder: RecordingEncoder) -> None:
    async def scenario():
        batcher, worker = make_batcher(encoder, max_batch_size=2, max_batch_cost=10_000)
        encoder.batches.clear()
        async with worker.lock:
            batcher.start()
            lengths = [3, 60, 4, 61]
            pending = asyncio.ensure_future(submit_all(batcher, encoder, ["w " * n for n in lengths]))
            await asyncio.sleep(0.05)
        await pending
        await batcher.stop()

    run(scenario())
    grouped = [sorted(p.cost for p in batch) for batch in encoder.batches]
    assert grouped == [[5, 6], [62, 63]]


async def _submit_one_by_one(batcher: Batcher, encoder: RecordingEncoder, items: list[str]) -> list[object]:
    """Submit items on separate turns of the event loop, as callers coming back one after another."""
    deadline = time.monotonic() + 60
    futures = []
    for text in items:
        futures.append(asyncio.ensure_future(batcher.submit(encoder.preprocess(text), deadline)))
        await asyncio.sleep(0)
    return await asyncio.gather(*futures)


def _batch_sizes_after_a_busy_batch(encoder: RecordingEncoder, refill_wait: float, first: int) -> list[int]:
    async def scenario() -> None:
        batcher, worker = make_batcher(encoder, max_batch_size=8, refill_wait=refill_wait)
        async with worker.lock:  # the first items queue up and run as one batch
            batcher.start()
            pending = asyncio.ensure_future(submit_all(batcher, encoder, texts(first)))
            await asyncio.sleep(0.05)
        await pending
        # Their callers send again at once, one after another.
        await _submit_one_by_one(batcher, encoder, texts(first))
        await batcher.stop()

    encoder.batches.clear()
    run(scenario())
    return [len(batch) for batch in encoder.batches]


def test_batch_waits_for_returning_callers(encoder: RecordingEncoder) -> None:
    assert _batch_sizes_after_a_busy_batch(encoder, refill_wait=1.0, first=4) == [4, 4]


def test_no_refill_wait_splits_callers(encoder: RecordingEncoder) -> None:
    sizes = _batch_sizes_after_a_busy_batch(encoder, refill_wait=0.0, first=4)
    assert sizes[0] == 4, sizes
    assert sizes[1] < 4, sizes


def test_no_refill_wait_after_a_single_item(encoder: RecordingEncoder) -> None:
    # A batch of one with nothing queued is what an idle service runs: the next item
    # starts at once rather than waiting for the one behind it.
    assert _batch_sizes_after_a_busy_batch(encoder, refill_wait=1.0, first=1)[:2] == [1, 1]


def test_refill_wait_ends_at_its_deadline(encoder: RecordingEncoder) -> None:
    async def scenario() -> None:
        batcher, worker = make_batcher(encoder, max_batch_size=8, refill_wait=1.0)
        async with worker.lock:
            batcher.start()
            pending = asyncio.ensure_future(submit_all(batcher, encoder, texts(4)))
            await asyncio.sleep(0.05)
        await pending
        # One caller of four comes back: its item runs once the wait is over.
        [row] = await asyncio.wait_for(submit_all(batcher, encoder, texts(1)), timeout=10)
        assert isinstance(row, np.ndarray)
        await batcher.stop()

    encoder.batches.clear()
    run(scenario())
    assert [len(batch) for batch in encoder.batches] == [4, 1]
