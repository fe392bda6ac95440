"""`mms train` and `mms evaluate` as functions: manifest checks, embeddings, training, files.

Both check the manifest, its split and the output folder before loading any encoder,
so a bad manifest is rejected in seconds.
"""

import json
import logging
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from app.encoders.registry import ENCODER_BUILDERS
from app.engine.worker import pick_device
from app.fusion.modules import ConcatFusion
from app.fusion.trained import HeadConfig, TrainedHead, save_head
from app.pipeline import CONFIG_FILE, EncoderSpec, FusionSpec, Pipeline, PipelineConfig, load_pipeline, read_config
from app.settings import Settings
from app.training.dataset import EmbeddedSplit, build_split
from app.training.embeddings import EmbeddingCache, embed_rows, file_sha256, hash_files
from app.training.evaluation import ablation, format_confusion, format_table
from app.training.manifest import Manifest, ManifestError, Row, read_manifest
from app.training.split import SplitFractions, split_rows
from app.training.trainer import TrainSettings, fit

logger = logging.getLogger(__name__)

TRAINING_FILE = "training.json"
METRICS_FILE = "metrics.json"
EVALUATION_FILE = "evaluation.json"
HEAD_FOLDER = "head"


class UsageError(ValueError):
    """An option or folder that the command cannot work with."""


@dataclass(frozen=True, slots=True)
class EncodeOptions:
    cache_dir: Path
    device: str = "cpu"
    batch_size: int = 16
    progress: bool = True


@dataclass(frozen=True, slots=True)
class TrainRequest:
    manifest: Path
    pipeline: Path
    """Folder of the pipeline whose encoders to train on."""
    out: Path
    settings: TrainSettings
    encode: EncodeOptions
    modalities: Sequence[str] | None = None
    label_column: str = "label"
    fractions: SplitFractions = SplitFractions()
    embed_fusion: str = "trained"
    """Fused vector that /v1/embed of a new pipeline folder returns: "trained" or "weighted-concat"."""


def pipeline_folder(value: str, models_dir: Path) -> Path:
    """Return a pipeline's folder from its name under `models_dir` or from a path."""
    candidate = Path(value)
    if candidate.is_dir() and (candidate / CONFIG_FILE).is_file():
        return candidate.resolve()
    named = models_dir / value
    if (named / CONFIG_FILE).is_file():
        return named.resolve()
    raise FileNotFoundError(f"pipeline '{value}' not found: neither {candidate} nor {named} contains a {CONFIG_FILE}")


def load_encoders(folder: Path, device: str) -> Pipeline:
    settings = Settings(models_dir=folder.parent, pipelines=[folder.name], device=device)
    return load_pipeline(folder.name, settings, pick_device(device), ENCODER_BUILDERS)


@dataclass(frozen=True, slots=True)
class _Plan:
    """The checked manifest, split and output folder: everything `train` settles before loading any encoder."""

    config: PipelineConfig
    modalities: list[str]
    manifest: Manifest
    file_hashes: dict[Path, str]
    splits: dict[str, list[Row]]
    labels: list[str]
    keep_pipeline_json: bool


def train(request: TrainRequest, pipeline: Pipeline | None = None) -> dict[str, Any]:
    """Train a head with the settings of `request`, write the pipeline folder and return the scores.

    `pipeline` reuses encoders already loaded from `request.pipeline`.
    """
    started = time.perf_counter()
    plan = _plan(request)
    pipeline = pipeline or load_encoders(request.pipeline, request.encode.device)
    dims = {m: pipeline.encoders[m].dim for m in plan.modalities}
    data = {
        name: _embed(pipeline, plan.config, rows, plan.file_hashes, plan.modalities, dims, plan.labels, request.encode)
        for name, rows in plan.splits.items()
    }

    settings = _with_concat_weights(request.settings, plan.config)
    result = fit(data["train"], data["validation"], dims, plan.labels, settings)
    metrics = {
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "test": ablation(result.model, data["test"], plan.labels),
        "validation": ablation(result.model, data["validation"], plan.labels),
        "history": result.history,
    }

    head_config = HeadConfig(
        fusion=settings.fusion,
        options=result.model.fusion.options(),
        dims=dims,
        encoders={m: {"model": pipeline.encoders[m].model_id, "revision": pipeline.encoders[m].revision} for m in plan.modalities},
    )
    head_dir = request.out / HEAD_FOLDER
    save_head(head_dir, result.model, plan.labels, head_config)
    if not plan.keep_pipeline_json:
        _write_pipeline_json(request, plan.config, plan.modalities)
    _write_json(head_dir / TRAINING_FILE, _training_record(request, plan, settings, time.perf_counter() - started))
    _write_json(head_dir / METRICS_FILE, metrics)
    (head_dir / EVALUATION_FILE).unlink(missing_ok=True)
    print(f"wrote {request.out}; test split ({len(plan.splits['test'])} samples):")
    print(format_table(metrics["test"]))
    return metrics


def _plan(request: TrainRequest) -> _Plan:
    """Check the manifest, split it and check the output folder; raise before any encoding."""
    config = read_config(request.pipeline)
    modalities = _choose_modalities(config, request.modalities)
    manifest = read_manifest(request.manifest, label_column=request.label_column, modalities=list(config.encoders))
    rows = _rows_with(manifest.rows, modalities)
    if not rows:
        raise ManifestError(manifest.path, [f"no sample has any of the modalities {modalities}"])
    manifest = Manifest(manifest.path, rows, manifest.label_column)
    file_hashes = hash_files(rows)
    splits = split_rows(manifest, file_hashes, request.settings.seed, request.fractions)
    labels = sorted({row.label for row in splits["train"]})
    keep_pipeline_json = _check_out_folder(request.out, config, modalities)
    logger.info("split: %s", {name: len(part) for name, part in splits.items()})
    return _Plan(config, modalities, manifest, file_hashes, splits, labels, keep_pipeline_json)


def _training_record(request: TrainRequest, plan: _Plan, settings: TrainSettings, duration_s: float) -> dict[str, Any]:
    manifest = plan.manifest
    return {
        "settings": settings.to_json(),
        "manifest": {"path": _shown(manifest.path), "sha256": file_sha256(manifest.path), "label_column": manifest.label_column},
        "source_pipeline": _shown(request.pipeline),
        "modalities": plan.modalities,
        "split": {
            "by": "split column" if manifest.rows[0].split else "seeded source groups",
            "validation_fraction": request.fractions.validation,
            "test_fraction": request.fractions.test,
            "samples": {name: len(rows) for name, rows in plan.splits.items()},
        },
        "environment": {"torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads()},
        "duration_s": round(duration_s, 1),
    }


def evaluate(
    pipeline_dir: Path, manifest_path: Path, encode: EncodeOptions, split: str = "all", pipeline: Pipeline | None = None
) -> dict[str, Any]:
    """Score a trained pipeline folder on a manifest (or one split of it); write and print the results."""
    config = read_config(pipeline_dir)
    head_dir = pipeline_dir / HEAD_FOLDER
    training = json.loads((head_dir / TRAINING_FILE).read_text()) if (head_dir / TRAINING_FILE).is_file() else {}
    label_column = training.get("manifest", {}).get("label_column", "label")
    manifest = read_manifest(manifest_path, label_column=label_column, modalities=list(config.encoders))

    pipeline = pipeline or load_encoders(pipeline_dir, encode.device)
    head = pipeline.head
    if not isinstance(head, TrainedHead):
        raise UsageError(f"{head_dir} contains no head written by `mms train` (config.json, head.safetensors, labels.json)")
    modalities = head.config.modalities
    rows = _rows_with(manifest.rows, modalities)
    file_hashes = hash_files(rows)
    if split != "all":
        rows = _one_split(Manifest(manifest.path, rows, label_column), file_hashes, split, training)
    unknown = sorted({row.label for row in rows} - set(head.labels))
    if unknown:
        raise ManifestError(manifest_path, [f"labels {unknown} are not among the head's labels {head.labels}"])

    data = _embed(pipeline, config, rows, file_hashes, modalities, head.config.dims, head.labels, encode)
    results = ablation(head.model, data, head.labels)
    _write_json(head_dir / EVALUATION_FILE, {"manifest": _shown(manifest_path), "split": split, "results": results})
    print(f"{pipeline_dir.name} on {manifest_path.name} ({split}, {len(rows)} samples):")
    print(format_table(results))
    print()
    print(format_confusion(results["complete"]["confusion"], head.labels))
    return results


def _choose_modalities(config: PipelineConfig, requested: Sequence[str] | None) -> list[str]:
    available = list(config.encoders)
    if not requested:
        return available
    unknown = [m for m in requested if m not in available]
    if unknown:
        raise UsageError(f"--modalities names {unknown}, which the pipeline has no encoder for; it has {available}")
    return [m for m in available if m in requested]


def _rows_with(rows: Sequence[Row], modalities: Sequence[str]) -> list[Row]:
    """Keep the rows that have one of `modalities`; a head cannot use the others."""
    usable = [row for row in rows if any(m in modalities for m in row.modalities())]
    if len(usable) < len(rows):
        logger.info("left out %d samples that have none of %s", len(rows) - len(usable), list(modalities))
    return usable


def _one_split(manifest: Manifest, file_hashes: dict[Path, str], split: str, training: dict[str, Any]) -> list[Row]:
    settings = training.get("settings", {})
    fractions_json = training.get("split", {})
    fractions = SplitFractions(
        validation=fractions_json.get("validation_fraction", SplitFractions().validation),
        test=fractions_json.get("test_fraction", SplitFractions().test),
    )
    return split_rows(manifest, file_hashes, int(settings.get("seed", 0)), fractions)[split]


def _embed(
    pipeline: Pipeline,
    config: PipelineConfig,
    rows: Sequence[Row],
    file_hashes: dict[Path, str],
    modalities: Sequence[str],
    dims: dict[str, int],
    labels: Sequence[str],
    encode: EncodeOptions,
) -> EmbeddedSplit:
    vectors = embed_rows(
        pipeline, config.encoders, rows, file_hashes, EmbeddingCache(encode.cache_dir),
        batch_size=encode.batch_size, progress=encode.progress, modalities=modalities,
    )
    return build_split(rows, vectors, modalities, dims, labels)


def _with_concat_weights(settings: TrainSettings, config: PipelineConfig) -> TrainSettings:
    """Give a weighted-concat head the source pipeline's modality weights, unless set explicitly."""
    if settings.fusion != ConcatFusion.kind or "weights" in settings.fusion_options:
        return settings
    options = {**settings.fusion_options, "weights": dict(config.fusion.weights)}
    return TrainSettings(**{**settings.to_json(), "fusion_options": options})


def _check_out_folder(out: Path, config: PipelineConfig, modalities: Sequence[str]) -> bool:
    """Return True when `out` already is a pipeline with these encoders, so only its head/ is rewritten."""
    if not (out / CONFIG_FILE).is_file():
        if out.exists() and any(out.iterdir()):
            raise FileExistsError(f"--out {out} exists, is not empty and contains no {CONFIG_FILE}; choose another folder")
        return False
    existing = read_config(out)
    expected = {m: config.encoders[m] for m in modalities}
    if existing.encoders != expected:
        raise FileExistsError(
            f"--out {out} contains a pipeline with other encoders ({sorted(existing.encoders)}) than the head is "
            f"trained on ({sorted(expected)}); choose another folder"
        )
    return True


def _write_pipeline_json(request: TrainRequest, config: PipelineConfig, modalities: Sequence[str]) -> None:
    encoders: dict[str, EncoderSpec] = {m: config.encoders[m] for m in modalities}
    if request.embed_fusion == "trained":
        fusion = FusionSpec(type="trained")
    else:
        fusion = FusionSpec(type="weighted-concat", weights={m: w for m, w in config.fusion.weights.items() if m in modalities})
    new_config = PipelineConfig(
        description=(
            f"{request.settings.fusion} fusion head trained by `mms train` on {request.manifest.name}, "
            f"with the encoders of pipeline '{request.pipeline.name}'."
        ),
        encoders=encoders,
        fusion=fusion,
    )
    data = new_config.model_dump(mode="json")
    if fusion.type == "trained":
        del data["fusion"]["weights"]
    request.out.mkdir(parents=True, exist_ok=True)
    _write_json(request.out / CONFIG_FILE, data)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def _shown(path: Path) -> str:
    """Return `path` relative to the working folder when it is inside it, so records do not name the machine."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
