from __future__ import annotations

import contextlib
import itertools
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import pytest

from app.core.contract import FeatureConfig, ModelContract, transform_features
from app.core.errors import AudioTooShortError, ContractError, CorruptAudioError
from app.core.features import (
    Chunk,
    FeatureExtractor,
    SequentialRunner,
    chunk_layout,
    gated_level_dbfs,
    level_gain_db,
    names_sha256,
    num_frames,
    opensmile_version,
)

SR = 16_000


@pytest.fixture(scope="module")
def raw16k() -> FeatureExtractor:
    """An extractor that passes the input level through (level_policy "none")."""
    return FeatureExtractor(FeatureConfig(sample_rate=SR, level_policy="none"))


@pytest.mark.parametrize(
    ("duration_s", "frames"),
    [(0.5, 1), (0.99, 1), (30.0, 60), (30.06, 60), (30.5, 61), (45.0, 90)],
)
def test_frame_policy_shape_and_timing(
    extractor16k: FeatureExtractor, music16k: np.ndarray, duration_s: float, frames: int
) -> None:
    x = music16k[: round(duration_s * SR)]
    feats = extractor16k.extract(x)
    assert num_frames(x.size, extractor16k.config) == frames
    assert feats.values.shape == (frames, 6373)
    assert feats.values.dtype == np.float32
    assert np.all(np.isfinite(feats.values))
    np.testing.assert_allclose(feats.starts, 0.5 * np.arange(frames))
    np.testing.assert_allclose(feats.ends, 0.5 * np.arange(frames) + 0.5)


def test_44k_analysis_rate_gives_the_same_grid() -> None:
    from model_export.testing import synth_music

    fx = FeatureExtractor(FeatureConfig(sample_rate=44_100))
    feats = fx.extract(synth_music(30.0, 44_100))
    assert feats.values.shape == (60, 6373)
    assert np.all(np.isfinite(feats.values))


def test_features_are_bit_identical_across_calls(
    extractor16k: FeatureExtractor, music16k: np.ndarray
) -> None:
    a = extractor16k.extract(music16k[: 10 * SR]).values
    b = extractor16k.extract(music16k[: 10 * SR].copy()).values
    assert np.array_equal(a, b)


def test_concurrent_extraction_on_one_extractor(extractor16k: FeatureExtractor, music16k: np.ndarray) -> None:
    clips = [music16k[i * SR : (i + 6) * SR] for i in range(4)]
    alone = [extractor16k.extract(c).values for c in clips]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda c: extractor16k.extract(c).values, clips))
    for a, b in zip(alone, together, strict=True):
        assert np.array_equal(a, b)


def test_a_prefix_gives_the_first_frames_exactly(raw16k: FeatureExtractor, music16k: np.ndarray) -> None:
    # Without level normalisation (whose one gain depends on the whole clip) features are local:
    whole = raw16k.extract(music16k).values
    # with the look-ahead present, a prefix reproduces the whole clip's frames bit for bit ...
    prefix = raw16k.extract(music16k[: int(20.1 * SR)]).values
    assert prefix.shape[0] == 40
    assert np.array_equal(prefix, whole[:40])
    # ... and without it only the last frame (zeros as look-ahead) may differ.
    cut = raw16k.extract(music16k[: 20 * SR]).values
    assert np.array_equal(cut[:39], whole[:39])


def test_full_scale_does_not_wrap_around(raw16k: FeatureExtractor, music16k: np.ndarray) -> None:
    x = music16k[: 2 * SR] * 20  # heavily clipped: many samples at exactly +-1.0
    x = np.clip(x, -1.0, 1.0)
    assert np.sum(x == 1.0) > 100
    a = raw16k.extract(x).values
    b = raw16k.extract(np.clip(x, -1.0, 32767 / 32768)).values
    assert np.array_equal(a, b)


def _at_level(x: np.ndarray, dbfs: float) -> np.ndarray:
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    return (x * (10 ** (dbfs / 20) / rms)).astype(np.float32)


def test_gated_level_of_a_sine_and_of_silence() -> None:
    t = np.arange(4 * SR) / SR
    sine = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    assert gated_level_dbfs(sine, SR) == pytest.approx(20 * np.log10(0.5 / np.sqrt(2)), abs=0.01)
    # Silent stretches are gated out: a sine with 3 s of silence after it has the sine's level.
    padded = np.concatenate([sine, np.zeros(3 * SR, dtype=np.float32)])
    assert gated_level_dbfs(padded, SR) == pytest.approx(gated_level_dbfs(sine, SR), abs=0.01)
    assert gated_level_dbfs(np.zeros(SR, dtype=np.float32), SR) is None
    assert gated_level_dbfs(np.full(SR, 1e-4, dtype=np.float32), SR) is None  # -80 dBFS


def test_level_gain_reaches_the_target_and_respects_the_peak(music16k: np.ndarray) -> None:
    cfg = FeatureConfig(sample_rate=SR, target_level_dbfs=-23.0)
    x = _at_level(music16k, -35.0)
    gain = level_gain_db(x, cfg)
    level = gated_level_dbfs(x * np.float32(10 ** (gain / 20)), SR)
    assert level == pytest.approx(-23.0, abs=0.05)
    # A signal with a 40 dB crest factor is limited by its peak, not by the target.
    spiky = x.copy()
    spiky[1000] = 0.9
    gain = level_gain_db(spiky, cfg)
    assert 20 * np.log10(0.9) + gain == pytest.approx(-0.1, abs=1e-6)
    assert level_gain_db(np.zeros(SR, dtype=np.float32), cfg) == 0.0
    assert level_gain_db(x, replace(cfg, level_policy="none")) == 0.0


def test_features_do_not_depend_on_the_input_level(
    extractor16k: FeatureExtractor, raw16k: FeatureExtractor, music16k: np.ndarray
) -> None:
    def z_change(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        # Differences in units of each feature's spread, after the contract's compression.
        ta, tb = (transform_features(v, "signed_log1p") for v in (a, b))
        return np.asarray(np.abs(ta - tb) / (tb.std(axis=0) + 1e-6))

    x = music16k[: 10 * SR]
    ref = extractor16k.extract(_at_level(x, -20.0))
    for dbfs in (-40.0, -30.0, -10.0):
        got = extractor16k.extract(_at_level(x, dbfs))
        assert got.gain_db == pytest.approx(ref.gain_db - (dbfs + 20.0), abs=1e-3)
        # openSMILE quantises to 16 bits, so a few threshold-like functionals may flip; the rest match.
        z = z_change(got.values, ref.values)
        assert z.mean() < 1e-3
        assert np.mean(z > 0.05) < 1e-3
    # Without the level policy the same 20 dB change moves many features by more than their spread.
    z = z_change(raw16k.extract(_at_level(x, -30.0)).values, raw16k.extract(_at_level(x, -10.0)).values)
    assert np.mean(z > 0.05) > 0.1


@pytest.mark.parametrize("n", [0, 1, SR // 2 - 1])
def test_shorter_than_one_frame_is_an_error(extractor16k: FeatureExtractor, n: int) -> None:
    with pytest.raises(AudioTooShortError):
        extractor16k.extract(np.zeros(n, dtype=np.float32))


def test_non_finite_samples_are_an_error(extractor16k: FeatureExtractor, music16k: np.ndarray) -> None:
    x = music16k[:SR].copy()
    x[10] = np.inf
    with pytest.raises(CorruptAudioError):
        extractor16k.extract(x)


@pytest.mark.parametrize("level", [0.0, 1e-6])
def test_silence_gives_finite_features(extractor16k: FeatureExtractor, level: float) -> None:
    rng = np.random.default_rng(0)
    x = (level * rng.standard_normal(2 * SR)).astype(np.float32)
    feats = extractor16k.extract(x).values
    assert feats.shape == (4, 6373)
    assert np.all(np.isfinite(feats))


def test_rejects_multichannel_input(extractor16k: FeatureExtractor) -> None:
    with pytest.raises(ValueError, match="1-D"):
        extractor16k.extract(np.zeros((2, SR), dtype=np.float32))


def test_feature_names_and_hash(extractor16k: FeatureExtractor) -> None:
    assert extractor16k.num_features == 6373
    assert extractor16k.feature_names_sha256 == names_sha256(extractor16k.feature_names)
    assert len(set(extractor16k.feature_names)) == 6373


def test_unsupported_config_is_refused() -> None:
    with pytest.raises(ContractError, match="window_s"):
        FeatureExtractor(FeatureConfig(window_s=1.0, hop_s=1.0))
    with pytest.raises(ContractError, match="overlap"):
        FeatureExtractor(FeatureConfig(hop_s=0.25))
    with pytest.raises(ContractError, match="level_policy"):
        FeatureExtractor(FeatureConfig(level_policy="peak"))
    with pytest.raises(ContractError, match="target_level_dbfs"):
        FeatureExtractor(FeatureConfig(target_level_dbfs=0.0))


def _contract(fx: FeatureExtractor) -> ModelContract:
    return ModelContract(
        features=fx.config,
        num_features=fx.num_features,
        feature_names_sha256=fx.feature_names_sha256,
        opensmile_version=opensmile_version(),
        norm_mean=np.zeros(fx.num_features, dtype=np.float32),
        norm_std=np.ones(fx.num_features, dtype=np.float32),
    )


def test_check_contract_accepts_its_own(extractor16k: FeatureExtractor) -> None:
    extractor16k.check_contract(_contract(extractor16k))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"features": FeatureConfig(sample_rate=44_100)}, "features"),
        ({"features": FeatureConfig(level_policy="none")}, "features"),
        ({"feature_names_sha256": "0" * 64}, "names"),
        ({"opensmile_version": "1.0.0"}, "opensmile"),
    ],
)
def test_check_contract_refuses_what_it_cannot_honour(
    extractor16k: FeatureExtractor, change: dict[str, object], match: str
) -> None:
    with pytest.raises(ContractError, match=match):
        extractor16k.check_contract(replace(_contract(extractor16k), **change))  # type: ignore[arg-type]


# --- chunked extraction ---------------------------------------------------------------------------------


@pytest.mark.parametrize("frames", [1, 59, 60, 61, 119, 120, 121, 361, 1200, 7201])
def test_chunk_layout_covers_the_clip_in_nearly_equal_chunks(frames: int) -> None:
    cfg = FeatureConfig(chunk_frames=60, chunk_preroll_frames=4)
    chunks = chunk_layout(frames, cfg)
    assert len(chunks) == math.ceil(frames / 60)
    assert chunks[0].first == 0
    assert chunks[0].preroll == 0
    assert sum(c.count for c in chunks) == frames
    assert all(b.first == a.first + a.count for a, b in itertools.pairwise(chunks))
    counts = [c.count for c in chunks]
    assert max(counts) <= 60
    assert max(counts) - min(counts) <= 1
    assert all(c.preroll == min(4, c.first) for c in chunks)
    assert [c.postroll for c in chunks] == [1] * (len(chunks) - 1) + [0]


def test_unchunked_configs_are_one_pass_and_keep_their_key() -> None:
    assert chunk_layout(7200, FeatureConfig()) == [Chunk(0, 7200, 0, 0)]
    assert chunk_layout(0, FeatureConfig(chunk_frames=60)) == []
    # Off by default: the dict (cache keys, model metadata) is the one from before chunking existed.
    assert "chunk_frames" not in FeatureConfig().as_dict()
    chunked = FeatureConfig(chunk_frames=60, chunk_preroll_frames=4)
    assert chunked.as_dict()["chunk_frames"] == 60
    assert len({FeatureConfig().key(), chunked.key(), replace(chunked, chunk_preroll_frames=2).key()}) == 3


@pytest.mark.parametrize(
    ("chunk", "preroll", "message"),
    [(5, 0, "must be 0 .off. or >= 10"), (-1, 0, ">= 0"), (60, 61, "must not exceed"), (True, 0, "integers")],
)
def test_bad_chunk_settings_are_refused(chunk: int, preroll: int, message: str) -> None:
    with pytest.raises(ContractError, match=message):
        FeatureExtractor(FeatureConfig(chunk_frames=chunk, chunk_preroll_frames=preroll))


@pytest.fixture(scope="module")
def chunked16k() -> FeatureExtractor:
    return FeatureExtractor(FeatureConfig(sample_rate=SR, chunk_frames=20, chunk_preroll_frames=4))


def test_chunked_features_do_not_depend_on_the_number_of_threads(
    chunked16k: FeatureExtractor, music16k: np.ndarray
) -> None:
    from app.serving.pool import PoolChunkRunner

    reference = chunked16k.extract(music16k).values  # 90 frames: 5 chunks, one after another
    assert len(chunk_layout(reference.shape[0], chunked16k.config)) == 5
    assert np.array_equal(chunked16k.extract(music16k, runner=SequentialRunner()).values, reference)
    for workers in (1, 2, 4):
        with ThreadPoolExecutor(workers) as pool:
            runner = PoolChunkRunner(pool, workers - 1, contextlib.nullcontext)
            assert np.array_equal(chunked16k.extract(music16k, runner=runner).values, reference)


def test_chunks_give_one_pass_features_up_to_the_documented_deviation(
    extractor16k: FeatureExtractor, chunked16k: FeatureExtractor, music16k: np.ndarray
) -> None:
    whole = extractor16k.extract(music16k)
    cut = chunked16k.extract(music16k)
    assert cut.gain_db == whole.gain_db  # one gain for the whole clip, before the cut
    # The first chunk never sees a cut: bit-identical (its post-roll gives it the whole look-ahead).
    first = chunk_layout(whole.num_frames, chunked16k.config)[0].count
    assert first == 18
    assert np.array_equal(cut.values[:first], whole.values[:first])
    assert not np.array_equal(cut.values[first:], whole.values[first:])
    # Standardised by the statistics of the clip itself (the shipped model's are tested in
    # test_default_model): most features agree to float noise; a few voicing/pitch descriptors with
    # memory beyond the pre-roll differ (docs/performance.md, "Chunked extraction").
    ref = transform_features(whole.values.astype(np.float64), "signed_log1p")
    got = transform_features(cut.values.astype(np.float64), "signed_log1p")
    scale = ref.std(axis=0) + 1e-3 * (np.abs(ref).mean(axis=0) + 1e-12)
    dz = np.abs(got - ref) / scale
    assert np.median(dz) < 1e-4
    assert np.mean(dz > 0.1) < 0.01
