"""Encoder types that a pipeline.json may name, each with the builder that makes it.

Builders import their encoder module when called, so a pipeline pays only for the
libraries its own encoders need.

Types:
- hf-text: BERT, RoBERTa, XLM-RoBERTa or a sentence-transformers folder;
- hf-clip-text: the CLIP text tower's projected embedding, comparable with hf-image's
  CLIP embedding of the same checkpoint;
- hf-image: CLIP vision, ViT, DINOv2, ConvNeXt and other transformers vision models;
- hf-audio: wav2vec 2.0, HuBERT, WavLM, AST, the Whisper encoder and CLAP's audio tower;
- timm-image: a timm network with package, hub or local-file weights;
- ge2e: the GE2E speaker encoder of the resemblyzer package.

The hf-* types take these options:
- `source`: a hub id, a folder (absolute or relative to the pipeline folder) or
  `pkg:DIST/path`. The default is `model`.
- `revision`: the hub revision.
- `local_files_only`: never download. The default is on when MMS_OFFLINE or
  HF_HUB_OFFLINE is set.
- `dtype`: float32, float16 or bfloat16. Half precision applies on CUDA only.
"""

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.encoders.base import Encoder
from app.encoders.sources import resolve_source
from app.pipeline import BuildContext, EncoderSpec

_PATH_PREFIXES = ("/", "./", "../", "~")


def _hf_source(spec: EncoderSpec, context: BuildContext) -> tuple[str, dict[str, Any]]:
    """Pop `source` from the spec's options and resolve it; a missing local folder is an error."""
    options = spec.options()
    raw = str(options.pop("source", spec.model))
    source = resolve_source(raw, context.folder)
    if raw.startswith(_PATH_PREFIXES) and not Path(source).exists():
        folder = (context.folder / raw).expanduser().resolve()
        raise FileNotFoundError(f"model '{spec.model}': the local folder {folder} named by `source` does not exist")
    return source, options


def build_hf_text(spec: EncoderSpec, context: BuildContext, **fixed: Any) -> Encoder:
    """Build a text encoder. `fixed` contains the options that the encoder type itself sets."""
    from app.encoders.text_hf import HFTextEncoder

    source, options = _hf_source(spec, context)
    return HFTextEncoder(
        source=source,
        model_id=spec.model,
        device=context.device,
        max_chars=context.settings.max_text_chars,
        **fixed,
        **options,
    )


def build_hf_image(spec: EncoderSpec, context: BuildContext) -> Encoder:
    from app.encoders.image_hf import HFImageEncoder

    source, options = _hf_source(spec, context)
    return HFImageEncoder(
        source=source,
        model_id=spec.model,
        device=context.device,
        max_pixels=context.settings.max_image_pixels,
        min_side=context.settings.min_image_side,
        **options,
    )


def build_hf_audio(spec: EncoderSpec, context: BuildContext) -> Encoder:
    from app.encoders.audio_hf import HFAudioEncoder

    source, options = _hf_source(spec, context)
    return HFAudioEncoder(
        source=source,
        model_id=spec.model,
        device=context.device,
        max_seconds=context.settings.max_audio_s,
        **options,
    )


def build_timm_image(spec: EncoderSpec, context: BuildContext) -> Encoder:
    from app.encoders.image_timm import TimmImageEncoder

    options = spec.options()
    if isinstance(options.get("weights"), str):
        # A weight file may be named relative to the pipeline folder or as pkg:DIST/path;
        # the named weight sources (package, hub) pass through unchanged.
        options["weights"] = resolve_source(options["weights"], context.folder)
    return TimmImageEncoder(
        model_id=spec.model,
        device=context.device,
        max_pixels=context.settings.max_image_pixels,
        min_side=context.settings.min_image_side,
        **options,
    )


def build_ge2e(spec: EncoderSpec, context: BuildContext) -> Encoder:
    from app.encoders.audio_ge2e import GE2EEncoder

    return GE2EEncoder(
        model_id=spec.model,
        device=context.device,
        max_seconds=context.settings.max_audio_s,
        **spec.options(),
    )


ENCODER_BUILDERS: dict[str, Callable[[EncoderSpec, BuildContext], Encoder]] = {
    "hf-text": build_hf_text,
    # The CLIP text tower: its projected embedding shares one space with CLIP images.
    "hf-clip-text": functools.partial(build_hf_text, pooling="projection"),
    "hf-image": build_hf_image,
    "hf-audio": build_hf_audio,
    "timm-image": build_timm_image,
    "ge2e": build_ge2e,
}
