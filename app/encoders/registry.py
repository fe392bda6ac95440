"""Encoder types that a pipeline.json may name, each with the builder that makes it.

Builders import their encoder module when called, so a pipeline pays only for the
libraries its own encoders need.
"""

from collections.abc import Callable

from app.encoders.base import Encoder
from app.encoders.sources import resolve_source
from app.pipeline import BuildContext, EncoderSpec


def build_hf_text(spec: EncoderSpec, context: BuildContext) -> Encoder:
    from app.encoders.text_hf import HFTextEncoder

    options = spec.options()
    source = resolve_source(options.pop("source", spec.model), context.folder)
    return HFTextEncoder(
        source=source,
        model_id=spec.model,
        device=context.device,
        max_chars=context.settings.max_text_chars,
        **options,
    )


def build_timm_image(spec: EncoderSpec, context: BuildContext) -> Encoder:
    from app.encoders.image_timm import TimmImageEncoder

    options = spec.options()
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
    "timm-image": build_timm_image,
    "ge2e": build_ge2e,
}
