"""Freed heap memory goes back to the OS once the worker is idle, and loaded objects leave the collector's scans."""

import asyncio
import gc
import threading
import time
from pathlib import Path

import pytest
import torch

from app.engine.engine import Engine
from app.engine.memory import freeze_loaded_objects, release_free_heap
from app.engine.worker import DeviceWorker
from app.settings import Settings
from tests.support.pipelines import write_text_pipeline


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line in /proc/self/status")


def test_release_free_heap_lowers_rss() -> None:
    if not release_free_heap():
        pytest.skip("the C library has no malloc_trim (not glibc)")
    # 4 KiB blocks come from malloc's heap, not from mmap. Keeping the last one alive
    # pins the heap's top, so free() cannot give the others back by itself.
    blocks = [bytearray(4096) for _ in range(50_000)]
    last = blocks[-1]
    del blocks
    before = _rss_bytes()
    assert release_free_heap()
    after = _rss_bytes()
    assert before - after > 100 * 1024 * 1024, f"RSS fell from {before} to {after} bytes only"
    assert len(last) == 4096


class RecordingTrim:
    def __init__(self) -> None:
        self.threads: list[str] = []

    def __call__(self) -> bool:
        self.threads.append(threading.current_thread().name)
        return True


def test_worker_trims_once_when_idle() -> None:
    trim = RecordingTrim()
    worker = DeviceWorker(torch.device("cpu"), idle_trim_s=0.05, trim=trim)

    async def two_batches_then_idle() -> None:
        for _ in range(2):
            async with worker.lock:
                await worker.run(sum, [1, 2])
        assert trim.threads == [], "trimmed before the worker was idle"
        await asyncio.sleep(0.5)

    try:
        asyncio.run(two_batches_then_idle())
    finally:
        worker.shutdown()
    assert len(trim.threads) == 1
    assert trim.threads[0].startswith("device")


def test_worker_waits_while_a_batch_holds_the_device() -> None:
    trim = RecordingTrim()
    worker = DeviceWorker(torch.device("cpu"), idle_trim_s=0.05, trim=trim)

    async def hold_the_device() -> list[str]:
        async with worker.lock:
            await worker.run(sum, [1])
            # The timer fires while the lock is still held, as when the next batch is waiting.
            await asyncio.sleep(0.3)
            during = list(trim.threads)
        await asyncio.sleep(0.3)
        return during

    try:
        during = asyncio.run(hold_the_device())
    finally:
        worker.shutdown()
    assert during == []
    assert len(trim.threads) == 1, "no trim once the device was free again"


def test_zero_turns_trimming_off() -> None:
    trim = RecordingTrim()
    worker = DeviceWorker(torch.device("cpu"), idle_trim_s=0, trim=trim)

    async def one_batch() -> None:
        async with worker.lock:
            await worker.run(time.sleep, 0)
        await asyncio.sleep(0.2)

    try:
        asyncio.run(one_batch())
    finally:
        worker.shutdown()
    assert trim.threads == []


def _tracked(obj: object) -> bool:
    """Return whether a collection of any generation would scan `obj`."""
    return any(o is obj for o in gc.get_objects())


class Node:
    """An object that can take part in a reference cycle."""

    def __init__(self) -> None:
        self.partner: Node | None = None


def test_freeze_spares_new_cycles() -> None:
    loaded = {"weights": [1.0, 2.0]}
    try:
        assert freeze_loaded_objects() >= 1
        assert not _tracked(loaded)
        later = {"request": [3.0]}
        assert _tracked(later)
        a, b = Node(), Node()
        a.partner, b.partner = b, a
        del a, b
        assert gc.collect() >= 2  # a cycle made after the freeze is still found
    finally:
        gc.unfreeze()


def test_engine_freezes_loaded_models(tmp_path: Path) -> None:
    env = write_text_pipeline(tmp_path / "models")
    settings = Settings(models_dir=env["MMS_MODELS_DIR"], pipelines=["text"])

    async def start_and_check() -> tuple[bool, bool]:
        engine = Engine(settings)
        await engine.start()
        try:
            model = engine.pipelines["text"].encoders["text"].model
            return engine.ready, _tracked(model)
        finally:
            await engine.stop()

    try:
        ready, model_tracked = asyncio.run(start_and_check())
    finally:
        gc.unfreeze()
    assert ready
    assert not model_tracked
