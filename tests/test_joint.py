"""The joint protocol end to end: synthetic frame-labelled music + a 4Q-layout tree of clip-labelled music."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from model_export import joint
from model_export.__main__ import main
from model_export.baseline import teacher_levels
from model_export.checkpoint import load_checkpoint
from model_export.clip_metrics import clip_scores
from model_export.datasets import synthetic
from model_export.datasets.base import Clip
from model_export.joint import joint_folds
from model_export.testing import export_tiny_model
from tests.datasets_fixtures import write_fourq_tree

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RATE = 16_000
QUADRANT = {(True, True): "Q1", (True, False): "Q2", (False, False): "Q3", (False, True): "Q4"}
TINY = ["--model-option", "hidden_sizes=[8]", "--model-option", "attention_window=4", "--threads", "1"]


@pytest.fixture(scope="module")
def fourq_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 clips of synthetic music whose quadrant is the sign of their mean synthetic targets."""
    rows, audio = [], {}
    for i in range(40):
        signal, _, targets = synthetic.synthesize(np.random.default_rng([7, i]), 8.0, RATE)
        a, v = targets.mean(axis=0)
        song = f"MT{i:010d}"
        rows.append(
            (song, f"Artist {i // 2}", QUADRANT[(bool(a >= 0), bool(v >= 0))], 0.5 + i / 80, "Pop/Rock")
        )
        audio[song] = signal
    return write_fourq_tree(tmp_path_factory.mktemp("4q"), rows, audio=audio, sample_rate=RATE)


def _row(doc: dict[str, Any], model: str) -> dict[str, Any]:
    """The report row of one model (rows are references, quoted rows, probes, then the trained models)."""
    (row,) = [r for r in doc["rows"] if r["model"] == model]
    return dict(row)


@pytest.fixture(scope="module")
def joint_run(tmp_path_factory: pytest.TempPathFactory, fourq_tree: Path) -> tuple[Path, list[str]]:
    tmp = tmp_path_factory.mktemp("joint")
    reference = export_tiny_model(tmp)
    quoted = tmp / "quoted.json"
    quoted.write_text(
        json.dumps([{"model": "quoted probe", "source": "ABOUT.md", "clip": None, "folds": "5"}])
    )
    args = [
        "joint-cv",
        "--dataset", "synthetic", "--root", str(tmp / "frames"),
        "--option", "n_clips=24", "--option", "duration_s=6",
        "--clip-dataset", "fourq", "--clip-root", str(fourq_tree),
        "--cache", str(tmp / "cache"),
        "--presets", "LSTM_AT_400", *TINY, "--epochs", "8",
        "--folds", "2",
        "--out", str(tmp / "report"),
        "--reference", str(reference), "--quoted", str(quoted),
        "--smoothing-alpha", "0.9", "--probe",
    ]  # fmt: skip
    assert main(args) == 0
    return tmp, args


def test_joint_cv_reports_clip_and_frame_scores_beside_the_references(
    joint_run: tuple[Path, list[str]], fourq_tree: Path
) -> None:
    tmp, _ = joint_run
    doc = json.loads((tmp / "report" / "report.json").read_text())
    names = [r["model"] for r in doc["rows"]]
    assert names == [
        "tiny 0.0.1",
        "quoted probe",
        "linear probe",
        "RBF-SVM probe",
        "LSTM_AT_400",
        "LSTM_AT_400 + smoothing 0.9",
    ]
    for probe in doc["rows"][2:4]:
        assert probe["clip"]["clips"] == 40
        assert probe["clip"]["arousal"]["auc"] > 0.7  # a map of clip statistics finds the arousal too
    assert "RBF-kernel SVM" in doc["rows"][3]["source"]
    row = doc["rows"][4]
    assert row["folds"] == "2/2"
    assert row["clip"]["clips"] == 40
    assert sum(map(sum, row["clip"]["confusion"])) == 40
    assert 0.0 <= row["clip"]["quadrant_accuracy"] <= 1.0
    assert set(row["frame"]) == {"arousal", "valence"}
    assert len(row["frame_per_fold"]) == 2
    assert len(row["jitter"]["predictions"]) == 2
    assert doc["rows"][0]["clip"]["clips"] == 40  # the reference saw every clip
    assert doc["genres"]["LSTM_AT_400"][0]["genre"] == "Pop/Rock"
    # Scores by label confidence (the fixture's PQuad is 0.5 + i / 80 for clip i): three groups of the 40
    # clips for the trained rows, the probes and the reference alike; the quoted row has no clips to split.
    for r in (row, doc["rows"][5], *doc["rows"][2:4], doc["rows"][0]):
        parts = r["by_confidence"]
        assert [p["clips"] for p in parts] == [13, 14, 13]
        assert [p["confidence"] for p in parts] == [[0.5, 0.65], [0.6625, 0.825], [0.8375, 0.9875]]
    assert "by_confidence" not in doc["rows"][1]
    means = _clip_means_by_id(tmp / "report" / "folds")
    least_sure = [f"MT{i:010d}" for i in range(13)]
    want = clip_scores(
        np.array([means[i] for i in least_sure], np.float32),
        np.array([_signs(_quadrant(fourq_tree, i)) for i in least_sure]),
    )
    assert row["by_confidence"][0]["quadrant_accuracy"] == pytest.approx(want["quadrant_accuracy"])
    assert row["by_confidence"][0]["arousal"]["auc"] == pytest.approx(want["arousal"]["auc"])
    md = (tmp / "report" / "report.md").read_text()
    assert "| LSTM_AT_400 |" in md
    assert "Clip scores by label confidence" in md
    assert "| LSTM_AT_400 | 0.50–0.65 | 13 |" in md
    assert "Confusion matrix of LSTM_AT_400" in md
    assert (tmp / "report" / "clip_means.png").stat().st_size > 1000
    # The clip labels were learnt: the clip means rank arousal better than chance, out of fold.
    assert row["clip"]["arousal"]["auc"] > 0.7
    smoothed = doc["rows"][5]
    for d in (0, 1):  # the same predictions, smoothed: far smaller steps, the same labels
        assert smoothed["jitter"]["predictions"][d] < 0.5 * row["jitter"]["predictions"][d]
        assert smoothed["jitter"]["labels"][d] == row["jitter"]["labels"][d]


def test_stored_folds_rebuild_the_report_without_training(
    joint_run: tuple[Path, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    tmp, args = joint_run
    folds = sorted((tmp / "report" / "folds").glob("*.npz"))
    assert len(folds) == 2
    assert all(f.stat().st_size < 50_000 for f in folds)
    before = json.loads((tmp / "report" / "report.json").read_text())

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("a stored fold was trained again")

    monkeypatch.setattr(joint, "train_joint", refuse)
    assert main(args) == 0
    after = json.loads((tmp / "report" / "report.json").read_text())
    assert _row(after, "LSTM_AT_400")["clip"] == _row(before, "LSTM_AT_400")["clip"]
    assert _row(after, "LSTM_AT_400")["frame_per_fold"] == _row(before, "LSTM_AT_400")["frame_per_fold"]
    # --report-only with a preset that has no stored folds: it is left out, the others are reported.
    nat = [*args[: args.index("LSTM_AT_400") + 1], "LSTM_NAT_400", *args[args.index("LSTM_AT_400") + 1 :]]
    assert main([*nat, "--report-only"]) == 0
    rows = {r["model"]: r for r in json.loads((tmp / "report" / "report.json").read_text())["rows"]}
    assert rows["LSTM_AT_400"]["clip"] == _row(before, "LSTM_AT_400")["clip"]
    assert "LSTM_NAT_400" not in rows


def test_a_cv_split_over_two_runs_with_train_folds_equals_one_run(joint_run: tuple[Path, list[str]]) -> None:
    tmp, args = joint_run
    out = tmp / "split"
    split = [*args[: args.index("--out") + 1], str(out), *args[args.index("--out") + 2 :]]
    assert main([*split, "--train-folds", "2"]) == 0
    assert [f.name.rsplit("_", 1)[-1] for f in (out / "folds").glob("*.npz")] == ["fold1.npz"]
    assert _row(json.loads((out / "report.json").read_text()), "LSTM_AT_400")["folds"] == "1/2"
    assert main([*split, "--train-folds", "1"]) == 0  # trains fold 1, restores fold 2
    assert len(list((out / "folds").glob("*.npz"))) == 2
    whole = _row(json.loads((tmp / "report" / "report.json").read_text()), "LSTM_AT_400")
    parts = _row(json.loads((out / "report.json").read_text()), "LSTM_AT_400")
    assert parts["folds"] == "2/2"
    assert parts["clip"] == whole["clip"]
    assert parts["frame_per_fold"] == whole["frame_per_fold"]
    with pytest.raises(SystemExit, match=r"1\.\.2"):
        main([*split, "--train-folds", "3"])


def _train_both(tmp: Path, fourq_tree: Path, out: Path, *extra: str) -> list[str]:
    """``train`` on the joint fixture's frame-labelled clips and the 4Q tree, two epochs, then ``extra``."""
    return [
        "train",
        "--dataset", "synthetic", "--root", str(tmp / "frames"),
        "--option", "n_clips=24", "--option", "duration_s=6",
        "--clip-dataset", "fourq", "--clip-root", str(fourq_tree),
        "--cache", str(tmp / "cache"), *TINY, "--epochs", "2", *extra,
        "--out", str(out),
    ]  # fmt: skip


def test_train_on_both_kinds_of_labels_records_both_datasets(
    joint_run: tuple[Path, list[str]], fourq_tree: Path
) -> None:
    tmp, _ = joint_run
    out = tmp / "both.pt"
    assert main(_train_both(tmp, fourq_tree, out, "--clip-loss", "hinge")) == 0
    _, _, meta = load_checkpoint(out)
    assert meta["dataset"] == "synthetic+fourq"
    assert meta["clips"] == 64
    assert meta["train_config"]["clip_loss"] == "hinge"


def test_a_model_trained_in_an_input_subspace_is_stored_full_width_and_exported_factorised(
    joint_run: tuple[Path, list[str]], fourq_tree: Path
) -> None:
    tmp, _ = joint_run
    out = tmp / "ranked.pt"
    assert main(_train_both(tmp, fourq_tree, out, "--input-rank", "8")) == 0
    model, _, meta = load_checkpoint(out)
    assert meta["train_config"]["input_rank"] == 8
    assert model.config.num_features == 6373  # the full-width model, not its 8-wide training view
    singular = np.linalg.svd(model.state_dict()["encoder.0.weight_ih_l0"].numpy(), compute_uv=False)
    assert singular[7] > 1e-4 * singular[0] > singular[8]
    # export checks the graph against PyTorch (and the factorisation against the model as trained)
    # before writing it; the graph projects onto the 8 directions, then runs the 8-wide LSTM.
    onnx_path, card = tmp / "ranked.onnx", tmp / "ranked.md"
    export = ["export", "--checkpoint", str(out), "--out", str(onnx_path), "--name", "r", "--version", "0"]
    assert main([*export, "--card", str(card)]) == 0
    assert "/model/inner/encoder.0/LSTM" in {n.name for n in onnx.load(str(onnx_path)).graph.node}
    assert "inside the 8 leading principal directions" in card.read_text()


def test_folds_keep_groups_apart_and_share_one_frame_test_fold() -> None:
    frame_groups = [f"piece{i // 2}" for i in range(40)]
    clip_groups = [f"artist{i % 7}" for i in range(30)]
    folds = joint_folds(frame_groups, clip_groups, 3)
    assert [sorted(f.frame_test) for f in folds] == [sorted(folds[0].frame_test)] * 3
    assert sorted(i for f in folds for i in f.clip_test) == list(range(30))
    for f in folds:
        assert not {clip_groups[i] for i in f.clip_test} & {clip_groups[i] for i in f.clip_train}
        assert not {frame_groups[i] for i in f.frame_test} & {frame_groups[i] for i in f.frame_train}


@pytest.mark.parametrize("probe", ["logistic", "rbf_svm"])
def test_the_teacher_grades_clip_targets_and_keeps_their_signs(probe: str) -> None:
    rng = np.random.default_rng(3)
    clips, feats = [], {}
    for i in range(30):
        x = (rng.standard_normal((12, 6)) + rng.standard_normal(6) * 2).astype(np.float32)
        signs = np.where(x[:, :2].mean(axis=0) >= 0, 1.0, -1.0).astype(np.float32)
        clips.append(
            Clip(f"q{i}", Path(f"/x/{i}.mp3"), np.tile(signs, (12, 1)), group=f"a{i // 3}", label_kind="clip")
        )
        feats[f"q{i}"] = x
    assert joint.distilled(clips, feats, 0.0) == clips
    graded = joint.distilled(clips, feats, 0.5, folds=4, probe=probe)
    levels = teacher_levels(clips, feats, k=4, probe=probe)
    for before, after in zip(clips, graded, strict=True):
        assert after.clip_id == before.clip_id
        assert after.label_kind == "clip"
        assert after.targets.shape == before.targets.shape
        assert np.all(after.targets == after.targets[0])  # still one static level per clip
        expected = 0.5 * before.targets[0] + 0.5 * levels[before.clip_id]
        np.testing.assert_allclose(after.targets[0], expected, rtol=1e-6)
        assert np.array_equal(np.sign(after.targets[0]), before.targets[0])
    spread = np.stack([c.targets[0] for c in graded])
    assert np.abs(spread).min() < 0.5 < np.abs(spread).max()  # graded: neither all clear nor all doubtful


@pytest.mark.parametrize("probe", ["logistic", "rbf_svm"])
def test_a_fold_teacher_is_fitted_on_that_fold_training_clips_only(
    joint_run: tuple[Path, list[str]], monkeypatch: pytest.MonkeyPatch, probe: str
) -> None:
    tmp, args = joint_run
    seen: list[set[str]] = []
    probes: list[object] = []
    real = teacher_levels

    def recording(clips: list[Clip], features: dict[str, np.ndarray], **kw: Any) -> dict[str, np.ndarray]:
        seen.append({c.clip_id for c in clips})
        probes.append(kw.get("probe"))
        return real(clips, features, **kw)

    monkeypatch.setattr(joint, "teacher_levels", recording)
    out = tmp / f"teacher_{probe}"
    taught = [*args[: args.index("--out") + 1], str(out), *args[args.index("--out") + 2 :]]
    assert main([*taught, "--clip-teacher", "0.5", "--clip-teacher-probe", probe, "--folds-to-run", "1"]) == 0
    assert len(seen) == 1
    assert probes == [probe]
    (fold,) = (out / "folds").glob("*.npz")
    (plain,) = [f for f in (tmp / "report" / "folds").glob("*fold0.npz")]
    assert fold.name != plain.name  # the teacher is part of the fold's key
    with np.load(fold) as z:
        tested = {str(v) for v in z["clip_ids"]}
    assert tested
    assert not tested & seen[0]  # no test clip informs any training target
    assert len(seen[0]) + len(tested) == 40
    doc = json.loads((out / "report.json").read_text())
    assert _row(doc, "LSTM_AT_400")["config"]["clip_teacher_probe"] == probe
    assert _row(doc, "LSTM_AT_400")["config"]["clip_teacher"] == 0.5


def test_input_rank_reaches_training_and_keys_its_folds(joint_run: tuple[Path, list[str]]) -> None:
    tmp, args = joint_run
    out = tmp / "rank"
    ranked = [*args[: args.index("--out") + 1], str(out), *args[args.index("--out") + 2 :]]
    assert main([*ranked, "--input-rank", "8", "--folds-to-run", "1"]) == 0
    (fold,) = (out / "folds").glob("*.npz")
    (plain,) = [f for f in (tmp / "report" / "folds").glob("*fold0.npz")]
    assert fold.name != plain.name  # the constraint is part of the fold's key
    doc = json.loads((out / "report.json").read_text())
    assert _row(doc, "LSTM_AT_400")["config"]["input_rank"] == 8
    assert _row(doc, "LSTM_AT_400")["clip"]["clips"] > 0


def _clip_means_by_id(folds: Path) -> dict[str, np.ndarray]:
    """Each stored clip's mean prediction, read straight from a run's fold files."""
    out: dict[str, np.ndarray] = {}
    for path in sorted(folds.glob("*.npz")):
        with np.load(path) as z:
            preds = np.split(z["clip_predictions"].astype(np.float64), np.cumsum(z["clip_lengths"])[:-1])
            out |= {str(cid): p.mean(axis=0) for cid, p in zip(z["clip_ids"], preds, strict=True)}
    return out


def test_the_mean_of_finished_cvs_is_reported_from_their_stored_folds(
    joint_run: tuple[Path, list[str]], fourq_tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tmp, args = joint_run
    other = tmp / "averaged"
    second = [*args[: args.index("--out") + 1], str(other), *args[args.index("--out") + 2 :]]
    assert main([*second, "--weight-average", "0.9"]) == 0

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("an ensemble report trains nothing")

    monkeypatch.setattr(joint, "train_joint", refuse)
    out = tmp / "ensemble"
    ensemble = [
        "joint-ensemble",
        "--dataset", "synthetic", "--root", str(tmp / "frames"),
        "--option", "n_clips=24", "--option", "duration_s=6",
        "--clip-dataset", "fourq", "--clip-root", str(fourq_tree),
        "--cache", str(tmp / "cache"), "--folds", "2", "--smoothing-alpha", "0.9", "--probe",
        "--members", str(tmp / "report"), str(other), "--out", str(out),
    ]  # fmt: skip
    assert main(ensemble) == 0
    doc = json.loads((out / "report.json").read_text())
    assert [r["model"] for r in doc["rows"]] == [
        "linear probe",
        "RBF-SVM probe",
        "LSTM_AT_400 (report)",
        "LSTM_AT_400 (averaged)",
        "mean of 2 LSTM_AT_400",
        "LSTM_AT_400 (report) + smoothing 0.9",
        "LSTM_AT_400 (averaged) + smoothing 0.9",
        "mean of 2 LSTM_AT_400 + smoothing 0.9",
    ]
    row = _row(doc, "mean of 2 LSTM_AT_400")
    assert [m["config"]["weight_average"] for m in row["members"]] == [0.0, 0.9]
    assert row["folds"] == "2/2"
    # The members' rows are their own reports' rows; the ensemble's clip means are the mean of theirs.
    assert (
        _row(doc, "LSTM_AT_400 (report)")["clip"]
        == _row(json.loads((tmp / "report" / "report.json").read_text()), "LSTM_AT_400")["clip"]
    )
    a, b = _clip_means_by_id(tmp / "report" / "folds"), _clip_means_by_id(other / "folds")
    ids = sorted(a)
    signs = np.array([_signs(_quadrant(fourq_tree, i)) for i in ids])
    want = clip_scores(np.array([(a[i] + b[i]) / 2 for i in ids], np.float32), signs)
    assert row["clip"]["quadrant_accuracy"] == pytest.approx(want["quadrant_accuracy"])
    for d in ("arousal", "valence"):
        assert row["clip"][d]["auc"] == pytest.approx(want[d]["auc"])
        assert row["clip"][d]["mean_prediction"] == pytest.approx(want[d]["mean_prediction"], abs=1e-6)
    assert list(doc["genres"]) == ["mean of 2 LSTM_AT_400", "mean of 2 LSTM_AT_400 + smoothing 0.9"]
    assert "mean of 2 LSTM_AT_400" in (out / "report.md").read_text()
    # A member without every fold stored is refused, by name, as is an ensemble of one.
    partial = tmp / "partial"
    partial_run = [*args[: args.index("--out") + 1], str(partial), *args[args.index("--out") + 2 :]]
    monkeypatch.undo()
    assert main([*partial_run, "--weight-average", "0.5", "--folds-to-run", "1"]) == 0
    with pytest.raises(SystemExit, match="1 of 2 folds"):
        main(
            [
                *ensemble[: ensemble.index("--members") + 1],
                str(tmp / "report"),
                str(partial),
                "--out",
                str(out),
            ]
        )
    with pytest.raises(SystemExit, match="at least two members"):
        main([*ensemble[: ensemble.index("--members") + 1], str(tmp / "report"), "--out", str(out)])
    with pytest.raises(SystemExit, match="no joint CV row"):
        main([*ensemble[: ensemble.index("--members") + 1], str(tmp / "report"), str(tmp), "--out", str(out)])


def _quadrant(tree: Path, song: str) -> str:
    rows = (tree / "annotations.csv").read_text().splitlines()[1:]
    return dict(line.split(",")[:2] for line in rows)[song]


def _signs(quadrant: str) -> list[float]:
    """Arousal and valence signs of a quadrant's label."""
    return [1.0 if quadrant in ("Q1", "Q2") else -1.0, 1.0 if quadrant in ("Q1", "Q4") else -1.0]
