"""Trained heads on a real server: no train/serve skew, a trained folder served as written, the default head."""

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from app.pipeline import read_config
from app.settings import PROJECT_ROOT
from app.training.embeddings import EmbeddingCache, content_key, encoder_key, hash_files
from app.training.manifest import read_manifest
from app.training.workflow import EncodeOptions
from demo.generate import generate
from tests.support.server import RunningServer, run_server

SKEW_TOLERANCE = 1e-5
HELD_OUT_SAMPLES = 24
CHANCE = 0.25
"""Four balanced labels."""


def sample_files(row: dict[str, object], folder: Path) -> dict[str, tuple[str | None, bytes | str]]:
    return {
        "text": (None, str(row["text"])),
        "image": ("image.jpg", (folder / str(row["image"])).read_bytes()),
        "audio": ("audio.flac", (folder / str(row["audio"])).read_bytes()),
    }


def test_no_train_serve_skew(
    client: httpx.Client, tiny_models_dir: Path, demo_manifest: Path, encode_options: EncodeOptions
) -> None:
    """The embedding cached for training equals the one the server computes for the same input."""
    manifest = read_manifest(demo_manifest)
    hashes = hash_files(manifest.rows)
    specs = read_config(PROJECT_ROOT / "models" / "default").encoders
    trained_on = json.loads((tiny_models_dir / "tiny" / "head" / "config.json").read_text())["encoders"]
    cache = EmbeddingCache(encode_options.cache_dir)
    rows = [json.loads(line) for line in demo_manifest.read_text().splitlines()]
    worst = 0.0
    for record, row in list(zip(rows, manifest.rows, strict=True))[:4]:
        response = client.post("/v1/embed", files={**sample_files(record, demo_manifest.parent), "return_modalities": (None, "true")})
        assert response.status_code == 200, response.text
        served = response.json()["per_modality"]
        for modality in ("text", "image", "audio"):
            key = encoder_key(modality, specs[modality], trained_on[modality]["model"], trained_on[modality]["revision"])
            cached = cache.get(key, content_key(row, modality, hashes))
            assert cached is not None, f"line {row.line} {modality} is not in the training cache"
            worst = max(worst, float(np.abs(np.asarray(served[modality]) - cached).max()))
    assert worst <= SKEW_TOLERANCE


@pytest.fixture(scope="module")
def tiny_server(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    env = {"MMS_MODELS_DIR": str(tiny_models_dir), "MMS_PIPELINES": '["tiny"]'}
    with run_server(env, tmp_path_factory.mktemp("tiny-server") / "server.log") as running:
        yield running


def test_trained_folder_classifies(tiny_server: RunningServer, demo_manifest: Path) -> None:
    record = json.loads(demo_manifest.read_text().splitlines()[0])
    files = {**sample_files(record, demo_manifest.parent), "pipeline": (None, "tiny")}
    response = httpx.post(f"{tiny_server.url}/v1/classify", files=files, timeout=60)
    assert response.status_code == 200, response.text
    labels = response.json()["labels"]
    assert sorted(item["label"] for item in labels) == ["face-disliked", "face-liked", "other-disliked", "other-liked"]
    assert abs(sum(item["score"] for item in labels) - 1.0) < 1e-5


def test_trained_folder_embeds_trained_vector(tiny_server: RunningServer, demo_manifest: Path) -> None:
    record = json.loads(demo_manifest.read_text().splitlines()[0])
    files = {"text": (None, str(record["text"])), "pipeline": (None, "tiny")}
    response = httpx.post(f"{tiny_server.url}/v1/embed", files=files, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["dimension"] == 128
    assert abs(np.linalg.norm(body["embedding"]) - 1.0) < 1e-5
    assert body["space"].startswith("tiny:")
    assert body["weights"] == {"text": 1.0}


def test_trained_folder_rejects_weights(tiny_server: RunningServer) -> None:
    files = {"text": (None, "Nice."), "pipeline": (None, "tiny"), "weights": (None, '{"text": 2}')}
    for route in ("/v1/embed", "/v1/classify"):
        response = httpx.post(f"{tiny_server.url}{route}", files=files, timeout=60)
        assert response.status_code == 422, response.text
        assert response.json()["field"] == "weights"
        assert "trained" in response.json()["detail"]


def test_trained_folder_listed(tiny_server: RunningServer) -> None:
    pipelines = httpx.get(f"{tiny_server.url}/v1/models", timeout=60).json()["pipelines"]
    assert [p["name"] for p in pipelines] == ["tiny"]
    assert pipelines[0]["fusion"] == "attention"
    assert pipelines[0]["dimension"] == 128


def test_default_head_labels_held_out(client: httpx.Client, tmp_path: Path) -> None:
    """The committed default head labels new samples drawn from the demo's held-out test sources."""
    manifest = generate(tmp_path, {"test": HELD_OUT_SAMPLES}, seed=0)
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    correct = 0
    for record in records:
        response = client.post("/v1/classify", files=sample_files(record, tmp_path))
        assert response.status_code == 200, response.text
        correct += response.json()["labels"][0]["label"] == record["label"]
    accuracy = correct / len(records)
    assert accuracy >= CHANCE + 0.35, f"accuracy {accuracy:.2f} on {len(records)} held-out samples"


def test_default_embed_stays_concat(client: httpx.Client) -> None:
    response = client.post("/v1/embed", files={"text": (None, "What a wonderful shot!")})
    assert response.status_code == 200, response.text
    assert response.json()["dimension"] == 384 + 1280 + 256
