from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx
import pytest
import torch

from app.core.predictor import Predictor
from model_export.__main__ import main
from model_export.card import CARD_KEY, build_card, card_metrics, load_report, render_markdown
from model_export.checkpoint import load_checkpoint
from model_export.smoothing import Smoothing
from model_export.testing import write_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _report(path: Path, r2a: float = 0.512) -> Path:
    def dims(r2a: float, r2v: float) -> dict[str, dict[str, float]]:
        return {
            "arousal": {"r2": r2a, "tau": 0.21, "mae": 0.18},
            "valence": {"r2": r2v, "tau": 0.12, "mae": 0.25},
        }

    doc: dict[str, Any] = {
        "title": "vgmidi at 16000 Hz",
        "notes": "10-fold CV grouped by piece.",
        "rows": [
            {
                "model": "LSTM_AT_400",
                "folds": "3/10",
                "clips": 60,
                "frames": 900,
                "metrics": dims(r2a, 0.031),
            },
            {
                "model": "LSTM_NAT_400",
                "folds": "3/10",
                "clips": 60,
                "frames": 900,
                "metrics": dims(0.47, 0.02),
            },
        ],
    }
    path.write_text(json.dumps(doc))
    return path


def _card(tmp_path: Path, meta_update: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    """The card of a small real checkpoint, with ``meta_update`` merged into its metadata."""
    write_checkpoint(tmp_path / "m.pt")
    model, contract, meta = load_checkpoint(tmp_path / "m.pt")
    meta.update(meta_update or {})
    return build_card(
        model_name="mer",
        model_version="1.0.0",
        contract=contract,
        checkpoint_meta=meta,
        model_config=model.config.to_dict(),
        **kw,
    )


def test_card_collects_contract_training_and_cv_facts(tmp_path: Path) -> None:
    report = load_report(_report(tmp_path / "report.json"))
    card = _card(tmp_path, cv_report=report, cv_source="docs/results/report.json")
    assert card["features"]["level_policy"] == "gated-rms"
    assert card["features"]["analysis_rate_hz"] == 16_000
    assert card["training"]["best_epoch"] == 2
    assert card["training"]["best_val_mse"] == pytest.approx(0.12)
    assert card["cross_validation"]["this_preset"]["arousal"]["r2"] == pytest.approx(0.512)
    md = render_markdown(card)
    assert "| LSTM_AT_400 | 0.512 | 0.031 |" in md
    assert "research" in md
    assert "openSMILE" in md
    assert "3/10" in md
    assert "No augmentation" in md
    assert card["comparisons"] == []
    json.dumps(card)  # serialisable as the metadata entry


def test_card_states_the_augmentation_and_before_after_runs(tmp_path: Path) -> None:
    augmentation = {
        "per_piece": 2,
        "variant_clips": 360,
        "seed": 0,
        "version": 1,
        "changes": "soundfont TimGM6mb; hall reverb",
        "excluded": ["noise"],
        "policy": "one rendition per piece and epoch",
    }
    before = load_report(_report(tmp_path / "before.json", r2a=0.301))
    card = _card(
        tmp_path,
        {"augmentation": augmentation},
        comparisons=[("no level policy", "docs/before/report.json", before)],
    )
    md = render_markdown(card)
    assert "2 extra rendition(s) per piece (360 variant clips" in md
    assert "soundfont TimGM6mb; hall reverb (renditions applying noise left out)" in md
    assert "### Before and after" in md
    assert "| no level policy: LSTM_AT_400 | 0.301 | 0.031 |" in md
    assert "| no level policy: LSTM_NAT_400 | 0.470 |" in md
    assert "`docs/before/report.json`" in md


def test_load_report_refuses_other_json(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text('{"title": "no rows"}')
    with pytest.raises(ValueError, match="rows"):
        load_report(tmp_path / "x.json")


def test_export_cli_writes_the_card_into_the_model_and_beside_it(tmp_path: Path) -> None:
    write_checkpoint(tmp_path / "m.pt")
    report = _report(tmp_path / "report.json")
    out, card_md = tmp_path / "model.onnx", tmp_path / "model.md"
    argv = ["export", "--checkpoint", str(tmp_path / "m.pt"), "--out", str(out), "--name", "mer"]
    argv += ["--version", "2.0.0", "--cv-report", str(report), "--card", str(card_md), "--fp16"]
    before = _report(tmp_path / "before.json", r2a=0.25)
    with pytest.raises(SystemExit, match="LABEL=REPORT"):
        main([*argv, "--compare", str(before)])
    assert main([*argv, "--compare", f"before={before}"]) == 0
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    card = json.loads(meta[CARD_KEY])
    assert card["model_version"] == "2.0.0"
    assert card["weights_dtype"] == "float16"
    # The Markdown is rendered from exactly the dict stored in the model.
    assert card_md.read_text() == render_markdown(card)
    assert card["comparisons"][0]["rows"][0]["metrics"]["arousal"]["r2"] == pytest.approx(0.25)
    assert "| before: LSTM_AT_400 | 0.250 |" in card_md.read_text()
    metrics = json.loads(meta["mer.metrics"])
    assert metrics["cv_folds"] == "3/10"
    assert metrics["cv"]["valence"]["r2"] == pytest.approx(0.031)


def test_card_cli_refreshes_the_cv_of_an_exported_model_without_touching_its_weights(tmp_path: Path) -> None:
    write_checkpoint(tmp_path / "m.pt")
    out, card_md = tmp_path / "model.onnx", tmp_path / "model.md"
    argv = ["export", "--checkpoint", str(tmp_path / "m.pt"), "--out", str(out), "--name", "mer"]
    assert main([*argv, "--version", "2.0.0", "--cv-report", str(_report(tmp_path / "r3.json"))]) == 0
    before = onnx.load(str(out))
    old_meta = {p.key: p.value for p in before.metadata_props}
    # The CV went on after the export: more folds, other numbers.
    later = json.loads(_report(tmp_path / "r10.json", r2a=0.47).read_text())
    for row in later["rows"]:
        row["folds"] = "10/10"
    (tmp_path / "r10.json").write_text(json.dumps(later))
    with pytest.raises(SystemExit, match="nothing to refresh"):
        main(["card", "--model", str(out)])
    assert (
        main(["card", "--model", str(out), "--cv-report", str(tmp_path / "r10.json"), "--card", str(card_md)])
        == 0
    )
    after = onnx.load(str(out))
    meta = {p.key: p.value for p in after.metadata_props}
    assert after.graph.SerializeToString() == before.graph.SerializeToString()
    changed = {k for k in meta if meta[k] != old_meta.get(k)}
    assert changed == {CARD_KEY, "mer.metrics"}
    assert set(meta) == set(old_meta)
    card = json.loads(meta[CARD_KEY])
    assert [r["folds"] for r in card["cross_validation"]["rows"]] == ["10/10", "10/10"]
    assert card["cross_validation"]["this_preset"]["arousal"]["r2"] == pytest.approx(0.47)
    assert card["model_version"] == "2.0.0"
    assert {k: v for k, v in card.items() if k != "cross_validation"} == {
        k: v for k, v in json.loads(old_meta[CARD_KEY]).items() if k != "cross_validation"
    }
    assert json.loads(meta["mer.metrics"])["cv_folds"] == "10/10"
    assert card_md.read_text() == render_markdown(card)
    # The step graph beside it still matches the digest the model records, so the service takes it.
    predictor = Predictor.load(out, providers="cpu", intra_op_threads=1, warmup=False)
    assert predictor.step is not None
    assert predictor.step_problem is None
    # A model without a card is refused with a message, not a traceback.
    bare = onnx.load(str(out))
    kept = [p for p in bare.metadata_props if p.key != CARD_KEY]
    del bare.metadata_props[:]
    bare.metadata_props.extend(kept)
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    with pytest.raises(SystemExit, match=r"no mer\.card"):
        main(["card", "--model", str(tmp_path / "bare.onnx"), "--cv-report", str(tmp_path / "r10.json")])


def _joint_report() -> dict[str, Any]:
    def clip(q: float) -> dict[str, Any]:
        dim = {"sign_accuracy": 0.8, "auc": 0.9, "mean_prediction": 0.01}
        return {"clips": 600, "quadrant_accuracy": q, "macro_f1": q, "confusion": [[150, 0, 0, 0]] * 4,
                "arousal": dim, "valence": dim}  # fmt: skip

    frame = {d: {k: {"mean": 0.4, "std": 0.05} for k in ("r2", "tau", "mae")} for d in ("arousal", "valence")}
    rows = [
        {"model": "LSTM_AT_400", "source": "joint CV", "folds": "5/5", "clip": clip(0.61), "frame": frame},
        {"model": "LSTM_AT_400 + smoothing 0.9", "source": "joint CV", "folds": "5/5", "clip": clip(0.62),
         "frame": frame},
    ]  # fmt: skip
    return {"title": "vgmidi + fourq at 16000 Hz", "notes": "5 folds by artist.", "rows": rows}


def test_a_model_trained_on_both_datasets_says_so_with_its_smoothing_and_real_music_scores(
    tmp_path: Path,
) -> None:
    card = _card(
        tmp_path,
        {
            "dataset": "vgmidi+fourq",
            "train_config": {"preset": "LSTM_AT_400", "clip_loss": "mean_mse", "clip_target": 0.5},
        },
        smoothing=Smoothing(0.9, 60),
        joint_cv=("docs/results/fourq_joint_16k/report.json", _joint_report()),
    )
    assert [p["dataset"] for p in card["training_data"]["parts"]] == ["vgmidi", "fourq"]
    assert card["smoothing"] == {"kind": "causal-exponential", "alpha": 0.9, "taps": 60}
    assert any("4Q" in line and "research" in line for line in card["licences"])
    assert not any("solo-piano renditions" in line for line in card["known_limits"])
    metrics = card_metrics(card)
    assert metrics is not None
    assert metrics["joint"]["clip"]["quadrant_accuracy"] == 0.62  # its own, smoothed row
    md = render_markdown(card)
    assert "### Real music (4Q, clip level)" in md
    assert "| LSTM_AT_400 + smoothing 0.9 | 0.620 |" in md
    assert "causal exponential moving average (decay 0.9 per frame, 60 frames" in md
    assert "4Q audio emotion dataset" in md
    assert "`mean_mse` against ±0.5 on the clip mean" in md
    assert "Regularisation" not in md  # neither averaging nor a subspace: nothing to say


def test_a_regularised_recipe_names_its_weight_average_and_input_subspace(tmp_path: Path) -> None:
    cfg = {"preset": "LSTM_AT_400", "clip_loss": "mean_mse", "clip_target": 0.5, "weight_average": 0.995}
    averaged = render_markdown(_card(tmp_path, {"dataset": "vgmidi+fourq", "train_config": cfg}))
    assert "- Regularisation: validation, early stopping and the kept weights use an exponential" in averaged
    assert "(decay 0.995 per update)." in averaged
    assert "principal directions" not in averaged
    both = render_markdown(
        _card(tmp_path, {"dataset": "vgmidi+fourq", "train_config": {**cfg, "input_rank": 256}})
    )
    assert "(decay 0.995 per update); the first layer's input weights were trained inside the 256" in both


def test_a_taught_recipe_says_what_its_clip_targets_were(tmp_path: Path) -> None:
    cfg = {"preset": "LSTM_AT_400", "clip_loss": "mean_mse", "clip_target": 0.5, "clip_teacher": 0.5}
    card = _card(tmp_path, {"dataset": "vgmidi+fourq", "train_config": cfg}, smoothing=Smoothing(0.9, 60))
    md = render_markdown(card)
    assert "against a level between 0 and ±0.5 (0.5 × the label's sign + 0.5 × a cross-fitted linear" in md
    svm = _card(
        tmp_path, {"dataset": "vgmidi+fourq", "train_config": {**cfg, "clip_teacher_probe": "rbf_svm"}}
    )
    assert "0.5 × a cross-fitted RBF-kernel SVM probe's graded score" in render_markdown(svm)


def test_an_ensemble_export_cards_every_member_and_takes_the_ensemble_row_as_its_metrics(
    tmp_path: Path,
) -> None:
    paths = []
    for k, cfg in enumerate(({"input_rank": 256}, {"input_rank": 1024}, {})):
        path = tmp_path / f"m{k}.pt"
        write_checkpoint(path, seed=k)
        ckpt = torch.load(path, weights_only=False)
        ckpt["train_config"] |= {"weight_average": 0.995, **cfg}
        ckpt["dataset"] = "vgmidi+fourq"
        ckpt["history"][1]["val_mse"] = 0.1 + k / 100
        torch.save(ckpt, path)
        paths.append(str(path))
    joint = _joint_report()
    ensemble = {**joint["rows"][1], "model": "mean of 3 LSTM_AT_400 + smoothing 0.9", "clip": {
        **joint["rows"][1]["clip"], "quadrant_accuracy": 0.668}}  # fmt: skip
    joint["rows"].append(ensemble)
    (tmp_path / "joint.json").write_text(json.dumps(joint))
    out, card_md = tmp_path / "model.onnx", tmp_path / "model.md"
    argv = ["export", "--checkpoint", *paths, "--out", str(out), "--name", "mer", "--version", "3.0.0"]
    argv += [
        "--joint-report",
        str(tmp_path / "joint.json"),
        "--card",
        str(card_md),
        "--smoothing-alpha",
        "0.9",
    ]
    assert main([*argv, "--cv-report", str(_report(tmp_path / "cv.json"))]) == 0
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    card = json.loads(meta[CARD_KEY])
    assert card["architecture"]["members"] == 3
    members = card["training"]["members"]
    assert [m["config"].get("input_rank", 0) for m in members] == [256, 1024, 0]
    assert [m["best_val_mse"] for m in members] == pytest.approx([0.1, 0.11, 0.12])
    # The card's own real-music row is the ensemble's, smoothed as it ships, not a member's.
    assert json.loads(meta["mer.metrics"])["joint"]["clip"]["quadrant_accuracy"] == 0.668
    md = card_md.read_text()
    assert md == render_markdown(card)
    assert "- The mean of 3 models of one architecture" in md
    assert "### Members" in md
    assert "These are single models of the members' preset; the ensemble's own VGMIDI scores" in md
    assert "1. validation, early stopping and the kept weights use an exponential moving average" in md
    assert "inside the 1024 leading principal directions" in md
    assert "best epoch 2 of 2, validation MSE 0.1200." in md
    # The service takes it, step graph (one state per member) included.
    predictor = Predictor.load(out, providers="cpu", intra_op_threads=1, warmup=False)
    assert predictor.step is not None
    assert predictor.step_problem is None
