"""Pipeline folders for tests that need a fast-starting server."""

import json
from pathlib import Path

from app.settings import PROJECT_ROOT

DEFAULT_CONFIG = PROJECT_ROOT / "models" / "default" / "pipeline.json"


def write_text_pipeline(models_dir: Path, name: str = "text") -> dict[str, str]:
    """Write a pipeline with the default text encoder alone; return the env that serves it."""
    config = json.loads(DEFAULT_CONFIG.read_text())
    config["encoders"] = {"text": config["encoders"]["text"]}
    (models_dir / name).mkdir(parents=True)
    (models_dir / name / "pipeline.json").write_text(json.dumps(config))
    return {"MMS_MODELS_DIR": str(models_dir), "MMS_PIPELINES": json.dumps([name])}
