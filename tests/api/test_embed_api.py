"""The multipart API on a real uvicorn server with the default pipeline."""

import httpx
import numpy as np
import pytest

PROBLEM_JSON = "application/problem+json"
FUSED_DIM = 384 + 1280 + 256


def assert_problem(response: httpx.Response, status: int, field: str | None, *needles: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    body = response.json()
    assert body["status"] == status
    assert body["request_id"] == response.headers["x-request-id"]
    if field is not None:
        assert body["field"] == field
    for needle in needles:
        assert needle in body["detail"]
    return body


def test_embed_text_only(client: httpx.Client) -> None:
    response = client.post("/v1/embed", files={"text": (None, "A cat is sleeping on the sofa.")})
    assert response.status_code == 200, response.text
    body = response.json()
    vector = np.array(body["embedding"])
    assert body["dimension"] == FUSED_DIM
    assert vector.shape == (FUSED_DIM,)
    assert abs(np.linalg.norm(vector) - 1.0) < 1e-5
    assert body["modalities"] == ["text"]
    assert body["weights"] == {"text": 1.0}
    assert body["inputs"]["text"]["tokens"] == 10
    assert body["inputs"]["text"]["truncated"] is False
    assert body["space"].startswith("default:")
    assert body["per_modality"] is None
    # Absent modalities leave zeros in their slots.
    assert np.all(vector[384:] == 0)


def test_embed_reports_truncation(client: httpx.Client) -> None:
    response = client.post("/v1/embed", files={"text": (None, "word " * 300)})
    assert response.status_code == 200, response.text
    assert response.json()["inputs"]["text"] == {"tokens": 302, "truncated": True, "max_tokens": 256}


def test_embed_repeated_part_is_422(client: httpx.Client) -> None:
    response = client.post("/v1/embed", files=[("text", (None, "one")), ("text", (None, "two"))])
    assert_problem(response, 422, "text", "more than once")


def test_embed_empty_sample_is_422(client: httpx.Client) -> None:
    response = client.post("/v1/embed", files={"pipeline": (None, "default")})
    assert_problem(response, 422, "sample", "empty")


def test_embed_blank_browser_parts_are_absent(client: httpx.Client) -> None:
    # What a browser sends for a form whose text box and file pickers were left blank.
    files = [
        ("text", (None, "")),
        ("image", ("", b"", "application/octet-stream")),
        ("audio", ("", b"", "application/octet-stream")),
    ]
    assert_problem(client.post("/v1/embed", files=files), 422, "sample", "empty")
    files[0] = ("text", (None, "only the text is filled in"))
    response = client.post("/v1/embed", files=files)
    assert response.status_code == 200, response.text
    assert response.json()["modalities"] == ["text"]


def test_embed_unknown_field_is_422(client: httpx.Client) -> None:
    response = client.post("/v1/embed", files={"txt": (None, "typo in the field name")})
    assert_problem(response, 422, "txt", "unknown form field")


def test_embed_unknown_pipeline_is_404(client: httpx.Client) -> None:
    response = client.post("/v1/embed", files={"text": (None, "hi"), "pipeline": (None, "nope")})
    body = assert_problem(response, 404, "pipeline", "nope")
    assert body["value"] == "nope"


@pytest.mark.parametrize(
    "weights, needle",
    [("{not json", "JSON object"), ('{"text": -1}', "non-negative"), ('{"smell": 1}', "smell")],
)
def test_embed_bad_weights_are_422(client: httpx.Client, weights: str, needle: str) -> None:
    response = client.post("/v1/embed", files={"text": (None, "hi"), "weights": (None, weights)})
    assert_problem(response, 422, "weights", needle)


def test_embed_modality_missing_from_pipeline(client: httpx.Client) -> None:
    response = client.post(
        "/v1/embed", files={"text": (None, "hi"), "image": ("a.png", b"\x89PNG", "image/png"), "pipeline": (None, "text")}
    )
    assert_problem(response, 422, "image", "no image encoder")


def test_embed_not_multipart_is_415(client: httpx.Client) -> None:
    response = client.post("/v1/embed", json={"text": "hi"})
    assert_problem(response, 415, "content-type", "multipart/form-data")


def test_embed_malformed_multipart_is_400(client: httpx.Client) -> None:
    headers = {"content-type": "multipart/form-data; boundary=abc"}
    response = client.post("/v1/embed", content=b"--xyz\r\nnot a part\r\n--xyz--\r\n", headers=headers)
    assert_problem(response, 400, "body", "multipart")


def test_request_id_is_echoed(client: httpx.Client) -> None:
    response = client.get("/healthz", headers={"X-Request-ID": "client-chosen-id-42"})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "client-chosen-id-42"


def test_classify_without_head_explains(client: httpx.Client) -> None:
    response = client.post("/v1/classify", files={"text": (None, "hi"), "pipeline": (None, "text")})
    assert_problem(response, 422, "pipeline", "no classification head", "labels.json")


def test_models_lists_default_pipeline(client: httpx.Client) -> None:
    body = client.get("/v1/models").json()
    (default,) = [p for p in body["pipelines"] if p["name"] == "default"]
    assert default["modalities"] == ["text", "image", "audio"]
    assert default["dimension"] == FUSED_DIM
    dims = {e["modality"]: e["dimension"] for e in default["encoders"]}
    assert dims == {"text": 384, "image": 1280, "audio": 256}
    caps = {e["modality"]: e["max_batch_size"] for e in default["encoders"]}
    # On the CPU, an unset MMS_MAX_BATCH_PIXELS caps image batches at 8; the others keep MMS_MAX_BATCH_SIZE.
    assert caps == {"text": 32, "image": 8, "audio": 32}
    assert default["labels"] == ["face-disliked", "face-liked", "other-disliked", "other-liked"]


def test_readyz_and_healthz(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "alive"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["pipelines"] == ["default", "text"]


def test_docs_assets_are_served_locally(client: httpx.Client) -> None:
    page = client.get("/docs").text
    assert "cdn" not in page.lower()
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert f"/static/docs/{asset}" in page
        assert client.get(f"/static/docs/{asset}").status_code == 200


def test_openapi_describes_multipart_form(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/embed"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["properties"]["image"]["format"] == "binary"
    assert body["properties"]["audio"]["format"] == "binary"
    assert body["properties"]["text"]["type"] == "string"
