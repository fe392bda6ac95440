"""Trained fusion heads on disk, and the adapter that serves a trained fused vector from /v1/embed.

A trained head is a folder (a pipeline's head/) holding:

- `config.json`: the fusion type and options, the modalities and their embedding sizes,
  and the encoder model ids and revisions the head was trained on;
- `head.safetensors`: the state dict of app.fusion.modules.FusionClassifier;
- `labels.json`: the class names, in logit order.

`mms train` also writes `training.json` (its settings) and `metrics.json` there; the
service reads neither.
"""

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from app.encoders.weights import fingerprint_files
from app.errors import InvalidInput
from app.fusion.modules import FusionClassifier, build_fusion

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "head.safetensors"
LABELS_FILE = "labels.json"
FORMAT_VERSION = 1


def stack_inputs(
    rows: Sequence[Mapping[str, np.ndarray]], modalities: Sequence[str], dims: Mapping[str, int]
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Turn per-sample embeddings into the module inputs: zero-filled [batch, dim] tensors and a mask."""
    embeddings = {m: torch.zeros(len(rows), dims[m]) for m in modalities}
    mask = torch.zeros(len(rows), len(modalities), dtype=torch.bool)
    for i, row in enumerate(rows):
        for j, modality in enumerate(modalities):
            if modality in row:
                embeddings[modality][i] = torch.from_numpy(np.asarray(row[modality], dtype=np.float32))
                mask[i, j] = True
    return embeddings, mask


@dataclass(frozen=True, slots=True)
class HeadConfig:
    fusion: str
    options: dict[str, Any]
    dims: dict[str, int]
    encoders: dict[str, dict[str, str]]

    @property
    def modalities(self) -> list[str]:
        return list(self.dims)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "fusion": {"type": self.fusion, "options": self.options},
            "dims": self.dims,
            "encoders": self.encoders,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "HeadConfig":
        if data.get("format") != FORMAT_VERSION:
            raise ValueError(f"head config format {data.get('format')!r} is not supported; expected {FORMAT_VERSION}")
        fusion = data["fusion"]
        return cls(fusion["type"], dict(fusion.get("options", {})), dict(data["dims"]), dict(data["encoders"]))


def save_head(folder: Path, model: FusionClassifier, labels: Sequence[str], config: HeadConfig) -> None:
    """Write a trained head's weights, labels and config into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, folder / WEIGHTS_FILE, metadata={"fusion": config.fusion})
    # safetensors 0.8 creates the file readable by its owner only, and a service may run as another user.
    (folder / WEIGHTS_FILE).chmod(0o644)
    (folder / LABELS_FILE).write_text(json.dumps(list(labels), indent=2) + "\n")
    (folder / CONFIG_FILE).write_text(json.dumps(config.to_json(), indent=2) + "\n")


class TrainedHead:
    """A fusion module and classifier trained by `mms train`, run on the CPU for each request."""

    accepts_request_weights = False
    """Its fusion learned the modality weighting, so a request's `weights` has nothing to change."""

    def __init__(self, model: FusionClassifier, labels: list[str], config: HeadConfig, fingerprint: str) -> None:
        self.model = model.eval()
        self.labels = labels
        self.config = config
        self.fingerprint = fingerprint

    @classmethod
    def load(cls, folder: Path, dims: Mapping[str, int], revisions: Mapping[str, str]) -> "TrainedHead":
        config = HeadConfig.from_json(json.loads((folder / CONFIG_FILE).read_text()))
        labels = list(json.loads((folder / LABELS_FILE).read_text()))
        _check_encoders(folder, config, dims, revisions)
        fusion = build_fusion(config.fusion, config.dims, len(labels), config.options)
        model = FusionClassifier(fusion, len(labels))
        # strict: a missing or unexpected tensor means the files and the config disagree.
        model.load_state_dict(load_file(folder / WEIGHTS_FILE), strict=True)
        return cls(model, labels, config, fingerprint_files([folder / WEIGHTS_FILE]))

    @property
    def kind(self) -> str:
        return self.config.fusion

    def logits(self, rows: Sequence[Mapping[str, np.ndarray]]) -> np.ndarray:
        embeddings, mask = self._inputs(rows)
        with torch.inference_mode():
            return self.model(embeddings, mask).numpy()

    def fused(self, rows: Sequence[Mapping[str, np.ndarray]]) -> np.ndarray:
        """Return the fusion module's output for each row, before the classifier."""
        embeddings, mask = self._inputs(rows)
        with torch.inference_mode():
            return self.model.fusion(embeddings, mask).numpy()

    def probabilities(self, fused: np.ndarray, per_modality: Mapping[str, np.ndarray]) -> np.ndarray:
        """Return class probabilities of one sample; `fused` is unused, the head fuses `per_modality` itself."""
        logits = torch.from_numpy(self.logits([per_modality])[0])
        return logits.softmax(dim=0).numpy()

    def _inputs(self, rows: Sequence[Mapping[str, np.ndarray]]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        for row in rows:
            if not any(m in row for m in self.config.modalities):
                raise InvalidInput(
                    f"this pipeline's head reads only {', '.join(self.config.modalities)}, and the sample "
                    f"has none of them; send at least one",
                    field="sample",
                    value=sorted(row),
                )
        return stack_inputs(rows, self.config.modalities, self.config.dims)


def _check_encoders(folder: Path, config: HeadConfig, dims: Mapping[str, int], revisions: Mapping[str, str]) -> None:
    for modality, size in config.dims.items():
        if dims.get(modality) != size:
            raise ValueError(
                f"head in {folder} was trained on a {size}-d {modality} embedding, but the pipeline's "
                f"{modality} encoder gives {dims.get(modality, 'no')} dimensions; retrain it with `mms train`"
            )
    for modality, encoder in config.encoders.items():
        if revisions.get(modality) != encoder.get("revision"):
            # A warning, not an error: a revision id can change without the weights changing.
            logger.warning(
                "head in %s was trained on %s encoder revision %s, the pipeline has %s; retrain it if the weights changed",
                folder,
                modality,
                encoder.get("revision"),
                revisions.get(modality),
            )


class TrainedFusion:
    """Engine-facing fusion whose vector is a trained head's fused vector, scaled to unit norm."""

    def __init__(self, head: TrainedHead) -> None:
        self.head = head
        self.modalities = head.config.modalities
        self.dims = dict(head.config.dims)
        self.dim = head.model.fusion.out_dim
        self.kind = head.kind
        self.identity = f"{head.kind}:{head.fingerprint}"
        self.default_weights = {m: 1.0 for m in self.modalities}

    def resolve_weights(self, overrides: Mapping[str, float] | None, present: list[str]) -> dict[str, float]:
        """Reject request weights and return the module's own weights over the present modalities."""
        if overrides:
            raise InvalidInput(
                f"weights cannot be set for this pipeline: its {self.kind} fusion was trained and "
                "learned its own modality weighting; remove the weights field",
                field="weights",
                value=dict(overrides),
            )
        if not any(m in present for m in self.modalities):
            raise InvalidInput(
                f"this pipeline's fusion reads only {', '.join(self.modalities)}, and the sample has none of them; "
                "send at least one",
                field="sample",
                value=list(present),
            )
        mask = torch.tensor([[m in present for m in self.modalities]])
        with torch.inference_mode():
            shares = self.head.model.fusion.static_weights(mask)[0].tolist()
        return {m: float(s) for m, s in zip(self.modalities, shares, strict=True) if m in present}

    def fuse(self, embeddings: Mapping[str, np.ndarray], weights: Mapping[str, float]) -> np.ndarray:
        vector = self.head.fused([embeddings])[0]
        norm = float(np.linalg.norm(vector))
        return (vector / norm if norm > 0 else vector).astype(np.float32)
