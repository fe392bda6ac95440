"""Classification heads read from a pipeline folder: weights in safetensors, labels in JSON."""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

HEAD_FOLDER = "head"


@dataclass(frozen=True, slots=True)
class LinearHead:
    """Softmax regression on the fused vector: logits = weight @ x + bias."""

    weight: np.ndarray
    bias: np.ndarray
    labels: list[str]

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

    def probabilities(self, fused: np.ndarray) -> np.ndarray:
        logits = self.weight @ fused + self.bias
        logits = logits - logits.max()
        exp = np.exp(logits)
        return exp / exp.sum()


def load_head(pipeline_dir: Path, input_dim: int) -> LinearHead | None:
    """Return the pipeline's head, or None when the folder has no head/ subfolder."""
    folder = pipeline_dir / HEAD_FOLDER
    if not folder.is_dir():
        return None
    return LinearHead.load(folder, input_dim)
