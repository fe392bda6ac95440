"""Service settings: one typed object, read from MMS_* environment variables.

Every field maps to one variable, MMS_<FIELD> in upper case; for example
MMS_MAX_BATCH_SIZE=16. Units are in the field names (_ms, _s, _bytes, _chars).
"""

import tempfile
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MMS_", frozen=True)

    # Pipelines
    models_dir: Path = Field(PROJECT_ROOT / "models", description="Folder with one subfolder per pipeline.")
    pipelines: list[str] = Field(["default"], description="Pipelines to load at start-up, as a JSON list.")
    device: str = Field("auto", description="'auto' (CUDA when present, else CPU), 'cpu' or 'cuda[:N]'.")
    torch_threads: int = Field(0, ge=0, description="Threads for torch on the CPU; 0 picks the core count.")
    preprocess_threads: int = Field(2, ge=1, description="Threads decoding, tokenizing and computing features.")
    idle_trim_s: float = Field(
        1.0, ge=0, description="Seconds without a batch after which freed heap memory goes back to the OS; 0 never."
    )

    # Micro-batching
    max_batch_size: int = Field(32, ge=1, description="Maximum items (rows) in one forward pass.")
    max_wait_ms: float = Field(0.0, ge=0, description="Extra wait for companions when the device is idle.")
    refill_wait: float = Field(
        0.1,
        ge=0,
        le=1,
        description="After a batch, how long the next may wait for that batch's callers to send again, "
        "as a fraction of the batch's forward time; 0 never waits.",
    )
    tune_batch_size: bool = Field(
        False,
        description="Measure each encoder's best batch size at start-up (1, 2, 4, ... rows) and cap its batches there.",
    )
    batch_size_cache: Path = Field(
        Path(tempfile.gettempdir()) / "mms" / "batch-sizes.json",
        description="JSON file that keeps measured batch sizes per device, so later starts skip the search.",
    )
    max_queue_items: int = Field(1024, ge=1, description="Items queued per encoder before 429.")
    max_batch_tokens: int = Field(16384, ge=1, description="Text batch budget in tokens, padding included.")
    # Unset: eight 224x224 images on the CPU, where larger image batches ran slower per
    # image and held more activation memory (EfficientNet-Lite0, 2 cores), and
    # max_batch_size of them on a GPU.
    max_batch_pixels: int | None = Field(None, ge=1, description="Image batch budget in model-input pixels.")
    max_batch_windows: int = Field(256, ge=1, description="Audio batch budget in encoder windows.")
    shutdown_drain_s: float = Field(
        2.0, ge=0, description="Seconds between SIGTERM (readiness turns 503) and closing the socket."
    )
    request_timeout_s: float = Field(30.0, gt=0, description="Deadline of a request; 504 past it.")

    # Input limits
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1, description="Largest request body.")
    max_part_bytes: int = Field(16 * 1024 * 1024, ge=1, description="Largest multipart file part.")
    max_text_chars: int = Field(20_000, ge=1, description="Maximum text length, in Unicode code points.")
    max_image_pixels: int = Field(40_000_000, ge=1, description="Largest image, width x height, read from the header.")
    min_image_side: int = Field(1, ge=1, description="Smallest accepted image width or height.")
    max_audio_s: float = Field(60.0, gt=0, description="Maximum audio duration, read from the header.")

    # Security
    api_keys: list[str] = Field([], description="Accepted Bearer keys, as a JSON list; empty turns auth off.")
    cors_origins: list[str] = Field([], description="Origins allowed by CORS, as a JSON list.")

    log_level: str = Field("INFO", description="Log level of the service's loggers.")

    # Request shape limits
    max_items_per_request: int = Field(
        256, ge=1, description="Maximum number of inputs in one POST /v1/embeddings request."
    )
    max_form_parts: int = Field(
        16, ge=1, description="Maximum number of file parts, and separately of non-file parts, in one multipart body."
    )


@lru_cache
def get_settings() -> Settings:
    return Settings()
