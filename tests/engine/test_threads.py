"""Which threads run torch: models load on the device thread, and preprocessing keeps to one OpenMP thread."""

import asyncio
import threading
from pathlib import Path

import pytest
import torch

import app.engine.engine as engine_module
from app.engine.engine import Engine
from app.settings import Settings
from tests.support.pipelines import write_text_pipeline


def test_preprocess_pool_uses_one_openmp_thread() -> None:
    engine = Engine(Settings())
    main_threads = torch.get_num_threads()
    try:
        assert engine._pool.submit(torch.get_num_threads).result() == 1
        assert torch.get_num_threads() == main_threads
    finally:
        engine._pool.shutdown()
        engine._worker.shutdown()


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
