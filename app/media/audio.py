"""Decode uploaded audio bytes into a float32 mono waveform at a requested sample rate.

libsndfile (through soundfile) detects the container from the bytes themselves, never
from a file name, and reads whatever the installed build supports. soundfile 0.14.0
bundles libsndfile 1.2.2, which reads WAV (8/16/24/32-bit PCM, float, extensible, and
MP3 data inside WAV), FLAC, OGG Vorbis and Opus, and MP3, among others.
"""

import io
import math

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional

from app.errors import InvalidInput, PayloadTooLarge, UnsupportedMedia

SUPPORTED_FORMATS = "WAV, FLAC, OGG (Vorbis or Opus) or MP3"

MAX_SAMPLE_RATE = 384_000
"""Highest accepted source rate in Hz. It bounds the decoded size of a compressed clip."""

MAX_RESAMPLE_RATIO_TERMS = 1 << 20
"""Bound on (source rate / gcd) x (target rate / gcd).

torchaudio's sinc resampler builds a filter bank of about that many taps, so a rate
pair with a small gcd (16001 Hz to 16000 Hz) would allocate gigabytes. Standard rates
stay far below the bound: 11025 Hz to 16000 Hz gives 441 x 640.
"""

_BLOCK_SAMPLES = 1 << 20

# Signatures used only to name what was sent when libsndfile cannot read it.
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (0, b"\xff\xd8\xff", "a JPEG image"),
    (0, b"GIF87a", "a GIF image"),
    (0, b"GIF89a", "a GIF image"),
    (8, b"WEBP", "a WebP image"),
    (0, b"BM", "a BMP image"),
    (0, b"%PDF-", "a PDF document"),
    (0, b"PK\x03\x04", "a ZIP archive"),
    (0, b"\x1f\x8b", "a gzip archive"),
    (4, b"ftyp", "an MP4/M4A (ISO media) file, which this server cannot decode"),
    (0, b"\x1a\x45\xdf\xa3", "a Matroska/WebM file, which this server cannot decode"),
    (0, b"\x30\x26\xb2\x75", "an ASF/WMA file, which this server cannot decode"),
    (0, b"#!AMR", "an AMR file, which this server cannot decode"),
    (0, b"fLaC", "a FLAC file that libsndfile cannot read"),
    (0, b"OggS", "an OGG file that libsndfile cannot read"),
    (0, b"ID3", "an MP3 file that libsndfile cannot read"),
    (0, b"\xff\xfb", "an MP3 file that libsndfile cannot read"),
    (0, b"\xff\xf3", "an MP3 file that libsndfile cannot read"),
    (0, b"\xff\xf1", "an AAC (ADTS) stream, which this server cannot decode"),
    (0, b"\xff\xf9", "an AAC (ADTS) stream, which this server cannot decode"),
    (8, b"AIFF", "an AIFF file that libsndfile cannot read"),
    (8, b"AIFC", "an AIFF file that libsndfile cannot read"),
    (0, b"caff", "a CAF file that libsndfile cannot read"),
)

_TEXT_PREFIXES: tuple[tuple[str, str], ...] = (
    ("<svg", "an SVG/XML document"),
    ("<?xml", "an SVG/XML document"),
    ("<!doctype html", "an HTML document"),
    ("<html", "an HTML document"),
    ("{", "a JSON document"),
    ("[", "a JSON document"),
)


class _ClampedBytesIO(io.BytesIO):
    """In-memory file whose seeks before the start land on offset 0 instead of raising.

    libsndfile 1.2.2 seeks to -1 on some malformed files (an AIFF without its SSND chunk).
    soundfile's seek callback cannot pass the ValueError of io.BytesIO on, so cffi
    prints it as an unraisable exception and returns 0. Clamping gives the same
    position without the noise.
    """

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self._size = len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.tell(), io.SEEK_END: self._size}[whence]
        return super().seek(max(0, base + offset))


def describe_bytes(data: bytes) -> str:
    """Name the kind of data from its first bytes, for error messages."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        tag = _wav_format_tag(data)
        tag_text = "no readable format tag" if tag is None else f"format tag 0x{tag:04x}"
        return f"a WAV file with {tag_text} that libsndfile cannot read"
    for offset, magic, name in _SIGNATURES:
        if data[offset : offset + len(magic)] == magic:
            return name
    text = data[:64].lstrip(b"\xef\xbb\xbf \t\r\n").decode("ascii", errors="replace").lower()
    for prefix, name in _TEXT_PREFIXES:
        if text.startswith(prefix):
            return name
    return f"unknown data starting with 0x{data[:8].hex()}"


def _wav_format_tag(data: bytes) -> int | None:
    """Return the codec tag of a RIFF WAV's `fmt ` chunk (1 is PCM, 0x55 is MP3), if found."""
    position = 12
    while position + 8 <= len(data):
        chunk_id = data[position : position + 4]
        chunk_size = int.from_bytes(data[position + 4 : position + 8], "little")
        if chunk_id == b"fmt " and position + 10 <= len(data):
            return int.from_bytes(data[position + 8 : position + 10], "little")
        # RIFF pads every chunk to an even size.
        position += 8 + chunk_size + (chunk_size & 1)
    return None


def decode_audio(data: bytes, *, target_rate: int, max_seconds: float, field: str = "audio") -> np.ndarray:
    """Decode `data`, check its duration from the header, downmix it and resample it.

    Raises InvalidInput (422) for empty or non-finite audio, UnsupportedMedia (415) for
    data libsndfile cannot read and PayloadTooLarge (413) for a clip over `max_seconds`.
    """
    if not data:
        raise InvalidInput(f"{field} is empty (0 bytes); send an audio file", field=field, value=0)
    try:
        sound = sf.SoundFile(_ClampedBytesIO(data))
    except sf.SoundFileError as exc:
        found = describe_bytes(data)
        reason = getattr(exc, "error_string", str(exc))
        raise UnsupportedMedia(
            f"{field} is not a readable audio file: found {found} (libsndfile: {reason}); "
            f"send {SUPPORTED_FORMATS}",
            field=field,
            value=found,
            limit=SUPPORTED_FORMATS,
        ) from exc

    with sound:
        _check_header(sound, target_rate=target_rate, max_seconds=max_seconds, field=field)
        mono = _read_mono(sound, max_seconds=max_seconds, field=field)
        source_rate = sound.samplerate
    return _resample(mono, source_rate, target_rate)


def _check_header(sound: sf.SoundFile, *, target_rate: int, max_seconds: float, field: str) -> None:
    """Reject a clip from its header alone, before any sample is decoded."""
    if sound.samplerate > MAX_SAMPLE_RATE:
        raise InvalidInput(
            f"{field} has a sample rate of {sound.samplerate} Hz, above the limit of {MAX_SAMPLE_RATE} Hz",
            field=field,
            value=sound.samplerate,
            limit=MAX_SAMPLE_RATE,
        )
    gcd = math.gcd(sound.samplerate, target_rate)
    if (sound.samplerate // gcd) * (target_rate // gcd) > MAX_RESAMPLE_RATIO_TERMS:
        raise InvalidInput(
            f"{field} has a sample rate of {sound.samplerate} Hz, which cannot be resampled to {target_rate} Hz "
            "at a bounded cost; send a standard rate such as 8000, 16000, 22050, 44100 or 48000 Hz",
            field=field,
            value=sound.samplerate,
        )
    duration = sound.frames / sound.samplerate
    if duration > max_seconds:
        raise PayloadTooLarge(
            f"{field} lasts {duration:.2f} s, above the limit of {max_seconds:g} s; send a shorter clip",
            field=field,
            value=round(duration, 3),
            limit=max_seconds,
        )
    if sound.frames == 0:
        raise InvalidInput(
            f"{field} has a valid {sound.format} header but contains no samples", field=field, value=0
        )


def _read_mono(sound: sf.SoundFile, *, max_seconds: float, field: str) -> np.ndarray:
    """Read block by block, averaging the channels, so memory grows with one channel only."""
    # The header's frame count is only a first check, so the limit is enforced again
    # on what is actually decoded.
    max_frames = int(max_seconds * sound.samplerate)
    blocksize = max(1, _BLOCK_SAMPLES // sound.channels)
    parts: list[np.ndarray] = []
    decoded = 0
    try:
        for block in sound.blocks(blocksize=blocksize, dtype="float32", always_2d=True):
            _check_finite(block, offset=decoded, field=field)
            parts.append(block.mean(axis=1, dtype=np.float32))
            decoded += len(block)
            if decoded > max_frames:
                duration = decoded / sound.samplerate
                raise PayloadTooLarge(
                    f"{field} decodes to more than {duration:.2f} s, above the limit of {max_seconds:g} s",
                    field=field,
                    value=round(duration, 3),
                    limit=max_seconds,
                )
    except sf.SoundFileError as exc:
        raise InvalidInput(
            f"{field} is a {sound.format} file whose data could not be decoded after "
            f"{decoded} samples: {getattr(exc, 'error_string', exc)}",
            field=field,
            value=decoded,
        ) from exc
    if decoded == 0:
        raise InvalidInput(f"{field} has a {sound.format} header but no decodable samples", field=field, value=0)
    return np.concatenate(parts)


def _check_finite(block: np.ndarray, *, offset: int, field: str) -> None:
    finite_frames = np.isfinite(block).all(axis=1)
    if finite_frames.all():
        return
    index = int(np.argmin(finite_frames))
    bad_value = block[index][~np.isfinite(block[index])][0]
    raise InvalidInput(
        f"{field} has a non-finite sample ({bad_value}) at sample index {offset + index}; "
        "every sample must be a finite number",
        field=field,
        value=offset + index,
    )


def _resample(mono: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    if source_rate == target_rate:
        return mono
    waveform = torchaudio.functional.resample(torch.from_numpy(mono), source_rate, target_rate)
    return waveform.numpy()
