"""Weighted concatenation: fusion that needs no training.

Each present modality's unit vector is scaled by the square root of its weight, with
the weights renormalised over the modalities present, and absent modalities leave a
slot of zeros. The fused vector then has unit norm, and for two samples with the same
modalities and weights its cosine is the weighted mean of the per-modality cosines.
"""

from collections.abc import Mapping

import numpy as np

from app.errors import InvalidInput


class WeightedConcat:
    kind = "weighted-concat"

    def __init__(self, dims: Mapping[str, int], weights: Mapping[str, float]) -> None:
        self.modalities = list(dims)
        self.dims = dict(dims)
        self.default_weights = {m: float(weights.get(m, 1.0)) for m in self.modalities}
        self.dim = sum(self.dims.values())

    @property
    def identity(self) -> str:
        """The fusion's part of a pipeline's `space`: the kind alone, since nothing here is trained."""
        return self.kind

    def resolve_weights(self, overrides: Mapping[str, float] | None, present: list[str]) -> dict[str, float]:
        """Merge request overrides into the defaults and renormalise over `present`."""
        weights = dict(self.default_weights)
        for modality, value in (overrides or {}).items():
            if modality not in self.dims:
                raise InvalidInput(
                    f"weights names modality '{modality}', which this pipeline does not have; "
                    f"use one of {self.modalities}",
                    field="weights",
                    value=modality,
                )
            weights[modality] = value
        total = sum(weights[m] for m in present)
        if total <= 0:
            raise InvalidInput(
                f"weights of the modalities present ({', '.join(present)}) add up to {total}; "
                "at least one of them must be positive",
                field="weights",
                value={m: weights[m] for m in present},
            )
        return {m: weights[m] / total for m in present}

    def fuse(self, embeddings: Mapping[str, np.ndarray], weights: Mapping[str, float]) -> np.ndarray:
        """Concatenate unit vectors scaled by sqrt(weight); `weights` come from resolve_weights."""
        parts = []
        for modality in self.modalities:
            if modality in embeddings:
                parts.append(np.sqrt(weights[modality]) * embeddings[modality])
            else:
                parts.append(np.zeros(self.dims[modality], dtype=np.float32))
        return np.concatenate(parts).astype(np.float32)
