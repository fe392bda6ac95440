"""Training manifests: one sample per JSONL line or CSV row, checked in full before any encoding.

Columns: `text` (the text itself), `image` and `audio` (file paths, relative to the
manifest's folder), the label (column `label` unless --label-column names another), and optionally
`id`, `split` (train, validation or test), `image_source` and `audio_source` (the id of
the original photo or recording a file was derived from, so that crops of one photo
stay in one split), and `meta` (ignored). An empty value means the modality is absent;
every sample needs at least one modality.
"""

import csv
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODALITY_COLUMNS = ("text", "image", "audio")
FILE_COLUMNS = ("image", "audio")
SPLITS = ("train", "validation", "test")
OPTIONAL_COLUMNS = ("id", "split", "image_source", "audio_source", "meta")
MAX_REPORTED_PROBLEMS = 20


class ManifestError(ValueError):
    """A manifest that cannot be trained on; `problems` lists each one as 'line N: ...'."""

    def __init__(self, source: Path, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        shown = self.problems[:MAX_REPORTED_PROBLEMS]
        more = len(self.problems) - len(shown)
        lines = [f"{source}: {p}" for p in shown] + ([f"... and {more} more problems"] if more > 0 else [])
        super().__init__("\n".join(lines))


@dataclass(frozen=True, slots=True)
class Row:
    """One sample of a manifest; `line` is its 1-based line number in the file."""

    line: int
    id: str
    label: str
    text: str | None = None
    image: Path | None = None
    audio: Path | None = None
    split: str | None = None
    image_source: str | None = None
    audio_source: str | None = None

    def modalities(self) -> list[str]:
        return [m for m in MODALITY_COLUMNS if getattr(self, m) is not None]


@dataclass(frozen=True, slots=True)
class Manifest:
    path: Path
    rows: list[Row]
    label_column: str

    def labels(self) -> list[str]:
        return sorted({row.label for row in self.rows})


def read_manifest(path: Path, *, label_column: str = "label", modalities: Sequence[str] = MODALITY_COLUMNS) -> Manifest:
    """Read and check a manifest; raise ManifestError listing every problem with its line.

    `modalities` are those the pipeline can encode; a sample with another one is rejected.
    """
    if not path.is_file():
        raise ManifestError(path, ["file not found"])
    reader = _records(path)
    rows: list[Row] = []
    problems: list[str] = []
    for line, record in reader:
        if isinstance(record, str):
            problems.append(f"line {line}: {record}")
            continue
        row, row_problems = _parse_record(line, record, path.parent, label_column, modalities)
        problems.extend(f"line {line}: {p}" for p in row_problems)
        if row is not None:
            rows.append(row)
    if not rows and not problems:
        problems.append("the manifest contains no samples")
    problems.extend(_check_split_column(rows))
    if problems:
        raise ManifestError(path, problems)
    return Manifest(path, rows, label_column)


def _records(path: Path) -> Iterator[tuple[int, Mapping[str, Any] | str]]:
    """Yield (line number, record) pairs; a record that cannot be parsed comes as an error string."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        yield from _jsonl_records(path)
    elif suffix == ".csv":
        yield from _csv_records(path)
    else:
        yield 0, f"unknown manifest format '{suffix}'; use .jsonl (one JSON object a line) or .csv (with a header row)"


def _jsonl_records(path: Path) -> Iterator[tuple[int, Mapping[str, Any] | str]]:
    with path.open(encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                yield number, f"invalid JSON ({exc.msg} at column {exc.colno})"
                continue
            if not isinstance(record, dict):
                yield number, f"expected a JSON object, got {type(record).__name__}"
                continue
            yield number, record


def _csv_records(path: Path) -> Iterator[tuple[int, Mapping[str, Any] | str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames:
            yield 1, "the CSV file has no header row"
            return
        for record in reader:
            if None in record:
                yield reader.line_num, f"{len(record[None])} more cells than the header's {len(reader.fieldnames)} columns"
                continue
            yield reader.line_num, {key: value for key, value in record.items() if value not in (None, "")}


def _parse_record(
    line: int, record: Mapping[str, Any], folder: Path, label_column: str, modalities: Sequence[str]
) -> tuple[Row | None, list[str]]:
    problems: list[str] = []
    known = set(MODALITY_COLUMNS) | set(OPTIONAL_COLUMNS) | {label_column}
    for column in record:
        if column not in known:
            problems.append(f"unknown column '{column}'; known columns: {', '.join(sorted(known))}")

    label = record.get(label_column)
    if label is None or str(label).strip() == "":
        columns = ", ".join(sorted(record)) or "none"
        problems.append(
            f"no label: the label column '{label_column}' is missing or empty (columns here: {columns}); "
            "pass --label-column to name the column that contains the label"
        )

    values: dict[str, Any] = {}
    text = record.get("text")
    if text is not None and not isinstance(text, str):
        problems.append(f"text must be a string, got {type(text).__name__}")
    elif text is not None and text.strip():
        values["text"] = text
    file_problems = 0
    for column in FILE_COLUMNS:
        file_path, problem = _resolve_file(record.get(column), folder, column)
        if problem:
            problems.append(problem)
            file_problems += 1
        elif file_path is not None:
            values[column] = file_path

    present = [m for m in MODALITY_COLUMNS if m in values]
    unsupported = [m for m in present if m not in modalities]
    if unsupported:
        problems.append(f"has {', '.join(unsupported)}, which the pipeline has no encoder for (it has {', '.join(modalities)})")
    if not present and not file_problems:
        problems.append("no text, image or audio; every sample needs at least one")

    split = record.get("split")
    if split is not None and split not in SPLITS:
        problems.append(f"split '{split}' is not one of {', '.join(SPLITS)}")

    if problems:
        return None, problems
    row = Row(
        line=line,
        id=str(record.get("id", f"line-{line}")),
        label=str(label).strip(),
        split=split,
        image_source=_optional_str(record.get("image_source")),
        audio_source=_optional_str(record.get("audio_source")),
        **values,
    )
    return row, []


def _resolve_file(value: Any, folder: Path, column: str) -> tuple[Path | None, str | None]:
    if value is None or value == "":
        return None, None
    if not isinstance(value, str):
        return None, f"{column} must be a file path string, got {type(value).__name__}"
    path = (folder / value).resolve()
    if not path.is_file():
        return None, f"{column} file '{value}' not found (looked for {path})"
    return path, None


def _optional_str(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _check_split_column(rows: Sequence[Row]) -> list[str]:
    """Reject a manifest where some rows name their split and others do not."""
    with_split = [row for row in rows if row.split is not None]
    if not with_split or len(with_split) == len(rows):
        return []
    first_missing = next(row for row in rows if row.split is None)
    return [
        f"line {first_missing.line}: no split, while {len(with_split)} other rows name theirs; "
        "either every row names its split or none does"
    ]
