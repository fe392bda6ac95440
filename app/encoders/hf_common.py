"""Loading, offline checks, dtypes and finite outputs, shared by the transformers-based encoders."""

import contextlib
import logging
import os
from abc import abstractmethod
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import huggingface_hub
import huggingface_hub.constants
import numpy as np
import torch
import torch.nn.functional as F

from app.encoders.base import Encoder, Prepared
from app.encoders.weights import fingerprint_files

logger = logging.getLogger(__name__)

T = TypeVar("T")

OFFLINE_VARIABLES = ("MMS_OFFLINE", "HF_HUB_OFFLINE")
_TRUE_VALUES = ("1", "true", "yes", "on")

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
"""Weight files that transformers' `from_pretrained` reads, in the order it prefers them."""


class NonFiniteOutput(RuntimeError):
    """An embedding stayed NaN or infinite even in float32."""


def offline_mode() -> bool:
    """Return True when MMS_OFFLINE or HF_HUB_OFFLINE is set to a true value."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE_VALUES for name in OFFLINE_VARIABLES)


def hub_cache_folder(repo_id: str) -> Path:
    """Return the folder where huggingface_hub caches `repo_id` (under HF_HOME/hub by default)."""
    return Path(huggingface_hub.constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--"))


def check_weights_present(source: str, *, model_id: str, revision: str | None, local_files_only: bool) -> None:
    """Raise FileNotFoundError naming the model and the folder searched when no weight file is there.

    A local folder must contain a weight file. A hub id is checked only when downloads
    are off, because otherwise `from_pretrained` may still fetch it.
    """
    folder = Path(source)
    if folder.is_dir():
        if not any((folder / name).is_file() for name in WEIGHT_FILES):
            raise FileNotFoundError(
                f"model '{model_id}': no weight file ({', '.join(WEIGHT_FILES)}) in {folder}"
            )
        return
    if not local_files_only:
        return
    cached = [
        huggingface_hub.try_to_load_from_cache(source, name, revision=revision)
        for name in ("config.json", *WEIGHT_FILES)
    ]
    found = [path for path in cached if isinstance(path, str)]
    if not found or not any(not path.endswith("config.json") for path in found):
        raise FileNotFoundError(
            f"model '{model_id}' (hub id '{source}', revision {revision or 'main'}) has no cached config "
            f"and weights in {hub_cache_folder(source)}, and downloads are off (MMS_OFFLINE, HF_HUB_OFFLINE "
            "or local_files_only). Download it into HF_HOME on a machine with network access, "
            "or point `source` at a local folder."
        )


def load_pretrained(load: Callable[[], T], source: str, *, model_id: str) -> T:
    """Call a `from_pretrained` loader, turning its OSError into one that names the model and place."""
    try:
        return load()
    except OSError as exc:
        place = source if Path(source).is_dir() else f"hub id '{source}', cache {hub_cache_folder(source)}"
        raise FileNotFoundError(f"model '{model_id}' could not be loaded from {place}: {exc}") from exc


# Missing keys that are expected and harmless: pooler layers that hub checkpoints often
# lack (roberta-base, DINO ViTs) and that no encoder here uses.
_UNUSED_PREFIXES = ("pooler.",)


def check_missing_weights(loading_info: dict[str, Any], *, model_id: str) -> None:
    """Raise when `from_pretrained` left used parameters at their random initialisation."""
    missing = sorted(
        key for key in loading_info.get("missing_keys", ()) if not key.startswith(_UNUSED_PREFIXES)
    )
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise ValueError(f"model '{model_id}': the checkpoint lacks weights for {shown}; is it the right model type?")
    mismatched = loading_info.get("mismatched_keys") or []
    if mismatched:
        raise ValueError(f"model '{model_id}': weights of the wrong shape for {mismatched[:8]}")


def weights_revision(source: str, revision: str | None) -> str:
    """Return a hash of a local folder's weight files, else the hub commit that the cache holds.

    The hub cache keeps each commit in `snapshots/<commit hash>/`, so the folder that
    contains the cached config.json is named after the commit.
    """
    folder = Path(source)
    if folder.is_dir():
        files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
        return fingerprint_files(files) if files else "unknown"
    cached = huggingface_hub.try_to_load_from_cache(source, "config.json", revision=revision)
    if isinstance(cached, str):
        return Path(cached).parent.name
    return revision or "unknown"


def autocast_dtype(dtype: str | torch.dtype, device: torch.device, *, label: str) -> torch.dtype | None:
    """Return the autocast dtype for `dtype` on `device`, or None to run in float32.

    Half precision applies only on CUDA; elsewhere the encoder runs in float32.
    """
    resolved = DTYPES.get(dtype) if isinstance(dtype, str) else dtype
    if resolved not in DTYPES.values():
        raise ValueError(f"{label}: dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if resolved == torch.float32:
        return None
    # NOTE: the CUDA path is not exercised by the CPU test suite; only the float32
    # fallback after a non-finite output is tested there.
    if device.type != "cuda":
        logger.info("%s: dtype %s applies only on CUDA; running in float32 on %s", label, resolved, device)
        return None
    return resolved


@contextlib.contextmanager
def maybe_autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def embed_with_fallback(
    embed: Callable[[Sequence[int]], torch.Tensor],
    count: int,
    *,
    device: torch.device,
    dtype: torch.dtype | None,
    label: str,
) -> torch.Tensor:
    """Embed items 0..count-1 and return unit-norm float32 rows on the CPU.

    `embed(indices)` returns one pooled row per index. Rows that are not finite under
    half-precision autocast (an overflow) are embedded again in float32. A row that is
    still not finite raises NonFiniteOutput, so NaN and Inf never reach a client.
    """
    with maybe_autocast(device, dtype):
        pooled = embed(range(count)).float()
    bad = (~torch.isfinite(pooled).all(dim=1)).nonzero().flatten().tolist()
    if bad:
        logger.warning("%s: %d of %d embeddings were not finite; recomputing them in float32", label, len(bad), count)
        pooled[bad] = embed(bad).float()
        still_bad = (~torch.isfinite(pooled).all(dim=1)).nonzero().flatten().tolist()
        if still_bad:
            raise NonFiniteOutput(f"{label}: items {still_bad} of the batch have non-finite embeddings in float32")
    return F.normalize(pooled, dim=-1).cpu()


class HFEncoder(Encoder):
    """Base of the transformers-based encoders: batched forward passes with the float32 fallback."""

    device: torch.device
    autocast_dtype: torch.dtype | None

    def forward(self, batch: list[Prepared]) -> np.ndarray:
        items = [item.data for item in batch]
        embedded = embed_with_fallback(
            lambda indices: self._embed([items[i] for i in indices]),
            len(items),
            device=self.device,
            dtype=self.autocast_dtype,
            label=f"{self.modality} encoder {self.model_id}",
        )
        return embedded.numpy()

    @abstractmethod
    def _embed(self, items: Sequence[Any]) -> torch.Tensor:
        """Return one pooled row per item, before normalisation."""
