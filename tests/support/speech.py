"""Real speech for audio tests, synthesized with espeak-ng (install: apt-get install espeak-ng).

espeak-ng writes 22050 Hz 16-bit WAV; `speak` resamples it with torchaudio so tests get
clips at the rate they ask for.
"""

import functools
import io
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional

SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "She sells sea shells by the sea shore every summer.",
    "A rainbow appears when sunlight shines through falling rain.",
)
MALE_VOICE = "en-us"
FEMALE_VOICE = "en-us+f3"


@functools.cache
def speak(text: str, voice: str = MALE_VOICE, rate: int = 16_000) -> bytes:
    """Return `text` read by espeak-ng's `voice` as mono 16-bit WAV bytes at `rate` Hz."""
    executable = shutil.which("espeak-ng")
    if executable is None:
        pytest.fail("espeak-ng is not installed; install it with `apt-get install -y espeak-ng`")
    with tempfile.TemporaryDirectory(prefix="speech-") as folder:
        path = Path(folder) / "speech.wav"
        command = [executable, "-v", voice, "-w", str(path), text]
        subprocess.run(command, check=True, capture_output=True, timeout=60)
        samples, source_rate = sf.read(path, dtype="float32")

    waveform = torchaudio.functional.resample(torch.from_numpy(samples), source_rate, rate).numpy()
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(waveform, -1.0, 1.0), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def sentences_male() -> list[bytes]:
    """Each of SENTENCES read by the en-us voice, as 16 kHz WAV bytes."""
    return [speak(text, MALE_VOICE) for text in SENTENCES]


@pytest.fixture(scope="session")
def sentences_female() -> list[bytes]:
    """Each of SENTENCES read by the en-us+f3 voice, as 16 kHz WAV bytes."""
    return [speak(text, FEMALE_VOICE) for text in SENTENCES]
