"""Soak: thousands of mixed requests at high concurrency against one real server.

Every response must equal its input's result when sent alone, no request may fail,
and the server's resident memory after the run must stay within 10 % of its value
after a warm-up. Opt-in: `pytest -m soak` (see tests/soak/conftest.py).

The server runs with two glibc malloc arenas (MALLOC_ARENA_MAX=2), as `make serve`
and the container do, so that memory freed by one preprocessing thread serves the
next. The warm-up runs until memory levels off. Memory is read once the server has
been idle long enough to hand its free heap pages back (MMS_IDLE_TRIM_S), so the
readings show what the process keeps, not what glibc holds for reuse.
"""

import asyncio
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.api.helpers import data_uri, max_difference, queued_items, scrape, wait_until
from tests.support.server import RunningServer, run_server

REQUESTS = 5_000
WARMUP_REQUESTS = 500
MAX_WARMUP_ROUNDS = 8
WARMUP_LEVEL_GROWTH = 0.02
CONCURRENCY = 64
TIME_LIMIT_S = 1_200.0
REQUEST_TIMEOUT_S = 300.0
TOLERANCE = 1e-5
MAX_RSS_GROWTH = 0.10
IDLE_TRIM_S = 1.0
SETTLE_S = 3.0
SEED = 20_261_204


@dataclass(frozen=True)
class SoakInput:
    name: str
    json: dict[str, Any] | None = None
    files: list[tuple[str, tuple[str | None, bytes | str]]] | None = None

    async def send(self, client: httpx.AsyncClient) -> list[np.ndarray]:
        """Send the input and return its vectors: one per item for JSON, one for multipart."""
        if self.json is not None:
            response = await client.post("/v1/embeddings", json=self.json)
            response.raise_for_status()
            return [np.asarray(item["embedding"]) for item in response.json()["data"]]
        response = await client.post("/v1/embed", files=self.files)
        response.raise_for_status()
        return [np.asarray(response.json()["embedding"])]


def build_inputs(jpegs: dict[str, bytes], speech: list[bytes]) -> list[SoakInput]:
    texts = [
        "A cat is sleeping on the sofa.",
        "Stock markets fell sharply on Monday after the announcement.",
        "猫がソファの上で寝ています。",
        "A long description of a quiet harbour town at dawn, " * 12,
    ]
    cat, coffee = jpegs["cat"], jpegs["coffee"]
    inputs = [SoakInput(f"json-text-{i}", json={"model": "default", "input": text}) for i, text in enumerate(texts)]
    inputs += [
        SoakInput("json-texts", json={"model": "default", "input": texts}),
        SoakInput(
            "json-mixed",
            json={
                "model": "default",
                "input": [
                    texts[0],
                    {"text": texts[1], "image": data_uri(cat, "image/jpeg")},
                    {"audio": data_uri(speech[1], "audio/wav")},
                ],
                "encoding_format": "float",
            },
        ),
        SoakInput("multipart-text", files=[("text", (None, texts[1]))]),
        SoakInput("multipart-image", files=[("image", ("coffee.jpg", coffee))]),
        SoakInput("multipart-audio", files=[("audio", ("speech.wav", speech[0]))]),
        SoakInput(
            "multipart-all",
            files=[("text", (None, texts[2])), ("image", ("cat.jpg", cat)), ("audio", ("speech.wav", speech[2]))],
        ),
    ]
    return inputs


@dataclass
class SoakReport:
    requests: int = 0
    errors: int = 0
    mismatches: int = 0
    largest_difference: float = 0.0
    seconds: float = 0.0
    first_problem: str = ""


async def replay(
    url: str, inputs: list[SoakInput], expected: dict[str, list[np.ndarray]], count: int, seed: int
) -> SoakReport:
    """Send `count` randomly chosen inputs, `CONCURRENCY` at a time, and compare each result."""
    chooser = random.Random(seed)
    plan = [chooser.choice(inputs) for _ in range(count)]
    report = SoakReport()
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    started = time.perf_counter()

    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT_S, limits=limits) as client:
        queue: asyncio.Queue[SoakInput] = asyncio.Queue()
        for item in plan:
            queue.put_nowait(item)

        async def worker() -> None:
            while not queue.empty():
                item = queue.get_nowait()
                report.requests += 1
                try:
                    vectors = await item.send(client)
                except httpx.HTTPError as error:
                    report.errors += 1
                    report.first_problem = report.first_problem or f"{item.name}: {error!r}"
                    continue
                expected_vectors = expected[item.name]
                differences = [max_difference(v, w) for v, w in zip(vectors, expected_vectors, strict=True)]
                report.largest_difference = max(report.largest_difference, *differences)
                if len(vectors) != len(expected_vectors) or max(differences) > TOLERANCE:
                    report.mismatches += 1
                    report.first_problem = report.first_problem or f"{item.name}: differs by {max(differences)}"

        async with asyncio.timeout(TIME_LIMIT_S):
            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    report.seconds = time.perf_counter() - started
    return report


@pytest.fixture(scope="module")
def soak_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    log_path: Path = tmp_path_factory.mktemp("soak") / "server.log"
    # 64 concurrent mixed requests on two shared CPU cores can queue for longer than the
    # default 30 s deadline. This test checks results and memory, not latency.
    env = {
        "MMS_LOG_LEVEL": "WARNING",
        "MMS_REQUEST_TIMEOUT_S": str(REQUEST_TIMEOUT_S),
        "MALLOC_ARENA_MAX": "2",
        "MMS_IDLE_TRIM_S": str(IDLE_TRIM_S),
    }
    with run_server(env, log_path) as running:
        yield running


@pytest.mark.soak
def test_soak_mixed_requests(
    soak_server: RunningServer, photo_jpegs: dict[str, bytes], sentences_male: list[bytes]
) -> None:
    inputs = build_inputs(photo_jpegs, sentences_male)

    async def alone() -> dict[str, list[np.ndarray]]:
        async with httpx.AsyncClient(base_url=soak_server.url, timeout=REQUEST_TIMEOUT_S) as client:
            return {item.name: await item.send(client) for item in inputs}

    def settled_rss() -> int:
        time.sleep(SETTLE_S)
        return soak_server.rss_bytes()

    expected = asyncio.run(alone())
    rss_before = settled_rss()
    for round_index in range(MAX_WARMUP_ROUNDS):
        warmup = asyncio.run(replay(soak_server.url, inputs, expected, WARMUP_REQUESTS, SEED + round_index))
        assert warmup.errors == 0, warmup.first_problem
        previous, rss_before = rss_before, settled_rss()
        if rss_before <= previous * (1 + WARMUP_LEVEL_GROWTH):
            break
    warmup_requests = (round_index + 1) * WARMUP_REQUESTS

    report = asyncio.run(replay(soak_server.url, inputs, expected, REQUESTS, SEED + MAX_WARMUP_ROUNDS))
    rss_after = settled_rss()
    print(
        f"soak: {warmup_requests} warm-up requests, then {report.requests} requests in {report.seconds:.1f} s "
        f"({report.requests / report.seconds:.1f}/s), "
        f"largest difference {report.largest_difference:.2e}, "
        f"RSS {rss_before / 2**20:.0f} MiB -> {rss_after / 2**20:.0f} MiB"
    )

    assert report.requests == REQUESTS
    assert report.errors == 0, report.first_problem
    assert report.mismatches == 0, report.first_problem
    assert rss_after <= rss_before * (1 + MAX_RSS_GROWTH)
    with httpx.Client(base_url=soak_server.url) as client:
        assert wait_until(lambda: queued_items(client) == 0, timeout_s=10)
        rejected = sum(v for (name, _), v in scrape(client).items() if name == "mms_items_rejected_total")
    assert rejected == 0
