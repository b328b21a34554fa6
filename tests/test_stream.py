"""Live extraction (app.core.stream): the same features as the offline path, whatever the pieces."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from app.core.audio import decode
from app.core.contract import FeatureConfig
from app.core.errors import CorruptAudioError, UnsupportedAudioError
from app.core.features import FeatureExtractor, level_gain_db, level_gain_from_blocks
from app.core.stream import LiveExtractor, RunningGain, StreamFormat
from app.core.types import FloatArray
from model_export.testing import synth_music


@pytest.fixture(scope="module")
def plain16k() -> FeatureExtractor:
    return FeatureExtractor(FeatureConfig(sample_rate=16_000, level_policy="none"))


def _stream(fx: FeatureExtractor, fmt: StreamFormat, data: bytes, seed: int = 0) -> FloatArray:
    rows: dict[int, FloatArray] = {}
    live = LiveExtractor(fx, fmt, lambda i, v: rows.__setitem__(i, v))
    rng = np.random.default_rng(seed)
    i = 0
    while i < len(data):
        n = int(rng.integers(1, 40_000))  # pieces of any size, also mid-sample
        live.push(data[i : i + n])
        i += n
    live.finish()
    assert sorted(rows) == list(range(len(rows)))
    if not rows:
        return np.zeros((0, fx.num_features), dtype=np.float32)
    return np.stack([rows[k] for k in range(len(rows))])


@pytest.mark.parametrize("seconds", [12.0, 7.3])
def test_a_stream_in_random_pieces_equals_one_offline_pass_bit_for_bit(
    plain16k: FeatureExtractor, seconds: float
) -> None:
    x = synth_music(seconds, 16_000, seed=3)
    want = plain16k.extract(x).values
    got = _stream(plain16k, StreamFormat(16_000, 1, "f32le"), x.astype("<f4").tobytes())
    assert got.shape == want.shape == (int(seconds / 0.5), plain16k.num_features)
    np.testing.assert_array_equal(got, want)


def test_s16le_stereo_at_another_rate_equals_the_offline_decode_of_the_same_pcm(
    plain16k: FeatureExtractor,
) -> None:
    rate = 44_100
    x = synth_music(6.0, rate, seed=4)
    stereo = np.stack([x, 0.5 * x[::-1]], axis=1)
    pcm = (np.clip(stereo, -1, 32767 / 32768) * 32768).astype("<i2")
    buf = io.BytesIO()
    sf.write(buf, pcm, rate, format="WAV", subtype="PCM_16")
    offline = plain16k.extract(decode(buf.getvalue(), 16_000)).values
    got = _stream(plain16k, StreamFormat(rate, 2, "s16le"), pcm.tobytes())
    assert got.shape == offline.shape == (12, plain16k.num_features)
    # soxr's streaming resampler gives the same samples over other block boundaries than the decoder's.
    np.testing.assert_array_equal(got, offline)


def test_frames_follow_the_frame_policy_at_the_end(plain16k: FeatureExtractor) -> None:
    fmt = StreamFormat(16_000, 1, "f32le")
    x = synth_music(2.0, 16_000, seed=5)
    assert _stream(plain16k, fmt, x[:19_200].tobytes()).shape[0] == 2  # 1.2 s: 2 frames
    assert _stream(plain16k, fmt, x[:7_200].tobytes()).shape[0] == 0  # 0.45 s: none


def test_non_finite_float_samples_are_refused(plain16k: FeatureExtractor) -> None:
    live = LiveExtractor(plain16k, StreamFormat(16_000, 1, "f32le"), lambda i, v: None)
    try:
        with pytest.raises(CorruptAudioError):
            live.push(np.array([0.0, np.nan], dtype="<f4").tobytes())
    finally:
        live.close()
    live.close()  # idempotent


@pytest.mark.parametrize(
    ("header", "match"),
    [
        ({"sample_rate": 4000, "channels": 1, "format": "s16le"}, "sample_rate"),
        ({"sample_rate": 16000, "channels": 0, "format": "s16le"}, "channels"),
        ({"sample_rate": 16000, "channels": 1, "format": "mp3"}, "format"),
        ({"sample_rate": "16000", "format": "s16le"}, "sample_rate"),
        ({"sample_rate": True, "format": "s16le"}, "sample_rate"),
        ([], "JSON object"),
    ],
)
def test_bad_stream_headers_are_refused(header: object, match: str) -> None:
    with pytest.raises(UnsupportedAudioError, match=match):
        StreamFormat.parse(header)


def test_a_stream_header_defaults_to_mono() -> None:
    assert StreamFormat.parse({"sample_rate": 22050, "format": "f32le"}) == StreamFormat(22050, 1, "f32le")


def test_the_running_gain_uses_only_the_blocks_before_and_converges_to_the_offline_gain() -> None:
    cfg = FeatureConfig(sample_rate=16_000)
    x = synth_music(40.0, 16_000, seed=6) * 0.05  # quiet: the policy lifts it
    gain = RunningGain(cfg)
    out, used = gain.scale(x[:3000])
    assert used == 0
    assert out.size == 0
    parts = [gain.scale(x[:50_000])[0], gain.scale(x[50_000:])[0]]
    scaled = np.concatenate(parts)
    assert scaled.size == x.size
    block = gain.block
    powers = np.array(
        [np.mean(np.square(x[i * block : (i + 1) * block], dtype=np.float64)) for i in range(20)]
    )
    peaks = [float(np.max(np.abs(x[: (i + 1) * block]))) for i in range(20)]
    for b in range(1, 20):  # block b: the gain of blocks 0 .. b-1
        want = level_gain_from_blocks(powers[:b], peaks[b - 1], cfg)
        assert gain.gains_db[b] == pytest.approx(want, abs=1e-6)
        np.testing.assert_allclose(
            scaled[b * block : (b + 1) * block], x[b * block : (b + 1) * block] * 10 ** (want / 20), rtol=1e-5
        )
    assert gain.gains_db[0] == pytest.approx(level_gain_from_blocks(powers[:1], peaks[0], cfg), abs=1e-6)
    assert gain.gains_db[-1] == pytest.approx(level_gain_db(x, cfg), abs=0.5)


def test_with_level_policy_none_the_running_gain_is_one() -> None:
    gain = RunningGain(FeatureConfig(sample_rate=16_000, level_policy="none"))
    x = np.ones(10, dtype=np.float32)
    out, used = gain.scale(x)
    assert used == 10
    assert out is x
