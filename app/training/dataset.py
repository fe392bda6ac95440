"""Embedded samples as tensors, and the modality conditions that evaluation and validation use."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from app.fusion.trained import stack_inputs
from app.training.manifest import Row


@dataclass(frozen=True, slots=True)
class EmbeddedSplit:
    """Samples ready for a fusion module: zero-filled embeddings, presence mask and label indices."""

    embeddings: dict[str, torch.Tensor]
    mask: torch.Tensor
    targets: torch.Tensor
    modalities: list[str]

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def subset(self, index: torch.Tensor) -> "EmbeddedSplit":
        return EmbeddedSplit(
            {m: e[index] for m, e in self.embeddings.items()}, self.mask[index], self.targets[index], self.modalities
        )

    def with_modalities(self, keep: Sequence[str]) -> "EmbeddedSplit":
        """Return the samples seen through `keep` only; samples left with no modality are dropped."""
        keep_mask = torch.tensor([m in keep for m in self.modalities])
        mask = self.mask & keep_mask
        rows = mask.any(dim=1).nonzero().squeeze(1)
        embeddings = {m: e * mask[:, i : i + 1] for i, (m, e) in enumerate(self.embeddings.items())}
        return EmbeddedSplit(embeddings, mask, self.targets, self.modalities).subset(rows)


def build_split(
    rows: Sequence[Row],
    vectors: Sequence[Mapping[str, np.ndarray]],
    modalities: Sequence[str],
    dims: Mapping[str, int],
    labels: Sequence[str],
) -> EmbeddedSplit:
    """Stack the embeddings of `rows` (only `modalities`) with their label indices."""
    index = {label: i for i, label in enumerate(labels)}
    kept = [{m: v for m, v in row_vectors.items() if m in modalities} for row_vectors in vectors]
    embeddings, mask = stack_inputs(kept, modalities, dims)
    targets = torch.tensor([index[row.label] for row in rows], dtype=torch.long)
    return EmbeddedSplit(embeddings, mask, targets, list(modalities))


def conditions(modalities: Sequence[str]) -> dict[str, list[str]]:
    """Return the evaluation conditions: every modality, each one alone, and each one dropped."""
    result = {"complete": list(modalities)}
    if len(modalities) > 1:
        for modality in modalities:
            result[f"only {modality}"] = [modality]
        for modality in modalities:
            result[f"without {modality}"] = [m for m in modalities if m != modality]
    return result


def drop_modalities(split: EmbeddedSplit, probability: float, generator: torch.Generator) -> EmbeddedSplit:
    """Hide each present modality with `probability`, for augmentation; a sample always keeps one."""
    if probability <= 0:
        return split
    dropped = torch.rand(split.mask.shape, generator=generator) < probability
    mask = split.mask & ~dropped
    emptied = ~mask.any(dim=1)
    mask[emptied] = split.mask[emptied]
    embeddings = {m: e * mask[:, i : i + 1] for i, (m, e) in enumerate(split.embeddings.items())}
    return EmbeddedSplit(embeddings, mask, split.targets, split.modalities)
