"""GE2E speaker embeddings from the LSTM speaker encoder shipped in the resemblyzer package.

The steps reproduce resemblyzer 0.1.4's `preprocess_wav` followed by
`VoiceEncoder.embed_utterance`. The clip is decoded to 16 kHz mono and its gain is
raised to -30 dBFS. A 40-band power mel spectrogram follows, with the Slaney scale and
norm and 25 ms frames every 10 ms, as librosa 0.11's `melspectrogram` computes it. The
LSTM embeds windows of 160 frames (1.6 s), taken 1.3 times per second, and the clip's
vector is the L2-normalised mean of its window embeddings.

NOTE: resemblyzer also trims long silences with webrtcvad before embedding. This
encoder leaves that step out, so a clip with long pauses gets a slightly different
vector than `preprocess_wav` would give. The golden-value test feeds both sides
untrimmed audio.

resemblyzer itself is never imported: its voice-activity dependency fails to import,
so the weight file is located through the distribution's metadata.
"""

import importlib.metadata
import io
import math
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.transforms
from torch import nn

from app.encoders.base import Encoder, Prepared
from app.encoders.weights import fingerprint_files
from app.errors import InvalidInput
from app.media.audio import decode_audio

SAMPLE_RATE = 16_000
HOP_SAMPLES = 160
"""10 ms between mel frames."""
FFT_SAMPLES = 400
"""25 ms analysis window."""
MEL_BANDS = 40
WINDOW_FRAMES = 160
"""Mel frames in one encoder window (1.6 s)."""
WINDOWS_PER_SECOND = 1.3
MIN_LAST_COVERAGE = 0.75
"""Share of the last window that real audio must cover for the window to be kept."""
TARGET_DBFS = -30.0
EMBEDDING_DIM = 256

WEIGHTS_DISTRIBUTION = "resemblyzer"
WEIGHTS_FILE_NAME = "pretrained.pt"
# Terms of the GE2E training loss, stored in the checkpoint but unused for inference.
_LOSS_PARAMETERS = ("similarity_weight", "similarity_bias")


class SpeakerLSTM(nn.Module):
    """Three LSTM layers over mel frames, then a ReLU projection of the last hidden state."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(MEL_BANDS, EMBEDDING_DIM, num_layers=3, batch_first=True)
        self.linear = nn.Linear(EMBEDDING_DIM, EMBEDDING_DIM)
        self.relu = nn.ReLU()

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        """Map [windows, frames, bands] to unit-norm window embeddings [windows, 256]."""
        _, (hidden, _) = self.lstm(mels)
        projected = self.relu(self.linear(hidden[-1]))
        return nn.functional.normalize(projected, dim=1)


def find_weights() -> Path:
    """Return the path of resemblyzer's `pretrained.pt`, found through the package metadata."""
    try:
        distribution = importlib.metadata.distribution(WEIGHTS_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise FileNotFoundError(
            f"package '{WEIGHTS_DISTRIBUTION}' is not installed; install it with "
            f"`pip install --no-deps {WEIGHTS_DISTRIBUTION}==0.1.4` to get the GE2E weights"
        ) from exc
    for file in distribution.files or []:
        if file.name == WEIGHTS_FILE_NAME:
            return Path(str(distribution.locate_file(file)))
    raise FileNotFoundError(f"'{WEIGHTS_FILE_NAME}' is not listed among the files of '{WEIGHTS_DISTRIBUTION}'")


def load_speaker_lstm(path: Path) -> SpeakerLSTM:
    """Build the network and load the checkpoint's `model_state` strictly."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = {name: tensor for name, tensor in checkpoint["model_state"].items() if name not in _LOSS_PARAMETERS}
    model = SpeakerLSTM()
    model.load_state_dict(state, strict=True)
    return model


def window_starts(sample_count: int) -> list[int]:
    """Return the first mel frame of each window over a clip of `sample_count` samples.

    Windows start every 77 frames (1.3 per second). The last window is kept only if the
    clip covers at least 75 % of it, and a clip shorter than one window gets one window.
    Same partition as resemblyzer 0.1.4's `compute_partial_slices`.
    """
    frame_step = round(SAMPLE_RATE / WINDOWS_PER_SECOND / HOP_SAMPLES)
    # A centred STFT yields one frame more than whole hops fit in the clip.
    frame_count = sample_count // HOP_SAMPLES + 1
    start_limit = max(1, frame_count - WINDOW_FRAMES + frame_step + 1)
    starts = list(range(0, start_limit, frame_step))
    last_start_sample = starts[-1] * HOP_SAMPLES
    coverage = (sample_count - last_start_sample) / (WINDOW_FRAMES * HOP_SAMPLES)
    if coverage < MIN_LAST_COVERAGE and len(starts) > 1:
        starts.pop()
    return starts


def raise_gain(wav: np.ndarray) -> np.ndarray:
    """Scale a clip quieter than -30 dBFS (RMS re full scale) up to that level.

    A louder clip is returned unchanged.
    """
    rms = math.sqrt(float(np.mean(np.square(wav, dtype=np.float64))))
    target_rms = 10.0 ** (TARGET_DBFS / 20.0)
    if rms >= target_rms:
        return wav
    return (wav * np.float32(target_rms / rms)).astype(np.float32)


class GE2EEncoder(Encoder):
    """Speaker encoder trained with the generalized end-to-end (GE2E) loss."""

    modality = "audio"
    cost_unit = "windows"

    def __init__(
        self,
        *,
        device: torch.device,
        max_seconds: float,
        model_id: str = "resemblyzer/ge2e-speaker-encoder",
        weights_path: str | Path | None = None,
    ) -> None:
        path = Path(weights_path) if weights_path else find_weights()
        self.model = load_speaker_lstm(path).eval().to(device)
        self.max_seconds = max_seconds
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=SAMPLE_RATE,
            n_fft=FFT_SAMPLES,
            win_length=FFT_SAMPLES,
            hop_length=HOP_SAMPLES,
            f_min=0.0,
            f_max=SAMPLE_RATE / 2,
            n_mels=MEL_BANDS,
            # torch.hann_window is periodic, like librosa's get_window("hann", fftbins=True).
            window_fn=torch.hann_window,
            power=2.0,
            normalized=False,
            # librosa 0.11 centres frames and pads the ends with zeros ("constant").
            center=True,
            pad_mode="constant",
            norm="slaney",
            mel_scale="slaney",
        )
        super().__init__(model_id=model_id, revision=fingerprint_files([path]), dim=EMBEDDING_DIM, device=device)

    def mel_frames(self, wav: np.ndarray) -> torch.Tensor:
        """Return the power mel spectrogram of a 16 kHz clip as [frames, 40] float32."""
        with torch.no_grad():
            return self.mel(torch.from_numpy(wav)).T.contiguous()

    def preprocess(self, payload: bytes) -> Prepared:
        wav = decode_audio(payload, target_rate=SAMPLE_RATE, max_seconds=self.max_seconds, field="audio")
        if not wav.any():
            raise InvalidInput(
                "audio is digital silence (every sample is zero); send a clip with sound in it",
                field="audio",
                value=0.0,
            )
        duration_s = len(wav) / SAMPLE_RATE
        wav = raise_gain(wav)

        starts = window_starts(len(wav))
        # Like resemblyzer, zero-pad up to the last window's end before the mel, so every
        # window has its 160 frames and the frames near the end match resemblyzer's.
        padded_length = (starts[-1] + WINDOW_FRAMES) * HOP_SAMPLES
        if padded_length > len(wav):
            wav = np.pad(wav, (0, padded_length - len(wav)))
        frames = self.mel_frames(wav)
        windows = torch.stack([frames[start : start + WINDOW_FRAMES] for start in starts])
        info = {"duration_s": round(duration_s, 3), "windows": len(starts)}
        return Prepared(data=windows, cost=len(starts), info=info)

    def forward(self, batch: list[Prepared]) -> np.ndarray:
        # Every window has the same shape, so the whole batch is one LSTM call.
        windows = torch.cat([item.data for item in batch]).to(self.device)
        window_embeddings = self.model(windows)
        per_item = torch.split(window_embeddings, [len(item.data) for item in batch])
        means = torch.stack([embeddings.mean(dim=0) for embeddings in per_item])
        return nn.functional.normalize(means, dim=1).float().cpu().numpy()

    def example_payload(self) -> bytes:
        """Return 3 s of a 200 Hz to 3 kHz linear chirp as 16-bit WAV bytes."""
        seconds, low_hz, high_hz = 3.0, 200.0, 3000.0
        t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
        phase = 2 * np.pi * (low_hz * t + (high_hz - low_hz) * t**2 / (2 * seconds))
        buffer = io.BytesIO()
        sf.write(buffer, 0.3 * np.sin(phase), SAMPLE_RATE, format="WAV", subtype="PCM_16")
        return buffer.getvalue()
