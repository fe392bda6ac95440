"""The default text encoder: MiniLM-L6 from its PyPI package, checked against sentence-transformers."""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from app.encoders.text_hf import HFTextEncoder
from app.errors import InvalidInput, PayloadTooLarge
from tests.support.encoders import default_text_encoder

SENTENCES = [
    "A cat is sleeping on the sofa.",
    "The stock market fell sharply after the announcement.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "你好，世界。今天天气很好。",
    "مرحبا بالعالم",
    "Party time 🎉🎈",
]


@pytest.fixture(scope="module")
def encoder() -> HFTextEncoder:
    return default_text_encoder()


def embed(encoder: HFTextEncoder, texts: list[str]) -> np.ndarray:
    with torch.inference_mode():
        return encoder.forward([encoder.preprocess(text) for text in texts])


def test_minilm_matches_sentence_transformers(encoder: HFTextEncoder) -> None:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(Path(encoder.tokenizer.name_or_path)), device="cpu")
    expected = reference.encode(SENTENCES, normalize_embeddings=True, convert_to_numpy=True)
    actual = embed(encoder, SENTENCES)
    assert actual.shape == (len(SENTENCES), 384)
    assert np.abs(actual - expected).max() <= 1e-5


def test_minilm_rows_have_unit_norm(encoder: HFTextEncoder) -> None:
    norms = np.linalg.norm(embed(encoder, SENTENCES), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)


def test_minilm_paraphrases_closer_than_unrelated(encoder: HFTextEncoder) -> None:
    a, b, unrelated = embed(
        encoder,
        [
            "A man is playing a guitar on stage.",
            "Someone performs music with a guitar in front of an audience.",
            "The recipe needs two cups of flour and an egg.",
        ],
    )
    assert a @ b > a @ unrelated + 0.3
    assert a @ b > b @ unrelated + 0.3


def test_minilm_batch_invariance_with_padding(encoder: HFTextEncoder) -> None:
    short = "A cat is sleeping on the sofa."
    long_texts = ["word " * 200, "another rather long sentence " * 20]
    alone = embed(encoder, [short])[0]
    batched = embed(encoder, [long_texts[0], short, long_texts[1]])[1]
    assert np.abs(alone - batched).max() <= 1e-5


@pytest.mark.parametrize("words, truncated", [(254, False), (255, True), (2000, True)])
def test_minilm_truncates_at_256_tokens(encoder: HFTextEncoder, words: int, truncated: bool) -> None:
    # "word" is one token, and [CLS] and [SEP] add two.
    prepared = encoder.preprocess("word " * words)
    assert prepared.info["tokens"] == words + 2
    assert prepared.info["truncated"] is truncated
    assert len(prepared.data.input_ids) == min(words + 2, 256)


@pytest.mark.parametrize("text", ["", " ", "\t\n", "\u00a0", "\u200b"])
def test_minilm_rejects_text_without_tokens(encoder: HFTextEncoder, text: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        encoder.preprocess(text)
    assert raised.value.field == "text"
    assert "no tokens" in raised.value.detail


def test_minilm_text_length_limit(encoder: HFTextEncoder) -> None:
    at_limit = "a" * encoder.max_chars
    assert encoder.preprocess(at_limit).info["tokens"] >= 3
    with pytest.raises(PayloadTooLarge) as raised:
        encoder.preprocess(at_limit + "a")
    assert raised.value.field == "text"
    assert raised.value.value == encoder.max_chars + 1
    assert raised.value.limit == encoder.max_chars
    assert str(encoder.max_chars) in raised.value.detail


def test_inline_preprocess_equals_pool_preprocess(encoder: HFTextEncoder) -> None:
    for text in SENTENCES:
        inline = encoder.preprocess_inline(text)
        assert inline is not None, text
        expected = encoder.preprocess(text)
        assert inline.data == expected.data
        assert inline.cost == expected.cost
        assert inline.info == expected.info


def test_inline_preprocess_leaves_long_text_to_pool(encoder: HFTextEncoder) -> None:
    assert encoder.preprocess_inline("word " * 200) is None


def test_threaded_preprocess_matches_serial(encoder: HFTextEncoder) -> None:
    texts = [*SENTENCES, "word " * 120, "词" * 700]
    expected = [encoder.preprocess(text).data for text in texts]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda i: encoder.preprocess(texts[i % len(texts)]).data, range(40 * len(texts))))
    assert results == expected * 40


def test_inline_preprocess_raises_for_bad_text(encoder: HFTextEncoder) -> None:
    with pytest.raises(InvalidInput):
        encoder.preprocess_inline(" \u200b ")
