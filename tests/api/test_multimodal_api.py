"""Fused embeddings of real photos, speech and sentences through the HTTP API."""

import io
import json
import shutil
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from safetensors.numpy import save_file

from app.settings import PROJECT_ROOT
from tests.support.images import resized_copy
from tests.support.server import run_server
from tests.support.speech import FEMALE_VOICE, MALE_VOICE, speak


def embed(client: httpx.Client, **parts: object) -> dict:
    files: list[tuple[str, object]] = []
    for name, value in parts.items():
        if name == "text" or isinstance(value, str):
            files.append((name, (None, value)))
        else:
            files.append((name, (f"{name}.bin", value, "application/octet-stream")))
    response = client.post("/v1/embed", files=files)
    assert response.status_code == 200, response.text
    return response.json()


def vector(body: dict, modality: str | None = None) -> np.ndarray:
    values = body["embedding"] if modality is None else body["per_modality"][modality]
    return np.array(values, dtype=np.float64)


def test_embed_all_three_modalities(client: httpx.Client, photo_jpegs: dict[str, bytes]) -> None:
    body = embed(
        client, text="A cat asleep on a sofa", image=photo_jpegs["cat"], audio=speak("The cat is sleeping.")
    )
    fused = vector(body)
    assert body["modalities"] == ["text", "image", "audio"]
    assert body["dimension"] == fused.shape[0] == 1920
    assert abs(np.linalg.norm(fused) - 1.0) < 1e-5
    assert body["weights"] == {"text": 1 / 3, "image": 1 / 3, "audio": 1 / 3}
    assert body["inputs"]["image"]["width"] == 451
    assert 1.0 < body["inputs"]["audio"]["duration_s"] < 4.0


def test_fused_cosine_is_weighted_mean(client: httpx.Client, photo_jpegs: dict[str, bytes]) -> None:
    weights = {"text": 3.0, "image": 1.0, "audio": 2.0}
    options = {"return_modalities": "true", "weights": json.dumps(weights)}
    first = embed(
        client, text="A cat asleep on a sofa", image=photo_jpegs["cat"], audio=speak("Hello there."), **options
    )
    second = embed(
        client,
        text="Espresso in a white cup",
        image=photo_jpegs["coffee"],
        audio=speak("Good morning.", FEMALE_VOICE),
        **options,
    )
    share = {m: w / sum(weights.values()) for m, w in weights.items()}
    assert first["weights"] == share
    expected = sum(share[m] * vector(first, m) @ vector(second, m) for m in weights)
    assert abs(vector(first) @ vector(second) - expected) < 1e-6
    assert first["space"] == second["space"]


def test_space_changes_with_weights(client: httpx.Client) -> None:
    plain = embed(client, text="same text")
    weighted = embed(client, text="same text", weights='{"text": 1, "image": 5}')
    assert plain["space"] != weighted["space"]


def test_photo_closest_to_its_own_copy(client: httpx.Client, photo_jpegs: dict[str, bytes]) -> None:
    names = ["cat", "coffee", "astronaut", "rocket", "motorcycle"]
    originals = {name: vector(embed(client, image=photo_jpegs[name])) for name in names}
    for name in names:
        copy = vector(embed(client, image=resized_copy(photo_jpegs[name], 0.6, "PNG")))
        scores = {other: copy @ originals[other] for other in names}
        assert max(scores, key=scores.get) == name, scores


def test_same_voice_closer_than_same_sentence(client: httpx.Client) -> None:
    def audio_vector(text: str, voice: str) -> np.ndarray:
        return vector(embed(client, audio=speak(text, voice)))

    one = audio_vector("The quick brown fox jumps over the lazy dog.", MALE_VOICE)
    two = audio_vector("A rainbow appears when sunlight shines through rain.", MALE_VOICE)
    other_voice = audio_vector("The quick brown fox jumps over the lazy dog.", FEMALE_VOICE)
    assert one @ two > one @ other_voice


def test_classify_serves_head_from_folder(
    client: httpx.Client, photo_jpegs: dict[str, bytes], tmp_path: Path
) -> None:
    # Fit a nearest-centroid head on real fused embeddings of two classes.
    classes = {"living": ["cat", "astronaut"], "object": ["coffee", "rocket"]}
    centroids = []
    for photos in classes.values():
        rows = [vector(embed(client, image=photo_jpegs[name])) for name in photos]
        centroid = np.mean(rows, axis=0)
        centroids.append(centroid / np.linalg.norm(centroid))
    folder = tmp_path / "models" / "with-head"
    (folder / "head").mkdir(parents=True)
    shutil.copy(PROJECT_ROOT / "models" / "default" / "pipeline.json", folder / "pipeline.json")
    weight = (20 * np.stack(centroids)).astype(np.float32)
    save_file({"weight": weight, "bias": np.zeros(2, dtype=np.float32)}, str(folder / "head" / "head.safetensors"))
    (folder / "head" / "labels.json").write_text(json.dumps(list(classes)))

    env = {"MMS_MODELS_DIR": str(tmp_path / "models"), "MMS_PIPELINES": '["with-head"]'}
    with run_server(env, tmp_path / "server.log") as server, httpx.Client(base_url=server.url, timeout=60) as other:
        cat_copy = resized_copy(photo_jpegs["cat"], 0.5)
        response = other.post(
            "/v1/classify",
            files={"image": ("cat.jpg", cat_copy, "image/jpeg"), "pipeline": (None, "with-head"), "top_k": (None, "1")},
        )
        models = other.get("/v1/models").json()

    assert response.status_code == 200, response.text
    body = response.json()
    assert [entry["label"] for entry in body["labels"]] == ["living"]
    assert body["labels"][0]["score"] > 0.5
    assert models["pipelines"][0]["labels"] == ["living", "object"]


def test_opaque_rgba_equals_rgb(client: httpx.Client, photos: dict[str, Image.Image]) -> None:
    # The same photo as RGBA with an opaque alpha must embed like the RGB original.
    rgb = io.BytesIO()
    photos["coffee"].save(rgb, "PNG")
    rgba = io.BytesIO()
    photos["coffee"].convert("RGBA").save(rgba, "PNG")
    a = vector(embed(client, image=rgb.getvalue()))
    b = vector(embed(client, image=rgba.getvalue()))
    assert np.abs(a - b).max() < 1e-5
