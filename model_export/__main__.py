r"""Command line: ``python -m model_export <command> --help``.

Typical VGMIDI run (features and renders live in ``cache/``, outside git)::

    python -m model_export setup                       # fluidsynth + GM soundfont (apt)
    python -m model_export extract --dataset vgmidi --root ../shared/data/vgmidi --rate 16000
    python -m model_export cv --dataset vgmidi --root ../shared/data/vgmidi --rate 16000 \
        --presets LSTM_AT_400 LSTM_NAT_400 --folds 10 --out docs/results/vgmidi_16k
    python -m model_export train --dataset vgmidi --root ../shared/data/vgmidi --rate 16000 \
        --preset LSTM_AT_400 --out cache/checkpoints/default.pt
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from app.contract import LEVEL_POLICIES, FeatureConfig, ModelContract
from app.features import FeatureExtractor, opensmile_version
from model_export.cache import FeatureCache
from model_export.datasets.base import TARGETS, Clip, originals, variants_by_original
from model_export.datasets.registry import RECIPES
from model_export.datasets.registry import load as load_dataset
from model_export.evaluate import cross_validate, plot_figures, write_report
from model_export.model import PRESETS
from model_export.train import TrainConfig, TrainResult, train, validation_split

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = REPO / "cache"
log = logging.getLogger("model_export")


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
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="recipe-specific option, e.g. --option n_clips=40 (values parsed as JSON when possible)",
    )


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--targets", nargs="+", default=list(TARGETS), choices=TARGETS, help="outputs to learn")
    p.add_argument("--epochs", type=int, default=30, help="maximum epochs (paper: 30)")
    p.add_argument("--batch-size", type=int, default=10, help="sequences per update (paper: 10)")
    p.add_argument("--lr", type=float, default=1e-3, help="RMSProp learning rate")
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
    )


def load_data(args: argparse.Namespace) -> tuple[list[Clip], dict[str, np.ndarray], FeatureExtractor]:
    """Load a dataset's clips and their cached features (extracting what is missing)."""
    options = _parse_options(args.option)
    if args.dataset == "vgmidi":
        options.setdefault("cache_dir", args.cache / "vgmidi")
    t0 = time.perf_counter()
    clips = load_dataset(args.dataset, args.root, **options)
    log.info(
        "%s: %d clips, %d frames (%.0fs)",
        args.dataset,
        len(clips),
        sum(c.num_frames for c in clips),
        time.perf_counter() - t0,
    )
    extractor = FeatureExtractor(FeatureConfig(sample_rate=args.rate, level_policy=args.level_policy))
    cache = FeatureCache(args.cache / "features", extractor)
    t0 = time.perf_counter()
    feats = cache.load_all(clips, workers=args.workers)
    log.info("features of %d clips in %s (%.0fs)", len(feats), cache.folder, time.perf_counter() - t0)
    return clips, feats, extractor


def build_contract(result: TrainResult, extractor: FeatureExtractor, cfg: TrainConfig) -> ModelContract:
    """The I/O contract of a trained model."""
    contract = ModelContract(
        features=extractor.config,
        num_features=extractor.num_features,
        feature_names_sha256=extractor.feature_names_sha256,
        opensmile_version=opensmile_version(),
        norm_mean=result.normaliser.mean.numpy(),
        norm_std=result.normaliser.std.numpy(),
        outputs=tuple(cfg.targets),
        feature_transform=cfg.feature_transform,
        clip_z=cfg.clip_z,
    )
    contract.validate()
    return contract


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
    clips, feats, _ = load_data(args)
    frames = sum(f.shape[0] for f in feats.values())
    print(f"{len(feats)}/{len(clips)} clips, {frames} frames of features cached")
    return 0 if len(feats) == len(clips) else 1


def cmd_cv(args: argparse.Namespace) -> int:
    """Cross-validate presets and write the report."""
    clips, feats, _ = load_data(args)
    results = []
    for preset in args.presets:
        cfg = _train_config(args, preset)
        results.append(
            cross_validate(
                preset,
                cfg,
                clips,
                feats,
                k=args.folds,
                folds_to_run=args.folds_to_run,
                state_dir=None if args.no_resume else args.cache / "cv",
            )
        )
    n_variants = sum(1 for c in clips if c.variant_of and c.clip_id in feats)
    augmented = f" + {n_variants} augmented renditions, in training parts only" if n_variants else ""
    notes = (
        f"Dataset `{args.dataset}` ({len(feats) - n_variants} clips{augmented}), "
        f"analysis rate {args.rate} Hz, "
        f"{args.folds}-fold CV grouped by piece; metrics on pooled out-of-fold predictions. "
        f"Command: `python -m model_export {' '.join(sys.argv[1:])}`"
    )
    doc = write_report(results, args.out, f"{args.dataset} at {args.rate} Hz", notes)
    at = [r for r in results if "_AT_" in r.name]
    nat = [r for r in results if "_NAT_" in r.name]
    if at and nat:
        plot_figures(at[0], nat[0], args.out)
    print(json.dumps([{"model": r["model"], **r["metrics"]} for r in doc["rows"]], indent=1))
    return 0


def cmd_ridge(args: argparse.Namespace) -> int:
    """Ridge baseline: CV report, and how much its predictions move with the input level."""
    from app.audio import decode
    from model_export.baseline import ridge_cv

    clips, feats, extractor = load_data(args)
    result, model = ridge_cv(clips, feats, k=args.folds, lam=args.lam)
    notes = (
        f"Dataset `{args.dataset}` ({len(feats)} clips), analysis rate {args.rate} Hz, level policy "
        f"`{args.level_policy}`, {args.folds}-fold CV grouped by piece (same folds as `cv`); per-frame ridge "
        f"on signed-log1p features standardised per training fold. "
        f"Command: `python -m model_export {' '.join(sys.argv[1:])}`"
    )
    doc = write_report([result], args.out, f"{args.dataset} ridge baseline at {args.rate} Hz", notes)
    # Level sensitivity: the first clip's audio at three RMS levels through the same feature path.
    clip = next(c for c in clips if c.clip_id in feats)
    audio = decode(clip.audio_path, extractor.config.sample_rate)
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    preds = {}
    for dbfs in (-30.0, -20.0, -10.0):
        scaled = (audio * (10 ** (dbfs / 20) / rms)).astype(np.float32)
        preds[dbfs] = model.predict(extractor.extract(scaled).values)
    shift = {
        f"{a:g} vs {b:g} dBFS": np.mean(np.abs(preds[a] - preds[b]), axis=0).round(4).tolist()
        for a, b in ((-30.0, -20.0), (-20.0, -10.0), (-30.0, -10.0))
    }
    doc["level_sensitivity"] = {"clip": clip.clip_id, "mean_abs_change_arousal_valence": shift}
    (args.out / "report.json").write_text(json.dumps(doc, indent=2, default=float) + "\n")
    print(json.dumps({"metrics": doc["rows"][0]["metrics"], "level_sensitivity": shift}, indent=1))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train one model on a whole dataset and save a checkpoint."""
    from model_export.export import save_checkpoint

    clips, feats, extractor = load_data(args)
    usable = [c for c in originals(clips) if c.clip_id in feats]
    variants = variants_by_original(clips)
    cfg = _train_config(args, args.preset)
    tr, va = validation_split([c.group for c in usable], cfg.val_fraction, cfg.seed)
    train_variants = [
        [feats[v.clip_id] for v in variants.get(usable[i].clip_id, []) if v.clip_id in feats] for i in tr
    ]
    result = train(
        cfg,
        [feats[usable[i].clip_id] for i in tr],
        [usable[i].targets for i in tr],
        [feats[usable[i].clip_id] for i in va],
        [usable[i].targets for i in va],
        train_variants=train_variants,
    )
    contract = build_contract(result, extractor, cfg)
    save_checkpoint(
        args.out,
        result.model,
        contract,
        cfg.to_dict(),
        dataset=args.dataset,
        history=result.history,
        best_epoch=result.best_epoch,
        clips=len(usable),
        augmentation=_augmentation_meta(args, sum(len(v) for v in train_variants)),
    )
    print(f"saved {args.out} (best epoch {result.best_epoch}, {result.seconds:.0f}s)")
    return 0


def _augmentation_meta(args: argparse.Namespace, variant_clips: int) -> dict[str, Any]:
    """What the checkpoint (and so the model card) records about augmentation."""
    options = _parse_options(args.option)
    meta: dict[str, Any] = {"variant_clips": variant_clips}
    if args.dataset == "vgmidi" and options.get("augment"):
        from model_export.datasets import vgmidi

        meta.update(
            vgmidi.augmentation_facts(
                int(options["augment"]),
                int(options.get("augment_seed", 0)),
                options.get("augment_exclude", ()),
            )
        )
    return meta


def cmd_export(args: argparse.Namespace) -> int:
    """Export a checkpoint to ONNX with its contract and model card in the metadata, verified."""
    from model_export.card import CARD_KEY, build_card, load_report, render_markdown
    from model_export.export import export_checkpoint, load_checkpoint

    model, contract, meta = load_checkpoint(args.checkpoint)
    extra: dict[str, str] = {}
    report = load_report(args.cv_report) if args.cv_report is not None else None
    comparisons = []
    for item in args.compare:
        label, sep, path = item.rpartition("=")  # labels may contain "=", report paths rarely do
        if not sep or not label or not path:
            raise SystemExit(f"--compare expects LABEL=REPORT.json, got {item!r}")
        comparisons.append((label, _display_path(Path(path)), load_report(Path(path))))
    card = build_card(
        model_name=args.name,
        model_version=args.version,
        contract=contract,
        checkpoint_meta=meta,
        model_config=model.config.to_dict(),
        cv_report=report,
        cv_source=None if args.cv_report is None else _display_path(args.cv_report),
        weights_dtype="float16" if args.fp16 else "float32",
        comparisons=comparisons,
    )
    extra[CARD_KEY] = json.dumps(card, sort_keys=True)
    if args.metrics is not None:
        extra["mer.metrics"] = json.dumps(json.loads(args.metrics.read_text()), sort_keys=True)
    elif card["cross_validation"] and card["cross_validation"]["this_preset"]:
        rows = {r["model"]: r for r in card["cross_validation"]["rows"]}
        preset = card["architecture"]["preset"]
        extra["mer.metrics"] = json.dumps(
            {"cv": rows[preset]["metrics"], "cv_folds": rows[preset]["folds"]}, sort_keys=True
        )
    t0 = time.perf_counter()
    path = export_checkpoint(
        args.checkpoint,
        args.out,
        model_name=args.name,
        model_version=args.version,
        extra_metadata=extra,
        fp16=args.fp16,
    )
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, verified, {time.perf_counter() - t0:.0f}s)")
    if args.card is not None:
        args.card.parent.mkdir(parents=True, exist_ok=True)
        args.card.write_text(render_markdown(card))
        print(f"wrote {args.card}")
    return 0


def cmd_real_music(args: argparse.Namespace) -> int:
    """Run a model over real recordings from Debian packages and write the sanity report's data."""
    from model_export.real_music import run

    summary = run(args.model, args.out, args.cache / "real_music")
    print(json.dumps(summary, indent=1))
    return 0


def _display_path(path: Path) -> str:
    """``path`` relative to the repository when inside it (cards should not name build machines)."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m model_export``."""
    parser = argparse.ArgumentParser(
        prog="python -m model_export",
        description=(
            "Train and evaluate the attentive LSTM of Chaki et al. 2020 on per-frame arousal/valence. "
            "Features come from app.features (the service's own feature path) and are cached per "
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
        help="retrain every fold instead of reusing folds finished earlier (stored under CACHE/cv)",
    )
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
    p = sub.add_parser("export", help="export a checkpoint to ONNX (raw features in, contract in metadata)")
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint from `train`")
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
        "--compare",
        action="append",
        default=[],
        metavar="LABEL=REPORT",
        help="another CV report.json shown in the card's before/after table (repeatable)",
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
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(message)s"
    )
    commands = {
        "setup": cmd_setup,
        "real-music": cmd_real_music,
        "ridge": cmd_ridge,
        "datasets": cmd_datasets,
        "extract": cmd_extract,
        "cv": cmd_cv,
        "train": cmd_train,
        "export": cmd_export,
    }
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
