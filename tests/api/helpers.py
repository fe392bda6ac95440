"""Checks shared by the HTTP tests: problem bodies, Prometheus metrics, vectors and pipelines."""

import base64
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from tests.support.server import PROJECT_ROOT

PROBLEM_JSON = "application/problem+json"


def assert_problem(
    response: httpx.Response,
    status: int,
    field: str | None,
    *needles: str,
    value: Any = None,
    limit: Any = None,
) -> dict[str, Any]:
    """Assert an RFC 9457 problem body with this status and field, whose detail contains every needle."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    body = response.json()
    assert body["status"] == status
    assert body["request_id"] == response.headers["x-request-id"]
    if field is not None:
        assert body["field"] == field, body
    for needle in needles:
        assert needle in body["detail"], body["detail"]
    if value is not None:
        assert body["value"] == value, body
    if limit is not None:
        assert body["limit"] == limit, body
    return body


def scrape(client: httpx.Client) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Return every sample of GET /metrics, keyed by name and label set."""
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def metric(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """Return one sample's value, 0 when the series does not exist yet."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def queued_items(client: httpx.Client) -> float:
    """Return the sum of the mms_queue_items gauge over every encoder."""
    return sum(value for (name, _), value in scrape(client).items() if name == "mms_queue_items")


def wait_until(condition: Callable[[], bool], timeout_s: float = 30.0, interval_s: float = 0.1) -> bool:
    """Poll `condition` until it is true or `timeout_s` passes; return its last value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval_s)
    return condition()


def unit(values: list[float]) -> np.ndarray:
    vector = np.asarray(values, dtype=np.float64)
    assert abs(np.linalg.norm(vector) - 1.0) < 1e-5
    return vector


def max_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


def data_uri(data: bytes, media_type: str) -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"


def write_text_only_pipeline(models_dir: Path, name: str = "textonly") -> str:
    """Write a pipeline folder holding only the default pipeline's text encoder; return its name."""
    config = json.loads((PROJECT_ROOT / "models" / "default" / "pipeline.json").read_text())
    config["description"] = "The default pipeline's text encoder alone."
    config["encoders"] = {"text": config["encoders"]["text"]}
    config["fusion"]["weights"] = {"text": 1.0}
    folder = models_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pipeline.json").write_text(json.dumps(config, indent=2))
    return name
