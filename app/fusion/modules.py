"""Fusion strategies as torch modules: per-modality embeddings and a presence mask in, one vector out.

Every module takes `embeddings`, a mapping from modality to a [batch, dim] float tensor
(an absent modality's rows are zeros), and `mask`, a [batch, modalities] bool tensor
in the module's modality order (True where the modality is present). Each row needs at
least one present modality. Absent modalities never influence the output: they are
masked out of softmaxes and attention, or multiplied by zero.

The modules are small (a few hundred thousand parameters at most), so the service runs
them on the CPU in the request path.
"""

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

Embeddings = Mapping[str, torch.Tensor]


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the modality axis (dim 1) of [batch, modalities, ...] logits, absent ones at 0."""
    expanded = mask.reshape(*mask.shape, *([1] * (logits.dim() - 2)))
    return logits.masked_fill(~expanded, float("-inf")).softmax(dim=1)


class FusionModule(nn.Module, ABC):
    """Base of the fusion strategies; `out_dim` is the size of the fused vector."""

    kind: ClassVar[str]
    trainable: ClassVar[bool] = True

    def __init__(self, dims: Mapping[str, int]) -> None:
        super().__init__()
        self.modalities = list(dims)
        self.dims = dict(dims)
        self.out_dim = 0

    @abstractmethod
    def forward(self, embeddings: Embeddings, mask: torch.Tensor) -> torch.Tensor:
        """Return the fused vectors [batch, out_dim]."""

    @abstractmethod
    def options(self) -> dict[str, Any]:
        """Return the constructor arguments, besides `dims`, that rebuild this module."""

    def static_weights(self, mask: torch.Tensor) -> torch.Tensor:
        """Return [batch, modalities] weights of the modalities, renormalised over the present ones.

        Strategies whose weighting depends on the sample (attention, gated) report equal shares.
        """
        share = mask.float()
        return share / share.sum(dim=1, keepdim=True)

    def scaled_inputs(self, embeddings: Embeddings) -> dict[str, torch.Tensor]:
        """Scale unit vectors by sqrt(dim), so components have unit RMS whatever the encoder's size."""
        return {m: embeddings[m] * math.sqrt(self.dims[m]) for m in self.modalities}


class ConcatFusion(FusionModule):
    """Weighted concatenation with fixed weights: app.fusion.concat.WeightedConcat as a module.

    Each present unit vector is scaled by sqrt(weight / sum of the present weights), and
    absent modalities keep a slot of zeros. It has no parameters; a head trained on it is
    the weighted-concatenation baseline.
    """

    kind = "weighted-concat"
    trainable = False

    def __init__(self, dims: Mapping[str, int], weights: Mapping[str, float] | None = None) -> None:
        super().__init__(dims)
        values = [float((weights or {}).get(m, 1.0)) for m in self.modalities]
        self.register_buffer("weights", torch.tensor(values, dtype=torch.float32))
        self.out_dim = sum(self.dims.values())

    def forward(self, embeddings: Embeddings, mask: torch.Tensor) -> torch.Tensor:
        shares = self.static_weights(mask)
        parts = [shares[:, i : i + 1].sqrt() * embeddings[m] for i, m in enumerate(self.modalities)]
        return torch.cat(parts, dim=1)

    def static_weights(self, mask: torch.Tensor) -> torch.Tensor:
        present = mask.float() * self.weights
        return present / present.sum(dim=1, keepdim=True)

    def options(self) -> dict[str, Any]:
        return {"weights": dict(zip(self.modalities, self.weights.tolist(), strict=True))}


class AverageFusion(FusionModule):
    """Weighted average in a shared space: one linear projection per modality, learned modality weights."""

    kind = "weighted-average"

    def __init__(self, dims: Mapping[str, int], dim: int = 256) -> None:
        super().__init__(dims)
        self.project = nn.ModuleDict({m: nn.Linear(d, dim) for m, d in self.dims.items()})
        self.modality_logits = nn.Parameter(torch.zeros(len(self.modalities)))
        self.out_dim = dim

    def forward(self, embeddings: Embeddings, mask: torch.Tensor) -> torch.Tensor:
        inputs = self.scaled_inputs(embeddings)
        projected = torch.stack([self.project[m](inputs[m]) for m in self.modalities], dim=1)
        weights = self.static_weights(mask)
        return (weights.unsqueeze(-1) * projected).sum(dim=1)

    def static_weights(self, mask: torch.Tensor) -> torch.Tensor:
        return masked_softmax(self.modality_logits.expand(mask.shape[0], -1), mask)

    def options(self) -> dict[str, Any]:
        return {"dim": self.out_dim}


class AttentionFusion(FusionModule):
    """One token per modality plus a learned query token, through one transformer encoder layer.

    Each modality is projected to `dim` and tagged with a learned modality embedding.
    Absent modalities are excluded by the key padding mask, and the fused vector is the
    query token's output, so it attends to the present modalities only.
    """

    kind = "attention"

    def __init__(self, dims: Mapping[str, int], dim: int = 128, heads: int = 4, dropout: float = 0.1) -> None:
        super().__init__(dims)
        self.project = nn.ModuleDict({m: nn.Linear(d, dim) for m, d in self.dims.items()})
        self.modality_embedding = nn.Parameter(torch.randn(len(self.modalities), dim) * 0.02)
        self.query = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.layer = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=2 * dim, dropout=dropout, batch_first=True, norm_first=True
        )
        self.norm = nn.LayerNorm(dim)
        self.heads = heads
        self.dropout = dropout
        self.out_dim = dim

    def forward(self, embeddings: Embeddings, mask: torch.Tensor) -> torch.Tensor:
        inputs = self.scaled_inputs(embeddings)
        tokens = torch.stack([self.project[m](inputs[m]) for m in self.modalities], dim=1)
        tokens = tokens + self.modality_embedding
        batch = tokens.shape[0]
        sequence = torch.cat([self.query.expand(batch, -1, -1), tokens], dim=1)
        query_kept = torch.zeros(batch, 1, dtype=torch.bool, device=mask.device)
        padding = torch.cat([query_kept, ~mask], dim=1)
        return self.norm(self.layer(sequence, src_key_padding_mask=padding)[:, 0])

    def options(self) -> dict[str, Any]:
        return {"dim": self.out_dim, "heads": self.heads, "dropout": self.dropout}


class GatedFusion(FusionModule):
    """Gated multimodal unit for any number of modalities.

    Each modality gives tanh(W_m x_m). A gate computed from all present inputs and the
    presence mask weighs them per dimension, with a softmax over the present modalities.
    Because the gate takes every modality as input, one modality can change how
    another is weighted.
    """

    kind = "gated"

    def __init__(self, dims: Mapping[str, int], dim: int = 128, dropout: float = 0.1) -> None:
        super().__init__(dims)
        self.project = nn.ModuleDict({m: nn.Linear(d, dim) for m, d in self.dims.items()})
        gate_inputs = sum(self.dims.values()) + len(self.modalities)
        self.gate = nn.Linear(gate_inputs, len(self.modalities) * dim)
        self.drop = nn.Dropout(dropout)
        self.dropout = dropout
        self.out_dim = dim

    def forward(self, embeddings: Embeddings, mask: torch.Tensor) -> torch.Tensor:
        inputs = self.scaled_inputs(embeddings)
        present = mask.float()
        features = torch.stack([torch.tanh(self.project[m](inputs[m])) for m in self.modalities], dim=1)
        gate_input = torch.cat([inputs[m] * present[:, i : i + 1] for i, m in enumerate(self.modalities)] + [present], 1)
        gates = self.gate(self.drop(gate_input)).view(mask.shape[0], len(self.modalities), self.out_dim)
        return (masked_softmax(gates, mask) * self.drop(features)).sum(dim=1)

    def options(self) -> dict[str, Any]:
        return {"dim": self.out_dim, "dropout": self.dropout}


class LateFusion(FusionModule):
    """One linear classifier per modality; the fused vector is their logits averaged with learned weights.

    Its output already is a vector of class logits, so the classifier on top of it is the identity.
    """

    kind = "late"

    def __init__(self, dims: Mapping[str, int], labels: int) -> None:
        super().__init__(dims)
        self.classifiers = nn.ModuleDict({m: nn.Linear(d, labels) for m, d in self.dims.items()})
        self.modality_logits = nn.Parameter(torch.zeros(len(self.modalities)))
        self.out_dim = labels

    def forward(self, embeddings: Embeddings, mask: torch.Tensor) -> torch.Tensor:
        inputs = self.scaled_inputs(embeddings)
        logits = torch.stack([self.classifiers[m](inputs[m]) for m in self.modalities], dim=1)
        return (self.static_weights(mask).unsqueeze(-1) * logits).sum(dim=1)

    def static_weights(self, mask: torch.Tensor) -> torch.Tensor:
        return masked_softmax(self.modality_logits.expand(mask.shape[0], -1), mask)

    def options(self) -> dict[str, Any]:
        return {"labels": self.out_dim}


FUSION_MODULES: dict[str, type[FusionModule]] = {
    module.kind: module for module in (ConcatFusion, AverageFusion, AttentionFusion, GatedFusion, LateFusion)
}


def build_fusion(kind: str, dims: Mapping[str, int], labels: int, options: Mapping[str, Any] | None = None) -> FusionModule:
    """Build the fusion module `kind` for encoders of sizes `dims` and a head with `labels` classes."""
    if kind not in FUSION_MODULES:
        raise ValueError(f"unknown fusion type '{kind}'; known: {sorted(FUSION_MODULES)}")
    arguments = dict(options or {})
    if kind == LateFusion.kind:
        arguments["labels"] = labels
    return FUSION_MODULES[kind](dims, **arguments)


class FusionClassifier(nn.Module):
    """A fusion module followed by a linear classifier (the identity after late fusion)."""

    def __init__(self, fusion: FusionModule, labels: int) -> None:
        super().__init__()
        self.fusion = fusion
        self.head: nn.Module = nn.Identity() if isinstance(fusion, LateFusion) else nn.Linear(fusion.out_dim, labels)

    def forward(self, embeddings: Embeddings, mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.fusion(embeddings, mask))
