"""Identify weight files, so the `space` of a vector changes when its weights do."""

import hashlib
from collections.abc import Iterable
from pathlib import Path

_CHUNK = 1 << 20


def fingerprint_files(paths: Iterable[Path]) -> str:
    """Return the first 12 hex digits of a sha256 over the files' bytes."""
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()[:12]
