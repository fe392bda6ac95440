"""Real encoders of the default pipeline, built directly for unit tests."""

import torch

from app.encoders.registry import build_hf_text
from app.encoders.text_hf import HFTextEncoder
from app.pipeline import BuildContext, read_config
from app.settings import PROJECT_ROOT, Settings

DEFAULT_PIPELINE = PROJECT_ROOT / "models" / "default"


def default_text_encoder() -> HFTextEncoder:
    """Build the default pipeline's MiniLM text encoder on the CPU."""
    spec = read_config(DEFAULT_PIPELINE).encoders["text"]
    built = build_hf_text(spec, BuildContext(DEFAULT_PIPELINE, torch.device("cpu"), Settings()))
    assert isinstance(built, HFTextEncoder)
    return built
