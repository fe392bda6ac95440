"""POST /v1/embeddings: the OpenAI-compatible JSON route, for many samples in one request.

A request is validated whole before any forward pass: every item is decoded and
preprocessed first, and the first bad item, by index, fails the request with a 4xx
whose `field` names it (`input[3].image`). Only then are all items queued at once, so
they share forward passes with each other and with concurrent requests.

Images and audio travel as base64, in a data URI or bare. The server never fetches
a URL: an http(s) URL, or any other scheme://, in place of the data is rejected with 422.
"""

import asyncio
import base64
import binascii
import logging
import re
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from app.api.lifetime import unless_disconnected
from app.api.problems import problem_responses
from app.api.responses import VectorJSONResponse
from app.encoders.base import Prepared
from app.engine.engine import Engine, Sample
from app.errors import (
    InvalidInput,
    MalformedRequest,
    NotFound,
    PayloadTooLarge,
    ServiceError,
    TimedOut,
    UnsupportedMedia,
)
from app.pipeline import MODALITIES, Pipeline
from app.schemas_openai import EmbeddingInput, EmbeddingsRequest, EmbeddingsResponse
from app.settings import Settings

logger = logging.getLogger(__name__)

"""Status logged for a request whose client disconnected first (nginx's convention); no client reads it."""

_URL_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)

# Inline under application/problem+json: with "model", FastAPI would document application/json.
ERROR_RESPONSES = problem_responses(
    {
        400: "Body is not UTF-8",
        401: "Missing or invalid API key, when the server has API keys",
        404: "Unknown pipeline (the model field)",
        413: "Too many items, or a body, file, text, image or audio above its limit",
        415: "Body not declared as application/json, or an unsupported image or audio format",
        422: "Invalid input; `field` names the item, such as input[3].image",
        429: "Queue full; retry after the Retry-After seconds",
        503: "Not ready",
        504: "Deadline passed",
    }
)


class JsonBodyRoute(APIRoute):
    """A route whose JSON body errors name the body and the fix, instead of FastAPI's generic ones.

    A body not declared as JSON gets 415 before it is read. A body that is not UTF-8
    gets 400 in place of FastAPI's "There was an error parsing the body". A JSON syntax
    error gets `field` "body" in place of the character offset.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            content_type = request.headers.get("content-type", "")
            media_type = content_type.split(";")[0].strip().lower()
            if media_type != "application/json" and not media_type.endswith("+json"):
                raise UnsupportedMedia(
                    f"expected an application/json body, got '{content_type or 'no content type'}'",
                    field="content-type",
                    value=content_type,
                )
            try:
                return await handler(request)
            except HTTPException as exc:
                # FastAPI raises this 400 for any error while reading the body, the body-size limit's included.
                if isinstance(exc.__cause__, ServiceError):
                    raise exc.__cause__ from None
                if exc.status_code != 400:
                    raise
                raise MalformedRequest("request body is not valid UTF-8 JSON", field="body") from exc
            except RequestValidationError as exc:
                raise _json_syntax_error(exc) or exc from None

        return handle


def _json_syntax_error(error: RequestValidationError) -> InvalidInput | None:
    first = error.errors()[0]
    if first.get("type") != "json_invalid":
        return None
    position = first["loc"][-1]
    reason = first.get("ctx", {}).get("error", "syntax error")
    return InvalidInput(
        f"request body is not valid JSON: {reason} at character {position}", field="body", value=position
    )


router = APIRouter(route_class=JsonBodyRoute)


@dataclass(slots=True)
class _Item:
    """One validated input item: its payloads and the fusion weights over the modalities present."""

    sample: Sample
    weights: dict[str, float]


@router.post(
    "/v1/embeddings",
    response_model=EmbeddingsResponse,
    responses=ERROR_RESPONSES,
    summary="Embed a list of samples, OpenAI-compatible",
    tags=["inference"],
)
async def create_embeddings(body: EmbeddingsRequest, request: Request) -> VectorJSONResponse:
    engine: Engine = request.app.state.engine
    if _has_lone_surrogate(body.model):
        raise InvalidInput("model is not valid Unicode text", field="model", value=_excerpt(body.model, 100))
    try:
        pipeline = engine.pipeline(body.model)
    except NotFound as exc:
        exc.field = "model"
        raise
    if body.dimensions is not None:
        raise InvalidInput(
            f"pipeline '{pipeline.name}' does not support 'dimensions': its vectors have "
            f"{pipeline.fusion.dim} dimensions, and no pipeline can shorten them yet; omit the field",
            field="dimensions",
            value=body.dimensions,
        )
    items = _validate_items(body.input, pipeline, engine.settings)

    vectors, tokens = await unless_disconnected(request, _embed_items(engine, pipeline, items))

    # The EmbeddingsResponse schema, written without pydantic, for the reason given at POST /v1/embed.
    data = [
        {"object": "embedding", "index": i, "embedding": _encode(v, body.encoding_format)}
        for i, v in enumerate(vectors)
    ]
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return VectorJSONResponse({"object": "list", "data": data, "model": pipeline.name, "usage": usage})


def _encode(vector: np.ndarray, encoding_format: str) -> np.ndarray | str:
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return np.ascontiguousarray(vector)


# Validation


def _validate_items(
    raw: str | list[str | EmbeddingInput], pipeline: Pipeline, settings: Settings
) -> list[_Item]:
    entries = [raw] if isinstance(raw, str) else raw
    if not entries:
        raise InvalidInput("input is an empty list; send at least one text or item", field="input", value=0)
    if len(entries) > settings.max_items_per_request:
        raise PayloadTooLarge(
            f"input has {len(entries)} items, above the limit of {settings.max_items_per_request} items per "
            "request (MMS_MAX_ITEMS_PER_REQUEST); split it into several requests",
            field="input",
            value=len(entries),
            limit=settings.max_items_per_request,
        )
    items = []
    for index, entry in enumerate(entries):
        try:
            items.append(_validate_item(entry, pipeline, settings))
        except ServiceError as exc:
            raise _at_item(exc, index)
    return items


def _at_item(error: ServiceError, index: int) -> ServiceError:
    """Name the item in the error's field and detail, so `image` becomes `input[3].image`."""
    error.detail = f"input[{index}]: {error.detail}"
    return error.with_field_prefix(f"input[{index}]")


def _validate_item(entry: str | EmbeddingInput, pipeline: Pipeline, settings: Settings) -> _Item:
    if isinstance(entry, str):
        sample = Sample(text=entry or None)
    else:
        sample = Sample(
            text=entry.text or None,
            image=decode_media(entry.image, "image", settings.max_part_bytes),
            audio=decode_media(entry.audio, "audio", settings.max_part_bytes),
        )
    present = [m for m in MODALITIES if m in sample.payloads()]
    if not present:
        raise InvalidInput("the item is empty; send a non-empty text, image or audio")
    for modality in present:
        if modality not in pipeline.encoders:
            raise InvalidInput(
                f"pipeline '{pipeline.name}' has no {modality} encoder; it accepts {sorted(pipeline.encoders)}",
                field=modality,
            )
    return _Item(sample, pipeline.fusion.resolve_weights(None, present))


def decode_media(value: str | None, field: str, max_bytes: int) -> bytes | None:
    """Decode a base64 data URI or bare base64 into bytes; None or "" means absent."""
    if not value:
        return None
    text = value.strip()
    if _URL_SCHEME.match(text):
        raise InvalidInput(
            f"{field} is a URL; this server does not fetch URLs, so send the file itself as a base64 data URI "
            f"(data:{field}/...;base64,...)",
            field=field,
            value=_excerpt(text, 100),
        )
    payload = text
    if text[:5].lower() == "data:":
        header, comma, payload = text.partition(",")
        if not comma or not header.lower().endswith(";base64"):
            raise InvalidInput(
                f"{field} is a data URI without ';base64,'; only base64 data URIs are accepted "
                f"(data:{field}/...;base64,...)",
                field=field,
                value=_excerpt(header, 100),
            )
    data = _decode_base64(payload, field)
    if len(data) > max_bytes:
        raise PayloadTooLarge(
            f"{field} is {len(data)} bytes, above the limit of {max_bytes} bytes (MMS_MAX_PART_BYTES)",
            field=field,
            value=len(data),
            limit=max_bytes,
        )
    return data


def _decode_base64(payload: str, field: str) -> bytes:
    # Accept what common encoders produce: line breaks, the URL-safe alphabet, missing padding.
    compact = "".join(payload.split())
    if "-" in compact or "_" in compact:
        compact = compact.replace("-", "+").replace("_", "/")
    compact += "=" * (-len(compact) % 4)
    try:
        data = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"{field} is not valid base64: {exc}", field=field, value=_excerpt(payload, 40)) from exc
    if not data:
        raise InvalidInput(f"{field} decodes to 0 bytes; send the file's bytes", field=field, value=0)
    return data


def _has_lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _excerpt(text: str, limit: int) -> str:
    """Return the start of `text` for an error body, with lone surrogates escaped so it can be encoded."""
    return text[:limit].encode("utf-8", "backslashreplace").decode("utf-8")


# Embedding


async def _embed_items(engine: Engine, pipeline: Pipeline, items: list[_Item]) -> tuple[list[np.ndarray], int]:
    """Return one fused vector per item and the number of text tokens, all or nothing."""
    timeout = engine.settings.request_timeout_s
    deadline = time.monotonic() + timeout
    try:
        async with asyncio.timeout(timeout):
            prepared = await _prepare_all(engine, pipeline, items)
            rows = await _forward_all(engine, pipeline, prepared, deadline)
    except TimeoutError as exc:
        raise TimedOut(f"the request did not finish within its deadline of {timeout:g} s") from exc

    vectors = [pipeline.fusion.fuse(rows[i], item.weights) for i, item in enumerate(items)]
    tokens = sum(p["text"].info.get("tokens", 0) for p in prepared if "text" in p)
    return vectors, tokens


async def _prepare_all(engine: Engine, pipeline: Pipeline, items: list[_Item]) -> list[dict[str, Prepared]]:
    """Preprocess every payload of every item; raise the error of the first bad item by index."""
    results = await asyncio.gather(*(engine.prepare(pipeline, item.sample) for item in items), return_exceptions=True)
    for index, result in enumerate(results):
        if isinstance(result, ServiceError):
            raise _at_item(result, index)
        if isinstance(result, BaseException):
            raise result
    return results  # type: ignore[return-value]


async def _forward_all(
    engine: Engine, pipeline: Pipeline, prepared: list[dict[str, Prepared]], deadline: float
) -> list[dict[str, np.ndarray]]:
    """Queue every prepared payload at once; on the first failure cancel the rest and raise it."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(engine.forward(pipeline, payloads, deadline)) for payloads in prepared]
    except ExceptionGroup as group:
        failures = list(group.exceptions)
        service_errors = [e for e in failures if isinstance(e, ServiceError)]
        raise (service_errors or failures)[0] from None
    return [task.result() for task in tasks]
