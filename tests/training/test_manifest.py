"""Bad manifests are rejected with the line and the problem, before any encoder loads."""

import csv
import json
import time
from pathlib import Path

import pytest

from app.cli import main
from app.training.embeddings import hash_files
from app.training.manifest import ManifestError, read_manifest
from app.training.split import SplitFractions, split_rows
from tests.training.conftest import read_rows


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def train_cli(manifest: Path, tmp_path: Path, *extra: str) -> int:
    return main(["train", str(manifest), "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"),
                 "--no-progress", *extra])


def test_cli_missing_file_names_line(demo_manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = read_rows(demo_manifest)
    rows[2]["audio"] = str(tmp_path / "gone.flac")
    started = time.monotonic()
    code = train_cli(write_jsonl(tmp_path / "bad.jsonl", rows), tmp_path)
    message = capsys.readouterr().err
    assert code == 2
    assert "line 3: audio file" in message
    assert "gone.flac" in message
    assert "not found" in message
    # Rejected before the encoders load and before anything is encoded.
    assert time.monotonic() - started < 5
    assert not (tmp_path / "cache").exists()
    assert not (tmp_path / "out").exists()


def test_cli_unknown_label_column(demo_manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = write_jsonl(tmp_path / "m.jsonl", read_rows(demo_manifest))
    code = train_cli(manifest, tmp_path, "--label-column", "category")
    message = capsys.readouterr().err
    assert code == 2
    assert "line 1: no label: the label column 'category' is missing" in message
    assert "unknown column 'label'" in message
    assert not (tmp_path / "cache").exists()


def test_cli_empty_split(demo_manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [row for row in read_rows(demo_manifest) if row["split"] != "test"]
    code = train_cli(write_jsonl(tmp_path / "m.jsonl", rows), tmp_path)
    message = capsys.readouterr().err
    assert code == 2
    assert "split 'test' is empty" in message
    assert not (tmp_path / "cache").exists()


def test_manifest_unknown_column(demo_manifest: Path, tmp_path: Path) -> None:
    rows = read_rows(demo_manifest)
    rows[4]["imgae"] = rows[4].pop("image")
    with pytest.raises(ManifestError) as caught:
        read_manifest(write_jsonl(tmp_path / "m.jsonl", rows))
    assert caught.value.problems == [
        "line 5: unknown column 'imgae'; known columns: audio, audio_source, id, image, image_source, label, meta, split, text"
    ]


def test_manifest_invalid_json(demo_manifest: Path, tmp_path: Path) -> None:
    lines = [json.dumps(row) for row in read_rows(demo_manifest)]
    lines[1] = lines[1][:-1]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ManifestError) as caught:
        read_manifest(path)
    assert len(caught.value.problems) == 1
    assert caught.value.problems[0].startswith("line 2: invalid JSON")


def test_manifest_sample_without_modality(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "m.jsonl", [{"text": "fine", "label": "a"}, {"text": "  ", "label": "b"}])
    with pytest.raises(ManifestError) as caught:
        read_manifest(path)
    assert caught.value.problems == ["line 2: no text, image or audio; every sample needs at least one"]


def test_manifest_bad_split_value(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "m.jsonl", [{"text": "fine", "label": "a", "split": "dev"}])
    with pytest.raises(ManifestError, match="line 1: split 'dev' is not one of train, validation, test"):
        read_manifest(path)


def test_manifest_modality_without_encoder(demo_manifest: Path, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "m.jsonl", read_rows(demo_manifest)[:1])
    with pytest.raises(ManifestError, match="line 1: has image, audio, which the pipeline has no encoder for"):
        read_manifest(path, modalities=["text"])


def test_csv_missing_image_names_line(demo_manifest: Path, tmp_path: Path) -> None:
    rows = read_rows(demo_manifest)[:4]
    rows[1]["image"] = "missing.jpg"
    path = tmp_path / "m.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "image", "audio", "label"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(ManifestError) as caught:
        read_manifest(path)
    # Line 1 is the header, so the second sample is on line 3.
    assert len(caught.value.problems) == 1
    assert caught.value.problems[0].startswith("line 3: image file 'missing.jpg' not found")


def test_csv_empty_cells_are_absent(demo_manifest: Path, tmp_path: Path) -> None:
    rows = read_rows(demo_manifest)[:2]
    rows[0]["audio"] = ""
    path = tmp_path / "m.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "image", "audio", "label"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    manifest = read_manifest(path)
    assert manifest.rows[0].modalities() == ["text", "image"]
    assert manifest.rows[1].modalities() == ["text", "image", "audio"]


def test_split_column_source_crossing(demo_manifest: Path, tmp_path: Path) -> None:
    rows = read_rows(demo_manifest)
    test_row = next(i for i, row in enumerate(rows) if row["split"] == "test")
    rows[test_row]["image_source"] = rows[0]["image_source"]
    manifest = read_manifest(write_jsonl(tmp_path / "m.jsonl", rows))
    with pytest.raises(ManifestError) as caught:
        split_rows(manifest, hash_files(manifest.rows), seed=0, fractions=SplitFractions())
    assert caught.value.problems == [
        f"line {test_row + 1}: its image source is also in line 1, but line {test_row + 1} is in test "
        "and line 1 in train; a source must stay in one split"
    ]
