"""Frozen encoder embeddings for training, computed exactly as the service computes them, and cached.

Each input goes through the pipeline's own encoder objects, built by
app.pipeline.load_pipeline with app.encoders.registry.ENCODER_BUILDERS: `preprocess`
on one item, then `forward` on a batch under torch.inference_mode. The cache stores
one .npy file per input. Its key is the encoder's spec and weight revision plus the
sha256 of the input (the file's bytes, or the text's UTF-8), so a changed file, a
changed encoder option or new weights are encoded again.
"""

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from app.encoders.base import Encoder, Prepared
from app.errors import ServiceError
from app.pipeline import EncoderSpec, Pipeline
from app.training.manifest import Row

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mms" / "embeddings"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def hash_files(rows: Iterable[Row]) -> dict[Path, str]:
    """Return the sha256 of every image and audio file the rows name."""
    hashes: dict[Path, str] = {}
    for row in rows:
        for path in (row.image, row.audio):
            if path is not None and path not in hashes:
                hashes[path] = file_sha256(path)
    return hashes


def encoder_key(modality: str, spec: EncoderSpec, model_id: str, revision: str) -> str:
    """Return an id of what makes an encoder's output: its spec, model id and weight revision."""
    identity = {"modality": modality, "spec": spec.model_dump(), "model": model_id, "revision": revision}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


class EmbeddingCache:
    """One float32 .npy file per (encoder key, content hash) under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, encoder: str, content: str) -> Path:
        return self.root / encoder / content[:2] / f"{content}.npy"

    def get(self, encoder: str, content: str) -> np.ndarray | None:
        path = self.path(encoder, content)
        return np.load(path) if path.is_file() else None

    def put(self, encoder: str, content: str, vector: np.ndarray) -> None:
        path = self.path(encoder, content)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a reader never sees half a file and two writers do not clash.
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as handle:
            np.save(handle, vector.astype(np.float32))
        os.replace(handle.name, path)


class EncodingError(ValueError):
    """An input that the encoder's preprocessing rejected, with the manifest line it came from."""


@dataclass(frozen=True, slots=True)
class _Item:
    key: str
    row: Row


def content_key(row: Row, modality: str, file_hashes: Mapping[Path, str]) -> str:
    if modality == "text":
        return text_sha256(row.text or "")
    path = getattr(row, modality)
    return file_hashes[path]


def embed_rows(
    pipeline: Pipeline,
    specs: Mapping[str, EncoderSpec],
    rows: Sequence[Row],
    file_hashes: Mapping[Path, str],
    cache: EmbeddingCache,
    *,
    batch_size: int = 16,
    progress: bool = True,
    modalities: Sequence[str] | None = None,
) -> list[dict[str, np.ndarray]]:
    """Return each row's embeddings by modality (all of the pipeline's unless `modalities`), encoding only what the cache lacks."""
    results: list[dict[str, np.ndarray]] = [{} for _ in rows]
    for modality in modalities or list(pipeline.encoders):
        encoder = pipeline.encoders[modality]
        key = encoder_key(modality, specs[modality], encoder.model_id, encoder.revision)
        pending: dict[str, _Item] = {}
        for row in rows:
            if getattr(row, modality) is not None:
                content = content_key(row, modality, file_hashes)
                if not cache.path(key, content).is_file():
                    pending.setdefault(content, _Item(content, row))
        if pending:
            logger.info("encoding %d %s inputs (%d rows)", len(pending), modality, len(rows))
            _encode(encoder, modality, list(pending.values()), key, cache, batch_size, progress)
        for i, row in enumerate(rows):
            if getattr(row, modality) is not None:
                vector = cache.get(key, content_key(row, modality, file_hashes))
                assert vector is not None, "every input was encoded above"
                results[i][modality] = vector
    return results


def _encode(
    encoder: Encoder, modality: str, items: list[_Item], key: str, cache: EmbeddingCache, batch_size: int, progress: bool
) -> None:
    bar = tqdm(total=len(items), desc=f"encoding {modality}", unit="input", disable=not progress)
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        prepared = [_preprocess(encoder, modality, item.row) for item in batch]
        with torch.inference_mode():
            vectors = encoder.forward(prepared)
        for item, vector in zip(batch, vectors, strict=True):
            cache.put(key, item.key, vector)
        bar.update(len(batch))
    bar.close()


def _preprocess(encoder: Encoder, modality: str, row: Row) -> Prepared:
    value = getattr(row, modality)
    payload = value if modality == "text" else Path(value).read_bytes()
    try:
        return encoder.preprocess(payload)
    except ServiceError as exc:
        where = "text" if modality == "text" else f"{modality} file {value}"
        raise EncodingError(f"line {row.line}: the {modality} encoder rejected the {where}: {exc.detail}") from exc
