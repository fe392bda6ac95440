"""Session fixtures of the training tests: a small demo dataset, its embeddings and one tiny trained pipeline."""

import json
from pathlib import Path

import pytest

from app.cli import main
from app.pipeline import Pipeline
from app.settings import PROJECT_ROOT
from app.training.split import SplitFractions
from app.training.trainer import TrainSettings
from app.training.workflow import EncodeOptions, TrainRequest, load_encoders
from demo.generate import generate

SMALL_COUNTS = {"train": 36, "validation": 12, "test": 12}
TINY_EPOCHS = 4


@pytest.fixture(scope="session")
def demo_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 60-sample demo dataset (36 train, 12 validation, 12 test) with a split column."""
    return generate(tmp_path_factory.mktemp("demo"), SMALL_COUNTS, seed=0)


@pytest.fixture(scope="session")
def encode_options(tmp_path_factory: pytest.TempPathFactory) -> EncodeOptions:
    return EncodeOptions(cache_dir=tmp_path_factory.mktemp("embeddings"), device="cpu", progress=False)


@pytest.fixture(scope="session")
def default_pipeline() -> Pipeline:
    """The default pipeline's encoders, loaded in the test process as `mms train` loads them."""
    return load_encoders(PROJECT_ROOT / "models" / "default", "cpu")


def train_request(manifest: Path, out: Path, encode: EncodeOptions, **settings: object) -> TrainRequest:
    return TrainRequest(
        manifest=manifest,
        pipeline=PROJECT_ROOT / "models" / "default",
        out=out,
        settings=TrainSettings(**{"fusion": "attention", "epochs": TINY_EPOCHS, **settings}),  # type: ignore[arg-type]
        encode=encode,
        fractions=SplitFractions(),
    )


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory, demo_manifest: Path, encode_options: EncodeOptions) -> Path:
    """A models folder holding `tiny`: `mms train` with attention fusion for a few epochs on the small demo."""
    models = tmp_path_factory.mktemp("models")
    arguments = ["train", str(demo_manifest), "--out", str(models / "tiny"), "--fusion", "attention",
                 "--epochs", str(TINY_EPOCHS), "--cache-dir", str(encode_options.cache_dir), "--no-progress"]
    assert main(arguments) == 0
    return models


def read_rows(manifest: Path) -> list[dict[str, object]]:
    """Return the manifest's records with absolute file paths, ready to be written elsewhere."""
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    for row in rows:
        for column in ("image", "audio"):
            row[column] = str(manifest.parent / row[column])
    return rows
