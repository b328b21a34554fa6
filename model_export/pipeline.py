"""The training pipeline's steps, shared by the CLI, the CV and the reports.

Data loading (a recipe's clips and their cached features through the one feature path), contract
building, training on a whole dataset, cross-validation reports, and export with the model card: each
is one function here; ``python -m model_export`` only parses arguments and calls them.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from app.core.contract import FeatureConfig, ModelContract
from app.core.features import FeatureExtractor, opensmile_version
from app.core.types import FloatArray
from model_export.cache import FeatureCache
from model_export.checkpoint import load_checkpoint, save_checkpoint
from model_export.datasets.base import Clip, originals, variants_by_original
from model_export.datasets.registry import load as load_dataset
from model_export.evaluate import CVResult, cross_validate, paired_tests, plot_figures, write_report
from model_export.joint import (
    JointCVResult,
    cross_validate_joint,
    ensemble_name,
    ensemble_result,
    train_joint,
)
from model_export.joint_report import reference_row, write_joint_report
from model_export.smoothing import Smoothing
from model_export.splits import validation_split
from model_export.train import TrainConfig, TrainResult, train

__all__ = [
    "REPO",
    "DataSpec",
    "LoadedData",
    "augmentation_meta",
    "build_contract",
    "cv_presets",
    "display_path",
    "export_with_card",
    "joint_cv",
    "joint_ensemble",
    "load_data",
    "refresh_model_card",
    "train_and_save",
]

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("model_export")


@dataclass(frozen=True)
class DataSpec:
    """Which data to load, and through which feature path.

    Attributes:
        dataset: Recipe name (``model_export.datasets.registry.RECIPES``).
        root: Dataset folder (for ``synthetic``: where to write).
        rate: Analysis sample rate in Hz.
        cache: Cache folder for features (and renders).
        level_policy: Input level normalisation of the feature path.
        chunk_frames: Chunk length of the feature path in frames (0: one openSMILE pass per clip).
        chunk_preroll_frames: Pre-roll of each chunk in frames.
        workers: Parallel extraction threads (``None``: one per core).
        options: Recipe-specific keyword options.
    """

    dataset: str
    root: Path
    rate: int = 16_000
    cache: Path = REPO / "cache"
    level_policy: str = "gated-rms"
    chunk_frames: int = 0
    chunk_preroll_frames: int = 0
    workers: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def feature_config(self) -> FeatureConfig:
        """The feature path's configuration these settings ask for (validated by the extractor)."""
        return FeatureConfig(
            sample_rate=self.rate,
            level_policy=self.level_policy,
            chunk_frames=self.chunk_frames,
            chunk_preroll_frames=self.chunk_preroll_frames,
        )

    def recipe_options(self) -> dict[str, Any]:
        """The recipe's keyword options, with VGMIDI's renders under the cache folder by default."""
        options = dict(self.options)
        if self.dataset == "vgmidi":
            options.setdefault("cache_dir", self.cache / "vgmidi")
        return options


@dataclass(frozen=True)
class LoadedData:
    """A dataset's clips, their features by clip id, and the extractor that computed them."""

    clips: list[Clip]
    features: dict[str, FloatArray]
    extractor: FeatureExtractor


def load_data(spec: DataSpec) -> LoadedData:
    """Load a dataset's clips and their cached features (extracting what is missing)."""
    t0 = time.perf_counter()
    clips = load_dataset(spec.dataset, spec.root, **spec.recipe_options())
    log.info(
        "%s: %d clips, %d frames (%.0fs)",
        spec.dataset,
        len(clips),
        sum(c.num_frames for c in clips),
        time.perf_counter() - t0,
    )
    extractor = FeatureExtractor(spec.feature_config())
    cache = FeatureCache(spec.cache / "features", extractor)
    t0 = time.perf_counter()
    feats = cache.load_all(clips, workers=spec.workers)
    log.info("features of %d clips in %s (%.0fs)", len(feats), cache.folder, time.perf_counter() - t0)
    return LoadedData(clips, feats, extractor)


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


def augmentation_meta(spec: DataSpec, variant_clips: int) -> dict[str, Any]:
    """What the checkpoint (and so the model card) records about augmentation."""
    meta: dict[str, Any] = {"variant_clips": variant_clips}
    if spec.dataset == "vgmidi" and spec.options.get("augment"):
        from model_export.datasets import vgmidi

        meta.update(
            vgmidi.augmentation_facts(
                int(spec.options["augment"]),
                int(spec.options.get("augment_seed", 0)),
                spec.options.get("augment_exclude", ()),
            )
        )
    return meta


def train_and_save(
    spec: DataSpec,
    data: LoadedData,
    cfg: TrainConfig,
    out: Path,
    clips: tuple[DataSpec, LoadedData] | None = None,
) -> TrainResult:
    """Train one model on all of a dataset (a group-wise ``val_fraction`` held out for early stopping).

    Args:
        spec: The (frame-labelled) dataset.
        data: Its clips and features.
        cfg: Training configuration.
        out: Checkpoint file to write.
        clips: A clip-labelled dataset to train on as well (:mod:`model_export.joint`); its
            validation share is held out of it the same way.

    Returns:
        The training result; the checkpoint is written to ``out``.

    Raises:
        ValueError: For augmented variants together with clip-labelled data (not supported).
    """
    feats = data.features
    usable = [c for c in originals(data.clips) if c.clip_id in feats]
    variants = variants_by_original(data.clips)
    dataset, n_clips, n_variants = spec.dataset, len(usable), 0
    if clips is not None:
        clip_spec, clip_data = clips
        if variants:
            raise ValueError("augmented renditions cannot be combined with clip-labelled data yet")
        extra = [c for c in clip_data.clips if c.clip_id in clip_data.features]
        result = train_joint(cfg, usable, extra, {**feats, **clip_data.features})
        dataset, n_clips = f"{spec.dataset}+{clip_spec.dataset}", n_clips + len(extra)
    else:
        tr, va = validation_split([c.group for c in usable], cfg.val_fraction, cfg.seed)
        train_variants = [
            [feats[v.clip_id] for v in variants.get(usable[i].clip_id, []) if v.clip_id in feats] for i in tr
        ]
        n_variants = sum(len(v) for v in train_variants)
        result = train(
            cfg,
            [feats[usable[i].clip_id] for i in tr],
            [usable[i].targets for i in tr],
            [feats[usable[i].clip_id] for i in va],
            [usable[i].targets for i in va],
            train_variants=train_variants,
        )
    save_checkpoint(
        out,
        result.model,
        build_contract(result, data.extractor, cfg),
        cfg.to_dict(),
        dataset=dataset,
        history=result.history,
        best_epoch=result.best_epoch,
        clips=n_clips,
        augmentation=augmentation_meta(spec, n_variants),
    )
    return result


R = TypeVar("R", CVResult, JointCVResult)


def _with_folds(results: list[R], out: Path) -> list[R]:
    """The results that have folds in (a report-only run can find none for a preset): a report row each."""
    for r in results:
        if not r.folds_run:
            log.warning("%s: no folds stored under %s; left out of the report", r.name, out / "folds")
    return [r for r in results if r.folds_run]


def cv_presets(
    spec: DataSpec,
    data: LoadedData,
    configs: Sequence[TrainConfig],
    *,
    folds: int,
    folds_to_run: int | None,
    out: Path,
    command: str,
    resume: bool = True,
    train_missing: bool = True,
) -> tuple[list[CVResult], dict[str, Any]]:
    """Cross-validate each configuration on the same folds; write the report and, for AT vs NAT, figures.

    Finished folds are stored under ``out/folds`` (float16, a few hundred kB each: committed, so
    sessions on other machines add folds instead of starting again) and reused for the same key.

    Args:
        spec: The data (named in the report).
        data: Its clips and features.
        configs: One training configuration per report row (named by its preset).
        folds: Number of folds.
        folds_to_run: Run only the first N folds.
        out: Report folder.
        command: The command line, quoted in the report's notes.
        resume: Reuse folds stored under ``out/folds`` by an earlier run with the same key.
        train_missing: Train the folds that are not stored (False: a report of the stored ones only).

    Returns:
        The results and the report's JSON content.
    """
    results = [
        cross_validate(
            cfg.preset,
            cfg,
            data.clips,
            data.features,
            k=folds,
            folds_to_run=folds_to_run,
            state_dir=out / "folds" if resume else None,
            train_missing=train_missing,
        )
        for cfg in configs
    ]
    results = _with_folds(results, out)
    n_variants = sum(1 for c in data.clips if c.variant_of and c.clip_id in data.features)
    augmented = f" + {n_variants} augmented renditions, in training parts only" if n_variants else ""
    notes = (
        f"Dataset `{spec.dataset}` ({len(data.features) - n_variants} clips{augmented}), "
        f"analysis rate {spec.rate} Hz, "
        f"{folds}-fold CV grouped by piece; metrics on pooled out-of-fold predictions. "
        f"Command: `{command}`"
    )
    pairs = [
        (a, n)
        for a in results
        for n in results
        if "_AT_" in a.name and n.name == a.name.replace("_AT_", "_NAT_") and a.clip_ids and n.clip_ids
    ]
    notes += " Folds in: " + ", ".join(f"{r.name} {r.folds_run}/{r.folds_total}" for r in results) + "."
    doc = write_report(
        results,
        out,
        f"{spec.dataset} at {spec.rate} Hz",
        notes,
        paired=[paired_tests(a, n) for a, n in pairs],
    )
    if pairs:
        plot_figures(pairs[0][0], pairs[0][1], out)
    return results, doc


def joint_cv(
    spec: DataSpec,
    clip_spec: DataSpec,
    configs: Sequence[TrainConfig],
    *,
    folds: int,
    folds_to_run: int | None,
    out: Path,
    command: str,
    references: Sequence[Path] = (),
    quoted: Path | None = None,
    smoothing: Smoothing | None = None,
    probe: bool = False,
    train_missing: bool = True,
    train_folds: Collection[int] | None = None,
) -> tuple[list[JointCVResult], dict[str, Any]]:
    """The joint protocol (:mod:`model_export.joint`) for each configuration, and its report.

    Folds are stored under ``out/folds`` (small files, meant to be committed) and reused when they
    are there for the same key, so the report can be rebuilt, or a CV resumed, on any machine.

    Args:
        spec: The frame-labelled dataset (its fixed test fold is fold 1 of its 10-fold split).
        clip_spec: The clip-labelled dataset whose groups form the folds.
        configs: One training configuration per row (named by its preset).
        folds: Folds over the clip-labelled dataset.
        folds_to_run: Run only the first N folds.
        out: Report folder.
        command: The command line, quoted in the report's notes.
        references: Exported models to score on all clip-labelled clips (e.g. the shipped model).
        quoted: A JSON list of rows measured elsewhere, each with a ``source``.
        smoothing: Also report each configuration with this output smoothing (an extra row).
        probe: Add the probes' rows, linear and RBF-SVM (:func:`model_export.baseline.clip_probe_cv`, same
            folds).
        train_missing: Train the folds that are not stored (False: a report of the stored ones).
        train_folds: Train only these missing folds (0-based); see :func:`cross_validate_joint`.

    Returns:
        The results and the report's JSON content.
    """
    data, clip_data = load_data(spec), load_data(clip_spec)
    features = {**data.features, **clip_data.features}
    results = [
        cross_validate_joint(
            cfg.preset,
            cfg,
            data.clips,
            clip_data.clips,
            features,
            k=folds,
            folds_to_run=folds_to_run,
            state_dir=out / "folds",
            train_missing=train_missing,
            train_folds=train_folds,
        )
        for cfg in configs
    ]
    results = _with_folds(results, out)
    if smoothing is not None:
        results += [r.smoothed(smoothing) for r in results]
    rows = [reference_row(path, clip_data.clips, clip_data.features) for path in references]
    rows += _quoted_and_probe_rows(clip_data, folds, quoted, probe)
    genres = _clip_genres(clip_spec)
    n_frame = sum(1 for c in originals(data.clips) if c.clip_id in data.features)
    notes = (
        f"Clip-labelled `{clip_spec.dataset}` ({len(clip_data.features)} clips, {folds}-fold CV grouped by "
        f"{'artist' if clip_spec.dataset == 'fourq' else 'group'}); every fold also trains on frame-labelled "
        f"`{spec.dataset}` ({n_frame} pieces) except its fold 1 of 10 by piece, whose test pieces every "
        f"fold's model predicts (frame scores: mean ± std over the folds' models). Analysis rate "
        f"{spec.rate} Hz. Clip prediction = mean of the clip's frames; quadrant of that mean. "
        f"Command: `{command}`"
    )
    doc = write_joint_report(
        results,
        out,
        f"{spec.dataset} + {clip_spec.dataset} at {spec.rate} Hz",
        notes,
        rows,
        genres,
        confidence=_clip_confidence(clip_data),
    )
    return results, doc


def _quoted_and_probe_rows(
    clip_data: LoadedData, folds: int, quoted: Path | None, probe: bool
) -> list[dict[str, Any]]:
    """A joint report's rows measured elsewhere (``quoted``) and its probes' rows on the same folds."""
    rows: list[dict[str, Any]] = json.loads(quoted.read_text()) if quoted is not None else []
    if probe:
        from model_export.baseline import PROBES, clip_probe_row

        rows += [clip_probe_row(clip_data.clips, clip_data.features, folds, kind) for kind in PROBES]
    return rows


def _clip_confidence(clip_data: LoadedData) -> dict[str, float]:
    """Label confidence per clip id (4Q: PQuad), for the report's scores by confidence."""
    return {c.clip_id: c.confidence for c in clip_data.clips}


def _clip_genres(clip_spec: DataSpec) -> dict[str, Sequence[str]] | None:
    """Genres per clip id from the clip-labelled dataset's metadata (4Q), for per-genre accuracy."""
    if clip_spec.dataset != "fourq":
        return None
    from model_export.datasets.fourq import read_metadata

    return {song: info.genres for song, info in read_metadata(clip_spec.root).items()}


def joint_ensemble(
    spec: DataSpec,
    clip_spec: DataSpec,
    member_dirs: Sequence[Path],
    *,
    preset: str,
    folds: int,
    out: Path,
    command: str,
    quoted: Path | None = None,
    smoothing: Smoothing | None = None,
    probe: bool = False,
) -> tuple[JointCVResult, dict[str, Any]]:
    """The joint protocol's report for the mean of several finished joint CVs (an ensemble); trains nothing.

    Each member is the ``preset`` row of a finished :func:`joint_cv` run in ``member_dirs`` (its
    configuration is read from that run's ``report.json``, its folds restored from its ``folds``
    folder, so only the stored folds of exactly that configuration on these features count). The
    report shows every member and their mean, each also smoothed, beside the probes.

    Args:
        spec: The frame-labelled dataset, as in the members' runs.
        clip_spec: The clip-labelled dataset, as in the members' runs.
        member_dirs: Two or more report folders of :func:`joint_cv` runs over all ``folds`` folds.
        preset: Which row of each report is the member.
        folds: Folds over the clip-labelled dataset (the members' k).
        out: Report folder.
        command: The command line, quoted in the report's notes.
        quoted: A JSON list of rows measured elsewhere, each with a ``source``.
        smoothing: Also report every row with this output smoothing (the ensemble's as it would ship).
        probe: Add the probes' rows (same folds).

    Returns:
        The ensemble's result (unsmoothed) and the report's JSON content.

    Raises:
        ValueError: If a folder has no report with a ``preset`` row, or not all of its folds are stored.
    """
    data, clip_data = load_data(spec), load_data(clip_spec)
    features = {**data.features, **clip_data.features}
    members = []
    for d in member_dirs:
        report = d / "report.json"
        rows = json.loads(report.read_text())["rows"] if report.exists() else []
        row = next((r for r in rows if r["model"] == preset and "config" in r), None)
        if row is None:
            raise ValueError(f"{report}: no joint CV row {preset!r} to take as a member")
        cfg = TrainConfig.from_dict(row["config"])
        result = cross_validate_joint(
            preset,
            cfg,
            data.clips,
            clip_data.clips,
            features,
            k=folds,
            state_dir=d / "folds",
            train_missing=False,
        )
        if result.folds_run != folds:
            raise ValueError(
                f"{d}: {result.folds_run} of {folds} folds of {preset} are stored for these features; an "
                "ensemble needs every fold of every member"
            )
        members.append(replace(result, name=f"{preset} ({d.name})"))
    ensemble = ensemble_result(ensemble_name(preset, len(members)), members)
    results = [*members, ensemble]
    if smoothing is not None:
        results += [r.smoothed(smoothing) for r in results]
    rows = _quoted_and_probe_rows(clip_data, folds, quoted, probe)
    genres = _clip_genres(clip_spec)
    notes = (
        f"The mean of {len(members)} {preset} models' predictions, each trained on the same "
        f"{folds} folds of `{clip_spec.dataset}` (grouped by "
        f"{'artist' if clip_spec.dataset == 'fourq' else 'group'}) plus frame-labelled `{spec.dataset}` "
        f"with its own recipe: {', '.join(display_path(d) for d in member_dirs)} (their stored folds; "
        f"nothing retrained). Clip prediction = mean of the clip's frames; quadrant of that mean. "
        f"Command: `{command}`"
    )
    doc = write_joint_report(
        results,
        out,
        f"{spec.dataset} + {clip_spec.dataset} at {spec.rate} Hz: mean of {len(members)} models",
        notes,
        rows,
        genres,
        detailed=[r.name for r in results if r.members],
        confidence=_clip_confidence(clip_data),
    )
    return ensemble, doc


def display_path(path: Path) -> str:
    """``path`` relative to the repository when inside it (cards should not name build machines)."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def export_with_card(
    checkpoint: Path | Sequence[Path],
    out: Path,
    *,
    name: str,
    version: str,
    fp16: bool = False,
    cv_report: Path | None = None,
    compare: Sequence[tuple[str, Path]] = (),
    metrics: Path | None = None,
    card_path: Path | None = None,
    smoothing: Smoothing | None = None,
    joint_report: Path | None = None,
) -> Path:
    """Export a checkpoint to ONNX with its contract and model card in the metadata, verified.

    Args:
        checkpoint: The ``.pt`` file from ``train``, or several (the graph computes their mean;
            :func:`model_export.export.export_checkpoint`).
        out: The ONNX file to write.
        name: ``mer.model_name``.
        version: ``mer.model_version``.
        fp16: Store large weights as float16.
        cv_report: ``report.json`` of the CV that chose the setup (for the card).
        compare: ``(label, report.json)`` of other CV runs for the card's before/after table.
        metrics: A JSON file stored as ``mer.metrics`` instead of the card's CV row.
        card_path: Also write the card as Markdown here.
        smoothing: Causal output smoothing at the end of the graph.
        joint_report: ``report.json`` of the joint (clip-level) CV behind the model, for the card.

    Returns:
        The written ONNX path (its step graph is written beside it, see
        :func:`model_export.step.add_step_graph`).
    """
    from model_export.card import CARD_KEY, build_card, card_metrics, load_report, render_markdown
    from model_export.export import export_checkpoint
    from model_export.step import add_step_graph

    paths = [checkpoint] if isinstance(checkpoint, Path) else list(checkpoint)
    loaded = [load_checkpoint(path) for path in paths]
    model, contract, meta = loaded[0]
    card = build_card(
        model_name=name,
        model_version=version,
        contract=contract,
        checkpoint_meta=meta,
        members=[m for _, _, m in loaded] if len(loaded) > 1 else None,
        model_config=model.config.to_dict(),
        cv_report=load_report(cv_report) if cv_report is not None else None,
        cv_source=None if cv_report is None else display_path(cv_report),
        weights_dtype="float16" if fp16 else "float32",
        comparisons=[(label, display_path(path), load_report(path)) for label, path in compare],
        smoothing=smoothing,
        joint_cv=None if joint_report is None else (display_path(joint_report), load_report(joint_report)),
    )
    extra = {CARD_KEY: json.dumps(card, sort_keys=True)}
    if metrics is not None:
        extra["mer.metrics"] = json.dumps(json.loads(metrics.read_text()), sort_keys=True)
    elif (selected := card_metrics(card)) is not None:
        extra["mer.metrics"] = json.dumps(selected, sort_keys=True)
    path = export_checkpoint(
        paths,
        out,
        model_name=name,
        model_version=version,
        extra_metadata=extra,
        fp16=fp16,
        smoothing=smoothing,
    )
    # The step graph (streams, slices of long clips), built from the exported weights and checked.
    add_step_graph(path)
    if card_path is not None:
        card_path.parent.mkdir(parents=True, exist_ok=True)
        card_path.write_text(render_markdown(card))
    return path


def refresh_model_card(
    model_path: Path,
    *,
    cv_report: Path | None = None,
    joint_report: Path | None = None,
    card_path: Path | None = None,
) -> dict[str, Any]:
    """Rebuild an exported model's card from newer CV reports, in its metadata and beside it.

    Only the ``mer.card`` entry and, when it was derived from the card, ``mer.metrics`` change: the
    graph, the weights, the contract and the step graph's record stay byte for byte, so the step
    graph beside the model still matches the SHA-256 recorded for it.

    Args:
        model_path: An ONNX file written by :func:`export_with_card`.
        cv_report: ``report.json`` of the per-frame CV whose rows replace the card's.
        joint_report: ``report.json`` of the joint (clip-level) CV whose rows replace the card's.
        card_path: Also write the Markdown card here.

    Returns:
        The new card.

    Raises:
        ValueError: If the model carries no card.
    """
    import onnx

    from model_export.card import CARD_KEY, card_metrics, load_report, refresh_card, render_markdown
    from model_export.export import atomic_path

    proto = onnx.load(str(model_path))
    meta = {p.key: p.value for p in proto.metadata_props}
    if CARD_KEY not in meta:
        raise ValueError(f"{model_path} carries no {CARD_KEY} entry: export it with a card first")
    old = json.loads(meta[CARD_KEY])
    card = refresh_card(
        old,
        cv=None if cv_report is None else (display_path(cv_report), load_report(cv_report)),
        joint_cv=None if joint_report is None else (display_path(joint_report), load_report(joint_report)),
    )
    updates = {CARD_KEY: json.dumps(card, sort_keys=True)}
    # mer.metrics is the card's own row unless the export stored a metrics file of its own instead.
    derived = (old_metrics := card_metrics(old)) is not None and meta.get("mer.metrics") == json.dumps(
        old_metrics, sort_keys=True
    )
    if derived and (new_metrics := card_metrics(card)) is not None:
        updates["mer.metrics"] = json.dumps(new_metrics, sort_keys=True)
    for entry in proto.metadata_props:
        if entry.key in updates:
            entry.value = updates[entry.key]
    with atomic_path(model_path) as tmp:
        onnx.save(proto, str(tmp))
    if card_path is not None:
        card_path.parent.mkdir(parents=True, exist_ok=True)
        card_path.write_text(render_markdown(card))
    return card
