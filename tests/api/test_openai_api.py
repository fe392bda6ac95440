"""POST /v1/embeddings, the OpenAI-compatible JSON route, on the real server with the default pipeline."""

import base64

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from tests.api.helpers import assert_problem, data_uri, max_difference, metric, scrape, unit
from tests.support.images import encode_image
from tests.support.server import RunningServer

FUSED_DIM = 384 + 1280 + 256
TEXTS = ["A cat is sleeping on the sofa.", "Stock markets fell sharply on Monday.", "Two kids play football."]
TOLERANCE = 1e-5


def embeddings(client: httpx.Client, items: object, **options: object) -> httpx.Response:
    return client.post("/v1/embeddings", json={"model": "default", "input": items, **options})


def multipart_vector(client: httpx.Client, files: dict[str, tuple[str | None, object]]) -> np.ndarray:
    response = client.post("/v1/embed", files=files)
    assert response.status_code == 200, response.text
    return unit(response.json()["embedding"])


def test_embeddings_single_text(client: httpx.Client) -> None:
    response = embeddings(client, TEXTS[0])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list"
    assert body["model"] == "default"
    assert len(body["data"]) == 1
    assert body["data"][0]["object"] == "embedding"
    assert body["data"][0]["index"] == 0
    vector = unit(body["data"][0]["embedding"])
    assert vector.shape == (FUSED_DIM,)

    multipart = client.post("/v1/embed", files={"text": (None, TEXTS[0])}).json()
    assert max_difference(vector, multipart["embedding"]) <= TOLERANCE
    tokens = multipart["inputs"]["text"]["tokens"]
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}


def test_embeddings_list_keeps_order(client: httpx.Client) -> None:
    response = embeddings(client, TEXTS)
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [item["index"] for item in data] == [0, 1, 2]
    for text, item in zip(TEXTS, data, strict=True):
        alone = embeddings(client, text).json()["data"][0]["embedding"]
        assert max_difference(item["embedding"], alone) <= TOLERANCE


def test_embeddings_usage_counts_every_text(client: httpx.Client) -> None:
    singles = [embeddings(client, text).json()["usage"]["prompt_tokens"] for text in TEXTS]
    usage = embeddings(client, TEXTS).json()["usage"]
    assert usage["prompt_tokens"] == sum(singles)
    assert usage["total_tokens"] == sum(singles)


def test_embeddings_base64_is_float32_bytes(client: httpx.Client) -> None:
    as_floats = embeddings(client, TEXTS).json()["data"]
    as_base64 = embeddings(client, TEXTS, encoding_format="base64").json()["data"]
    for floats, encoded in zip(as_floats, as_base64, strict=True):
        decoded = np.frombuffer(base64.b64decode(encoded["embedding"]), dtype="<f4")
        assert decoded.shape == (FUSED_DIM,)
        assert max_difference(decoded, np.asarray(floats["embedding"], dtype=np.float32)) <= TOLERANCE


def test_embeddings_multimodal_matches_multipart(
    client: httpx.Client, photo_jpegs: dict[str, bytes], sentences_male: list[bytes]
) -> None:
    image, audio = photo_jpegs["cat"], sentences_male[0]
    items = [
        {"text": TEXTS[0], "image": data_uri(image, "image/jpeg"), "audio": data_uri(audio, "audio/wav")},
        {"image": base64.b64encode(image).decode()},
        {"audio": base64.urlsafe_b64encode(audio).decode().rstrip("=")},
    ]
    response = embeddings(client, items)
    assert response.status_code == 200, response.text
    data = response.json()["data"]

    expected = [
        multipart_vector(
            client, {"text": (None, TEXTS[0]), "image": ("cat.jpg", image), "audio": ("fox.wav", audio)}
        ),
        multipart_vector(client, {"image": ("cat.jpg", image)}),
        multipart_vector(client, {"audio": ("fox.wav", audio)}),
    ]
    for item, vector in zip(data, expected, strict=True):
        assert max_difference(item["embedding"], vector) <= TOLERANCE
    assert response.json()["usage"]["prompt_tokens"] == 10


def test_embeddings_bad_item_computes_nothing(client: httpx.Client) -> None:
    png = encode_image(Image.new("RGB", (64, 64), (200, 30, 30)), "PNG")
    truncated = png[: len(png) // 2]
    before = scrape(client)
    items = [*TEXTS, {"image": data_uri(truncated, "image/png")}]
    response = embeddings(client, items)
    after = scrape(client)

    body = assert_problem(response, 422, "input[3].image", "input[3]", "truncated")
    assert body["detail"].startswith("input[3]: ")
    encoder = {"encoder": "default/text"}
    # The texts were preprocessed, then nothing was queued or run.
    assert metric(after, "mms_preprocess_seconds_count", **encoder) == metric(
        before, "mms_preprocess_seconds_count", **encoder
    ) + len(TEXTS)
    assert metric(after, "mms_batch_items_count", **encoder) == metric(before, "mms_batch_items_count", **encoder)
    assert metric(after, "mms_items_dropped_total", **encoder) == metric(
        before, "mms_items_dropped_total", **encoder
    )


def test_embeddings_first_bad_item_is_reported(client: httpx.Client) -> None:
    response = embeddings(client, ["fine", " ", "fine too", "\t"])
    assert_problem(response, 422, "input[1].text", "input[1]", "no tokens")


def test_embeddings_item_limit(client: httpx.Client) -> None:
    response = embeddings(client, [f"item {i}" for i in range(257)])
    assert_problem(response, 413, "input", "257 items", "256", "MMS_MAX_ITEMS_PER_REQUEST", value=257, limit=256)
    at_limit = embeddings(client, [f"item {i}" for i in range(256)])
    assert at_limit.status_code == 200, at_limit.text
    assert len(at_limit.json()["data"]) == 256


@pytest.mark.parametrize("field", ["image", "audio"])
@pytest.mark.parametrize("url", ["https://example.com/cat.jpg", "http://127.0.0.1/cat.jpg", "file:///etc/passwd"])
def test_embeddings_urls_are_not_fetched(client: httpx.Client, field: str, url: str) -> None:
    response = embeddings(client, [{field: url}])
    assert_problem(response, 422, f"input[0].{field}", "does not fetch URLs", "base64")


def test_embeddings_data_uri_needs_base64(client: httpx.Client) -> None:
    response = embeddings(client, [{"image": "data:image/png,%89PNG"}])
    assert_problem(response, 422, "input[0].image", ";base64,")


def test_embeddings_invalid_base64_is_422(client: httpx.Client) -> None:
    response = embeddings(client, ["fine", {"audio": "data:audio/wav;base64,not*base64!"}])
    assert_problem(response, 422, "input[1].audio", "not valid base64")


def test_embeddings_decoded_part_limit(client: httpx.Client) -> None:
    oversized = base64.b64encode(b"\0" * (16 * 1024 * 1024 + 1)).decode()
    response = embeddings(client, [{"image": oversized}])
    assert_problem(
        response, 413, "input[0].image", "16777217 bytes", "16777216", value=16 * 1024 * 1024 + 1, limit=16777216
    )


def test_embeddings_dimensions_unsupported(client: httpx.Client) -> None:
    response = embeddings(client, "hi", dimensions=256)
    assert_problem(response, 422, "dimensions", "does not support 'dimensions'", str(FUSED_DIM), value=256)


def test_embeddings_unknown_model_is_404(client: httpx.Client) -> None:
    response = client.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": "hi"})
    assert_problem(response, 404, "model", "text-embedding-3-small", "default")


@pytest.mark.parametrize(
    ("items", "field", "needle"),
    [
        ([], "input", "empty list"),
        ("", "input[0]", "empty"),
        ([{"text": "", "image": None}], "input[0]", "empty"),
        ([1, 2, 3], "input", "input[0] is a token array"),
        ([[1, 2], [3]], "input", "input[0] is a token array"),
        (["fine", {"txt": "typo"}], "input", "input[1] has unknown keys ['txt']"),
        ([{"text": 3}], "input", "input[0].text must be a string"),
        (["fine", 2.5], "input", "input[1] must be a string or an object"),
        ({"text": "not in a list"}, "input", "must be a string, or a list"),
    ],
)
def test_embeddings_invalid_input_is_422(client: httpx.Client, items: object, field: str, needle: str) -> None:
    assert_problem(embeddings(client, items), 422, field, needle)


def test_embeddings_unknown_option_is_422(client: httpx.Client) -> None:
    assert_problem(embeddings(client, "hi", encoding_format="int8"), 422, "encoding_format")
    assert_problem(embeddings(client, "hi", normalize=True), 422, "normalize")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_embeddings_not_json_is_415(client: httpx.Client, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = client.post("/v1/embeddings", content=b'{"model": "default", "input": "hi"}', headers=headers)
    assert_problem(response, 415, "content-type", "application/json")


def test_embeddings_body_not_utf8_is_400(client: httpx.Client) -> None:
    body = b'{"model": "default", "input": "caf\xe9"}'
    response = client.post("/v1/embeddings", content=body, headers={"content-type": "application/json"})
    assert_problem(response, 400, "body", "not valid UTF-8 JSON")


def test_embeddings_json_syntax_error_is_422(client: httpx.Client) -> None:
    body = b'{"model": "default", "input": }'
    response = client.post("/v1/embeddings", content=body, headers={"content-type": "application/json"})
    assert_problem(response, 422, "body", "not valid JSON", "character 30", value=30)


def test_embeddings_user_is_ignored(client: httpx.Client) -> None:
    plain = embeddings(client, TEXTS[1]).json()["data"][0]["embedding"]
    tagged = embeddings(client, TEXTS[1], user="user-1234")
    assert tagged.status_code == 200, tagged.text
    assert max_difference(tagged.json()["data"][0]["embedding"], plain) <= TOLERANCE


def test_openai_sdk_round_trip(server: RunningServer, client: httpx.Client) -> None:
    sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    # The SDK requests base64 by default and decodes it. Float is the other format.
    by_default = sdk.embeddings.create(model="default", input=TEXTS)
    as_floats = sdk.embeddings.create(model="default", input=TEXTS, encoding_format="float")
    expected = embeddings(client, TEXTS).json()["data"]
    assert [item.index for item in by_default.data] == [0, 1, 2]
    for sdk_item, float_item, item in zip(by_default.data, as_floats.data, expected, strict=True):
        assert max_difference(sdk_item.embedding, item["embedding"]) <= TOLERANCE
        assert max_difference(float_item.embedding, item["embedding"]) <= TOLERANCE
    assert by_default.usage.prompt_tokens == as_floats.usage.prompt_tokens
    assert by_default.model == "default"

    with pytest.raises(openai.NotFoundError) as raised:
        sdk.embeddings.create(model="text-embedding-3-small", input="hi")
    assert raised.value.status_code == 404


def test_openapi_documents_embeddings(client: httpx.Client) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/v1/embeddings"]["post"]
    assert "application/json" in operation["requestBody"]["content"]
    for status in ("200", "404", "413", "422"):
        assert status in operation["responses"]
