"""Wire schemas of the HTTP API: what clients receive, and the multipart form they send."""

from typing import Any

from pydantic import BaseModel, Field


class EmbedResponse(BaseModel):
    pipeline: str
    space: str = Field(description="Vectors are comparable exactly when their space is equal.")
    dimension: int
    modalities: list[str] = Field(description="Modalities present in the sample, in fused order.")
    weights: dict[str, float] = Field(description="Fusion weights used, renormalised over the modalities present.")
    embedding: list[float] = Field(description="The fused vector, unit L2 norm.")
    per_modality: dict[str, list[float]] | None = Field(
        None, description="Each modality's own unit vector, when return_modalities is true."
    )
    inputs: dict[str, dict[str, Any]] = Field(
        description="Facts about each input: token count and truncation for text, duration for audio."
    )


class LabelScore(BaseModel):
    label: str
    score: float


class ClassifyResponse(BaseModel):
    pipeline: str
    modalities: list[str]
    labels: list[LabelScore] = Field(description="Top labels, highest probability first.")
    inputs: dict[str, dict[str, Any]]


class EncoderInfo(BaseModel):
    modality: str
    model: str
    revision: str
    dimension: int
    cost_unit: str
    max_batch_size: int = Field(
        description="Row cap of the encoder's forward passes: what the limits allow for its example input, "
        "or its measured best batch size."
    )


class PipelineInfo(BaseModel):
    name: str
    description: str
    modalities: list[str]
    encoders: list[EncoderInfo]
    fusion: str
    dimension: int
    default_weights: dict[str, float]
    labels: list[str] | None


class ModelsResponse(BaseModel):
    pipelines: list[PipelineInfo]


class Problem(BaseModel):
    """RFC 9457 problem details, the body of every error response."""

    type: str
    title: str
    status: int
    detail: str
    request_id: str | None = None
    field: str | None = None
    value: Any = None
    limit: Any = None


def multipart_schema(with_top_k: bool) -> dict[str, Any]:
    """Return the OpenAPI request body of the multipart routes, so Swagger UI shows the form."""
    properties: dict[str, Any] = {
        "text": {"type": "string", "description": "Text to embed, UTF-8.", "example": "A cat asleep on a sofa"},
        "image": {"type": "string", "format": "binary", "description": "Image file (JPEG, PNG, WebP, GIF, BMP, TIFF)."},
        "audio": {"type": "string", "format": "binary", "description": "Audio file (WAV, FLAC, OGG, MP3)."},
        "pipeline": {"type": "string", "default": "default", "description": "Pipeline name, see GET /v1/models."},
        "weights": {
            "type": "string",
            "description": 'Fusion weights as a JSON object, e.g. {"text": 2, "image": 1}.',
            "example": '{"text": 1, "image": 1, "audio": 1}',
        },
        "return_modalities": {
            "type": "boolean",
            "default": False,
            "description": "Also return each modality's own vector.",
        },
    }
    if with_top_k:
        properties["top_k"] = {"type": "integer", "minimum": 1, "description": "How many labels to return."}
    return {
        "required": True,
        "content": {"multipart/form-data": {"schema": {"type": "object", "properties": properties}}},
    }
