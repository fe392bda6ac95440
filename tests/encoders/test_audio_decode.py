"""decode_audio on real files written by soundfile (libsndfile), and on bad uploads."""

import io
import struct

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from app.errors import InvalidInput, PayloadTooLarge, UnsupportedMedia
from app.media.audio import MAX_SAMPLE_RATE, decode_audio

RATE = 16_000


def tone(rate: int, seconds: float = 1.0, hz: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def encode(samples: np.ndarray, rate: int, format: str, subtype: str) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=format, subtype=subtype)
    return buffer.getvalue()


def decode(data: bytes, max_seconds: float = 60.0) -> np.ndarray:
    return decode_audio(data, target_rate=RATE, max_seconds=max_seconds)


def peak_hz(samples: np.ndarray, rate: int = RATE) -> float:
    return float(np.argmax(np.abs(np.fft.rfft(samples))) * rate / len(samples))


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))


def wav_with_mp3_inside(mp3: bytes, frames: int) -> bytes:
    """Wrap MP3 frames in a RIFF WAV whose `fmt ` chunk declares MPEG Layer III (tag 0x55)."""
    fmt = struct.pack("<HHIIHH", 0x55, 1, RATE, 4000, 1, 0)
    # MPEGLAYER3WAVEFORMAT's extra fields: id, flags, block size, frames per block, codec delay.
    fmt += struct.pack("<HHIHHH", 12, 1, 2, 0, 1, 0)
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt
    chunks += b"fact" + struct.pack("<II", 4, frames)
    chunks += b"data" + struct.pack("<I", len(mp3)) + mp3 + b"\0" * (len(mp3) % 2)
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


def wav_with_format_tag(tag: int) -> bytes:
    fmt = struct.pack("<HHIIHH", tag, 1, RATE, 2 * RATE, 2, 16)
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", 64) + bytes(64)
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


LOSSLESS = [
    ("WAV", "PCM_U8", 1 / 64),
    ("WAV", "PCM_16", 1e-4),
    ("WAV", "PCM_24", 1e-6),
    ("WAV", "PCM_32", 1e-8),
    ("WAV", "FLOAT", 0.0),
    ("WAV", "DOUBLE", 0.0),
    ("WAVEX", "PCM_16", 1e-4),
    ("WAVEX", "FLOAT", 0.0),
    ("FLAC", "PCM_16", 1e-4),
    ("FLAC", "PCM_24", 1e-6),
]


@pytest.mark.parametrize(("format", "subtype", "tolerance"), LOSSLESS, ids=[f"{f}-{s}" for f, s, _ in LOSSLESS])
def test_decode_lossless(format: str, subtype: str, tolerance: float) -> None:
    samples = tone(RATE)
    decoded = decode(encode(samples, RATE, format, subtype))
    assert decoded.dtype == np.float32
    assert decoded.shape == samples.shape
    assert np.abs(decoded - samples).max() <= tolerance


LOSSY = [("OGG", "VORBIS"), ("OGG", "OPUS"), ("MP3", "MPEG_LAYER_III")]


@pytest.mark.parametrize(("format", "subtype"), LOSSY, ids=[f"{f}-{s}" for f, s in LOSSY])
def test_decode_lossy(format: str, subtype: str) -> None:
    samples = tone(RATE)
    decoded = decode(encode(samples, RATE, format, subtype))
    assert decoded.dtype == np.float32
    assert decoded.shape == samples.shape
    assert peak_hz(decoded) == pytest.approx(440.0, abs=1.0)
    assert rms(decoded) == pytest.approx(rms(samples), rel=0.05)


def test_decode_mp3_inside_wav() -> None:
    samples = tone(RATE)
    mp3 = encode(samples, RATE, "MP3", "MPEG_LAYER_III")
    decoded = decode(wav_with_mp3_inside(mp3, len(samples)))
    assert len(decoded) == pytest.approx(len(samples), rel=0.1)
    assert peak_hz(decoded) == pytest.approx(440.0, abs=2.0)
    assert rms(decoded) == pytest.approx(rms(samples), rel=0.1)


def test_decode_stereo_averaged() -> None:
    left, right = tone(RATE, hz=440.0, amplitude=0.4), tone(RATE, hz=1000.0, amplitude=0.2)
    decoded = decode(encode(np.stack([left, right], axis=1), RATE, "WAV", "FLOAT"))
    assert decoded.ndim == 1
    assert np.abs(decoded - (left + right) / 2).max() <= 1e-7


def test_decode_six_channels_averaged() -> None:
    channels = [tone(RATE, hz=200.0 * (k + 1), amplitude=0.1 * (k + 1)) for k in range(6)]
    decoded = decode(encode(np.stack(channels, axis=1), RATE, "WAVEX", "FLOAT"))
    assert decoded.ndim == 1
    assert np.abs(decoded - np.mean(channels, axis=0)).max() <= 1e-6


@pytest.mark.parametrize("source_rate", [8_000, 22_050, 44_100, 48_000, 96_000])
def test_decode_resamples(source_rate: int) -> None:
    decoded = decode(encode(tone(source_rate), source_rate, "WAV", "FLOAT"))
    expected = tone(RATE)
    assert decoded.shape == expected.shape
    # Away from the ends, where the resampling filter reads zero padding, the
    # resampled sine matches one generated at 16 kHz (measured: <= 2.5e-4).
    assert np.abs(decoded[200:-200] - expected[200:-200]).max() <= 1e-3
    assert peak_hz(decoded) == pytest.approx(440.0, abs=1.0)


def test_decode_too_long() -> None:
    with pytest.raises(PayloadTooLarge) as caught:
        decode(encode(tone(RATE, seconds=2.0), RATE, "WAV", "PCM_16"), max_seconds=1.5)
    assert caught.value.status == 413
    assert caught.value.field == "audio"
    assert caught.value.value == pytest.approx(2.0)
    assert caught.value.limit == 1.5
    assert "2.00 s" in caught.value.detail
    assert "1.5 s" in caught.value.detail


def test_decode_too_long_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("samples were decoded before the duration check")

    monkeypatch.setattr(sf.SoundFile, "blocks", fail_decoding)
    monkeypatch.setattr(sf.SoundFile, "read", fail_decoding)
    with pytest.raises(PayloadTooLarge):
        decode(encode(tone(RATE, seconds=2.0), RATE, "FLAC", "PCM_16"), max_seconds=1.0)


def test_decode_field_name_in_error() -> None:
    with pytest.raises(PayloadTooLarge) as caught:
        clip = encode(tone(RATE, 2.0), RATE, "WAV", "PCM_16")
        decode_audio(clip, target_rate=RATE, max_seconds=1.0, field="clip")
    assert caught.value.field == "clip"
    assert caught.value.detail.startswith("clip ")


def test_decode_empty() -> None:
    with pytest.raises(InvalidInput) as caught:
        decode(b"")
    assert caught.value.status == 422
    assert "0 bytes" in caught.value.detail


def test_decode_header_only() -> None:
    header = encode(np.zeros(0, dtype=np.float32), RATE, "WAV", "PCM_16")
    assert len(header) == 44
    with pytest.raises(InvalidInput) as caught:
        decode(header)
    assert "no samples" in caught.value.detail


def test_decode_nan_index() -> None:
    samples = tone(RATE)
    samples[1234] = np.nan
    with pytest.raises(InvalidInput) as caught:
        decode(encode(samples, RATE, "WAV", "FLOAT"))
    assert caught.value.value == 1234
    assert "index 1234" in caught.value.detail
    assert "nan" in caught.value.detail


def test_decode_inf_index_in_second_channel() -> None:
    samples = np.stack([tone(RATE), tone(RATE)], axis=1)
    samples[5, 1] = np.inf
    samples[900, 0] = -np.inf
    with pytest.raises(InvalidInput) as caught:
        decode(encode(samples, RATE, "WAV", "FLOAT"))
    assert caught.value.value == 5
    assert "index 5" in caught.value.detail
    assert "inf" in caught.value.detail


def test_decode_svg_rejected() -> None:
    svg = b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"/>'
    with pytest.raises(UnsupportedMedia) as caught:
        decode(svg)
    assert caught.value.status == 415
    assert "SVG/XML document" in caught.value.detail
    assert "WAV, FLAC" in caught.value.detail


def test_decode_png_rejected() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buffer, format="PNG")
    with pytest.raises(UnsupportedMedia) as caught:
        decode(buffer.getvalue())
    assert "a PNG image" in caught.value.detail
    assert caught.value.value == "a PNG image"


def test_decode_unknown_bytes_rejected() -> None:
    with pytest.raises(UnsupportedMedia) as caught:
        decode(b"hello, this is not audio")
    assert "unknown data starting with 0x68656c6c6f2c2074" in caught.value.detail


def test_decode_unknown_wav_codec_rejected() -> None:
    with pytest.raises(UnsupportedMedia) as caught:
        decode(wav_with_format_tag(0x0161))
    assert "format tag 0x0161" in caught.value.detail


def test_decode_aiff_without_sound_chunk() -> None:
    # libsndfile seeks before the start of this file, which must not leak an exception.
    aiff = encode(tone(RATE), RATE, "AIFF", "PCM_16").replace(b"SSND", b"XSND", 1)
    with pytest.raises(UnsupportedMedia) as caught:
        decode(aiff)
    assert caught.value.status == 415
    assert "an AIFF file" in caught.value.detail


def test_decode_sample_rate_above_limit() -> None:
    rate = MAX_SAMPLE_RATE + 16_000
    with pytest.raises(InvalidInput) as caught:
        decode(encode(tone(rate, 0.1), rate, "WAV", "PCM_16"))
    assert caught.value.value == rate
    assert caught.value.limit == MAX_SAMPLE_RATE


def test_decode_odd_rate_rejected() -> None:
    with pytest.raises(InvalidInput) as caught:
        decode(encode(tone(16_001, 0.1), 16_001, "WAV", "PCM_16"))
    assert "16001 Hz" in caught.value.detail
