from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from app.core.contract import METADATA_PREFIX, FeatureConfig, ModelContract
from app.core.errors import ContractError

F = 6373


def make_contract(**changes: object) -> ModelContract:
    rng = np.random.default_rng(0)
    base = ModelContract(
        features=FeatureConfig(sample_rate=16_000),
        num_features=F,
        feature_names_sha256="ab" * 32,
        opensmile_version="2.6.0",
        # Values with no short decimal form, tiny and huge: the round trip must keep every bit.
        norm_mean=(rng.standard_normal(F) * 1e6 / 3).astype(np.float32),
        norm_std=(rng.random(F) + 1e-30).astype(np.float32),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_round_trip_is_lossless() -> None:
    c = make_contract()
    c.validate()
    meta = c.to_metadata()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    assert all(k.startswith(METADATA_PREFIX) for k in meta)
    back = ModelContract.from_metadata(meta)
    assert back == c
    assert back.norm_mean.tobytes() == c.norm_mean.tobytes()
    assert back.norm_std.tobytes() == c.norm_std.tobytes()
    assert back.features == c.features
    assert back.features.key() == c.features.key()


def test_round_trip_through_an_onnx_file(tmp_path: Path) -> None:
    c = make_contract()
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None, F])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None, F])
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y]))
    for key, value in {**c.to_metadata(), "other.key": "ignored"}.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert ModelContract.from_metadata(session.get_modelmeta().custom_metadata_map) == c


def test_arrays_are_read_only_copies() -> None:
    mean = np.zeros(F, dtype=np.float32)
    c = make_contract(norm_mean=mean)
    mean[0] = 5.0
    assert c.norm_mean[0] == 0.0
    with pytest.raises(ValueError, match="read-only"):
        c.norm_mean[0] = 1.0


def test_equality_sees_array_changes() -> None:
    a = make_contract()
    std = a.norm_std.copy()
    std[17] *= 2
    assert make_contract() == a
    assert replace(a, norm_std=std) != a


def _tamper(key: str, value: str | None) -> dict[str, str]:
    meta = make_contract().to_metadata()
    if value is None:
        del meta[METADATA_PREFIX + key]
    else:
        meta[METADATA_PREFIX + key] = value
    return meta


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("norm_std", None, "lacks contract keys: mer.norm_std"),
        ("features", None, "mer.features"),
        ("num_features", "6000", "num_features"),
        ("num_features", '"6373"', "integer"),
        ("num_features", "true", "integer"),
        ("feature_names_sha256", '"xyz"', "SHA-256"),
        ("opensmile_version", '""', "opensmile_version"),
        ("outputs", '["arousal", "arousal"]', "unique"),
        ("output_range", "[1.0, -1.0]", "output_range"),
        ("contract_version", "99", "contract_version"),
        ("feature_transform", '"log"', "feature_transform"),
        ("clip_z", "0", "clip_z"),
        ("clip_z", "NaN", "clip_z"),
        ("features", "{not json", "malformed"),
        ("norm_mean", "float32le:!!!!", "malformed"),
        ("norm_mean", "float64:AAAA", "float32le"),
    ],
)
def test_tampered_metadata_is_refused(key: str, value: str | None, match: str) -> None:
    with pytest.raises(ContractError, match=match):
        ModelContract.from_metadata(_tamper(key, value))


def test_tampered_array_length_is_refused() -> None:
    short = make_contract(norm_mean=np.zeros(F - 1, dtype=np.float32)).to_metadata()[
        METADATA_PREFIX + "norm_mean"
    ]
    with pytest.raises(ContractError, match="norm_mean has shape"):
        ModelContract.from_metadata(_tamper("norm_mean", short))


@pytest.mark.parametrize("bad", [0.0, -1.0, np.nan, np.inf])
def test_bad_std_is_refused(bad: float) -> None:
    std = np.ones(F, dtype=np.float32)
    std[3] = bad
    with pytest.raises(ContractError, match="norm_std"):
        make_contract(norm_std=std).validate()


@pytest.mark.parametrize(
    ("features", "match"),
    [
        ({"sample_rate": 4000}, "sample_rate"),
        ({"sample_rate": 16000.5}, "integer"),
        ({"hop_s": 0.25}, "overlap"),
        ({"window_s": 0.25, "hop_s": 0.25}, "window_s"),
        ({"frame_policy": "centered"}, "frame_policy"),
        ({"feature_set": "eGeMAPSv02"}, "not supported"),
        ({"sample_rate": 11025}, "whole number of samples"),
    ],
)
def test_tampered_feature_config_is_refused(features: dict[str, object], match: str) -> None:
    meta = make_contract().to_metadata()
    cfg = json.loads(meta[METADATA_PREFIX + "features"])
    cfg.update(features)
    meta[METADATA_PREFIX + "features"] = json.dumps(cfg)
    with pytest.raises(ContractError, match=match):
        ModelContract.from_metadata(meta)


def test_every_problem_is_listed_at_once() -> None:
    c = make_contract(num_features=5, opensmile_version="", outputs=())
    with pytest.raises(ContractError) as err:
        c.validate()
    text = str(err.value)
    for needle in ("num_features 5", "opensmile_version", "outputs"):
        assert needle in text
    assert err.value.status_code == 500


def test_a_chunked_feature_config_round_trips_and_unchunked_metadata_is_unchanged() -> None:
    chunked = make_contract(
        features=FeatureConfig(sample_rate=16_000, chunk_frames=60, chunk_preroll_frames=4)
    )
    meta = chunked.to_metadata()
    assert json.loads(meta[METADATA_PREFIX + "features"])["chunk_frames"] == 60
    assert ModelContract.from_metadata(meta) == chunked
    # One pass: the features entry has exactly the fields it had before chunking existed, so builds
    # that do not know chunking still read such models; they refuse chunked ones (unknown fields).
    plain = json.loads(make_contract().to_metadata()[METADATA_PREFIX + "features"])
    assert "chunk_frames" not in plain
    assert "chunk_preroll_frames" not in plain


def test_feature_key_changes_with_every_field() -> None:
    base = FeatureConfig()
    keys = {
        base.key(),
        replace(base, sample_rate=44_100).key(),
        replace(base, feature_set="x").key(),
        replace(base, frame_policy="y").key(),
    }
    assert len(keys) == 4


def test_normalise_compresses_standardises_and_clips() -> None:
    c = make_contract(norm_mean=np.zeros(F, np.float32), norm_std=np.full(F, 0.5, np.float32), clip_z=4.0)
    x = np.zeros((2, F), np.float32)
    x[0, 0], x[0, 1], x[0, 2] = 1e12, -(np.e - 1), 0.5
    z = c.normalise(x)
    assert z.dtype == np.float32
    assert z[0, 0] == 4.0  # log1p(1e12) / 0.5 = 55 -> clipped
    np.testing.assert_allclose(z[0, 1], -2.0, rtol=1e-6)
    np.testing.assert_allclose(z[0, 2], np.log1p(0.5) / 0.5, rtol=1e-6)
    plain = make_contract(norm_mean=np.ones(F, np.float32), norm_std=np.ones(F, np.float32))
    plain = replace(plain, feature_transform="none", clip_z=1e30)
    np.testing.assert_allclose(plain.normalise(np.full((1, F), 3.0, np.float32)), 2.0)
