"""Parse one multipart/form-data request into a Sample and its options.

The form is parsed here rather than through FastAPI parameters, because the contract
needs what parameters hide: a repeated part is an error, an unknown field is an
error, and a browser's empty file part (empty filename, no bytes) means "absent".
"""

import json
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from starlette.datastructures import FormData, UploadFile

from app.engine.engine import Sample
from app.errors import InvalidInput, PayloadTooLarge, UnsupportedMedia
from app.settings import Settings

FILE_FIELDS = ("image", "audio")
TEXT_FIELD = "text"
OPTION_FIELDS = ("pipeline", "weights", "return_modalities", "top_k")
KNOWN_FIELDS = (TEXT_FIELD, *FILE_FIELDS, *OPTION_FIELDS)
MAX_FIELDS = len(KNOWN_FIELDS) + 8


@dataclass(slots=True)
class FormRequest:
    sample: Sample
    pipeline: str
    weights: dict[str, float] | None
    return_modalities: bool
    top_k: int | None


async def read_form(request: Request, settings: Settings) -> FormRequest:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise UnsupportedMedia(
            f"expected a multipart/form-data body, got '{content_type or 'no content type'}'",
            field="content-type",
            value=content_type,
        )
    form = await request.form(
        max_files=len(FILE_FIELDS) + 8,
        max_fields=MAX_FIELDS,
        # A non-file part holds at most the text; UTF-8 needs up to 4 bytes a character.
        max_part_size=max(4 * settings.max_text_chars, 64 * 1024),
    )
    try:
        return await _build(form, settings)
    finally:
        await form.close()


async def _build(form: FormData, settings: Settings) -> FormRequest:
    fields = _single_values(form)
    sample = Sample(
        text=await _read_text(fields.get(TEXT_FIELD)),
        image=await _read_file(fields.get("image"), "image", settings.max_part_bytes),
        audio=await _read_file(fields.get("audio"), "audio", settings.max_part_bytes),
    )
    return FormRequest(
        sample=sample,
        pipeline=_option_text(fields.get("pipeline")) or "default",
        weights=_parse_weights(_option_text(fields.get("weights"))),
        return_modalities=_parse_bool(_option_text(fields.get("return_modalities")), "return_modalities"),
        top_k=_parse_top_k(_option_text(fields.get("top_k"))),
    )


def _single_values(form: FormData) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, value in form.multi_items():
        if name not in KNOWN_FIELDS:
            raise InvalidInput(
                f"unknown form field '{name}'; accepted fields are {', '.join(KNOWN_FIELDS)}",
                field=name,
            )
        if name in values:
            raise InvalidInput(
                f"field '{name}' appears more than once; one request is one sample, so send it once "
                "(use POST /v1/embeddings for many samples)",
                field=name,
            )
        values[name] = value
    return values


def _is_blank_file(upload: UploadFile) -> bool:
    # Browsers send an empty part with an empty filename for a file input left blank.
    return not upload.filename and (upload.size or 0) == 0


async def _read_file(value: Any, field: str, max_bytes: int) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, str):
        if value == "":
            return None
        raise InvalidInput(
            f"field '{field}' must be a file part (curl -F {field}=@FILE), not a plain text value",
            field=field,
        )
    if _is_blank_file(value):
        return None
    if value.size is not None and value.size > max_bytes:
        raise PayloadTooLarge(
            f"{field} part is {value.size} bytes, above the limit of {max_bytes} bytes",
            field=field,
            value=value.size,
            limit=max_bytes,
        )
    data = await value.read()
    if not data:
        raise InvalidInput(f"{field} file '{value.filename}' is empty (0 bytes)", field=field, value=0)
    return data


async def _read_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, UploadFile):
        if _is_blank_file(value):
            return None
        raw = await value.read()
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput(
                f"text file part is not valid UTF-8 (invalid byte at offset {exc.start})",
                field=TEXT_FIELD,
            ) from exc
    return value if value != "" else None


def _option_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value or None
    raise InvalidInput(f"option '{value.filename}' must be a plain form field, not a file", field="options")


def _parse_weights(raw: str | None) -> dict[str, float] | None:
    if raw is None:
        return None
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            f'weights must be a JSON object such as {{"text": 2, "image": 1}}; parsing failed at '
            f"character {exc.pos}",
            field="weights",
            value=raw[:100],
        ) from exc
    if not isinstance(parsed, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in parsed.values()
    ):
        raise InvalidInput(
            "weights must map modality names to non-negative numbers", field="weights", value=raw[:100]
        )
    return {str(k): float(v) for k, v in parsed.items()}


def _parse_bool(raw: str | None, field: str) -> bool:
    if raw is None:
        return False
    lowered = raw.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise InvalidInput(f"{field} must be true or false, got '{raw[:20]}'", field=field, value=raw[:20])


def _parse_top_k(raw: str | None) -> int | None:
    if raw is None:
        return None
    if not raw.strip().isdigit() or int(raw) < 1:
        raise InvalidInput(f"top_k must be a positive integer, got '{raw[:20]}'", field="top_k", value=raw[:20])
    return int(raw)

