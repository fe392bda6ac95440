"""Routes of the multipart API, the model listing and the health probes."""

from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.forms import FormRequest, read_form
from app.api.lifetime import request_timeout, unless_disconnected
from app.api.problems import problem_responses
from app.api.responses import VectorJSONResponse
from app.engine.engine import EmbedResult, Engine
from app.errors import InvalidInput, NotReady
from app.schemas import (
    ClassifyResponse,
    EmbedResponse,
    EncoderInfo,
    LabelScore,
    ModelsResponse,
    PipelineInfo,
    multipart_schema,
)

ERROR_RESPONSES = problem_responses(
    {
        400: "Malformed multipart body",
        404: "Unknown pipeline",
        413: "Body, part, text, image or audio above its limit",
        415: "Unsupported media type",
        422: "Invalid input",
        429: "Queue full; retry after the Retry-After seconds",
        503: "Not ready",
        504: "Deadline passed",
    }
)

router = APIRouter()


def _engine(request: Request) -> Engine:
    return request.app.state.engine


async def _embed(request: Request, engine: Engine, form: FormRequest) -> EmbedResult:
    timeout_s = request_timeout(request, engine.settings.request_timeout_s)
    work = engine.embed(form.pipeline, form.sample, weights=form.weights, timeout_s=timeout_s)
    return await unless_disconnected(request, work)


def _inputs(result: EmbedResult) -> dict[str, dict[str, Any]]:
    return {modality: dict(info) for modality, info in result.info.items()}


@router.post(
    "/v1/embed",
    response_model=EmbedResponse,
    responses=ERROR_RESPONSES,
    openapi_extra={"requestBody": multipart_schema(with_top_k=False)},
    summary="Embed one sample: any mix of a text, an image and an audio clip",
    tags=["inference"],
)
async def embed(request: Request) -> VectorJSONResponse:
    engine = _engine(request)
    form = await read_form(request, engine.settings)
    result = await _embed(request, engine, form)
    per_modality = None
    if form.return_modalities:
        per_modality = {m: np.ascontiguousarray(result.per_modality[m]) for m in result.modalities}
    # Built by hand rather than through EmbedResponse, which stays the documented schema:
    # validating and printing the vector as Python floats cost more than the rest of the response.
    return VectorJSONResponse(
        {
            "pipeline": result.pipeline.name,
            "space": result.space,
            "dimension": int(result.vector.shape[0]),
            "modalities": result.modalities,
            "weights": result.weights,
            "embedding": np.ascontiguousarray(result.vector),
            "per_modality": per_modality,
            "inputs": _inputs(result),
        }
    )


@router.post(
    "/v1/classify",
    response_model=ClassifyResponse,
    responses=ERROR_RESPONSES,
    openapi_extra={"requestBody": multipart_schema(with_top_k=True)},
    summary="Classify one sample with the pipeline's head",
    tags=["inference"],
)
async def classify(request: Request) -> ClassifyResponse:
    engine = _engine(request)
    form = await read_form(request, engine.settings)
    pipeline = engine.pipeline(form.pipeline)
    if pipeline.head is None:
        raise InvalidInput(
            f"pipeline '{pipeline.name}' has no classification head; add one as "
            f"{pipeline.folder.name}/head/ (head.safetensors with 'weight' and 'bias', and labels.json), "
            "or use POST /v1/embed",
            field="pipeline",
            value=pipeline.name,
        )
    if form.weights and not pipeline.head.accepts_request_weights:
        raise InvalidInput(
            f"weights cannot be set for pipeline '{pipeline.name}': its head fuses the modalities with "
            "its own trained fusion, which learned their weighting; remove the weights field",
            field="weights",
            value=form.weights,
        )
    result = await _embed(request, engine, form)
    probabilities = pipeline.head.probabilities(result.vector, result.per_modality)
    top_k = min(form.top_k or len(pipeline.head.labels), len(pipeline.head.labels))
    order = probabilities.argsort()[::-1][:top_k]
    return ClassifyResponse(
        pipeline=pipeline.name,
        modalities=result.modalities,
        labels=[LabelScore(label=pipeline.head.labels[i], score=float(probabilities[i])) for i in order],
        inputs=_inputs(result),
    )


@router.get("/v1/models", response_model=ModelsResponse, tags=["service"], summary="List loaded pipelines")
async def list_models(request: Request) -> ModelsResponse:
    engine = _engine(request)
    if not engine.ready:
        raise NotReady("the service is still loading its encoders; retry shortly")
    pipelines = []
    for pipeline in engine.pipelines.values():
        pipelines.append(
            PipelineInfo(
                name=pipeline.name,
                description=pipeline.description,
                modalities=list(pipeline.encoders),
                encoders=[
                    EncoderInfo(**encoder.describe(), max_batch_size=engine.max_batch_rows(pipeline.name, modality))
                    for modality, encoder in pipeline.encoders.items()
                ],
                fusion=pipeline.fusion.kind,
                dimension=pipeline.fusion.dim,
                default_weights=pipeline.fusion.default_weights,
                labels=pipeline.head.labels if pipeline.head else None,
            )
        )
    return ModelsResponse(pipelines=pipelines)


@router.get("/metrics", include_in_schema=False)
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


@router.get("/healthz", tags=["service"], summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "alive"}


@router.get("/readyz", tags=["service"], summary="Readiness: every encoder is loaded and warm")
async def readyz(request: Request) -> JSONResponse:
    engine = _engine(request)
    if engine.draining:
        raise NotReady("the service is shutting down")
    if not engine.ready:
        raise NotReady(engine.load_error or "the service is still loading its encoders")
    return JSONResponse({"status": "ready", "pipelines": sorted(engine.pipelines)})
