r"""Command line: ``python -m model_export <command> --help``.

Typical VGMIDI run (features and renders live in ``cache/``, outside git)::

    python -m model_export setup                       # fluidsynth + GM soundfont (apt)
    python -m model_export extract --dataset vgmidi --root ../shared/data/vgmidi --rate 16000
    python -m model_export cv --dataset vgmidi --root ../shared/data/vgmidi --rate 16000 \
        --presets LSTM_AT_400 LSTM_NAT_400 --folds 10 --out docs/results/vgmidi_16k
    python -m model_export train --dataset vgmidi --root ../shared/data/vgmidi --rate 16000 \
        --preset LSTM_AT_400 --out cache/checkpoints/default.pt

This module parses arguments and calls :mod:`model_export.pipeline`; the work is done there.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from app.core.contract import LEVEL_POLICIES, OUTPUTS
from model_export import pipeline
from model_export.datasets.registry import RECIPES
from model_export.model import PRESETS
from model_export.pipeline import REPO, DataSpec
from model_export.smoothing import Smoothing
from model_export.train import CLIP_LOSSES, CLIP_TEACHERS, TrainConfig

DEFAULT_CACHE = REPO / "cache"


def _parse_options(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--option expects key=value, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, choices=sorted(RECIPES), help="dataset recipe")
    p.add_argument("--root", type=Path, required=True, help="dataset folder (for synthetic: where to write)")
    p.add_argument("--rate", type=int, default=16_000, help="analysis sample rate in Hz (default 16000)")
    p.add_argument(
        "--cache", type=Path, default=DEFAULT_CACHE, help="cache folder for features (and renders)"
    )
    p.add_argument("--workers", type=int, default=None, help="parallel extraction threads (default: cores)")
    p.add_argument(
        "--level-policy",
        default="gated-rms",
        choices=list(LEVEL_POLICIES),
        help="input level normalisation of the feature path (default gated-rms; see README)",
    )
    p.add_argument(
        "--chunk-frames",
        type=int,
        default=0,
        help="extract clips longer than this many frames in chunks (0: one openSMILE pass; see README)",
    )
    p.add_argument(
        "--chunk-preroll-frames",
        type=int,
        default=0,
        help="windows of audio before each chunk its openSMILE pass also sees (with --chunk-frames)",
    )
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="recipe-specific option, e.g. --option n_clips=40 (values parsed as JSON when possible)",
    )


def _data_spec(args: argparse.Namespace) -> DataSpec:
    return DataSpec(
        dataset=args.dataset,
        root=args.root,
        rate=args.rate,
        cache=args.cache,
        level_policy=args.level_policy,
        chunk_frames=args.chunk_frames,
        chunk_preroll_frames=args.chunk_preroll_frames,
        workers=args.workers,
        options=_parse_options(args.option),
    )


def _clip_data_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument(
        "--clip-dataset",
        required=required,
        choices=sorted(RECIPES),
        help="a clip-labelled dataset to train on as well (e.g. fourq)",
    )
    p.add_argument("--clip-root", type=Path, required=required, help="its folder")


def _clip_spec(args: argparse.Namespace) -> DataSpec | None:
    if args.clip_dataset is None:
        return None
    if args.clip_root is None:
        raise SystemExit("--clip-dataset needs --clip-root")
    # The same feature path and cache as the frame-labelled data; the recipe options are that one's.
    return replace(_data_spec(args), dataset=args.clip_dataset, root=args.clip_root, options={})


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--targets", nargs="+", default=list(OUTPUTS), choices=OUTPUTS, help="outputs to learn")
    p.add_argument("--epochs", type=int, default=30, help="maximum epochs (paper: 30)")
    p.add_argument("--batch-size", type=int, default=10, help="sequences per update (paper: 10)")
    p.add_argument("--lr", type=float, default=1e-3, help="RMSProp learning rate")
    p.add_argument(
        "--lr-choices",
        type=float,
        nargs="+",
        default=[],
        help="CV: try these learning rates in each fold, keep the best on the validation split",
    )
    p.add_argument("--patience", type=int, default=5, help="early-stopping patience in epochs (paper: 5)")
    p.add_argument(
        "--batching",
        default="bucketed",
        choices=["bucketed", "random"],
        help="bucketed: sequences of similar length share a batch (less padding); random: a permutation",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    p.add_argument(
        "--clip-loss",
        default="mean_mse",
        choices=list(CLIP_LOSSES),
        help="loss of clip-labelled clips (e.g. 4Q): mean_mse (clip mean vs target level), hinge, frame_mse",
    )
    p.add_argument("--clip-target", type=float, default=0.5, help="level a clip-level sign stands for")
    p.add_argument("--clip-weight", type=float, default=1.0, help="weight of a clip-labelled frame")
    p.add_argument(
        "--clip-confidence", action="store_true", help="also weight clip labels by their confidence (PQuad)"
    )
    p.add_argument("--weight-decay", type=float, default=0.0, help="RMSProp L2 penalty (paper: 0)")
    p.add_argument(
        "--clip-crop-frames",
        type=int,
        default=0,
        help="train on a random span of at least this many frames of each clip-labelled clip per epoch",
    )
    p.add_argument(
        "--input-noise", type=float, default=0.0, help="std of Gaussian noise on standardised training inputs"
    )
    p.add_argument(
        "--weight-average",
        type=float,
        default=0.0,
        metavar="DECAY",
        help="validate and keep an exponential moving average of the weights with this decay per update",
    )
    p.add_argument(
        "--clip-teacher",
        type=float,
        default=0.0,
        metavar="W",
        help="blend each clip label's sign with a cross-fitted probe's graded score: (1-W) s + W u",
    )
    p.add_argument(
        "--clip-teacher-probe",
        default="logistic",
        choices=CLIP_TEACHERS,
        help="the probe that teaches with --clip-teacher: logistic regression or an RBF-kernel SVM",
    )
    p.add_argument(
        "--input-rank",
        type=int,
        default=0,
        metavar="K",
        help="train the input weights inside the training frames' K leading principal directions (0: off)",
    )
    p.add_argument(
        "--model-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a ModelConfig field, e.g. --model-option attention_window=30",
    )


def _train_config(args: argparse.Namespace, preset: str) -> TrainConfig:
    return TrainConfig(
        preset=preset,
        targets=tuple(args.targets),
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        patience=args.patience,
        batching=args.batching,
        seed=args.seed,
        threads=args.threads,
        model_overrides=_parse_options(args.model_option),
        clip_loss=args.clip_loss,
        clip_target=args.clip_target,
        clip_weight=args.clip_weight,
        clip_confidence=args.clip_confidence,
        weight_decay=args.weight_decay,
        clip_crop_frames=args.clip_crop_frames,
        input_noise=args.input_noise,
        lr_choices=tuple(args.lr_choices),
        weight_average=args.weight_average,
        clip_teacher=args.clip_teacher,
        clip_teacher_probe=args.clip_teacher_probe,
        input_rank=args.input_rank,
    )


def _smoothing_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--smoothing-alpha",
        type=float,
        default=None,
        help="causal exponential smoothing of the outputs, decay per frame in [0, 1) (default: none)",
    )
    p.add_argument("--smoothing-taps", type=int, default=60, help="frames of history the smoothing keeps")


def _smoothing(args: argparse.Namespace) -> Smoothing | None:
    return None if args.smoothing_alpha is None else Smoothing(args.smoothing_alpha, args.smoothing_taps)


def _command() -> str:
    return f"python -m model_export {' '.join(sys.argv[1:])}"


def cmd_setup(args: argparse.Namespace) -> int:
    """Install the VGMIDI rendering tools."""
    from model_export.datasets import vgmidi

    vgmidi.setup()
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    """List recipes and presets."""
    for name, recipe in sorted(RECIPES.items()):
        print(f"{name:10s} {recipe.description}")
    for name, cfg in PRESETS.items():
        print(f"preset {name}: {cfg.to_dict()}")
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    """Fill the feature cache."""
    data = pipeline.load_data(_data_spec(args))
    frames = sum(f.shape[0] for f in data.features.values())
    print(f"{len(data.features)}/{len(data.clips)} clips, {frames} frames of features cached")
    return 0 if len(data.features) == len(data.clips) else 1


def cmd_cv(args: argparse.Namespace) -> int:
    """Cross-validate presets and write the report."""
    spec = _data_spec(args)
    _, doc = pipeline.cv_presets(
        spec,
        pipeline.load_data(spec),
        [_train_config(args, preset) for preset in args.presets],
        folds=args.folds,
        folds_to_run=args.folds_to_run,
        out=args.out,
        command=_command(),
        resume=not args.no_resume,
        train_missing=not args.report_only,
    )
    print(json.dumps([{"model": r["model"], **r["metrics"]} for r in doc["rows"]], indent=1))
    return 0


def cmd_joint_ensemble(args: argparse.Namespace) -> int:
    """The joint protocol's report for the mean of several finished joint CVs."""
    clip_spec = _clip_spec(args)
    assert clip_spec is not None  # required arguments
    try:
        ensemble, _ = pipeline.joint_ensemble(
            _data_spec(args),
            clip_spec,
            args.members,
            preset=args.preset,
            folds=args.folds,
            out=args.out,
            command=_command(),
            quoted=args.quoted,
            smoothing=_smoothing(args),
            probe=args.probe,
        )
    except ValueError as e:
        raise SystemExit(str(e)) from None
    scores = ensemble.clip_scores()
    print(
        f"{ensemble.name}: quadrant accuracy {scores['quadrant_accuracy']:.3f}, AUC "
        f"{scores['arousal']['auc']:.3f} / {scores['valence']['auc']:.3f} (unsmoothed; report in {args.out})"
    )
    return 0


def cmd_joint_cv(args: argparse.Namespace) -> int:
    """The joint protocol: CV over a clip-labelled dataset, always training on a frame-labelled one too."""
    clip_spec = _clip_spec(args)
    assert clip_spec is not None  # required arguments
    if args.train_folds is not None and not all(1 <= f <= args.folds for f in args.train_folds):
        raise SystemExit(f"--train-folds takes fold numbers 1..{args.folds}, got {args.train_folds}")
    _, doc = pipeline.joint_cv(
        _data_spec(args),
        clip_spec,
        [_train_config(args, preset) for preset in args.presets],
        folds=args.folds,
        folds_to_run=args.folds_to_run,
        out=args.out,
        command=_command(),
        references=args.reference,
        quoted=args.quoted,
        smoothing=_smoothing(args),
        probe=args.probe,
        train_missing=not args.report_only,
        train_folds=None if args.train_folds is None else [f - 1 for f in args.train_folds],
    )
    keys = ("quadrant_accuracy", "macro_f1")
    summary = [{"model": r["model"], **{k: (r.get("clip") or {}).get(k) for k in keys}} for r in doc["rows"]]
    print(json.dumps(summary, indent=1))
    return 0


def cmd_ridge(args: argparse.Namespace) -> int:
    """Ridge baseline: CV report, and how much its predictions move with the input level."""
    from model_export.baseline import level_sensitivity, ridge_cv
    from model_export.evaluate import write_report

    data = pipeline.load_data(_data_spec(args))
    result, model = ridge_cv(data.clips, data.features, k=args.folds, lam=args.lam)
    notes = (
        f"Dataset `{args.dataset}` ({len(data.features)} clips), analysis rate {args.rate} Hz, level policy "
        f"`{args.level_policy}`, {args.folds}-fold CV grouped by piece (same folds as `cv`); per-frame ridge "
        f"on signed-log1p features standardised per training fold. Command: `{_command()}`"
    )
    doc = write_report([result], args.out, f"{args.dataset} ridge baseline at {args.rate} Hz", notes)
    clip = next(c for c in data.clips if c.clip_id in data.features)
    doc["level_sensitivity"] = level_sensitivity(model, clip, data.extractor)
    (args.out / "report.json").write_text(json.dumps(doc, indent=2, default=float) + "\n")
    shift = doc["level_sensitivity"]["mean_abs_change_arousal_valence"]
    print(json.dumps({"metrics": doc["rows"][0]["metrics"], "level_sensitivity": shift}, indent=1))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train one model on a whole dataset and save a checkpoint."""
    spec, clip_spec = _data_spec(args), _clip_spec(args)
    clips = None if clip_spec is None else (clip_spec, pipeline.load_data(clip_spec))
    cfg = _train_config(args, args.preset)
    result = pipeline.train_and_save(spec, pipeline.load_data(spec), cfg, args.out, clips)
    print(f"saved {args.out} (best epoch {result.best_epoch}, {result.seconds:.0f}s)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export a checkpoint to ONNX with its contract and model card in the metadata, verified."""
    compare = []
    for item in args.compare:
        label, sep, path = item.rpartition("=")  # labels may contain "=", report paths rarely do
        if not sep or not label or not path:
            raise SystemExit(f"--compare expects LABEL=REPORT.json, got {item!r}")
        compare.append((label, Path(path)))
    t0 = time.perf_counter()
    path = pipeline.export_with_card(
        args.checkpoint,
        args.out,
        name=args.name,
        version=args.version,
        fp16=args.fp16,
        cv_report=args.cv_report,
        compare=compare,
        metrics=args.metrics,
        card_path=args.card,
        smoothing=_smoothing(args),
        joint_report=args.joint_report,
    )
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, verified, {time.perf_counter() - t0:.0f}s)")
    if args.card is not None:
        print(f"wrote {args.card}")
    return 0


def cmd_card(args: argparse.Namespace) -> int:
    """Bring an exported model's card up to date with newer CV reports (weights untouched)."""
    if args.cv_report is None and args.joint_report is None:
        raise SystemExit("card: give --cv-report and/or --joint-report (nothing to refresh)")
    try:
        card = pipeline.refresh_model_card(
            args.model, cv_report=args.cv_report, joint_report=args.joint_report, card_path=args.card
        )
    except ValueError as exc:
        raise SystemExit(f"card: {exc}") from exc
    cv = card.get("cross_validation") or {}
    folds = ", ".join(f"{r['model']} {r['folds']}" for r in cv.get("rows", []))
    print(f"refreshed the card of {args.model}" + (f" (CV folds: {folds})" if folds else ""))
    if args.card is not None:
        print(f"wrote {args.card}")
    return 0


def cmd_step(args: argparse.Namespace) -> int:
    """Write (or rewrite) the step graph of an exported model beside it and name it in its metadata."""
    from model_export.step import add_step_graph

    t0 = time.perf_counter()
    path, diff = add_step_graph(args.model, steps=args.steps)
    print(
        f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB); max |step - sequence| over {args.steps} "
        f"steps = {diff:.2e} ({time.perf_counter() - t0:.0f}s)"
    )
    return 0


def cmd_real_music(args: argparse.Namespace) -> int:
    """Run a model over real recordings from Debian packages and write the sanity report's data."""
    from model_export.real_music import run

    summary = run(args.model, args.out, args.cache / "real_music")
    print(json.dumps(summary, indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    parser = argparse.ArgumentParser(
        prog="python -m model_export",
        description=(
            "Train and evaluate the attentive LSTM of Chaki et al. 2020 on per-frame arousal/valence. "
            "Features come from app.core.features (the service's own feature path) and are cached per "
            "audio file and feature configuration."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("setup", help="install fluidsynth and a GM soundfont (apt) for VGMIDI rendering")
    sub.add_parser("datasets", help="list dataset recipes and model presets")
    p = sub.add_parser("extract", help="render (VGMIDI) and extract features into the cache")
    _data_args(p)
    p = sub.add_parser("cv", help="k-fold cross-validation by piece; writes report.md/json and figures")
    _data_args(p)
    _train_args(p)
    p.add_argument("--presets", nargs="+", default=["LSTM_AT_400", "LSTM_NAT_400"], choices=sorted(PRESETS))
    p.add_argument("--folds", type=int, default=10, help="number of folds (paper: 10)")
    p.add_argument("--folds-to-run", type=int, default=None, help="run only the first N folds (ablations)")
    p.add_argument("--out", type=Path, required=True, help="report folder")
    p.add_argument(
        "--no-resume",
        action="store_true",
        help="retrain every fold instead of reusing the folds stored under OUT/folds",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: rebuild the report and figures from the folds stored under OUT/folds",
    )
    p = sub.add_parser(
        "joint-cv",
        help="CV over a clip-labelled dataset (4Q, by artist), every fold also training on --dataset",
    )
    _data_args(p)
    _clip_data_args(p, required=True)
    _train_args(p)
    p.add_argument("--presets", nargs="+", default=["LSTM_AT_400"], choices=sorted(PRESETS))
    p.add_argument("--folds", type=int, default=5, help="folds over the clip-labelled dataset")
    p.add_argument("--folds-to-run", type=int, default=None, help="run only the first N folds")
    p.add_argument("--out", type=Path, required=True, help="report folder (finished folds go to OUT/folds)")
    p.add_argument(
        "--reference",
        type=Path,
        action="append",
        default=[],
        help="an exported model to score on all clip-labelled clips (repeatable), e.g. the shipped one",
    )
    p.add_argument("--quoted", type=Path, default=None, help="JSON list of rows measured elsewhere")
    p.add_argument(
        "--probe", action="store_true", help="add the probes' rows, linear and RBF-SVM (same folds)"
    )
    p.add_argument(
        "--train-folds",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help="train only these folds (1..k, as the log numbers them) if missing; two processes can "
        "split a CV this way and share OUT/folds",
    )
    p.add_argument(
        "--report-only", action="store_true", help="train nothing: a report of the folds stored in OUT/folds"
    )
    _smoothing_args(p)
    p = sub.add_parser(
        "joint-ensemble",
        help="report the mean of several finished joint CVs (their stored folds; trains nothing)",
    )
    _data_args(p)
    _clip_data_args(p, required=True)
    p.add_argument(
        "--members", type=Path, nargs="+", required=True, help="report folders of finished joint-cv runs"
    )
    p.add_argument("--preset", default="LSTM_AT_400", choices=sorted(PRESETS), help="each member's row")
    p.add_argument("--folds", type=int, default=5, help="folds over the clip-labelled dataset")
    p.add_argument("--out", type=Path, required=True, help="report folder")
    p.add_argument("--quoted", type=Path, default=None, help="JSON list of rows measured elsewhere")
    p.add_argument("--probe", action="store_true", help="add the probes' rows (same folds)")
    _smoothing_args(p)
    p = sub.add_parser("ridge", help="per-frame ridge baseline CV and its input-level sensitivity")
    _data_args(p)
    p.add_argument("--folds", type=int, default=10, help="number of folds (same assignment as cv)")
    p.add_argument("--lam", type=float, default=1e3, help="ridge penalty on standardised features")
    p.add_argument("--out", type=Path, required=True, help="report folder")
    p = sub.add_parser("train", help="train one model on all clips (10%% held out for early stopping)")
    _data_args(p)
    _train_args(p)
    p.add_argument("--preset", default="LSTM_AT_400", choices=sorted(PRESETS))
    p.add_argument("--out", type=Path, required=True, help="checkpoint file (.pt)")
    _clip_data_args(p, required=False)
    p = sub.add_parser("export", help="export a checkpoint to ONNX (raw features in, contract in metadata)")
    p.add_argument(
        "--checkpoint",
        type=Path,
        nargs="+",
        required=True,
        help="checkpoint from `train`; two or more (same architecture and training data): their mean",
    )
    p.add_argument("--out", type=Path, default=REPO / "models" / "default.onnx", help="ONNX file to write")
    p.add_argument("--name", required=True, help="model name stored as mer.model_name")
    p.add_argument("--version", required=True, help="model version stored as mer.model_version")
    p.add_argument(
        "--metrics", type=Path, default=None, help="JSON file stored as mer.metrics (e.g. CV results)"
    )
    p.add_argument("--fp16", action="store_true", help="store large weights as float16 (half the file size)")
    p.add_argument(
        "--cv-report",
        type=Path,
        default=None,
        help="report.json of the CV that chose the setup (for the card)",
    )
    p.add_argument("--card", type=Path, default=None, help="also write the Markdown model card here")
    p.add_argument(
        "--joint-report", type=Path, default=None, help="report.json of the joint (4Q) CV, for the card"
    )
    _smoothing_args(p)
    p.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="LABEL=REPORT",
        help="another CV report.json shown in the card's before/after table (repeatable)",
    )
    p = sub.add_parser(
        "card", help="refresh an exported model's card from newer CV reports (weights untouched)"
    )
    p.add_argument("--model", type=Path, default=REPO / "models" / "default.onnx", help="ONNX model")
    p.add_argument("--cv-report", type=Path, default=None, help="report.json of the per-frame CV")
    p.add_argument("--joint-report", type=Path, default=None, help="report.json of the joint (4Q) CV")
    p.add_argument("--card", type=Path, default=None, help="also write the Markdown model card here")
    p = sub.add_parser("step", help="add the step graph (streams, slices of long clips) beside a model")
    p.add_argument("--model", type=Path, default=REPO / "models" / "default.onnx", help="ONNX model")
    p.add_argument(
        "--steps", type=int, default=1200, help="frames of the parity check against the sequence graph"
    )
    p = sub.add_parser(
        "real-music", help="run a model over real recordings from Debian packages (report data)"
    )
    p.add_argument("--model", type=Path, default=REPO / "models" / "default.onnx", help="ONNX model")
    p.add_argument(
        "--out", type=Path, default=REPO / "docs" / "real-music", help="folder for tables and figures"
    )
    p.add_argument(
        "--cache", type=Path, default=DEFAULT_CACHE, help="cache folder (packages go to real_music/)"
    )
    return parser


COMMANDS = {
    "setup": cmd_setup,
    "real-music": cmd_real_music,
    "ridge": cmd_ridge,
    "datasets": cmd_datasets,
    "extract": cmd_extract,
    "cv": cmd_cv,
    "joint-cv": cmd_joint_cv,
    "joint-ensemble": cmd_joint_ensemble,
    "train": cmd_train,
    "export": cmd_export,
    "card": cmd_card,
    "step": cmd_step,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m model_export``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(message)s"
    )
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
