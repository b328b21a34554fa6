from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import model_export.evaluate as ev
from model_export.__main__ import main
from model_export.datasets.base import Clip
from model_export.train import TrainConfig, TrainResult, train

F = 10


def _data(n: int = 12) -> tuple[list[Clip], dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    clips, feats = [], {}
    for i in range(n):
        t = 15 + i
        x = rng.standard_normal((t, F)).astype(np.float32)
        y = np.tanh(np.stack([x[:, 0], x[:, 1]], axis=1)).astype(np.float32)
        clips.append(Clip(f"c{i}", Path(f"/nonexistent/c{i}.wav"), y, group=f"g{i // 2}"))
        feats[f"c{i}"] = x
    return clips, feats


CFG = TrainConfig(
    preset="LSTM_NAT_400",
    model_overrides={"hidden_sizes": (8,)},
    epochs=3,
    threads=1,
    feature_transform="none",
)


def test_cv_pools_every_clip_once_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clips, feats = _data()
    first = ev.cross_validate("m", CFG, clips, feats, k=3, state_dir=tmp_path)
    assert sorted(first.clip_ids) == sorted(c.clip_id for c in clips)
    assert first.folds_run == 3
    assert len(list(tmp_path.glob("m_*_fold*.npz"))) == 3
    assert [p.shape for p in first.predictions] == [t.shape for t in first.targets]

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished fold was trained again")

    monkeypatch.setattr(ev, "train", no_training)
    again = ev.cross_validate("m", CFG, clips, feats, k=3, state_dir=tmp_path)
    assert again.clip_ids == first.clip_ids
    for a, b in zip(again.predictions, first.predictions, strict=True):
        np.testing.assert_array_equal(a, b)
    assert again.scores() == first.scores()
    assert again.seconds == pytest.approx(first.seconds)
    # Other feature values (say, another analysis rate) under the same clip ids must not reuse folds.
    changed = {key: value * 2 for key, value in feats.items()}
    with pytest.raises(AssertionError, match="trained again"):
        ev.cross_validate("m", CFG, clips, changed, k=3, state_dir=tmp_path)


def test_partial_cv_and_report(tmp_path: Path) -> None:
    clips, feats = _data()
    at = ev.cross_validate(
        "LSTM_AT_8", TrainConfig(**{**CFG.__dict__, "preset": "LSTM_AT_400"}), clips, feats, k=3
    )
    nat = ev.cross_validate("LSTM_NAT_8", CFG, clips, feats, k=3, folds_to_run=1)
    assert nat.folds_run == 1
    assert len(nat.clip_ids) < len(clips)
    doc = ev.write_report([at, nat], tmp_path, "toy", notes="a note")
    assert [r["model"] for r in doc["rows"]] == ["LSTM_AT_8", "LSTM_NAT_8"]
    assert doc["rows"][1]["folds"] == "1/3"
    md = (tmp_path / "report.md").read_text()
    assert "| LSTM_NAT_8 |" in md
    assert "a note" in md
    assert json.loads((tmp_path / "report.json").read_text())["title"] == "toy"
    paths = ev.plot_figures(at, nat, tmp_path / "fig", clips_to_show=2)
    assert {p.name for p in paths} == {
        "curves_arousal.png",
        "errors_arousal.png",
        "curves_valence.png",
        "errors_valence.png",
    }
    assert all(p.stat().st_size > 1000 for p in paths)


def test_cli_cv_stores_folds_with_the_report_resumes_and_rebuilds_it(tmp_path: Path) -> None:
    report = tmp_path / "report"
    args = [
        "cv",
        "--dataset", "synthetic",
        "--root", str(tmp_path / "data"),
        "--cache", str(tmp_path / "cache"),
        "--option", "n_clips=9",
        "--option", "duration_s=4",
        "--presets", "LSTM_AT_400", "LSTM_NAT_400",
        "--model-option", "hidden_sizes=[8]",
        "--model-option", "attention_window=4",
        "--epochs", "2",
        "--folds", "3",
        "--threads", "1",
        "--out", str(report),
    ]  # fmt: skip
    assert main([*args, "--folds-to-run", "2"]) == 0
    partial = json.loads((report / "report.json").read_text())
    assert [r["model"] for r in partial["rows"]] == ["LSTM_AT_400", "LSTM_NAT_400"]
    assert [r["folds"] for r in partial["rows"]] == ["2/3", "2/3"]
    folds = sorted((report / "folds").glob("*.npz"))  # beside the report: committed, they travel
    assert len(folds) == 4
    with np.load(folds[0]) as saved:
        assert saved["predictions"].dtype == np.float16
        assert len(saved["clip_ids"]) == len(saved["lengths"])
    assert not (tmp_path / "cache" / "cv").exists()
    (tmp_path / "report.md").write_text((report / "report.md").read_text())

    # On another machine, without training: the report rebuilt from the stored folds is the same.
    assert main([*args, "--folds-to-run", "2", "--report-only"]) == 0
    rebuilt = json.loads((report / "report.json").read_text())
    assert rebuilt["rows"] == partial["rows"]
    assert rebuilt["paired"] == partial["paired"]
    assert (report / "report.md").read_text() == (tmp_path / "report.md").read_text()
    assert "Paired Wilcoxon" in (report / "report.md").read_text()
    assert "LSTM_AT_400 2/3" in rebuilt["notes"]
    # All three folds asked for, report only: still the two that are stored.
    assert main([*args, "--report-only"]) == 0
    assert [r["folds"] for r in json.loads((report / "report.json").read_text())["rows"]] == ["2/3", "2/3"]

    # Resumed: only the third fold of each model trains; the first two are not touched.
    stamps = {p.name: p.stat().st_mtime_ns for p in folds}
    assert main(args) == 0
    full = json.loads((report / "report.json").read_text())
    assert [r["folds"] for r in full["rows"]] == ["3/3", "3/3"]
    assert full["rows"][0]["clips"] == 9
    assert len(list((report / "folds").glob("*.npz"))) == 6
    assert {p.name: p.stat().st_mtime_ns for p in folds} == stamps
    assert (report / "curves_valence.png").exists()


def test_paired_tests_compare_per_piece_errors() -> None:
    clips, _ = _data()
    targets = [c.targets for c in clips]
    ids = [c.clip_id for c in clips]
    rng = np.random.default_rng(1)
    good = [t + 0.01 * rng.standard_normal(t.shape).astype(np.float32) for t in targets]
    bad = [t + 0.3 * rng.standard_normal(t.shape).astype(np.float32) for t in targets]

    def result(name: str, preds: list[np.ndarray]) -> ev.CVResult:
        return ev.CVResult(name, CFG, ids, preds, targets, 3, 3, 0.0, [1, 1, 1])

    test = ev.paired_tests(result("a", good), result("b", bad))
    assert test["models"] == ["a", "b"]
    assert test["pieces"] == 12
    for dim in ("arousal", "valence"):
        assert test[dim]["sq_error"]["median_diff"] < 0
        assert test[dim]["sq_error"]["p"] < 0.01  # 12 of 12 pieces better: p = 2 / 2^12
        assert test[dim]["tau"]["median_diff"] > 0
    same = ev.paired_tests(result("a", good), result("b", good))
    assert np.isnan(same["arousal"]["sq_error"]["p"])  # no differences: no test


def test_lr_choices_keep_the_rate_with_the_best_validation_loss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clips, feats = _data()
    tried: list[float] = []
    real_train = train

    def recording_train(cfg: TrainConfig, *args: Any, **kwargs: Any) -> TrainResult:
        tried.append(cfg.lr)
        return real_train(cfg, *args, **kwargs)

    monkeypatch.setattr(ev, "train", recording_train)
    cfg = TrainConfig(**{**CFG.__dict__, "lr_choices": (1e-6, 3e-3)})
    ev.cross_validate("m", cfg, clips, feats, k=3, folds_to_run=1, state_dir=tmp_path)
    assert tried == [1e-6, 3e-3]
    (fold,) = tmp_path.glob("*.npz")
    with np.load(fold) as saved:
        assert float(saved["lr"]) == 3e-3  # a rate of 1e-6 barely moves in 3 epochs
    assert ev.cv_run_key("m", cfg, 3, 0, clips, feats) != ev.cv_run_key("m", CFG, 3, 0, clips, feats)


def test_run_key_ignores_thread_count_but_not_settings_or_data() -> None:
    clips = [
        Clip(f"c{i}", Path(f"/x/{i}.wav"), np.zeros((3, 2), np.float32), group=f"g{i}") for i in range(3)
    ]
    feats = {c.clip_id: np.ones((3, 4), np.float32) for c in clips}

    def key(cfg: TrainConfig, features: dict[str, np.ndarray] = feats) -> str:
        return ev.cv_run_key("LSTM_AT_400", cfg, 3, 0, clips, features)

    base = key(TrainConfig())
    assert key(TrainConfig(threads=1)) == base
    assert key(TrainConfig(lr=1e-4)) != base
    assert key(TrainConfig(input_noise=0.1)) != base
    # A setting at its default is not part of the key: options added later leave old folds valid.
    assert key(TrainConfig(input_noise=0.0, clip_crop_frames=0)) == base
    assert ev.cv_run_key("LSTM_AT_400", TrainConfig(), 3, 0, clips, feats) == ev.cv_run_key(
        "LSTM_AT_400", TrainConfig(preset="LSTM_AT_400"), 3, 0, clips, feats
    )
    other = dict(feats, c0=np.zeros((3, 4), np.float32))
    assert key(TrainConfig(), other) != base


def test_cli_train_then_export_gives_a_servable_model(tmp_path: Path) -> None:
    from app.core.features import FeatureExtractor
    from app.core.predictor import Predictor
    from model_export.checkpoint import load_checkpoint

    data = ["--dataset", "synthetic", "--root", str(tmp_path / "data"), "--cache", str(tmp_path / "cache")]
    data += ["--option", "n_clips=6", "--option", "duration_s=4"]
    ckpt = tmp_path / "ckpt" / "m.pt"
    argv = ["train", *data, "--preset", "LSTM_AT_400", "--model-option", "hidden_sizes=[8]"]
    argv += ["--model-option", "attention_window=4", "--epochs", "2", "--threads", "1", "--out", str(ckpt)]
    assert main(argv) == 0
    model, contract, meta = load_checkpoint(ckpt)
    assert meta["dataset"] == "synthetic"
    assert meta["clips"] == 6
    assert len(meta["history"]) == 2
    assert list(model.config.hidden_sizes) == [8]
    onnx_path = tmp_path / "m.onnx"
    argv = ["export", "--checkpoint", str(ckpt), "--out", str(onnx_path), "--name", "t", "--version", "0"]
    assert main(argv) == 0
    predictor = Predictor.load(onnx_path, providers="cpu", intra_op_threads=1)
    FeatureExtractor(predictor.contract.features).check_contract(predictor.contract)
    assert predictor.contract == contract
    assert predictor.predict(np.zeros((3, contract.num_features), np.float32)).shape == (3, 2)


def test_variants_train_with_their_original_only_and_never_form_folds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clips, feats = _data()
    variants = [
        Clip(f"{c.clip_id} ~aug1", c.audio_path, c.targets, group=c.group, variant_of=c.clip_id)
        for c in clips
    ]
    feats_aug = dict(feats, **{v.clip_id: feats[v.variant_of] + 0.5 for v in variants})
    plain_key = ev.cv_run_key("m", CFG, 3, 0, clips, feats)
    assert ev.cv_run_key("m", CFG, 3, 0, clips, feats_aug, variants) != plain_key
    assert ev.cv_run_key("m", CFG, 3, 0, clips, feats_aug, []) == plain_key  # old folds stay valid

    plain = ev.cross_validate("m", CFG, clips, feats, k=3)
    seen: list[tuple[list[int], int]] = []
    real_train = ev.train  # type: ignore[attr-defined]

    def recording_train(cfg: TrainConfig, tf: list[np.ndarray], *args: object, **kw: object) -> object:
        tv = kw["train_variants"]
        assert isinstance(tv, list)
        assert len(tv) == len(tf)
        for original, vs in zip(tf, tv, strict=True):
            assert len(vs) == 1
            np.testing.assert_array_equal(vs[0], original + 0.5)  # each piece gets its own variant
        seen.append(([t.shape[0] for t in tf], len(tv)))
        return real_train(cfg, tf, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(ev, "train", recording_train)
    res = ev.cross_validate("m", CFG, [*clips, *variants], feats_aug, k=3, state_dir=tmp_path)
    assert sorted(res.clip_ids) == sorted(c.clip_id for c in clips)  # variants are never tested
    assert len(seen) == 3
    # The same folds: each clip is tested in the same fold as without variants.
    assert res.clip_ids == plain.clip_ids
    assert len(list(tmp_path.glob("m_*_fold*.npz"))) == 3
