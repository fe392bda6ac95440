"""Prometheus metrics move under load: queue depth, batch sizes, costs and stage times."""

import asyncio

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.server import RunningServer

TEXT_ENCODER = "default/text"


def scrape(client: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_move_during_load(server: RunningServer, client: httpx.Client) -> None:
    before = scrape(client)
    queue_seen: list[float] = []

    async def load() -> list[int]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
            requests = [
                asyncio.ensure_future(http.post("/v1/embed", files={"text": (None, f"metrics load sentence {i} " * 8)}))
                for i in range(48)
            ]
            while not all(r.done() for r in requests):
                text = (await http.get("/metrics")).text
                for family in text_string_to_metric_families(text):
                    for sample in family.samples:
                        if sample.name == "mms_queue_items" and sample.labels.get("encoder") == TEXT_ENCODER:
                            queue_seen.append(sample.value)
                await asyncio.sleep(0.005)
            return [r.result().status_code for r in requests]

    statuses = asyncio.run(load())
    after = scrape(client)

    assert statuses == [200] * 48
    assert max(queue_seen) > 0
    assert value(after, "mms_queue_items", encoder=TEXT_ENCODER) == 0
    batches = value(after, "mms_batch_items_count", encoder=TEXT_ENCODER) - value(
        before, "mms_batch_items_count", encoder=TEXT_ENCODER
    )
    items = value(after, "mms_batch_items_sum", encoder=TEXT_ENCODER) - value(
        before, "mms_batch_items_sum", encoder=TEXT_ENCODER
    )
    assert items == 48
    # Concurrent requests share forward passes.
    assert 1 <= batches < 48
    for histogram in ("mms_batch_cost_sum", "mms_forward_seconds_sum", "mms_preprocess_seconds_sum", "mms_queue_seconds_count"):
        assert value(after, histogram, encoder=TEXT_ENCODER) > value(before, histogram, encoder=TEXT_ENCODER), histogram
    requests_200 = value(after, "mms_requests_total", route="/v1/embed", method="POST", status="200") - value(
        before, "mms_requests_total", route="/v1/embed", method="POST", status="200"
    )
    assert requests_200 == 48
