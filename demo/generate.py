"""Generate the demo dataset offline and reproducibly: photo reviews with a sarcastic reviewer.

Each sample is a small photo (a face or not), a one-sentence review comment (positive or
negative) and the comment read aloud by one of three espeak-ng voices. The label is
`<subject>-<opinion>`: the subject comes from the image, the opinion from the comment's
sentiment, inverted when the reviewer is the sarcastic voice. See demo/README.md.

Usage: python -m demo.generate [--out .cache/demo] [--seed 0] [--train 600] [--validation 240] [--test 300]
"""

import argparse
import io
import itertools
import json
import random
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import skimage.data
import soundfile as sf
import torch
import torchaudio.functional
import torchvision.transforms.v2 as transforms
from PIL import Image

from demo.sentences import CLAUSES, CLOSERS, OPENERS

SPLITS = ("train", "validation", "test")
SUBJECTS = ("face", "other")
SAMPLE_RATE = 16_000
IMAGE_SIZE = 96


@dataclass(frozen=True, slots=True)
class Voice:
    name: str
    espeak: str
    sarcastic: bool


VOICES = (
    Voice("ava", "en-us+f3", sarcastic=False),
    Voice("ben", "en-us", sarcastic=False),
    Voice("cal", "en-us+klatt", sarcastic=True),
)

PHOTO_SHARES = {"train": 0.6, "validation": 0.15, "test": 0.25}
"""Share of each subject's source photos given to each split; a photo is in one split only."""
CLAUSE_SHARES = {"train": 0.55, "validation": 0.18, "test": 0.27}
"""Share of the core clause pairs given to each split, so test comments use unseen wording."""

AUGMENT = transforms.Compose(
    [
        transforms.Resize(IMAGE_SIZE + 8, interpolation=transforms.InterpolationMode.BICUBIC, antialias=True),
        transforms.RandomResizedCrop(IMAGE_SIZE, scale=(0.65, 1.0), ratio=(0.85, 1.18), antialias=True),
        transforms.RandomHorizontalFlip(),
        transforms.ColorJitter(brightness=0.35, contrast=0.35, saturation=0.35, hue=0.04),
    ]
)


def label_of(subject: str, positive: bool, voice: Voice) -> str:
    liked = positive != voice.sarcastic
    return f"{subject}-{'liked' if liked else 'disliked'}"


def source_photos() -> dict[str, list[tuple[str, Image.Image]]]:
    """Return scikit-image's LFW subset as RGB images by subject: 100 faces, then 100 background crops."""
    images = skimage.data.lfw_subset()
    if images.dtype != np.uint8:
        images = np.round(np.clip(images, 0.0, 1.0) * 255).astype(np.uint8)
    photos: dict[str, list[tuple[str, Image.Image]]] = {subject: [] for subject in SUBJECTS}
    for index, array in enumerate(images):
        subject = SUBJECTS[0] if index < 100 else SUBJECTS[1]
        photos[subject].append((f"lfw-{index:03d}", Image.fromarray(array).convert("RGB")))
    return photos


def deal(items: Sequence[object], shares: Mapping[str, float], rng: random.Random) -> dict[str, list[object]]:
    """Shuffle `items` and cut them into one disjoint part per split."""
    order = list(items)
    rng.shuffle(order)
    parts: dict[str, list[object]] = {}
    start = 0
    for i, split in enumerate(SPLITS):
        end = len(order) if i == len(SPLITS) - 1 else start + round(shares[split] * len(order))
        parts[split] = order[start:end]
        start = end
    return parts


def comments(clauses: Sequence[str], rng: random.Random) -> list[str]:
    """Return every opener-clause-closer sentence of `clauses`, shuffled."""
    sentences = [f"{opener} {clause}{closer}" for opener, clause, closer in itertools.product(OPENERS, clauses, CLOSERS)]
    rng.shuffle(sentences)
    return sentences


def speak(text: str, voice: Voice, speed: int, pitch: int) -> bytes:
    """Return `text` read by espeak-ng as 16 kHz mono FLAC bytes."""
    executable = shutil.which("espeak-ng")
    if executable is None:
        raise SystemExit("espeak-ng is not installed; install it with `apt-get install -y espeak-ng`")
    with tempfile.TemporaryDirectory(prefix="demo-speech-") as folder:
        path = Path(folder) / "speech.wav"
        command = [executable, "-v", voice.espeak, "-s", str(speed), "-p", str(pitch), "-w", str(path), text]
        subprocess.run(command, check=True, capture_output=True, timeout=60)
        samples, rate = sf.read(path, dtype="float32")
    resampled = torchaudio.functional.resample(torch.from_numpy(samples), rate, SAMPLE_RATE).numpy()
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(resampled, -1.0, 1.0), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def augmented_jpeg(photo: Image.Image, seed: int) -> bytes:
    torch.manual_seed(seed)
    buffer = io.BytesIO()
    AUGMENT(photo).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def generate(out: Path, counts: Mapping[str, int], seed: int = 0) -> Path:
    """Write images/, audio/ and manifest.jsonl under `out`; return the manifest's path.

    The sources each split draws from depend only on `seed`, never on `counts`, so a
    small run's test samples come from the same held-out sources as a full run's.
    """
    rng = random.Random(seed)
    photos = {subject: deal(pool, PHOTO_SHARES, rng) for subject, pool in source_photos().items()}
    pairs = deal(CLAUSES, CLAUSE_SHARES, rng)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    records = []
    for split in SPLITS:
        split_rng = random.Random(f"{seed}-{split}")
        pools = {positive: comments([pair[0 if positive else 1] for pair in pairs[split]], split_rng) for positive in (True, False)}  # type: ignore[index]
        for number in range(counts.get(split, 0)):
            records.append(_sample(out, split, number, photos, pools, split_rng, seed))
    manifest = out / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(record) + "\n" for record in records))
    return manifest


def _sample(
    out: Path,
    split: str,
    number: int,
    photos: Mapping[str, Mapping[str, list[object]]],
    pools: dict[bool, list[str]],
    rng: random.Random,
    seed: int,
) -> dict[str, object]:
    # Cycling through every subject x sentiment x voice keeps the labels balanced.
    combinations = list(itertools.product(SUBJECTS, (True, False), VOICES))
    subject, positive, voice = combinations[number % len(combinations)]
    source, photo = rng.choice(photos[subject][split])  # type: ignore[misc]
    if not pools[positive]:
        raise SystemExit(f"{split} has no unused {('negative', 'positive')[positive]} comments left; ask for fewer samples")
    text = pools[positive].pop()
    sample_id = f"{split}-{number:04d}"
    image_path = Path("images") / f"{sample_id}.jpg"
    audio_path = Path("audio") / f"{sample_id}.flac"
    (out / image_path).write_bytes(augmented_jpeg(photo, rng.randrange(2**31) + seed))
    (out / audio_path).write_bytes(speak(text, voice, speed=rng.randint(145, 185), pitch=rng.randint(40, 60)))
    return {
        "id": sample_id,
        "text": text,
        "image": image_path.as_posix(),
        "audio": audio_path.as_posix(),
        "label": label_of(subject, positive, voice),
        "split": split,
        "image_source": source,
        "meta": {"subject": subject, "sentiment": "positive" if positive else "negative", "voice": voice.name},
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.generate", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(".cache/demo"), help="output folder (default: .cache/demo)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice (default: 0)")
    for split, default in (("train", 600), ("validation", 240), ("test", 300)):
        parser.add_argument(f"--{split}", type=int, default=default, help=f"{split} samples (default: {default})")
    args = parser.parse_args(argv)
    counts = {"train": args.train, "validation": args.validation, "test": args.test}
    manifest = generate(args.out, counts, args.seed)
    print(f"wrote {sum(counts.values())} samples to {manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
