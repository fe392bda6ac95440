"""Real photos for image tests, from the files that scikit-image ships inside its package.

Every photo here loads offline: scikit-image 0.25 bundles these files and downloads only
its other samples. `chelsea` and `cat` are the same file, so it appears once, as "cat".
"""

import functools
import io
import struct
import zlib
from collections.abc import Callable

import numpy as np
import pytest
import skimage.data
from PIL import Image

PHOTO_LOADERS: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": skimage.data.astronaut,
    "cat": skimage.data.chelsea,
    "coffee": skimage.data.coffee,
    "rocket": skimage.data.rocket,
    "motorcycle": lambda: skimage.data.stereo_motorcycle()[0],
    "hubble": skimage.data.hubble_deep_field,
    "immunohistochemistry": skimage.data.immunohistochemistry,
    "retina": skimage.data.retina,
}
"""Distinct colour photos, by short name."""


def encode_image(image: Image.Image, image_format: str = "JPEG", **params: object) -> bytes:
    """Return `image` saved in `image_format` with Pillow's save `params` (quality=95 for JPEG by default)."""
    if image_format == "JPEG":
        params.setdefault("quality", 95)
    buffer = io.BytesIO()
    image.save(buffer, image_format, **params)
    return buffer.getvalue()


def resized_copy(data: bytes, scale: float, image_format: str = "JPEG", **params: object) -> bytes:
    """Return an encoded image resized by `scale` (Lanczos) and re-encoded in `image_format`."""
    with Image.open(io.BytesIO(data)) as image:
        rgb = image.convert("RGB")
    size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
    return encode_image(rgb.resize(size, Image.Resampling.LANCZOS), image_format, **params)


@functools.cache
def solid_png(width: int, height: int) -> bytes:
    """Return a valid all-white 1-bit greyscale PNG of any size, built row by row.

    Pillow would hold the whole image in memory, one byte per pixel even for mode "1".
    Writing the chunks here instead, a 14000 x 13000 image takes 23 MB of zlib input
    and about 40 kB of PNG.
    """
    row = b"\x00" + b"\xff" * ((width + 7) // 8)  # filter type 0, then packed bits
    compressor = zlib.compressobj(9)
    compressed = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, greyscale
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", compressed) + _png_chunk(b"IEND", b"")


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


@pytest.fixture(scope="session")
def photos() -> dict[str, Image.Image]:
    """Each photo of PHOTO_LOADERS as an RGB Pillow image."""
    return {name: Image.fromarray(load()).convert("RGB") for name, load in PHOTO_LOADERS.items()}


@pytest.fixture(scope="session")
def photo_jpegs(photos: dict[str, Image.Image]) -> dict[str, bytes]:
    """Each photo as JPEG bytes at quality 95."""
    return {name: encode_image(image, "JPEG") for name, image in photos.items()}


@pytest.fixture(scope="session")
def photo_pngs(photos: dict[str, Image.Image]) -> dict[str, bytes]:
    """Each photo as lossless PNG bytes."""
    return {name: encode_image(image, "PNG") for name, image in photos.items()}
