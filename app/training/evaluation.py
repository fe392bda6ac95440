"""Accuracy, macro-F1 and confusion matrix of a trained head, per modality condition."""

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from app.fusion.modules import FusionClassifier
from app.training.dataset import EmbeddedSplit, conditions


def predict(model: FusionClassifier, split: EmbeddedSplit) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return model(split.embeddings, split.mask).argmax(dim=1).numpy()


def scores(targets: np.ndarray, predictions: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Return accuracy, macro-F1 over every label, and the confusion matrix (rows: true label)."""
    indices = list(range(len(labels)))
    return {
        "samples": int(len(targets)),
        "accuracy": float(accuracy_score(targets, predictions)),
        "macro_f1": float(f1_score(targets, predictions, labels=indices, average="macro", zero_division=0)),
        "confusion": confusion_matrix(targets, predictions, labels=indices).tolist(),
    }


def ablation(model: FusionClassifier, split: EmbeddedSplit, labels: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Score the model on every condition: all modalities, each one alone, each one dropped.

    A condition keeps only the samples that still have a modality under it.
    """
    results = {}
    for name, keep in conditions(split.modalities).items():
        view = split.with_modalities(keep)
        if len(view) == 0:
            continue
        results[name] = scores(view.targets.numpy(), predict(model, view), labels)
    return results


def format_table(results: dict[str, dict[str, Any]]) -> str:
    lines = ["| condition | samples | accuracy | macro-F1 |", "| --- | ---: | ---: | ---: |"]
    for name, result in results.items():
        lines.append(f"| {name} | {result['samples']} | {result['accuracy']:.3f} | {result['macro_f1']:.3f} |")
    return "\n".join(lines)


def format_confusion(confusion: Sequence[Sequence[int]], labels: Sequence[str]) -> str:
    """Return the confusion matrix as a text table: one row per true label, one column per prediction."""
    width = max(len(label) for label in labels)
    columns = [max(len(label), 5) for label in labels]
    header = " " * width + " | " + " ".join(label.rjust(c) for label, c in zip(labels, columns, strict=True))
    lines = ["true \\ predicted", header]
    for label, row in zip(labels, confusion, strict=True):
        cells = " ".join(str(count).rjust(c) for count, c in zip(row, columns, strict=True))
        lines.append(f"{label.ljust(width)} | {cells}")
    return "\n".join(lines)
