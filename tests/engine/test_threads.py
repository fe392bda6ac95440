"""Which threads run torch: models load on the device thread, and every other thread keeps torch to itself."""

import asyncio
import os
import threading
from pathlib import Path

import pytest
import torch
from threadpoolctl import threadpool_info

import app.engine.engine as engine_module
from app.engine.engine import Engine
from app.settings import Settings
from tests.support.pipelines import write_text_pipeline


def _torch_thread_counts() -> dict[str, int]:
    """Return the calling thread's OpenMP and torch-MKL thread counts, as threadpoolctl reads them."""
    torch_libraries = ("libgomp", "libtorch_cpu")
    return {info["prefix"]: info["num_threads"] for info in threadpool_info() if info["prefix"] in torch_libraries}


def test_preprocess_pool_keeps_torch_on_its_threads() -> None:
    engine = Engine(Settings())
    main_counts = _torch_thread_counts()
    try:
        assert engine._pool.submit(torch.get_num_threads).result() == 1
        pool_counts = engine._pool.submit(_torch_thread_counts).result()
        # libtorch_cpu shows up where torch links MKL (x86-64 builds).
        assert pool_counts["libgomp"] == 1
        assert set(pool_counts.values()) == {1}
        assert _torch_thread_counts() == main_counts
    finally:
        engine._pool.shutdown()
        engine._worker.shutdown()


def _os_threads() -> set[str]:
    return set(os.listdir("/proc/self/task"))


def _parallel_operators() -> None:
    """Run operators that open OpenMP regions (ATen's parallel_for) and MKL's threaded GEMM."""
    torch.ones(2_000_000).sin()
    torch.mm(torch.ones(512, 512), torch.ones(512, 512))


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc to list threads")
def test_only_the_device_thread_starts_torch_threads(tmp_path: Path) -> None:
    """Torch on the event loop or in the pool must not start thread teams of its own.

    A second OpenMP team makes libgomp shorten every thread's spinning, which slowed the
    device thread's forward passes 2 to 3 times. The loop runs on a new thread, which has
    no team yet, like the server's main thread when it starts. MMS_TORCH_THREADS
    is set, because that is when torch also sets MKL's count on every new thread.
    """
    threads = torch.get_num_threads()
    if threads < 2:
        pytest.skip("torch runs on one thread here, so no thread team is ever started")
    env = write_text_pipeline(tmp_path / "models")
    settings = Settings(models_dir=env["MMS_MODELS_DIR"], pipelines=["text"], torch_threads=threads)
    outcome: dict[str, object] = {}

    async def serve_and_run_torch_off_the_device() -> None:
        engine = Engine(settings)
        await engine.start()
        try:
            loop = asyncio.get_running_loop()
            # Start every pool thread before the count: each job waits until all are running.
            all_started = threading.Barrier(settings.preprocess_threads)
            await asyncio.gather(
                *(loop.run_in_executor(engine._pool, all_started.wait) for _ in range(settings.preprocess_threads))
            )
            before = _os_threads()
            _parallel_operators()
            await asyncio.gather(*(loop.run_in_executor(engine._pool, _parallel_operators) for _ in range(4)))
            outcome["new threads"] = _os_threads() - before
            outcome["loop threads while serving"] = torch.get_num_threads()
            outcome["device threads"] = await engine._worker.run_setup(torch.get_num_threads)
        finally:
            await engine.stop()
        outcome["loop threads after stop"] = torch.get_num_threads()

    loop_thread = threading.Thread(target=asyncio.run, args=(serve_and_run_torch_off_the_device(),))
    loop_thread.start()
    loop_thread.join()
    assert "loop threads after stop" in outcome, "the event loop thread failed; its traceback is printed above"
    assert outcome["new threads"] == set()
    assert outcome["loop threads while serving"] == 1
    assert outcome["device threads"] == threads
    assert outcome["loop threads after stop"] == threads


def test_models_load_on_device_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = write_text_pipeline(tmp_path / "models")
    settings = Settings(models_dir=env["MMS_MODELS_DIR"], pipelines=["text"])
    loading_threads: list[str] = []
    real_load = engine_module.load_pipeline

    def recording_load(*args: object, **kwargs: object) -> object:
        loading_threads.append(threading.current_thread().name)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(engine_module, "load_pipeline", recording_load)

    async def start_and_query() -> tuple[int, int]:
        engine = Engine(settings)
        await engine.start()
        try:
            device_threads = await engine._worker.run_setup(torch.get_num_threads)
            return device_threads, engine.max_batch_rows("text", "text")
        finally:
            await engine.stop()

    device_threads, rows = asyncio.run(start_and_query())
    assert len(loading_threads) == 1
    assert loading_threads[0].startswith("device")
    assert device_threads == torch.get_num_threads()
    assert rows == settings.max_batch_size
