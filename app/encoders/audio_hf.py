"""Audio encoders loaded with transformers: AutoFeatureExtractor and the model from one folder or hub id.

Families, by the config's model_type:
- waveform models (wav2vec 2.0, HuBERT, WavLM and relatives): mean of the last hidden
  state over the frames that real samples produce, counted with the model's
  `_get_feat_extract_output_lengths`;
- Whisper: the encoder only, mean over the output frames that cover real audio (the
  input is always padded to a 30 s window);
- Audio Spectrogram Transformer: `pooler_output`, the mean of its CLS and distillation tokens;
- CLAP: the projected audio embedding (`audio_embeds`) of the audio tower.

A clip longer than one window is cut into windows of `window_seconds`. They start every
window length, and the last one is aligned to the end of the clip. So every window is
full, except the single window of a clip shorter than one window. Windows of all items are batched, and
an item's embedding is the mean of its unit-norm window embeddings weighted by real
samples. At most `max_windows` windows are used; the item's info reports a cut.
"""

import io
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import torch
from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, ClapAudioModelWithProjection

from app.encoders.base import Prepared
from app.encoders.hf_common import (
    HFEncoder,
    autocast_dtype,
    check_missing_weights,
    check_weights_present,
    load_pretrained,
    offline_mode,
    weights_revision,
)
from app.errors import InvalidInput
from app.media.audio import decode_audio

logger = logging.getLogger(__name__)

WAVEFORM_MODEL_TYPES = (
    "wav2vec2",
    "wav2vec2-conformer",
    "hubert",
    "wavlm",
    "unispeech",
    "unispeech-sat",
    "data2vec-audio",
)
AST_MODEL_TYPE = "audio-spectrogram-transformer"
CLAP_MODEL_TYPES = ("clap", "clap_audio_model")
DEFAULT_WAVEFORM_WINDOW_S = 10.0
DEFAULT_MAX_WINDOWS = 8
# Kaldi filter banks, which AST's feature extractor computes, use 25 ms frames every 10 ms.
_KALDI_FRAME_S = 0.025
_KALDI_SHIFT_S = 0.010


@dataclass(slots=True)
class AudioWindows:
    features: list[dict[str, torch.Tensor]]
    """The feature extractor's output for each window alone, without the batch dimension."""
    samples: list[int]
    """Real (unpadded) samples in each window."""


def window_starts(sample_count: int, window: int) -> list[int]:
    """Return window starts: every `window` samples, the last one aligned to the clip's end."""
    if sample_count <= window:
        return [0]
    starts = list(range(0, sample_count - window, window))
    return [*starts, sample_count - window]


class HFAudioEncoder(HFEncoder):
    modality = "audio"
    cost_unit = "windows"

    def __init__(
        self,
        *,
        source: str,
        model_id: str,
        device: torch.device,
        max_seconds: float,
        revision: str | None = None,
        local_files_only: bool | None = None,
        dtype: str | torch.dtype = "float32",
        window_seconds: float | None = None,
        max_windows: int = DEFAULT_MAX_WINDOWS,
    ) -> None:
        offline = offline_mode() if local_files_only is None else local_files_only
        check_weights_present(source, model_id=model_id, revision=revision, local_files_only=offline)
        options = {"revision": revision, "local_files_only": offline}
        config = load_pretrained(lambda: AutoConfig.from_pretrained(source, **options), source, model_id=model_id)
        self.kind = _family(config.model_type, model_id)
        self.extractor = load_pretrained(
            lambda: AutoFeatureExtractor.from_pretrained(source, **options), source, model_id=model_id
        )
        model_class = ClapAudioModelWithProjection if self.kind == "clap" else AutoModel
        model, loading_info = load_pretrained(
            lambda: model_class.from_pretrained(source, output_loading_info=True, **options), source, model_id=model_id
        )
        check_missing_weights(loading_info, model_id=model_id)
        revision_id = weights_revision(source, revision)
        if self.kind == "whisper":
            # Only the encoder is used; dropping the decoder frees its memory.
            model = model.get_encoder()
        self.model = model.eval().to(device)
        self.autocast_dtype = autocast_dtype(dtype, device, label=f"audio encoder {model_id}")

        self.rate = int(self.extractor.sampling_rate)
        self.max_seconds = max_seconds
        self.window_samples = self._window_samples(window_seconds, model_id)
        if max_windows < 1:
            raise ValueError(f"max_windows must be at least 1, got {max_windows}")
        self.max_windows = max_windows
        self.min_samples = self._min_samples()
        # Group-norm feature encoders (wav2vec 2.0 base), whose extractor gives no attention
        # mask, change their output when zeros are appended, so their windows are only
        # batched with windows of the same length.
        self.uses_attention_mask = bool(getattr(self.extractor, "return_attention_mask", False)) and (
            getattr(model.config, "feat_extract_norm", "layer") != "group"
        )
        dim = model.config.projection_dim if self.kind == "clap" else model.config.hidden_size
        super().__init__(model_id=model_id, revision=revision_id, dim=int(dim), device=device)

    def _model_window_samples(self) -> int | None:
        """Return the fixed input length of the model in samples, or None for waveform models."""
        if self.kind == "whisper":
            return int(self.extractor.n_samples)
        if self.kind == "clap":
            return int(self.extractor.nb_max_samples)
        if self.kind == "ast":
            frame, shift = round(_KALDI_FRAME_S * self.rate), round(_KALDI_SHIFT_S * self.rate)
            return frame + (int(self.extractor.max_length) - 1) * shift
        return None

    def _window_samples(self, window_seconds: float | None, model_id: str) -> int:
        fixed = self._model_window_samples()
        if window_seconds is None:
            return fixed or round(DEFAULT_WAVEFORM_WINDOW_S * self.rate)
        requested = round(window_seconds * self.rate)
        if requested <= 0:
            raise ValueError(f"audio encoder {model_id}: window_seconds must be positive, got {window_seconds}")
        if fixed is not None and requested > fixed:
            raise ValueError(
                f"audio encoder {model_id}: window_seconds {window_seconds} exceeds the model's input of "
                f"{fixed / self.rate:g} s"
            )
        return requested

    def _min_samples(self) -> int:
        """Return the shortest clip that yields at least one frame."""
        if self.kind == "waveform":
            needed = 1
            for kernel, stride in zip(reversed(self.model.config.conv_kernel), reversed(self.model.config.conv_stride)):
                needed = (needed - 1) * stride + kernel
            return needed
        if self.kind == "ast":
            return round(_KALDI_FRAME_S * self.rate)
        return 1

    def preprocess(self, payload: bytes) -> Prepared:
        wave = decode_audio(bytes(payload), target_rate=self.rate, max_seconds=self.max_seconds, field="audio")
        if len(wave) < self.min_samples:
            raise InvalidInput(
                f"audio has {len(wave)} samples at {self.rate} Hz ({1000 * len(wave) / self.rate:.1f} ms); "
                f"this model needs at least {self.min_samples} samples ({1000 * self.min_samples / self.rate:.1f} ms)",
                field="audio",
                value=len(wave),
                limit=self.min_samples,
            )
        starts = window_starts(len(wave), self.window_samples)
        kept = starts[: self.max_windows]
        windows = [wave[start : start + self.window_samples] for start in kept]
        data = AudioWindows([self._features(window) for window in windows], [len(window) for window in windows])
        info = {
            "seconds": round(len(wave) / self.rate, 3),
            "windows": len(kept),
            "window_seconds": round(self.window_samples / self.rate, 3),
            "truncated": len(kept) < len(starts),
        }
        return Prepared(data=data, cost=len(kept), info=info)

    def _features(self, window: np.ndarray) -> dict[str, torch.Tensor]:
        features = self.extractor(window, sampling_rate=self.rate, return_tensors="pt")
        names = {
            "waveform": ("input_values",),
            "whisper": ("input_features",),
            "ast": ("input_values",),
            "clap": ("input_features", "is_longer"),
        }[self.kind]
        return {name: features[name][0] for name in names}

    def _embed(self, items: Sequence[AudioWindows]) -> torch.Tensor:
        """Return one pooled row per item: the sample-weighted mean of its unit-norm window rows."""
        features = [window for item in items for window in item.features]
        samples = [count for item in items for count in item.samples]
        if self.kind == "waveform":
            pooled = self._pool_waveform(features, samples)
        else:
            stacked = {name: torch.stack([f[name] for f in features]).to(self.device) for name in features[0]}
            pooled = self._pool_fixed(stacked, samples)

        pooled = torch.nn.functional.normalize(pooled.float(), dim=-1)
        rows = []
        start = 0
        for item in items:
            count = len(item.samples)
            weights = torch.tensor(item.samples, dtype=pooled.dtype, device=pooled.device).unsqueeze(-1)
            rows.append((pooled[start : start + count] * weights).sum(dim=0) / weights.sum())
            start += count
        return torch.stack(rows)

    def _pool_fixed(self, inputs: dict[str, torch.Tensor], samples: list[int]) -> torch.Tensor:
        if self.kind == "ast":
            return self.model(input_values=inputs["input_values"]).pooler_output
        if self.kind == "clap":
            return self.model(input_features=inputs["input_features"], is_longer=inputs["is_longer"]).audio_embeds
        hidden = self.model(input_features=inputs["input_features"]).last_hidden_state
        frames = [whisper_frames(count, int(self.extractor.hop_length), hidden.shape[1]) for count in samples]
        return _masked_mean(hidden, torch.tensor(frames, device=hidden.device))

    def _pool_waveform(self, features: list[dict[str, torch.Tensor]], samples: list[int]) -> torch.Tensor:
        waves = [f["input_values"] for f in features]
        if not self.uses_attention_mask:
            rows: list[torch.Tensor | None] = [None] * len(waves)
            for length in sorted(set(samples)):
                indices = [i for i, count in enumerate(samples) if count == length]
                stacked = torch.stack([waves[i] for i in indices]).to(self.device)
                pooled = self.model(input_values=stacked).last_hidden_state.mean(dim=1)
                for row, index in enumerate(indices):
                    rows[index] = pooled[row]
            return torch.stack([row for row in rows if row is not None])

        width = max(samples)
        input_values = torch.zeros((len(waves), width), dtype=waves[0].dtype)
        attention_mask = torch.zeros((len(waves), width), dtype=torch.long)
        for i, wave in enumerate(waves):
            input_values[i, : len(wave)] = wave
            attention_mask[i, : len(wave)] = 1
        hidden = self.model(
            input_values=input_values.to(self.device), attention_mask=attention_mask.to(self.device)
        ).last_hidden_state
        frames = self.model._get_feat_extract_output_lengths(torch.tensor(samples))
        return _masked_mean(hidden, frames.to(hidden.device))

    def example_payload(self) -> bytes:
        return example_wav(self.rate)


def whisper_frames(sample_count: int, hop_length: int, frame_limit: int) -> int:
    """Return how many Whisper encoder frames cover `sample_count` real samples.

    The log-mel has one frame per hop, and the encoder's second convolution halves the
    frame rate (stride 2), so each output frame spans two mel frames (20 ms at 16 kHz).
    """
    mel_frames = math.ceil(sample_count / hop_length)
    return max(1, min(frame_limit, math.ceil(mel_frames / 2)))


def _masked_mean(hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    positions = torch.arange(hidden.shape[1], device=hidden.device)
    mask = (positions.unsqueeze(0) < lengths.unsqueeze(1)).unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


def _family(model_type: str, model_id: str) -> str:
    if model_type in WAVEFORM_MODEL_TYPES:
        return "waveform"
    if model_type == "whisper":
        return "whisper"
    if model_type == AST_MODEL_TYPE:
        return "ast"
    if model_type in CLAP_MODEL_TYPES:
        return "clap"
    known = [*WAVEFORM_MODEL_TYPES, "whisper", AST_MODEL_TYPE, *CLAP_MODEL_TYPES]
    raise ValueError(f"audio encoder {model_id}: model type '{model_type}' is not supported; supported: {known}")


def example_wav(rate: int, seconds: float = 2.0) -> bytes:
    """Return a warm-up clip: a 220 Hz tone with a slow vibrato, as 16-bit mono WAV bytes."""
    times = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * 220 * times + 3 * np.sin(2 * np.pi * 2 * times))
    buffer = io.BytesIO()
    sf.write(buffer, wave.astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()
