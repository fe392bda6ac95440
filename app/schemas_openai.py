"""Wire schemas of POST /v1/embeddings, shaped like the OpenAI embeddings API.

The request and response match OpenAI's fields, so the official SDKs work unchanged.
As an extension, an input item may be an object holding any mix of a text, an image
and an audio clip, which the pipeline fuses into one vector.
"""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MEDIA_DESCRIPTION = (
    "Base64 of the file's bytes, as a data URI (data:{kind}/...;base64,...) or plain base64. "
    "The format is read from the bytes; http(s) URLs are rejected, because the server fetches nothing."
)


class EmbeddingInput(BaseModel):
    """One sample of the multimodal extension: any mix of a text, an image and an audio clip."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(None, description="Text to embed.")
    image: str | None = Field(None, description=MEDIA_DESCRIPTION.format(kind="image"))
    audio: str | None = Field(None, description=MEDIA_DESCRIPTION.format(kind="audio"))


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="Pipeline name, see GET /v1/models.", examples=["default"])
    input: str | list[str | EmbeddingInput] = Field(
        description=(
            "A text, a list of texts, or a list of objects with text, image and audio. "
            "Token arrays are not accepted."
        ),
        examples=["A cat is sleeping on the sofa."],
    )
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="'float' for JSON numbers, 'base64' for little-endian float32 bytes in base64."
    )
    dimensions: int | None = Field(
        None, ge=1, description="Not supported by any pipeline yet: a request that sets it gets 422."
    )
    user: str | None = Field(None, description="Accepted for compatibility and ignored.")

    @field_validator("input", mode="before")
    @classmethod
    def _check_items(cls, value: Any) -> Any:
        # Checked here, before pydantic tries each member of the union, because its own
        # errors for a bad item list every member and name neither the item nor the fix.
        if isinstance(value, str):
            return value
        if not isinstance(value, list):
            raise ValueError("input must be a string, or a list of strings or of objects with text, image and audio")
        for index, item in enumerate(value):
            _check_item(item, index)
        return value


def _check_item(item: Any, index: int) -> None:
    if isinstance(item, str):
        return
    if isinstance(item, int) or (isinstance(item, list) and all(isinstance(t, int) for t in item)):
        raise ValueError(f"input[{index}] is a token array; token arrays are not supported, send the text itself")
    if not isinstance(item, dict):
        raise ValueError(f"input[{index}] must be a string or an object with text, image and audio")
    unknown = sorted(set(item) - set(EmbeddingInput.model_fields))
    if unknown:
        raise ValueError(f"input[{index}] has unknown keys {unknown}; an item accepts text, image and audio")
    for key, member in item.items():
        if member is not None and not isinstance(member, str):
            raise ValueError(f"input[{index}].{key} must be a string, got {type(member).__name__}")


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(
        description="The fused vector, unit L2 norm: numbers, or base64 of float32 bytes when requested."
    )


class Usage(BaseModel):
    prompt_tokens: int = Field(description="Text tokens in the request, special tokens included.")
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage
