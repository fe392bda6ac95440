"""Benchmark inputs: one real payload per modality, and the request bodies built from them.

`write_inputs(folder)` writes the raw payloads (text.txt, image.jpg, audio.wav), one
multipart body per workload for POST /v1/embed, and a JSON body for an OpenAI-style
/embeddings route (text_embeddings.json) that other servers such as Infinity accept.
Run `python -m bench.inputs --out DIR` to write them by hand.
"""

import argparse
import io
import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import skimage.data
import soundfile as sf
import torch
import torchaudio.functional
from PIL import Image, ImageOps

SENTENCE = (
    "A small brown dog runs across the green park chasing a red ball "
    "while children laugh and play nearby today."
)
"""Twenty words, about 27 MiniLM tokens with the special tokens."""

SPOKEN_SENTENCE = "The quick brown fox jumps over the lazy dog near the quiet river bank."
VOICE = "en-us"
SAMPLE_RATE = 16_000
MIN_SPEECH_S = 3.0
MAX_SPEECH_S = 5.0
IMAGE_SIZE = (640, 480)
JPEG_QUALITY = 90

WORKLOAD_FIELDS: dict[str, tuple[str, ...]] = {
    "text": ("text",),
    "image": ("image",),
    "audio": ("audio",),
    "all": ("text", "image", "audio"),
}
"""Form fields sent by each workload; `all` is one sample with the three modalities."""


@dataclass(frozen=True, slots=True)
class Body:
    path: Path
    content_type: str


def photo_jpeg() -> bytes:
    """Return scikit-image's `coffee` photo (600x400), cropped to 4:3 and resized to 640x480, as JPEG."""
    image = Image.fromarray(skimage.data.coffee()).convert("RGB")
    fitted = ImageOps.fit(image, IMAGE_SIZE, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    fitted.save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def speech_wav(text: str = SPOKEN_SENTENCE, voice: str = VOICE) -> bytes:
    """Return `text` read by espeak-ng as 16 kHz mono 16-bit WAV; raise when the clip is not 3 to 5 s."""
    executable = shutil.which("espeak-ng")
    if executable is None:
        raise RuntimeError("espeak-ng is not installed; install it with `apt-get install -y espeak-ng`")
    with tempfile.TemporaryDirectory(prefix="bench-speech-") as folder:
        path = Path(folder) / "speech.wav"
        subprocess.run([executable, "-v", voice, "-w", str(path), text], check=True, capture_output=True, timeout=60)
        samples, source_rate = sf.read(path, dtype="float32")
    waveform = torchaudio.functional.resample(torch.from_numpy(samples), source_rate, SAMPLE_RATE).numpy()
    duration_s = len(waveform) / SAMPLE_RATE
    if not MIN_SPEECH_S <= duration_s <= MAX_SPEECH_S:
        raise RuntimeError(
            f"espeak-ng produced {duration_s:.2f} s of speech; the benchmark expects "
            f"{MIN_SPEECH_S:g} to {MAX_SPEECH_S:g} s, so change SPOKEN_SENTENCE"
        )
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(waveform, -1.0, 1.0), SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def multipart_body(fields: tuple[str, ...], payloads: dict[str, bytes]) -> tuple[bytes, str]:
    """Encode the chosen fields as multipart/form-data with httpx; return the body and its Content-Type."""
    files: dict[str, tuple[str | None, bytes] | tuple[str, bytes, str]] = {}
    if "text" in fields:
        # A part without a filename is a plain form field, as a browser sends a text input;
        # passing it in `files` keeps the body multipart even when it is the only part.
        files["text"] = (None, payloads["text"])
    if "image" in fields:
        files["image"] = ("photo.jpg", payloads["image"], "image/jpeg")
    if "audio" in fields:
        files["audio"] = ("speech.wav", payloads["audio"], "audio/wav")
    request = httpx.Request("POST", "http://127.0.0.1/v1/embed", files=files)
    return request.read(), request.headers["Content-Type"]


def write_inputs(folder: Path, model_name: str = "sentence-transformers/all-MiniLM-L6-v2") -> dict[str, Body]:
    """Write payloads and bodies under `folder`; return the bodies by workload name.

    The extra `text_embeddings` body is `{"input": [SENTENCE], "model": model_name}` for
    OpenAI-style /embeddings routes.
    """
    folder.mkdir(parents=True, exist_ok=True)
    payloads = {"text": SENTENCE.encode(), "image": photo_jpeg(), "audio": speech_wav()}
    (folder / "text.txt").write_bytes(payloads["text"])
    (folder / "image.jpg").write_bytes(payloads["image"])
    (folder / "audio.wav").write_bytes(payloads["audio"])

    bodies: dict[str, Body] = {}
    for workload, fields in WORKLOAD_FIELDS.items():
        content, content_type = multipart_body(fields, payloads)
        path = folder / f"{workload}.multipart"
        path.write_bytes(content)
        bodies[workload] = Body(path, content_type)

    embeddings = folder / "text_embeddings.json"
    embeddings.write_text(json.dumps({"input": [SENTENCE], "model": model_name}))
    bodies["text_embeddings"] = Body(embeddings, "application/json")
    return bodies


def read_payloads(folder: Path) -> dict[str, bytes | str]:
    """Return the payloads that `write_inputs` wrote, as the encoders' preprocess takes them."""
    return {
        "text": (folder / "text.txt").read_text(),
        "image": (folder / "image.jpg").read_bytes(),
        "audio": (folder / "audio.wav").read_bytes(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Write the benchmark payloads and request bodies.")
    parser.add_argument("--out", type=Path, required=True, help="Folder to write into (created if missing).")
    parser.add_argument(
        "--model-name",
        default="sentence-transformers/all-MiniLM-L6-v2",
        help="Value of `model` in text_embeddings.json, as the other server names its model.",
    )
    args = parser.parse_args()
    for name, body in write_inputs(args.out, args.model_name).items():
        print(f"{name}: {body.path} ({body.path.stat().st_size} bytes, {body.content_type})")


if __name__ == "__main__":
    main()
