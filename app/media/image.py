"""Decode uploaded image bytes into an 8-bit RGB Pillow image, validating them on the way.

The format comes from the bytes themselves (Pillow's format sniffing restricted to
ACCEPTED_FORMATS), never from a file name or a declared content type. The size is
checked from the header before any pixel data is decoded. Corrupt or truncated data
is rejected, because Pillow's ImageFile.LOAD_TRUNCATED_IMAGES stays at its default
(False): this module never sets it.

NOTE: JPEG scan data carries no checksum, so garbage inside it decodes to wrong pixels
without an error. Only a cut-off or structurally broken JPEG is rejected.
"""

import functools
import io
import logging
import re
import struct
import zlib

import numpy as np
from PIL import Image, ImageCms, ImageFile, ImageOps, UnidentifiedImageError

from app.errors import InvalidInput, PayloadTooLarge, UnsupportedMedia

logger = logging.getLogger(__name__)

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
"""Pillow format names tried by `Image.open`. JPEG includes MPO, the multi-picture JPEG of cameras."""

# Exceptions that Pillow 13 plugins and decoders raise on corrupt or truncated data.
# UnidentifiedImageError and "image file is truncated" are OSErrors. PNG raises
# SyntaxError on a bad CRC, and several plugins raise ValueError, EOFError or struct.error.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")

_BACKGROUND = (255, 255, 255, 255)

# Signatures of accepted formats, used to tell a corrupt image (422) from other media (415).
_IMAGE_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\xff\xd8\xff", "a JPEG image"),
    (0, b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (0, b"GIF87a", "a GIF image"),
    (0, b"GIF89a", "a GIF image"),
    (8, b"WEBP", "a WebP image"),
    (0, b"BM", "a BMP image"),
    (0, b"II*\x00", "a TIFF image"),
    (0, b"MM\x00*", "a TIFF image"),
)

# Signatures of media that is not accepted, used only to name it in the 415 message.
_OTHER_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (8, b"WAVE", "a WAV (RIFF) audio file"),
    (8, b"AVI ", "an AVI (RIFF) video file"),
    (0, b"RIFF", "a RIFF container"),
    (0, b"%PDF-", "a PDF document"),
    (0, b"PK\x03\x04", "a ZIP archive"),
    (0, b"\x1f\x8b", "a gzip archive"),
    (4, b"ftypheic", "a HEIC image"),
    (4, b"ftypheix", "a HEIC image"),
    (4, b"ftypmif1", "a HEIF image"),
    (4, b"ftypavif", "an AVIF image"),
    (4, b"ftyp", "an MP4/QuickTime (ISO media) file"),
    (0, b"ID3", "an MP3 audio file"),
    (0, b"OggS", "an Ogg media file"),
    (0, b"fLaC", "a FLAC audio file"),
    (0, b"\x00\x00\x01\x00", "an ICO icon"),
    (0, b"8BPS", "a Photoshop (PSD) document"),
)

_TEXT_PREFIXES: tuple[tuple[str, str], ...] = (
    ("<!doctype html", "an HTML document"),
    ("<html", "an HTML document"),
    ("<?xml", "an XML document"),
    ("{", "a JSON document"),
    ("[", "a JSON document"),
)


def decode_image(data: bytes, *, max_pixels: int, min_side: int, field: str = "image") -> Image.Image:
    """Decode image bytes into an RGB image with EXIF orientation applied.

    Raises InvalidInput (422) for empty, corrupt, truncated or too small images,
    PayloadTooLarge (413) when width x height in the header exceeds `max_pixels`,
    and UnsupportedMedia (415) for data that is not an accepted image format.
    """
    if not data:
        raise InvalidInput(f"{field} is empty (0 bytes); send the bytes of an image file", field=field, value=0)

    image = _open_header(data, max_pixels=max_pixels, field=field)
    _check_size(image.size, max_pixels=max_pixels, min_side=min_side, field=field)

    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        return to_rgb(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb_error(exc, max_pixels=max_pixels, field=field) from exc
    except _DECODE_ERRORS as exc:
        raise InvalidInput(
            f"{field} is a corrupt or truncated {image.format} file: {exc}",
            field=field,
            value=image.format,
        ) from exc


def _open_header(data: bytes, *, max_pixels: int, field: str) -> ImageFile.ImageFile:
    """Identify the format and read the header without decoding any pixel data."""
    try:
        return Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb_error(exc, max_pixels=max_pixels, field=field) from exc
    except UnidentifiedImageError as exc:
        kind = describe_bytes(data)
        if is_accepted_kind(kind):
            raise InvalidInput(
                f"{field} starts like {kind} but its header is corrupt or truncated",
                field=field,
                value=kind,
            ) from exc
        raise UnsupportedMedia(
            f"{field} is {kind}, not an accepted image; send {', '.join(ACCEPTED_FORMATS)}",
            field=field,
            value=kind,
            limit=list(ACCEPTED_FORMATS),
        ) from exc
    except _DECODE_ERRORS as exc:
        raise InvalidInput(
            f"{field} has a corrupt image header ({describe_bytes(data)}): {exc}",
            field=field,
            value=describe_bytes(data),
        ) from exc


def _check_size(size: tuple[int, int], *, max_pixels: int, min_side: int, field: str) -> None:
    width, height = size
    pixels = width * height
    if pixels > max_pixels:
        raise PayloadTooLarge(
            f"{field} is {width}x{height} = {pixels} pixels, above the limit of {max_pixels} pixels;"
            " downscale it before sending",
            field=field,
            value=pixels,
            limit=max_pixels,
        )
    if min(width, height) < min_side:
        raise InvalidInput(
            f"{field} is {width}x{height}; both sides must be at least {min_side} pixels",
            field=field,
            value=min(width, height),
            limit=min_side,
        )


def _bomb_error(exc: Exception, *, max_pixels: int, field: str) -> PayloadTooLarge:
    """Map Pillow's decompression-bomb guard, which fires inside Image.open, before `_check_size`."""
    # Pillow 13 words it "Image size (N pixels) exceeds limit of M pixels, ...".
    found = re.search(r"\((\d+) pixels\)", str(exc))
    pixels = int(found.group(1)) if found else None
    pixel_text = f"{pixels} pixels" if pixels is not None else "more pixels than Pillow allows"
    return PayloadTooLarge(
        f"{field} is {pixel_text}, above the limit of {max_pixels} pixels (width x height);"
        " downscale it before sending",
        field=field,
        value=pixels,
        limit=max_pixels,
    )


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert an image of any Pillow mode to 8-bit RGB, compositing transparency on white."""
    if image.mode in _SIXTEEN_BIT_MODES:
        image = _sixteen_to_eight_bits(image)
    if image.mode == "CMYK":
        return _cmyk_to_rgb(image)
    if image.mode == "La":
        # Pillow 13 converts premultiplied La only to LA.
        image = image.convert("LA")
    if image.has_transparency_data:
        # Covers alpha channels (RGBA, LA, PA and premultiplied modes) and tRNS
        # transparency of palette, greyscale and RGB images.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _BACKGROUND)
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _sixteen_to_eight_bits(image: Image.Image) -> Image.Image:
    """Scale 16-bit greyscale to 8 bits by dividing by 257 and rounding.

    Pillow's own convert("L") clips 16-bit values above 255 instead of scaling them.
    """
    values = np.asarray(image).astype(np.int64)
    # NOTE: mode "I" (32-bit integers, as a 32-bit TIFF opens) is scaled as if it
    # were 16-bit data, so its values outside 0..65535 are clipped.
    values = np.clip(values, 0, 65535)
    scaled = (values + 128) // 257
    return Image.fromarray(scaled.astype(np.uint8), mode="L")


def _cmyk_to_rgb(image: Image.Image) -> Image.Image:
    profile_bytes = image.info.get("icc_profile")
    if profile_bytes:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(profile_bytes))
            return ImageCms.profileToProfile(image, source, _srgb_profile(), outputMode="RGB")
        except (ImageCms.PyCMSError, OSError) as exc:
            logger.warning("CMYK image has an unusable ICC profile, converting without it: %s", exc)
    return image.convert("RGB")


@functools.cache
def _srgb_profile() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def describe_bytes(data: bytes) -> str:
    """Name the kind of data from its first bytes, for error messages."""
    text = _leading_text(data)
    if text is not None:
        return _describe_text(text)
    for offset, magic, name in _IMAGE_SIGNATURES + _OTHER_SIGNATURES:
        if data[offset : offset + len(magic)] == magic:
            return name
    return f"unknown binary data starting with 0x{data[:8].hex()}"


def _describe_text(text: str) -> str:
    lowered = text.lstrip().lower()
    if lowered.startswith("<") and "<svg" in lowered:
        return "an SVG image (XML)"
    for prefix, name in _TEXT_PREFIXES:
        if lowered.startswith(prefix):
            return name
    return "plain text"


def is_accepted_kind(kind: str) -> bool:
    """Tell whether a `describe_bytes` result names one of the accepted image formats."""
    return any(kind == name for _, _, name in _IMAGE_SIGNATURES)


def _leading_text(data: bytes) -> str | None:
    """Return the first 512 bytes as text when they are printable UTF-8, else None."""
    head = data[:512]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut by the 512-byte slice is still text.
        if exc.start < len(head) - 3:
            return None
        text = head[: exc.start].decode("utf-8")
    text = text.removeprefix("\ufeff")
    if all(char.isprintable() or char in "\t\r\n\f" for char in text):
        return text
    return None
