"""Pipelines: a folder under models/ naming one encoder per modality, a fusion and a head.

`models/<name>/pipeline.json` holds the configuration; `models/<name>/head/` holds an
optional classification head. A new pipeline needs no code, only a folder.
"""

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.encoders.base import Encoder
from app.fusion.concat import WeightedConcat
from app.fusion.heads import Head, load_head
from app.fusion.trained import TrainedFusion, TrainedHead
from app.settings import Settings

logger = logging.getLogger(__name__)

MODALITIES = ("text", "image", "audio")
CONFIG_FILE = "pipeline.json"


class EncoderSpec(BaseModel):
    """One encoder: its type, the model it names and options passed to its constructor."""

    model_config = ConfigDict(extra="allow", frozen=True)
    type: str
    model: str = Field(description="Model name reported to clients, usually its hub id.")

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class FusionSpec(BaseModel):
    """Which fused vector /v1/embed returns.

    "weighted-concat": the concatenation of the weighted unit vectors, with `weights` as
    the default modality weights. "trained": the fused vector of the trained fusion in
    head/ (written by `mms train`), scaled to unit norm; its weighting is learned, so
    `weights` must stay empty. /v1/classify always runs the head, whatever this says.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["weighted-concat", "trained"] = "weighted-concat"
    weights: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _weights_only_for_concat(self) -> "FusionSpec":
        if self.type == "trained" and self.weights:
            raise ValueError("fusion 'trained' learns its modality weights; remove 'weights'")
        return self


class PipelineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    description: str = ""
    encoders: dict[str, EncoderSpec]
    fusion: FusionSpec = FusionSpec()


@dataclass(frozen=True, slots=True)
class BuildContext:
    """What an encoder builder needs besides its own spec."""

    folder: Path
    device: torch.device
    settings: Settings


EncoderBuilder = Callable[[EncoderSpec, BuildContext], Encoder]


@dataclass(slots=True)
class Pipeline:
    name: str
    folder: Path
    description: str
    encoders: dict[str, Encoder]
    fusion: WeightedConcat | TrainedFusion
    head: Head | None

    def space(self, weights: Mapping[str, float]) -> str:
        """Return an identifier that is equal for two vectors exactly when they are comparable."""
        identity = {
            "pipeline": self.name,
            "encoders": {m: [e.model_id, e.revision] for m, e in self.encoders.items()},
            "fusion": self.fusion.identity,
            "weights": {m: round(float(w), 6) for m, w in sorted(weights.items())},
        }
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        return f"{self.name}:{digest[:16]}"


def read_config(folder: Path) -> PipelineConfig:
    config = PipelineConfig.model_validate_json((folder / CONFIG_FILE).read_text())
    unknown = set(config.encoders) - set(MODALITIES)
    if unknown:
        raise ValueError(f"{folder / CONFIG_FILE} names unknown modalities {sorted(unknown)}; use {MODALITIES}")
    return config


def load_pipeline(
    name: str, settings: Settings, device: torch.device, builders: Mapping[str, EncoderBuilder]
) -> Pipeline:
    """Build every encoder of the pipeline folder `settings.models_dir / name`."""
    folder = settings.models_dir / name
    if not (folder / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"pipeline '{name}' has no {CONFIG_FILE} in {folder}")
    config = read_config(folder)
    context = BuildContext(folder=folder, device=device, settings=settings)

    encoders: dict[str, Encoder] = {}
    for modality, spec in config.encoders.items():
        if spec.type not in builders:
            raise ValueError(f"pipeline '{name}': unknown encoder type '{spec.type}'; known: {sorted(builders)}")
        logger.info("loading %s encoder %s for pipeline %s", modality, spec.model, name)
        encoders[modality] = builders[spec.type](spec, context)

    fusion, head = build_fusion_and_head(name, folder, config.fusion, encoders)
    return Pipeline(name, folder, config.description, encoders, fusion, head)


def build_fusion_and_head(
    name: str, folder: Path, spec: FusionSpec, encoders: Mapping[str, Encoder]
) -> tuple[WeightedConcat | TrainedFusion, Head | None]:
    """Build the fusion that /v1/embed returns and the head that /v1/classify runs."""
    dims = {m: e.dim for m, e in encoders.items()}
    head = load_head(folder, dims, {m: e.revision for m, e in encoders.items()})
    if spec.type == "weighted-concat":
        return WeightedConcat(dims, spec.weights), head
    if not isinstance(head, TrainedHead):
        raise ValueError(
            f"pipeline '{name}' asks for fusion 'trained' but {folder / 'head'} contains no trained head "
            "(config.json, head.safetensors, labels.json); train one with `mms train`"
        )
    return TrainedFusion(head), head
