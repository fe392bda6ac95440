"""Write tests/data/ge2e_golden.npz: GE2E embeddings computed by the original resemblyzer.

The service re-implements resemblyzer's preprocessing and windowing, and
tests/encoders/test_ge2e.py compares it with what this script stores. The script runs
in its own virtual environment, because resemblyzer imports webrtcvad, which the
service's environment does not install:

    python3 -m venv /tmp/ge2e-golden-venv
    /tmp/ge2e-golden-venv/bin/pip install torch==2.14.1 resemblyzer==0.1.4 setuptools==80.9.0
    /tmp/ge2e-golden-venv/bin/python scripts/golden/make_ge2e_golden.py

webrtcvad 2.0.10 imports `pkg_resources`, which setuptools 80.9.0 still ships and
84.2.1 (what torch 2.14.1 otherwise pulls in) does not, hence the setuptools pin. The
original voice-activity module imports, so nothing is stubbed. Run from the repository root.

Each clip in tests/data/ge2e_*.wav (espeak-ng speech, 16 kHz mono 16-bit, written by
tests.support.speech.speak) is embedded with `VoiceEncoder.embed_utterance` after
`normalize_volume(wav, -30, increase_only=True)`. Silence trimming (`trim_long_silences`)
is skipped, as the service skips it. ge2e_male_quiet.wav is a reading scaled to
-45 dBFS, so that the gain step changes the result. The file also stores the windows that
`compute_partial_slices` picks for a range of clip lengths, and the versions of the
packages involved: librosa's `melspectrogram` padding default has changed between
releases, and the service matches librosa 0.11.
"""

import hashlib
import importlib.metadata
import json
from pathlib import Path

import numpy as np
import resemblyzer
import soundfile as sf
from resemblyzer import VoiceEncoder
from resemblyzer.audio import normalize_volume

DATA_DIR = Path("tests/data")
OUTPUT = DATA_DIR / "ge2e_golden.npz"
PACKAGES = ("resemblyzer", "librosa", "torch", "numpy", "scipy", "soundfile")
# Clip lengths: shorter than one window (25_600 samples), one sample either side of the
# 75 % coverage threshold of a second window (31_520) and a third (43_840), and a sweep.
SLICE_SAMPLE_COUNTS = sorted(
    {1, 159, 160, 161, 12_000, 25_599, 25_600, 25_601, 31_519, 31_520, 43_839, 43_840}
    | set(range(30_000, 60_001, 997))
)


def window_table(encoder: VoiceEncoder) -> tuple[np.ndarray, np.ndarray]:
    """Return the window count and the last window's first frame for each test length."""
    counts, last_starts = [], []
    for sample_count in SLICE_SAMPLE_COUNTS:
        _, mel_slices = encoder.compute_partial_slices(sample_count, rate=1.3, min_coverage=0.75)
        counts.append(len(mel_slices))
        last_starts.append(mel_slices[-1].start)
    return np.array(counts), np.array(last_starts)


def main() -> None:
    encoder = VoiceEncoder("cpu", verbose=False)
    paths = sorted(DATA_DIR.glob("ge2e_*.wav"))
    if not paths:
        raise SystemExit(f"no ge2e_*.wav clips found in {DATA_DIR.resolve()}; run from the repository root")

    embeddings = []
    for path in paths:
        wav, rate = sf.read(path, dtype="float32")
        if rate != 16_000 or wav.ndim != 1:
            raise SystemExit(f"{path} must be 16 kHz mono, found {rate} Hz and shape {wav.shape}")
        embeddings.append(encoder.embed_utterance(normalize_volume(wav, -30, increase_only=True)))

    counts, last_starts = window_table(encoder)
    versions = {name: importlib.metadata.version(name) for name in PACKAGES}
    weights = Path(resemblyzer.__file__).parent / "pretrained.pt"
    np.savez(
        OUTPUT,
        clip_names=np.array([path.name for path in paths]),
        embeddings=np.stack(embeddings).astype(np.float32),
        slice_sample_counts=np.array(SLICE_SAMPLE_COUNTS),
        slice_window_counts=counts,
        slice_last_starts=last_starts,
        versions=np.array(json.dumps(versions)),
        weights_sha256=np.array(hashlib.sha256(weights.read_bytes()).hexdigest()),
    )
    print(f"wrote {OUTPUT} with {len(paths)} clips; versions {versions}")


if __name__ == "__main__":
    main()
