"""Image encoders loaded with transformers: AutoImageProcessor and the model from one folder or hub id.

Families and their default pooling:
- CLIP vision: the projected image embedding (`image_embeds`), in the space of CLIP's
  text tower; a checkpoint without `visual_projection` falls back to `pooler_output`.
- ConvNeXt: `pooler_output`, the layer-normed mean over the final feature map.
- ViT, DINOv2 and other ViT-like models: the CLS token of `last_hidden_state`, after the
  final layer norm. ViT's own pooler (a dense + tanh layer) is skipped, because many
  checkpoints ship it untrained or not at all.
"""

import logging
from collections.abc import Sequence

import torch
from transformers import AutoConfig, AutoImageProcessor, AutoModel, CLIPVisionModelWithProjection

from app.encoders.base import Prepared
from app.encoders.hf_common import (
    HFEncoder,
    autocast_dtype,
    check_missing_weights,
    check_weights_present,
    load_pretrained,
    offline_mode,
    weights_revision,
)
from app.encoders.image_timm import example_jpeg
from app.media.image import decode_image

logger = logging.getLogger(__name__)

POOLING_MODES = ("auto", "projection", "pooler", "cls", "mean")
_CLIP_MODEL_TYPES = ("clip", "clip_vision_model")
_POOLER_MODEL_TYPES = ("convnext", "convnextv2", "resnet", "regnet")


class HFImageEncoder(HFEncoder):
    """A transformers vision model used as an image embedder, fed by its own image processor.

    The cost of an image is the pixel count of its model input (height x width after the
    processor's resize and crop), so images of one encoder usually cost the same.
    """

    modality = "image"
    cost_unit = "pixels"

    def __init__(
        self,
        *,
        source: str,
        model_id: str,
        device: torch.device,
        max_pixels: int,
        min_side: int,
        revision: str | None = None,
        pooling: str = "auto",
        local_files_only: bool | None = None,
        dtype: str | torch.dtype = "float32",
    ) -> None:
        offline = offline_mode() if local_files_only is None else local_files_only
        check_weights_present(source, model_id=model_id, revision=revision, local_files_only=offline)
        options = {"revision": revision, "local_files_only": offline}
        config = load_pretrained(lambda: AutoConfig.from_pretrained(source, **options), source, model_id=model_id)
        self.processor = load_pretrained(
            lambda: AutoImageProcessor.from_pretrained(source, **options), source, model_id=model_id
        )
        is_clip = config.model_type in _CLIP_MODEL_TYPES
        model_class = CLIPVisionModelWithProjection if is_clip else AutoModel
        model, loading_info = load_pretrained(
            lambda: model_class.from_pretrained(source, output_loading_info=True, **options), source, model_id=model_id
        )
        has_projection = is_clip and not any(k.startswith("visual_projection.") for k in loading_info["missing_keys"])
        if is_clip and not has_projection:
            loading_info["missing_keys"] = [k for k in loading_info["missing_keys"] if not k.startswith("visual_projection.")]
            logger.info("image encoder %s has no visual projection; using the pooled output", model_id)
        check_missing_weights(loading_info, model_id=model_id)

        self.pooling = _resolve_pooling(pooling, config.model_type, has_projection, model_id)
        self.model = model.eval().to(device)
        self.autocast_dtype = autocast_dtype(dtype, device, label=f"image encoder {model_id}")
        self.max_pixels = max_pixels
        self.min_side = min_side
        vision_config = getattr(config, "vision_config", config)
        if self.pooling == "projection":
            dim = model.config.projection_dim
        elif hasattr(vision_config, "hidden_sizes"):
            dim = vision_config.hidden_sizes[-1]
        else:
            dim = vision_config.hidden_size
        super().__init__(
            model_id=model_id, revision=weights_revision(source, revision), dim=int(dim), device=device
        )

    def preprocess(self, payload: bytes) -> Prepared:
        image = decode_image(bytes(payload), max_pixels=self.max_pixels, min_side=self.min_side, field="image")
        pixels = self.processor(images=image, return_tensors="pt")["pixel_values"][0]
        info = {"width": image.width, "height": image.height}
        return Prepared(data=pixels, cost=int(pixels.shape[-2] * pixels.shape[-1]), info=info)

    def _embed(self, pixels: Sequence[torch.Tensor]) -> torch.Tensor:
        # Processors with a fixed crop give one shape; others (shortest-edge resize only)
        # give several, and each shape runs as its own sub-batch.
        rows: list[torch.Tensor | None] = [None] * len(pixels)
        for shape in {tuple(p.shape) for p in pixels}:
            indices = [i for i, p in enumerate(pixels) if tuple(p.shape) == shape]
            stacked = torch.stack([pixels[i] for i in indices]).to(self.device, non_blocking=True)
            pooled = self._pool(self.model(pixel_values=stacked))
            for row, index in enumerate(indices):
                rows[index] = pooled[row]
        return torch.stack([row for row in rows if row is not None]).float()

    def _pool(self, outputs: object) -> torch.Tensor:
        if self.pooling == "projection":
            return outputs.image_embeds
        if self.pooling == "pooler":
            return outputs.pooler_output.flatten(1)
        hidden = outputs.last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        return hidden[:, 1:].mean(dim=1)

    def example_payload(self) -> bytes:
        return example_jpeg()


def _resolve_pooling(pooling: str, model_type: str, has_projection: bool, model_id: str) -> str:
    if pooling not in POOLING_MODES:
        raise ValueError(f"image encoder {model_id}: pooling must be one of {POOLING_MODES}, got {pooling!r}")
    if pooling == "projection" and not has_projection:
        raise ValueError(f"image encoder {model_id}: pooling 'projection' needs a CLIP checkpoint with a projection")
    if pooling != "auto":
        return pooling
    if has_projection:
        return "projection"
    if model_type in _CLIP_MODEL_TYPES or model_type in _POOLER_MODEL_TYPES:
        return "pooler"
    return "cls"
