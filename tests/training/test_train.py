"""`mms train` and `mms evaluate` on a small demo dataset with the default pipeline's real encoders."""

import dataclasses
import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from app.pipeline import Pipeline, build_fusion_and_head, read_config
from app.settings import PROJECT_ROOT
from app.training.workflow import EncodeOptions, evaluate, train
from tests.training.conftest import SMALL_COUNTS, train_request

DEMO_LABELS = ["face-disliked", "face-liked", "other-disliked", "other-liked"]
CONDITIONS = ["complete", "only text", "only image", "only audio", "without text", "without image", "without audio"]


def test_train_writes_pipeline_folder(tiny_models_dir: Path) -> None:
    folder = tiny_models_dir / "tiny"
    for name in ("pipeline.json", "head/config.json", "head/head.safetensors", "head/labels.json",
                 "head/metrics.json", "head/training.json"):
        assert (folder / name).is_file(), name
    config = read_config(folder)
    assert config.fusion.type == "trained"
    assert config.encoders == read_config(PROJECT_ROOT / "models" / "default").encoders
    assert json.loads((folder / "head/labels.json").read_text()) == DEMO_LABELS


def test_train_records_metrics_and_settings(tiny_models_dir: Path) -> None:
    head = tiny_models_dir / "tiny" / "head"
    metrics = json.loads((head / "metrics.json").read_text())
    training = json.loads((head / "training.json").read_text())
    assert list(metrics["test"]) == CONDITIONS
    assert metrics["test"]["complete"]["samples"] == SMALL_COUNTS["test"]
    assert len(metrics["test"]["complete"]["confusion"]) == len(DEMO_LABELS)
    assert 1 <= metrics["best_epoch"] <= metrics["epochs_run"]
    assert training["settings"]["fusion"] == "attention"
    assert training["settings"]["seed"] == 0
    assert training["split"]["samples"] == SMALL_COUNTS
    assert training["split"]["by"] == "split column"


def test_same_seed_same_weights(
    tmp_path: Path, demo_manifest: Path, encode_options: EncodeOptions, default_pipeline: Pipeline, tiny_models_dir: Path
) -> None:
    train(train_request(demo_manifest, tmp_path / "again", encode_options), pipeline=default_pipeline)
    train(train_request(demo_manifest, tmp_path / "seed1", encode_options, seed=1), pipeline=default_pipeline)
    first = load_file(tiny_models_dir / "tiny" / "head" / "head.safetensors")
    again = load_file(tmp_path / "again" / "head" / "head.safetensors")
    other = load_file(tmp_path / "seed1" / "head" / "head.safetensors")
    assert first.keys() == again.keys()
    for name in first:
        assert (first[name] == again[name]).all(), name
    assert any(not (first[name] == other[name]).all() for name in first if first[name].dtype.is_floating_point)


@pytest.mark.parametrize("fusion", ["weighted-concat", "weighted-average", "gated", "late"])
def test_train_each_fusion(
    tmp_path: Path, demo_manifest: Path, encode_options: EncodeOptions, default_pipeline: Pipeline, fusion: str
) -> None:
    metrics = train(train_request(demo_manifest, tmp_path / fusion, encode_options, fusion=fusion), pipeline=default_pipeline)
    head_config = json.loads((tmp_path / fusion / "head" / "config.json").read_text())
    assert head_config["fusion"]["type"] == fusion
    assert list(metrics["test"]) == CONDITIONS


def test_train_single_modality(
    tmp_path: Path, demo_manifest: Path, encode_options: EncodeOptions, default_pipeline: Pipeline
) -> None:
    request = train_request(demo_manifest, tmp_path / "image-only", encode_options, fusion="weighted-concat")
    metrics = train(dataclasses.replace(request, modalities=["image"]), pipeline=default_pipeline)
    assert list(metrics["test"]) == ["complete"]
    assert list(read_config(tmp_path / "image-only").encoders) == ["image"]


def test_evaluate_writes_results(
    tiny_models_dir: Path, demo_manifest: Path, encode_options: EncodeOptions, default_pipeline: Pipeline,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = tiny_models_dir / "tiny"
    # The tiny pipeline has the default pipeline's encoders: reuse them, with the tiny head.
    fusion, head = build_fusion_and_head("tiny", folder, read_config(folder).fusion, default_pipeline.encoders)
    pipeline = Pipeline("tiny", folder, "", default_pipeline.encoders, fusion, head)
    results = evaluate(folder, demo_manifest, encode_options, split="test", pipeline=pipeline)
    written = json.loads((folder / "head" / "evaluation.json").read_text())
    printed = capsys.readouterr().out
    assert list(results) == CONDITIONS
    assert written["results"] == results
    assert written["split"] == "test"
    assert results["complete"]["samples"] == SMALL_COUNTS["test"]
    assert "| without audio | 12 |" in printed
    assert "true \\ predicted" in printed


def test_train_refuses_foreign_out_folder(tmp_path: Path, demo_manifest: Path, encode_options: EncodeOptions) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("not a pipeline")
    with pytest.raises(FileExistsError, match="is not empty and contains no pipeline.json"):
        train(train_request(demo_manifest, out, encode_options))
