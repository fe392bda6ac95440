"""decode_image on real files of every accepted format and mode, and on bad input."""

import io
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image, ImageCms, ImageFile

from app.errors import InvalidInput, PayloadTooLarge, UnsupportedMedia
from app.media.image import decode_image
from tests.support.images import encode_image, solid_png

MAX_PIXELS = 40_000_000
CMYK_PROFILE = Path("/usr/share/color/icc/ghostscript/default_cmyk.icc")
"""A CMYK ICC profile (Artifex SWOP) from the Debian package libgs-common."""


def decode(data: bytes, *, max_pixels: int = MAX_PIXELS, min_side: int = 1) -> np.ndarray:
    image = decode_image(data, max_pixels=max_pixels, min_side=min_side)
    assert image.mode == "RGB"
    return np.asarray(image).astype(np.int64)


def quadrants(width: int = 64, height: int = 32) -> Image.Image:
    """Return an RGB image with four solid quadrants, so any rotation or flip shows."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[: height // 2, : width // 2] = (220, 30, 30)
    pixels[: height // 2, width // 2 :] = (30, 30, 220)
    pixels[height // 2 :, : width // 2] = (30, 200, 30)
    pixels[height // 2 :, width // 2 :] = (240, 240, 40)
    return Image.fromarray(pixels)


def with_orientation(image: Image.Image, image_format: str, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode_image(image, image_format, exif=exif.tobytes())


def load_spy(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every full decode (ImageFile.load) instead of running it."""
    calls: list[str] = []

    def spy(self: ImageFile.ImageFile) -> None:
        calls.append(f"{self.format} {self.size}")
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    return calls


# Formats and modes


@pytest.mark.parametrize(
    ("image_format", "params", "tolerance"),
    [
        ("JPEG", {"quality": 95, "subsampling": 0}, 12),
        ("PNG", {}, 0),
        ("WEBP", {"lossless": True}, 0),
        ("GIF", {}, 0),
        ("BMP", {}, 0),
        ("TIFF", {}, 0),
    ],
)
def test_decode_accepted_format(image_format: str, params: dict[str, object], tolerance: int) -> None:
    original = quadrants()
    pixels = decode(encode_image(original, image_format, **params))
    assert pixels.shape == (32, 64, 3)
    assert np.abs(pixels - np.asarray(original)).max() <= tolerance


def test_decode_gif_first_frame() -> None:
    red = Image.new("RGB", (8, 8), (255, 0, 0))
    blue = Image.new("RGB", (8, 8), (0, 0, 255))
    data = encode_image(red, "GIF", save_all=True, append_images=[blue], duration=100)
    assert Image.open(io.BytesIO(data)).n_frames == 2

    pixels = decode(data)
    assert (pixels == (255, 0, 0)).all()


def test_decode_rgba_composites_on_white() -> None:
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (200, 100, 0, 128)  # half transparent
    rgba[0, 1] = (10, 20, 30, 0)  # fully transparent
    rgba[1, 0] = (10, 20, 30, 255)  # opaque
    rgba[1, 1] = (0, 0, 0, 64)
    pixels = decode(encode_image(Image.fromarray(rgba, mode="RGBA"), "PNG"))

    def over_white(color: tuple[int, int, int], alpha: int) -> np.ndarray:
        return np.round(np.array(color) * alpha / 255 + 255 * (1 - alpha / 255))

    assert np.abs(pixels[0, 0] - over_white((200, 100, 0), 128)).max() <= 1
    assert (pixels[0, 1] == 255).all()
    assert (pixels[1, 0] == (10, 20, 30)).all()
    assert np.abs(pixels[1, 1] - over_white((0, 0, 0), 64)).max() <= 1


def test_decode_la_composites_on_white() -> None:
    la = np.array([[[0, 128], [50, 255], [90, 0]]], dtype=np.uint8)
    pixels = decode(encode_image(Image.fromarray(la, mode="LA"), "PNG"))
    assert np.abs(pixels[0, 0] - 127).max() <= 1
    assert (pixels[0, 1] == 50).all()
    assert (pixels[0, 2] == 255).all()


def test_decode_palette_trns_hides_index() -> None:
    image = Image.new("P", (4, 1))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0, 0, 0] * 254)
    image.putdata([0, 1, 0, 1])
    data = encode_image(image, "PNG", transparency=1)
    assert Image.open(io.BytesIO(data)).info["transparency"] == 1

    pixels = decode(data)
    assert (pixels[0, 0] == (255, 0, 0)).all()
    assert (pixels[0, 1] == (255, 255, 255)).all()
    assert (pixels[0, 3] == (255, 255, 255)).all()


def test_decode_cmyk_jpeg_without_profile() -> None:
    cyan = Image.new("CMYK", (16, 16), (255, 0, 0, 0))
    pixels = decode(encode_image(cyan, "JPEG"))
    assert np.abs(pixels[8, 8] - (0, 255, 255)).max() <= 3


@pytest.mark.skipif(not CMYK_PROFILE.is_file(), reason="no CMYK ICC profile; apt-get install libgs-common")
def test_decode_cmyk_jpeg_with_icc_profile() -> None:
    profile_bytes = CMYK_PROFILE.read_bytes()
    data = encode_image(Image.new("CMYK", (16, 16), (255, 0, 0, 0)), "JPEG", icc_profile=profile_bytes)
    pixels = decode(data)

    profile = ImageCms.ImageCmsProfile(io.BytesIO(profile_bytes))
    srgb = ImageCms.createProfile("sRGB")
    expected = np.asarray(ImageCms.profileToProfile(Image.open(io.BytesIO(data)), profile, srgb, outputMode="RGB"))
    assert np.abs(pixels - expected).max() <= 1
    # SWOP cyan ink is a duller blue-green than the naive (0, 255, 255).
    assert pixels[8, 8, 1] < 220
    assert pixels[8, 8, 2] > pixels[8, 8, 1] > pixels[8, 8, 0]


@pytest.mark.parametrize(
    ("image_format", "numpy_dtype", "pillow_mode"),
    [("PNG", "<u2", "I;16"), ("TIFF", ">u2", "I;16B"), ("TIFF", "<i4", "I")],
)
def test_decode_16_bit_scaled_not_clipped(image_format: str, numpy_dtype: str, pillow_mode: str) -> None:
    values = np.array([[0, 257, 1000, 32896], [40000, 65278, 65535, 128]])
    data = encode_image(Image.fromarray(values.astype(numpy_dtype)), image_format)
    assert Image.open(io.BytesIO(data)).mode == pillow_mode

    pixels = decode(data)
    expected = np.round(values / 257)
    assert (pixels[..., 0] == expected).all()
    assert (pixels[..., 0] == pixels[..., 2]).all()
    assert pixels[1, 0, 0] == 156  # 40000 / 257, where clipping would give 255


def test_decode_greyscale_and_bilevel() -> None:
    grey = decode(encode_image(Image.fromarray(np.array([[0, 77, 255]], dtype=np.uint8)), "PNG"))
    assert (grey[0, 1] == 77).all()

    bilevel = Image.new("1", (2, 1))
    bilevel.putpixel((1, 0), 1)
    pixels = decode(encode_image(bilevel, "PNG"))
    assert (pixels[0, 0] == 0).all()
    assert (pixels[0, 1] == 255).all()


@pytest.mark.parametrize(("image_format", "tolerance"), [("PNG", 0), ("JPEG", 12)])
@pytest.mark.parametrize(
    ("orientation", "stored_rotation"),
    [(6, Image.Transpose.ROTATE_90), (3, Image.Transpose.ROTATE_180), (8, Image.Transpose.ROTATE_270)],
)
def test_decode_exif_orientation(
    image_format: str, tolerance: int, orientation: int, stored_rotation: Image.Transpose
) -> None:
    upright = quadrants()
    # A camera stores the sensor's pixels and records the turn a viewer must apply.
    stored = upright.transpose(stored_rotation)
    rotated_file = with_orientation(stored, image_format, orientation)
    upright_file = encode_image(upright, image_format)

    pixels = decode(rotated_file)
    expected = decode(upright_file)
    assert pixels.shape == expected.shape
    assert np.abs(pixels - expected).max() <= tolerance
    assert np.abs(pixels[4, 4] - (220, 30, 30)).max() <= tolerance


@pytest.mark.parametrize("size", [(1, 1), (2, 2)])
@pytest.mark.parametrize("image_format", ["PNG", "JPEG"])
def test_decode_tiny_image(size: tuple[int, int], image_format: str) -> None:
    pixels = decode(encode_image(Image.new("RGB", size, (10, 200, 30)), image_format))
    assert pixels.shape == (size[1], size[0], 3)
    assert np.abs(pixels - (10, 200, 30)).max() <= 3


# Size limits


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_header_cap_rejects_10000x10000(monkeypatch: pytest.MonkeyPatch) -> None:
    data = solid_png(10_000, 10_000)
    decoded = load_spy(monkeypatch)
    started = time.perf_counter()
    with pytest.raises(PayloadTooLarge) as caught:
        decode_image(data, max_pixels=MAX_PIXELS, min_side=1)
    elapsed = time.perf_counter() - started

    assert decoded == []
    assert elapsed < 1.0
    assert caught.value.status == 413
    assert caught.value.field == "image"
    assert caught.value.value == 100_000_000
    assert caught.value.limit == MAX_PIXELS
    assert "10000x10000" in caught.value.detail
    assert "40000000" in caught.value.detail


def test_header_cap_rejects_14000x13000(monkeypatch: pytest.MonkeyPatch) -> None:
    # 182 million pixels: above twice Pillow's MAX_IMAGE_PIXELS, so Pillow's own
    # decompression-bomb error fires inside Image.open.
    data = solid_png(14_000, 13_000)
    decoded = load_spy(monkeypatch)
    started = time.perf_counter()
    with pytest.raises(PayloadTooLarge) as caught:
        decode_image(data, max_pixels=MAX_PIXELS, min_side=1)
    elapsed = time.perf_counter() - started

    assert decoded == []
    assert elapsed < 1.0
    assert caught.value.status == 413
    assert caught.value.value == 182_000_000
    assert caught.value.limit == MAX_PIXELS
    assert "182000000" in caught.value.detail


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
def test_header_cap_bomb_warning_as_error() -> None:
    with pytest.raises(PayloadTooLarge) as caught:
        decode_image(solid_png(10_000, 10_000), max_pixels=MAX_PIXELS, min_side=1)
    assert caught.value.status == 413
    assert caught.value.value == 100_000_000


def test_header_cap_names_size_and_limit(photo_jpegs: dict[str, bytes]) -> None:
    with pytest.raises(PayloadTooLarge) as caught:
        decode_image(photo_jpegs["cat"], max_pixels=100_000, min_side=1, field="input[2].image")
    assert caught.value.field == "input[2].image"
    assert "451x300" in caught.value.detail
    assert "135300" in caught.value.detail
    assert "100000" in caught.value.detail


def test_min_side_rejected() -> None:
    with pytest.raises(InvalidInput) as caught:
        decode_image(encode_image(Image.new("RGB", (40, 1)), "PNG"), max_pixels=MAX_PIXELS, min_side=2)
    assert caught.value.status == 422
    assert caught.value.limit == 2
    assert "40x1" in caught.value.detail
    assert "at least 2 pixels" in caught.value.detail


# Corrupt and unsupported data


@pytest.fixture(scope="module")
def cat_png(photos: dict[str, Image.Image]) -> bytes:
    return encode_image(photos["cat"], "PNG")


def test_corrupt_png_cut_at_60_percent(cat_png: bytes) -> None:
    with pytest.raises(InvalidInput) as caught:
        decode_image(cat_png[: len(cat_png) * 6 // 10], max_pixels=MAX_PIXELS, min_side=1)
    assert caught.value.status == 422
    assert "truncated" in caught.value.detail


def test_corrupt_png_garbage_in_data(cat_png: bytes) -> None:
    damaged = bytearray(cat_png)
    middle = len(damaged) // 2
    damaged[middle : middle + 256] = bytes(range(256))
    with pytest.raises(InvalidInput) as caught:
        decode_image(bytes(damaged), max_pixels=MAX_PIXELS, min_side=1)
    assert caught.value.status == 422
    assert "PNG" in caught.value.detail


def test_corrupt_jpeg_cut_after_scan_header(photo_jpegs: dict[str, bytes]) -> None:
    data = photo_jpegs["cat"]
    scan = data.index(b"\xff\xda")
    header_length = int.from_bytes(data[scan + 2 : scan + 4], "big")
    with pytest.raises(InvalidInput) as caught:
        decode_image(data[: scan + 2 + header_length], max_pixels=MAX_PIXELS, min_side=1)
    assert caught.value.status == 422
    assert "JPEG" in caught.value.detail


def test_corrupt_png_header_only(cat_png: bytes) -> None:
    with pytest.raises(InvalidInput) as caught:
        decode_image(cat_png[:20], max_pixels=MAX_PIXELS, min_side=1)
    assert "PNG" in caught.value.detail


def test_empty_bytes_rejected() -> None:
    with pytest.raises(InvalidInput) as caught:
        decode_image(b"", max_pixels=MAX_PIXELS, min_side=1)
    assert caught.value.status == 422
    assert caught.value.field == "image"
    assert "0 bytes" in caught.value.detail


def wav_bytes() -> bytes:
    buffer = io.BytesIO()
    tone = np.sin(np.linspace(0, 2 * np.pi * 440, 16_000)).astype(np.float32)
    sf.write(buffer, tone, 16_000, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "SVG"),
        (b'<svg xmlns="http://www.w3.org/2000/svg"><rect width="5" height="5"/></svg>', "SVG"),
        (b"This is a JPEG, trust me.\n", "plain text"),
        (wav_bytes(), "WAV"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", "PDF"),
        (bytes(range(255, 0, -1)), "unknown"),
    ],
    ids=["svg-xml", "svg", "text", "wav", "pdf", "unknown"],
)
def test_unsupported_media_named(data: bytes, named: str) -> None:
    with pytest.raises(UnsupportedMedia) as caught:
        decode_image(data, max_pixels=MAX_PIXELS, min_side=1)
    assert caught.value.status == 415
    assert caught.value.field == "image"
    assert named in caught.value.detail
    assert "PNG" in caught.value.detail


def test_load_truncated_images_stays_off() -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
