"""Inputs longer than a model takes: text truncation and windows, and audio windows.

RoBERTa's config lists 514 positions but takes 512 tokens, special tokens included,
because its position ids start after the padding index. The tiny RoBERTa here sets no
tokenizer limit, so 512 must come from the positions. In its tokenizer "word" and
" word" are one token each, so "word" repeated n - 2 times is n tokens with <s> and </s>.
"""

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from transformers import ASTModel, AutoFeatureExtractor, AutoModel, AutoTokenizer, Wav2Vec2Model, WhisperModel

from app.encoders.audio_hf import HFAudioEncoder, window_starts
from app.encoders.base import Encoder
from app.encoders.registry import ENCODER_BUILDERS
from app.encoders.text_hf import HFTextEncoder
from app.media.audio import decode_audio
from app.pipeline import BuildContext, EncoderSpec
from app.settings import PROJECT_ROOT, Settings
from tests.encoders.tiny_models import tiny_model
from tests.support.speech import SENTENCES, speak

CONTEXT = BuildContext(folder=PROJECT_ROOT / "models", device=torch.device("cpu"), settings=Settings())
TOLERANCE = 1e-5
ROBERTA_LIMIT = 512


def build(kind: str, family: str, **options: object) -> Encoder:
    spec = EncoderSpec(type=kind, model=f"tiny/{family}", source=str(tiny_model(family)), **options)
    return ENCODER_BUILDERS[kind](spec, CONTEXT)


def embed(encoder: Encoder, payloads: list[object]) -> np.ndarray:
    with torch.inference_mode():
        return encoder.forward([encoder.preprocess(payload) for payload in payloads])


def words(token_count: int) -> str:
    """Return a text that the tiny RoBERTa tokenizes into exactly `token_count` tokens."""
    return " ".join(["word"] * (token_count - 2))


def plain_mean(rows: list[list[int]]) -> torch.Tensor:
    """Return unit-norm mean-pooled embeddings of each row alone, by the plain model."""
    model = AutoModel.from_pretrained(tiny_model("roberta"))
    with torch.inference_mode():
        pooled = [model(input_ids=torch.tensor([row])).last_hidden_state.mean(dim=1)[0] for row in rows]
    return F.normalize(torch.stack(pooled), dim=-1)


@pytest.fixture(scope="module")
def roberta() -> HFTextEncoder:
    encoder = build("hf-text", "roberta")
    assert isinstance(encoder, HFTextEncoder)
    return encoder


def test_roberta_limit_is_positions_minus_two(roberta: HFTextEncoder) -> None:
    assert roberta.model.config.max_position_embeddings == ROBERTA_LIMIT + 2
    assert roberta.tokenizer.model_max_length > 10**6
    assert roberta.max_tokens == ROBERTA_LIMIT


@pytest.mark.parametrize("tokens", [511, 512, 513, 514, 3000])
def test_roberta_truncation_boundary(roberta: HFTextEncoder, tokens: int) -> None:
    text = words(tokens)
    assert len(roberta.tokenizer(text)["input_ids"]) == tokens
    prepared = roberta.preprocess(text)
    assert prepared.info["tokens"] == tokens
    assert prepared.info["truncated"] is (tokens > ROBERTA_LIMIT)
    assert prepared.info["max_tokens"] == ROBERTA_LIMIT
    assert len(prepared.data.input_ids) == min(tokens, ROBERTA_LIMIT)
    with torch.inference_mode():
        row = roberta.forward([prepared])[0]
    expected = plain_mean([prepared.data.input_ids])[0].numpy()
    assert np.abs(row - expected).max() <= TOLERANCE


def test_roberta_truncated_keeps_start_and_end_tokens(roberta: HFTextEncoder) -> None:
    ids = roberta.preprocess(words(900)).data.input_ids
    assert ids[0] == roberta.tokenizer.cls_token_id
    assert ids[-1] == roberta.tokenizer.sep_token_id


def test_concurrent_preprocess_always_truncates(roberta: HFTextEncoder) -> None:
    # Without a lock, one thread's untruncated count call can switch truncation off
    # under another thread's call: 24 of these 600 calls came back untruncated.
    texts = [words(700), "A cat is sleeping.", words(600)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        lengths = list(pool.map(lambda i: len(roberta.preprocess(texts[i % 3]).data.input_ids), range(600)))
    assert max(lengths) == ROBERTA_LIMIT
    assert lengths.count(ROBERTA_LIMIT) == 400


def test_xlm_roberta_far_beyond_limit() -> None:
    encoder = build("hf-text", "xlm-roberta")
    text = "今天天气很好，我们去公园散步吧。" * 200
    prepared = encoder.preprocess(text)
    assert encoder.max_tokens == ROBERTA_LIMIT
    assert len(prepared.data.input_ids) == ROBERTA_LIMIT
    assert prepared.info["truncated"] is True
    assert prepared.info["tokens"] == len(encoder.tokenizer(text)["input_ids"])
    with torch.inference_mode():
        assert np.isfinite(encoder.forward([prepared])).all()


PARITY_TEXTS = [
    "A cat asleep on a sofa.",
    "今天天气很好，我们去公园散步吧。",
    "Привет, мир! مرحبا بالعالم. नमस्ते दुनिया 👋🏽",
    "The quick brown fox jumps over the lazy dog. " * 12,  # above INLINE_MAX_CHARS: the pool's path
]


@pytest.mark.parametrize("family", ["bert", "roberta", "xlm-roberta", "clip", "sentence-transformers"])
def test_tokens_match_transformers_tokenizer(family: str) -> None:
    encoder = build("hf-text", family)
    assert isinstance(encoder, HFTextEncoder)
    tokenizer = AutoTokenizer.from_pretrained(encoder.tokenizer.name_or_path)
    for text in PARITY_TEXTS:
        expected = tokenizer(text, truncation=True, max_length=encoder.max_tokens)["input_ids"]
        prepared = encoder.preprocess(text)
        assert prepared.data.input_ids == expected, (family, text[:30])
        assert prepared.info["tokens"] == len(tokenizer(text)["input_ids"]), (family, text[:30])


def windowed_reference(text: str, content_per_window: int) -> np.ndarray:
    """Average, weighted by content tokens, of the plain embeddings of consecutive windows."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model("roberta"))
    content = tokenizer(text, add_special_tokens=False)["input_ids"]
    chunks = [content[i : i + content_per_window] for i in range(0, len(content), content_per_window)]
    rows = [[tokenizer.cls_token_id, *chunk, tokenizer.sep_token_id] for chunk in chunks]
    weights = torch.tensor([len(chunk) for chunk in chunks], dtype=torch.float32).unsqueeze(-1)
    average = (plain_mean(rows) * weights).sum(dim=0) / weights.sum()
    return F.normalize(average, dim=-1).numpy()


def test_window_mode_averages_windows() -> None:
    encoder = build("hf-text", "roberta", long_text="window")
    text = words(1200)
    prepared = encoder.preprocess(text)
    assert prepared.info["windows"] == 3  # 1198 content tokens in windows of 510
    assert prepared.info["tokens"] == 1200
    assert prepared.info["truncated"] is False
    with torch.inference_mode():
        row = encoder.forward([prepared])[0]
    assert np.abs(row - windowed_reference(text, ROBERTA_LIMIT - 2)).max() <= TOLERANCE


def test_window_mode_cap_truncates() -> None:
    encoder = build("hf-text", "roberta", long_text="window", max_windows=2)
    prepared = encoder.preprocess(words(1200))
    assert prepared.info["windows"] == 2
    assert prepared.info["tokens"] == 1200
    assert prepared.info["truncated"] is True


def test_window_mode_short_text_equals_truncate_mode(roberta: HFTextEncoder) -> None:
    windowed = build("hf-text", "roberta", long_text="window")
    text = "A cat is sleeping on the sofa."
    assert windowed.preprocess(text).info["windows"] == 1
    assert np.abs(embed(windowed, [text]) - embed(roberta, [text])).max() <= TOLERANCE


def test_window_mode_batch_independent() -> None:
    encoder = build("hf-text", "roberta", long_text="window")
    texts = ["A cat is sleeping on the sofa.", words(1200), words(600)]
    alone = np.stack([embed(encoder, [text])[0] for text in texts])
    together = embed(encoder, texts)
    assert np.abs(together - alone).max() <= TOLERANCE


def test_window_mode_batch_cost_counts_rows() -> None:
    encoder = build("hf-text", "roberta", long_text="window")
    short, long = encoder.preprocess("A cat."), encoder.preprocess(words(1200))
    # 1 + 3 rows, all padded to the 512 tokens of the full windows.
    assert encoder.batch_cost([short.cost, long.cost]) == 4 * ROBERTA_LIMIT
    assert encoder.batch_cost([short.cost]) == short.cost


def test_long_text_option_rejects_unknown() -> None:
    with pytest.raises(ValueError, match="long_text"):
        build("hf-text", "roberta", long_text="split")


# Audio


def long_speech(seconds: float, rate: int = 16_000) -> np.ndarray:
    """Return espeak-ng sentences read one after another, repeated to `seconds`."""
    parts = [sf.read(io.BytesIO(speak(sentence, rate=rate)), dtype="float32")[0] for sentence in SENTENCES]
    speech = np.concatenate(parts)
    return np.resize(speech, round(seconds * rate))


def wav_bytes(wave: np.ndarray, rate: int = 16_000) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, wave, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def plain_window_rows(family: str, wave: np.ndarray) -> torch.Tensor:
    """Return the unit-norm plain embedding of one window, pooled as the family defines."""
    folder = tiny_model(family)
    extractor = AutoFeatureExtractor.from_pretrained(folder)
    inputs = extractor(wave, sampling_rate=extractor.sampling_rate, return_tensors="pt")
    with torch.inference_mode():
        if family == "ast":
            pooled = ASTModel.from_pretrained(folder)(input_values=inputs["input_values"]).pooler_output
        elif family == "whisper":
            # Every window here is a full 30 s, so all 1500 encoder frames are real.
            pooled = WhisperModel.from_pretrained(folder).encoder(inputs["input_features"]).last_hidden_state.mean(1)
        else:
            pooled = Wav2Vec2Model.from_pretrained(folder)(input_values=inputs["input_values"]).last_hidden_state.mean(1)
    return F.normalize(pooled, dim=-1)[0]


def windows_reference(family: str, wave: np.ndarray, starts: list[int], window: int) -> np.ndarray:
    rows = torch.stack([plain_window_rows(family, wave[start : start + window]) for start in starts])
    return F.normalize(rows.mean(dim=0), dim=-1).numpy()


def decoded(encoder: HFAudioEncoder, data: bytes) -> np.ndarray:
    return decode_audio(data, target_rate=encoder.rate, max_seconds=60)


def test_window_starts_end_aligned() -> None:
    assert window_starts(100, 100) == [0]
    assert window_starts(50, 100) == [0]
    assert window_starts(250, 100) == [0, 100, 150]
    assert window_starts(300, 100) == [0, 100, 200]


@pytest.mark.parametrize("family, seconds, options", [("ast", 3.1, {}), ("wav2vec2", 1.3, {"window_seconds": 0.5})])
def test_long_audio_averages_windows(family: str, seconds: float, options: dict[str, object]) -> None:
    encoder = build("hf-audio", family, **options)
    assert isinstance(encoder, HFAudioEncoder)
    data = wav_bytes(long_speech(seconds))
    wave = decoded(encoder, data)
    starts = window_starts(len(wave), encoder.window_samples)
    prepared = encoder.preprocess(data)
    assert len(starts) == 3
    assert prepared.info["windows"] == 3
    assert prepared.info["truncated"] is False
    assert prepared.cost == 3
    with torch.inference_mode():
        row = encoder.forward([prepared])[0]
    expected = windows_reference(family, wave, starts, encoder.window_samples)
    assert np.abs(row - expected).max() <= TOLERANCE


def test_long_audio_whisper_two_windows() -> None:
    encoder = build("hf-audio", "whisper")
    assert isinstance(encoder, HFAudioEncoder)
    data = wav_bytes(long_speech(35.0))
    wave = decoded(encoder, data)
    prepared = encoder.preprocess(data)
    assert prepared.info["windows"] == 2  # 0-30 s and 5-35 s
    with torch.inference_mode():
        row = encoder.forward([prepared])[0]
    expected = windows_reference("whisper", wave, [0, len(wave) - encoder.window_samples], encoder.window_samples)
    assert np.abs(row - expected).max() <= TOLERANCE


def test_long_audio_window_cap() -> None:
    encoder = build("hf-audio", "ast", max_windows=2)
    assert isinstance(encoder, HFAudioEncoder)
    data = wav_bytes(long_speech(3.1))
    prepared = encoder.preprocess(data)
    assert prepared.info["windows"] == 2
    assert prepared.info["truncated"] is True
    with torch.inference_mode():
        row = encoder.forward([prepared])[0]
    wave = decoded(encoder, data)
    expected = windows_reference("ast", wave, [0, encoder.window_samples], encoder.window_samples)
    assert np.abs(row - expected).max() <= TOLERANCE


def test_long_audio_batch_independent() -> None:
    encoder = build("hf-audio", "hubert", window_seconds=0.5)
    clips = [wav_bytes(long_speech(1.3)), wav_bytes(long_speech(0.3)), wav_bytes(long_speech(0.9))]
    alone = np.stack([embed(encoder, [clip])[0] for clip in clips])
    assert np.abs(embed(encoder, clips) - alone).max() <= TOLERANCE


def test_window_longer_than_model_input_rejected() -> None:
    with pytest.raises(ValueError, match="window_seconds"):
        build("hf-audio", "ast", window_seconds=5)
