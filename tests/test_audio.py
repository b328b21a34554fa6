from __future__ import annotations

import io
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from app.core.audio import decode, probe
from app.core.errors import (
    AudioTooLargeError,
    AudioTooLongError,
    AudioTooShortError,
    CorruptAudioError,
    EmptyAudioError,
    InvalidRequestError,
    UnsupportedAudioError,
)
from model_export.testing import encode, synth_music

SR = 16_000

FORMATS = [
    ("WAV", "PCM_16"),
    ("WAV", "PCM_24"),
    ("WAV", "PCM_32"),
    ("WAV", "FLOAT"),
    ("WAV", "DOUBLE"),
    ("WAV", "PCM_U8"),
    ("FLAC", "PCM_16"),
    ("FLAC", "PCM_24"),
    ("OGG", "VORBIS"),
    ("MP3", "MPEG_LAYER_III"),
]


@pytest.fixture(scope="module")
def clip44() -> np.ndarray:
    return synth_music(3.0, 44_100, seed=3)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    n = min(a.size, b.size)
    return float(np.corrcoef(a[:n], b[:n])[0, 1])


@pytest.mark.parametrize(("fmt", "subtype"), FORMATS)
def test_every_format_decodes_back(clip44: np.ndarray, fmt: str, subtype: str) -> None:
    data = encode(clip44, 44_100, fmt, subtype)
    y = decode(data, SR)
    ref = decode(encode(clip44, 44_100, "WAV", "FLOAT"), SR)
    assert y.dtype == np.float32
    assert y.ndim == 1
    assert np.all(np.abs(y) <= 1.0)
    # Lossy codecs add delay/padding; lossless ones must match closely.
    assert abs(y.size - ref.size) <= 0.1 * SR
    lossy = fmt in ("OGG", "MP3")
    if lossy:
        lags = range(-3000, 3001, 1)
        best = max(
            _corr(y[max(0, k) :], ref[max(0, -k) :]) for k in lags[::25]
        )  # coarse search for the codec delay
        assert best > 0.5
    else:
        tol = 0.02 if subtype == "PCM_U8" else 1e-3
        np.testing.assert_allclose(y[: ref.size], ref[: y.size], atol=tol)


def test_decode_from_path_and_stream(tmp_path: Path, clip44: np.ndarray) -> None:
    data = encode(clip44, 44_100, "FLAC", "PCM_16")
    path = tmp_path / "clip.flac"
    path.write_bytes(data)
    a = decode(data, SR)
    b = decode(path, SR)
    c = decode(io.BytesIO(data), SR)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    info = probe(path)
    assert (info.sample_rate, info.channels, info.frames, info.format) == (44_100, 1, clip44.size, "FLAC")


@pytest.mark.parametrize("channels", [2, 8])
def test_multichannel_is_averaged(clip44: np.ndarray, channels: int) -> None:
    gains = np.linspace(0.2, 1.0, channels)
    multi = np.stack([clip44 * g for g in gains], axis=1)
    y = decode(encode(multi, 44_100, "WAV", "FLOAT"), 44_100)
    np.testing.assert_allclose(y, clip44 * gains.mean(), atol=1e-6)


def test_stereo_opposite_phase_cancels() -> None:
    x = synth_music(1.0, SR)
    y = decode(encode(np.stack([x, -x], axis=1), SR, "WAV", "FLOAT"), SR)
    assert np.abs(y).max() < 1e-6


@pytest.mark.parametrize("rate", [8_000, 96_000, 192_000])
def test_resampled_to_analysis_rate(rate: int) -> None:
    t = np.arange(2 * rate) / rate
    tone = (0.5 * np.sin(2 * np.pi * 1000.0 * t)).astype(np.float32)
    y = decode(encode(tone, rate, "WAV", "FLOAT"), SR)
    assert y.size == 2 * SR
    spectrum = np.abs(np.fft.rfft(y[SR // 2 : SR // 2 + SR]))
    assert np.argmax(spectrum) == 1000  # 1 Hz bins over one second
    assert abs(np.abs(y[100:-100]).max() - 0.5) < 0.01


def test_rate_out_of_range_is_unsupported() -> None:
    tone = np.zeros(4000, dtype=np.float32)
    with pytest.raises(UnsupportedAudioError, match="sample rate"):
        decode(encode(tone, 4_000, "WAV", "PCM_16"), SR)


def test_over_full_scale_float_is_clipped() -> None:
    x = np.full(SR, 3.0, dtype=np.float32)
    y = decode(encode(x, SR, "WAV", "FLOAT"), SR)
    assert y.max() == 1.0


@pytest.mark.parametrize(
    "data",
    [b"", b"not audio at all", np.random.default_rng(0).bytes(20_000), b"RIFF\x00\x00\x00\x00WAVEjunk"],
    ids=["empty-bytes", "text", "random", "bad-riff"],
)
def test_garbage_is_unsupported(data: bytes) -> None:
    with pytest.raises(UnsupportedAudioError) as err:
        decode(data, SR)
    assert err.value.status_code == 415


@pytest.mark.parametrize(
    ("fmt", "subtype", "frac", "expected"),
    [
        ("WAV", "PCM_16", 0.5, CorruptAudioError),
        ("WAV", "FLOAT", 0.9, CorruptAudioError),
        ("FLAC", "PCM_16", 0.5, CorruptAudioError),
        ("MP3", "MPEG_LAYER_III", 0.5, CorruptAudioError),
        # A Vorbis stream declares no total length: cut between pages it decodes to what it holds,
        # so only a cut inside its header pages is detectable.
        ("OGG", "VORBIS", 0.05, CorruptAudioError),
    ],
)
def test_truncated_file_is_refused(
    clip44: np.ndarray, fmt: str, subtype: str, frac: float, expected: type[Exception]
) -> None:
    data = encode(np.tile(clip44, 2), 44_100, fmt, subtype)
    with pytest.raises(expected) as err:
        decode(data[: int(len(data) * frac)], SR)
    assert 400 <= err.value.status_code < 500  # type: ignore[attr-defined]


def test_zero_samples_is_empty() -> None:
    with pytest.raises(EmptyAudioError):
        decode(encode(np.zeros(0, dtype=np.float32), SR, "WAV", "PCM_16"), SR)


def test_one_sample_is_too_short() -> None:
    with pytest.raises(AudioTooShortError):
        decode(encode(np.zeros(1, dtype=np.float32), SR, "WAV", "PCM_16"), SR, min_duration_s=0.5)


def test_shorter_than_one_frame_is_too_short() -> None:
    x = synth_music(0.49, SR)
    with pytest.raises(AudioTooShortError, match=r"0\.5"):
        decode(encode(x, SR, "WAV", "PCM_16"), SR, min_duration_s=0.5)
    assert decode(encode(synth_music(0.5, SR), SR), SR, min_duration_s=0.5).size == SR // 2


def test_nan_samples_are_corrupt() -> None:
    x = synth_music(1.0, SR)
    x[100] = np.nan
    with pytest.raises(CorruptAudioError, match="NaN"):
        decode(encode(x, SR, "WAV", "FLOAT"), SR)


def test_too_long_is_refused_from_the_header(tmp_path: Path) -> None:
    # A header declaring an hour of 8-channel 192 kHz audio over a short body: refused before decoding.
    path = tmp_path / "long.wav"
    with sf.SoundFile(path, "w", samplerate=8_000, channels=1, subtype="PCM_16") as f:
        f.write(np.zeros(8_000 * 20, dtype=np.float32))
    with pytest.raises(AudioTooLongError) as err:
        decode(path, SR, max_duration_s=10)
    assert err.value.status_code == 413
    assert decode(path, SR, max_duration_s=10, duration_s=5).size == 5 * SR


def test_time_range_is_decoded_without_the_rest() -> None:
    t = np.arange(10 * SR) / SR
    ramp = (t / 10.0 * 0.9).astype(np.float32)
    data = encode(ramp, SR, "WAV", "FLOAT")
    y = decode(data, SR, offset_s=4.0, duration_s=2.0)
    assert y.size == 2 * SR
    np.testing.assert_allclose(y[[0, -1]], ramp[[4 * SR, 6 * SR - 1]], atol=1e-6)
    # A range running past the end is cut at the end.
    assert decode(data, SR, offset_s=9.0, duration_s=5.0).size == SR
    with pytest.raises(InvalidRequestError, match="past the end"):
        decode(data, SR, offset_s=11.0)
    with pytest.raises(InvalidRequestError):
        decode(data, SR, offset_s=-1.0)
    # Huge finite values (an HTTP query parameter can say 1e308) are clear errors, not overflows.
    with pytest.raises(InvalidRequestError, match="past the end"):
        decode(data, SR, offset_s=1e308)
    assert decode(data, SR, offset_s=9.0, duration_s=1e308).size == SR
    for bad in (float("nan"), float("inf")):
        with pytest.raises(InvalidRequestError, match="finite"):
            decode(data, SR, offset_s=bad)
        with pytest.raises(InvalidRequestError, match="finite"):
            decode(data, SR, duration_s=bad)


def test_decoding_budget_is_checked_from_the_header_before_decoding() -> None:
    data = encode(np.zeros(192_000 * 3, np.int16), 192_000, "FLAC")  # 3 s at 192 kHz: tiny when compressed
    with pytest.raises(AudioTooLargeError, match="576000 samples to decode; the limit is 500000"):
        decode(data, SR, max_decoded_samples=500_000)
    stereo = encode(np.zeros((48_000, 2), np.int16), 48_000, "FLAC")  # frames x channels counts
    with pytest.raises(AudioTooLargeError):
        decode(stereo, SR, max_decoded_samples=95_999)
    assert decode(stereo, SR, max_decoded_samples=96_000).size == SR


def test_memory_follows_the_analysis_rate_not_the_native_rate() -> None:
    seconds = 60
    data = encode(np.zeros(192_000 * seconds, np.int16), 192_000, "FLAC")
    tracemalloc.start()
    try:
        y = decode(data, SR)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert y.size == SR * seconds
    analysis, native = y.nbytes, 192_000 * seconds * 4
    assert peak < 2 * analysis + 4_000_000, (peak, analysis, native)  # the signal + a few native blocks
    assert peak < native / 5


def test_streaming_decode_equals_resampling_the_whole_signal(clip44: np.ndarray) -> None:
    x = clip44[: 44_100 * 7]
    got = decode(encode(x, 44_100, "WAV", "FLOAT"), SR)
    expected = np.clip(soxr.resample(x, 44_100, SR, quality="HQ"), -1, 1)
    np.testing.assert_array_equal(got, expected.astype(np.float32))


def test_wav_whose_data_chunk_declares_zero_bytes_but_holds_audio_is_corrupt_not_empty() -> None:
    data = bytearray(encode(np.full(8_000, 1000, np.int16), 8_000, "WAV", "PCM_16"))
    i = data.find(b"data")
    data[i + 4 : i + 8] = struct.pack("<I", 0)
    with pytest.raises(CorruptAudioError, match="declares 0 bytes but 16000 bytes follow"):
        decode(bytes(data), SR)


def test_mp3_cut_before_its_first_frame_says_so_not_that_a_file_is_missing() -> None:
    mp3 = encode(synth_music(2.0, 44_100), 44_100, "MP3")
    with pytest.raises(UnsupportedAudioError) as info:
        decode(mp3[:400], SR)
    assert "no decodable audio stream" in info.value.message
    assert "regular file" not in info.value.message
