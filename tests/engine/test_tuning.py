"""The batch-size search: measurement on the real MiniLM encoder, the disk cache, and a server using both."""

import json
import re
from pathlib import Path

import httpx
import pytest
import torch

from app.encoders.text_hf import HFTextEncoder
from app.engine.tuning import BatchSizeCache, best_batch_size, measure_best_batch
from tests.support.encoders import default_text_encoder
from tests.support.pipelines import write_text_pipeline
from tests.support.server import run_server


@pytest.fixture(scope="module")
def encoder() -> HFTextEncoder:
    return default_text_encoder()


def test_search_times_powers_of_two(encoder: HFTextEncoder) -> None:
    best, rates = measure_best_batch(encoder, largest=12)
    assert list(rates) == [1, 2, 4, 8]
    assert all(rate > 0 for rate in rates.values())
    assert best in rates
    # No size beats the knee by more than KNEE_GAIN (5 %).
    assert max(rates.values()) <= rates[best] * 1.05


def test_search_with_one_row_allowed(encoder: HFTextEncoder) -> None:
    best, rates = measure_best_batch(encoder, largest=1)
    assert best == 1
    assert list(rates) == [1]


def test_cache_skips_the_search(encoder: HFTextEncoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = BatchSizeCache(tmp_path / "sizes.json")
    first = best_batch_size(encoder, 4, torch.device("cpu"), cache)
    stored = json.loads(cache.path.read_text())
    assert list(stored.values()) == [first]
    assert "max 4" in next(iter(stored))

    def no_search(*args: object) -> None:
        raise AssertionError("the cached size should have been used")

    monkeypatch.setattr("app.engine.tuning.measure_best_batch", no_search)
    assert best_batch_size(encoder, 4, torch.device("cpu"), cache) == first


def test_cache_ignores_broken_file(tmp_path: Path) -> None:
    path = tmp_path / "sizes.json"
    path.write_text("{not json")
    cache = BatchSizeCache(path)
    assert cache.get("any") is None
    cache.put("any", 8)
    assert cache.get("any") == 8


def test_cache_rejects_bad_values(tmp_path: Path) -> None:
    path = tmp_path / "sizes.json"
    path.write_text(json.dumps({"zero": 0, "text": "8", "list": [1]}))
    cache = BatchSizeCache(path)
    assert cache.get("zero") is None
    assert cache.get("text") is None
    assert cache.get("list") is None


def test_cache_write_failure_keeps_serving(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    cache = BatchSizeCache(blocker / "sizes.json")  # its parent is a file, so the write fails
    cache.put("key", 4)
    assert cache.get("key") is None


def test_server_reports_tuned_batch_size(tmp_path: Path) -> None:
    cache_path = tmp_path / "cache" / "sizes.json"
    env = {
        **write_text_pipeline(tmp_path / "models"),
        "MMS_TUNE_BATCH_SIZE": "true",
        "MMS_BATCH_SIZE_CACHE": str(cache_path),
        "MMS_MAX_BATCH_SIZE": "8",
    }
    reported = []
    for start in ("first", "second"):
        log_path = tmp_path / f"{start}.log"
        with run_server(env, log_path) as server:
            models = httpx.get(f"{server.url}/v1/models", timeout=10).json()
            form = {"pipeline": (None, "text"), "text": (None, "a short sentence")}
            embed = httpx.post(f"{server.url}/v1/embed", files=form, timeout=30)
        assert embed.status_code == 200
        [encoder_info] = models["pipelines"][0]["encoders"]
        reported.append(encoder_info["max_batch_size"])
        log = log_path.read_text()
        if start == "first":
            assert re.search(r"measured in items/s per batch size: 1: [\d.]+, 2: [\d.]+, 4: [\d.]+, 8: [\d.]+", log)
        else:
            assert "from the cache" in log
    assert reported[0] == reported[1]
    assert reported[0] in (1, 2, 4, 8)
    assert list(json.loads(cache_path.read_text()).values()) == [reported[0]]


def test_server_without_tuning_reports_setting(tmp_path: Path) -> None:
    env = {**write_text_pipeline(tmp_path / "models"), "MMS_MAX_BATCH_SIZE": "16"}
    with run_server(env, tmp_path / "server.log") as server:
        models = httpx.get(f"{server.url}/v1/models", timeout=10).json()
    [encoder_info] = models["pipelines"][0]["encoders"]
    assert encoder_info["max_batch_size"] == 16
