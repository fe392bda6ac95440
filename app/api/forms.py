"""Parse one multipart/form-data request into a Sample and its options.

The form is parsed here rather than through FastAPI parameters, because the contract
needs what parameters hide: a repeated part is an error, an unknown field is an
error, and a browser's empty file part (empty filename, no bytes) means "absent".
"""

import json
import math
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from python_multipart.multipart import parse_options_header
from starlette.datastructures import FormData, Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from app.engine.engine import Sample
from app.errors import InvalidInput, MalformedRequest, PayloadTooLarge, UnsupportedMedia
from app.settings import Settings

FILE_FIELDS = ("image", "audio")
TEXT_FIELD = "text"
OPTION_FIELDS = ("pipeline", "weights", "return_modalities", "top_k")
KNOWN_FIELDS = (TEXT_FIELD, *FILE_FIELDS, *OPTION_FIELDS)


@dataclass(slots=True)
class FormRequest:
    sample: Sample
    pipeline: str
    weights: dict[str, float] | None
    return_modalities: bool
    top_k: int | None


def max_field_part_bytes(settings: Settings) -> int:
    """Return the size limit of a non-file part, which contains at most the text (4 UTF-8 bytes a character)."""
    return max(4 * settings.max_text_chars, 64 * 1024)


async def read_form(request: Request, settings: Settings) -> FormRequest:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise UnsupportedMedia(
            f"expected a multipart/form-data body, got '{content_type or 'no content type'}'",
            field="content-type",
            value=content_type,
        )
    _, params = parse_options_header(content_type)
    if not params.get(b"boundary"):
        raise MalformedRequest(
            "Content-Type multipart/form-data has no boundary parameter, or an empty one; "
            "let the HTTP client build the multipart body and its header",
            field="content-type",
            value=content_type,
        )
    form = await _parse_multipart(request, settings)
    try:
        return await _build(form, settings)
    finally:
        await form.close()


async def _parse_multipart(request: Request, settings: Settings) -> FormData:
    async with aclosing(request.stream()) as stream:
        parser = LimitedMultiPartParser(request.headers, stream, settings)
        try:
            form = await parser.parse()
        except MultiPartException as exc:
            cause = f" ({exc.__cause__})" if exc.__cause__ else ""
            raise MalformedRequest(
                f"invalid multipart body: {exc.message}{cause}; check that the boundary in Content-Type "
                "matches the one in the body",
                field="body",
            ) from exc
    if not parser.complete:
        await form.close()
        raise MalformedRequest(
            "invalid multipart body: it ends before the closing boundary line (--BOUNDARY--), "
            "so the body is empty or was cut off",
            field="body",
        )
    return form


class LimitedMultiPartParser(MultiPartParser):
    """Starlette's multipart parser with the service's limits, each raised as a 413 naming the part.

    Starlette's own caps raise a bare 400 that names neither the part nor the setting.
    Parts named image or audio are always read as files, with or without a filename,
    so their bytes are never decoded as text.

    NOTE: this reads `_current_part` and `_charset`, attributes of Starlette 1.10's
    MultiPartParser, because the parser offers no other way to learn which part it is
    reading and in which charset.
    """

    def __init__(self, headers: Headers, stream: AsyncGenerator[bytes, None], settings: Settings) -> None:
        self.max_field_bytes = max_field_part_bytes(settings)
        self.max_file_bytes = settings.max_part_bytes
        self.max_parts = settings.max_form_parts
        # The part counts are checked here, so Starlette's own count caps are lifted.
        super().__init__(
            headers, stream, max_files=math.inf, max_fields=math.inf, max_part_size=self.max_field_bytes
        )
        self.part_counts = {"file": 0, "non-file": 0}
        self.part_bytes = 0
        self.complete = False

    def on_part_begin(self) -> None:
        super().on_part_begin()
        self.part_bytes = 0

    def on_headers_finished(self) -> None:
        part = self._current_part
        disposition = part.content_disposition or b""
        _, options = parse_options_header(disposition)
        if options.get(b"name", b"").decode("latin-1") in FILE_FIELDS and b"filename" not in options:
            part.content_disposition = disposition + b'; filename=""'
        super().on_headers_finished()

        kind = "non-file" if part.file is None else "file"
        self.part_counts[kind] += 1
        if self.part_counts[kind] > self.max_parts:
            raise PayloadTooLarge(
                f"multipart body has at least {self.part_counts[kind]} {kind} parts, above the limit of "
                f"{self.max_parts} (MMS_MAX_FORM_PARTS)",
                field="body",
                value=self.part_counts[kind],
                limit=self.max_parts,
            )

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self.part_bytes += end - start
        part = self._current_part
        if part.file is None and self.part_bytes > self.max_field_bytes:
            raise PayloadTooLarge(
                f"form field '{part.field_name}' has at least {self.part_bytes} bytes, above the limit of "
                f"{self.max_field_bytes} bytes for a non-file part (4 bytes per character of MMS_MAX_TEXT_CHARS)",
                field=part.field_name,
                value=self.part_bytes,
                limit=self.max_field_bytes,
            )
        if part.file is not None and self.part_bytes > self.max_file_bytes:
            raise PayloadTooLarge(
                f"{part.field_name} part has at least {self.part_bytes} bytes, above the limit of "
                f"{self.max_file_bytes} bytes (MMS_MAX_PART_BYTES)",
                field=part.field_name,
                value=self.part_bytes,
                limit=self.max_file_bytes,
            )
        super().on_part_data(data, start, end)

    def on_part_end(self) -> None:
        part = self._current_part
        if part.file is None:
            # Starlette falls back to Latin-1 for undecodable bytes, which would embed mojibake.
            try:
                bytes(part.data).decode(self._charset)
            except UnicodeDecodeError as exc:
                raise InvalidInput(
                    f"form field '{part.field_name}' is not valid {self._charset} text "
                    f"(invalid byte 0x{part.data[exc.start]:02x} at offset {exc.start})",
                    field=part.field_name,
                    value=exc.start,
                ) from exc
        super().on_part_end()

    def on_end(self) -> None:
        super().on_end()
        self.complete = True


async def _build(form: FormData, settings: Settings) -> FormRequest:
    fields = _single_values(form)
    sample = Sample(
        text=await _read_text(fields.get(TEXT_FIELD)),
        image=await _read_file(fields.get("image"), "image"),
        audio=await _read_file(fields.get("audio"), "audio"),
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


async def _read_file(value: Any, field: str) -> bytes | None:
    # LimitedMultiPartParser reads every image and audio part as a file, within its size limit.
    if value is None or _is_blank_file(value):
        return None
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

