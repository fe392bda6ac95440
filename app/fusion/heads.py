"""Classification heads read from a pipeline folder: weights in safetensors, labels in JSON.

A head/ folder with a config.json is a trained fusion head (app.fusion.trained); one
without is a linear head on the pipeline's weighted-concatenation vector.
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from app.fusion.trained import CONFIG_FILE, TrainedHead

HEAD_FOLDER = "head"


@dataclass(frozen=True, slots=True)
class LinearHead:
    """Softmax regression on the fused vector: logits = weight @ x + bias."""

    weight: np.ndarray
    bias: np.ndarray
    labels: list[str]
    accepts_request_weights = True
    """It reads the weighted-concatenation vector, which a request's `weights` changes."""

    @classmethod
    def load(cls, folder: Path, input_dim: int) -> "LinearHead":
        tensors = load_file(folder / "head.safetensors")
        labels = json.loads((folder / "labels.json").read_text())
        weight = tensors["weight"].astype(np.float32)
        bias = tensors["bias"].astype(np.float32)
        expected = (len(labels), input_dim)
        if weight.shape != expected or bias.shape != (len(labels),):
            raise ValueError(
                f"head in {folder} has weight {weight.shape} and bias {bias.shape}; "
                f"expected {expected} and ({len(labels)},) for {len(labels)} labels "
                f"on a {input_dim}-d fused vector"
            )
        return cls(weight=weight, bias=bias, labels=list(labels))

    def probabilities(self, fused: np.ndarray, per_modality: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """Return class probabilities of one sample's fused vector; `per_modality` is unused."""
        logits = self.weight @ fused + self.bias
        logits = logits - logits.max()
        exp = np.exp(logits)
        return exp / exp.sum()


Head = LinearHead | TrainedHead


def load_head(pipeline_dir: Path, dims: Mapping[str, int], revisions: Mapping[str, str]) -> Head | None:
    """Return the pipeline's head, or None when the folder has no head/ subfolder.

    `dims` and `revisions` describe the pipeline's encoders, by modality, in fusion order.
    """
    folder = pipeline_dir / HEAD_FOLDER
    if not folder.is_dir():
        return None
    if (folder / CONFIG_FILE).is_file():
        return TrainedHead.load(folder, dims, revisions)
    return LinearHead.load(folder, sum(dims.values()))
