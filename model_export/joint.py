"""Training on per-frame labels and clip-level labels together, and its cross-validation protocol.

Frame-labelled clips (VGMIDI: listeners' ratings per 500 ms frame) keep the paper's per-frame MSE;
clip-labelled clips (4Q: one Russell quadrant per real recording) add a loss on the clip as a whole
(``TrainConfig.clip_loss``, :func:`model_export.train.batch_loss`). Batches are drawn from the union by
length, as always, so they mix both kinds wherever lengths meet; the normaliser's statistics cover
both datasets' training frames.

Protocol (:func:`cross_validate_joint`): k folds over the clip-labelled clips, grouped (4Q: by
artist). Every fold trains on the clip-labelled clips of the other folds *and* on the training part
of one fixed fold of the frame-labelled dataset (VGMIDI's fold 1 of its 10-fold split by piece, the
fold every earlier report used), and predicts both the clip-labelled test fold and those frame test
pieces. Early stopping holds out a group-wise ``val_fraction`` of each dataset's training part.
Clip-level scores pool the k test folds; frame-level scores are each fold's model on the same frame
test pieces (mean and spread over the k models), so a model that wins on real music but loses
VGMIDI's within-piece dynamics shows.

Each finished fold is stored as a small ``.npz`` (float16 predictions, ids, best epoch, seconds) named
by a key of everything it depends on, in a folder that may be committed (``docs/results/<run>/folds``):
a later run on any machine reuses it, and the report is rebuilt from the stored values alone.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from app.core.types import FloatArray
from model_export.baseline import teacher_levels
from model_export.clip_metrics import clip_means, clip_scores, jitter
from model_export.datasets.base import Clip, originals
from model_export.evaluate import cv_run_key, metrics
from model_export.smoothing import Smoothing, smooth_causal
from model_export.splits import group_folds, validation_split
from model_export.train import (
    Supervision,
    TrainConfig,
    TrainResult,
    make_sequences,
    predict,
    train,
)

__all__ = [
    "JointCVResult",
    "JointFold",
    "cross_validate_joint",
    "distilled",
    "ensemble_name",
    "ensemble_result",
    "joint_folds",
    "supervision",
    "train_joint",
]

log = logging.getLogger(__name__)


def supervision(clip: Clip) -> Supervision:
    """How training treats a clip's targets (its ``label_kind`` and ``confidence``)."""
    return Supervision(clip_level=clip.label_kind == "clip", confidence=clip.confidence)


@dataclass(frozen=True)
class JointFold:
    """Indices of one fold: into the frame-labelled clips and into the clip-labelled clips."""

    frame_train: list[int]
    frame_test: list[int]
    clip_train: list[int]
    clip_test: list[int]


def joint_folds(
    frame_groups: Sequence[str],
    clip_groups: Sequence[str],
    k: int,
    *,
    frame_k: int = 10,
    frame_fold: int = 0,
    seed: int = 0,
) -> list[JointFold]:
    """The k folds of the protocol (module docstring); the frame split is the single-dataset CV's."""
    frame_test = group_folds(frame_groups, frame_k, seed)[frame_fold]
    held = set(frame_test)
    frame_train = [i for i in range(len(frame_groups)) if i not in held]
    out = []
    for test in group_folds(clip_groups, k, seed):
        test_set = set(test)
        train_idx = [i for i in range(len(clip_groups)) if i not in test_set]
        out.append(JointFold(frame_train, list(frame_test), train_idx, list(test)))
    return out


def distilled(
    clips: Sequence[Clip],
    features: Mapping[str, FloatArray],
    weight: float,
    folds: int = 5,
    probe: str = "logistic",
) -> list[Clip]:
    """Clip-labelled clips with targets ``(1 - weight) s + weight u`` (``TrainConfig.clip_teacher``).

    ``u`` is the ``probe`` teacher's cross-fitted level (:func:`model_export.baseline.teacher_levels`),
    fitted on these clips alone (a CV fold passes its training clips, never its test clips); fewer
    groups than ``folds`` use one fold per group.
    """
    if weight == 0.0 or not clips:
        return list(clips)
    k = min(folds, len({c.group for c in clips}))
    levels = teacher_levels(clips, features, k=k, probe=probe)
    out = []
    for c in clips:
        signs = np.sign(c.targets[0])
        level = ((1.0 - weight) * signs + weight * levels[c.clip_id]).astype(np.float32)
        out.append(replace(c, targets=np.tile(level, (c.targets.shape[0], 1))))
    return out


def train_joint(
    cfg: TrainConfig,
    frame_clips: Sequence[Clip],
    clip_clips: Sequence[Clip],
    features: Mapping[str, FloatArray],
    seed_offset: int = 0,
) -> TrainResult:
    """Train one model on both kinds of clips, early-stopping on a group-wise share of each.

    Args:
        cfg: Training configuration (its clip loss applies to the clip-labelled clips).
        frame_clips: Frame-labelled training clips.
        clip_clips: Clip-labelled training clips.
        features: Raw features by clip id.
        seed_offset: Added to ``cfg.seed`` for the validation split and the run (one per CV fold).

    With ``cfg.clip_teacher`` the clip-labelled clips' targets are first graded by the linear teacher
    (:func:`distilled`), cross-fitted over exactly these clips, validation part included.
    """
    seed = cfg.seed + seed_offset
    clip_clips = distilled(clip_clips, features, cfg.clip_teacher, cfg.teacher_folds, cfg.clip_teacher_probe)
    train_part: list[Clip] = []
    val_part: list[Clip] = []
    for clips in (frame_clips, clip_clips):
        if not clips:
            continue
        tr, va = validation_split([c.group for c in clips], cfg.val_fraction, seed)
        train_part += [clips[i] for i in tr]
        val_part += [clips[i] for i in va]
    return train(
        replace(cfg, seed=seed),
        [features[c.clip_id] for c in train_part],
        [c.targets for c in train_part],
        [features[c.clip_id] for c in val_part],
        [c.targets for c in val_part],
        train_supervision=[supervision(c) for c in train_part],
        val_supervision=[supervision(c) for c in val_part],
    )


@dataclass
class JointCVResult:
    """Out-of-fold predictions of one configuration under the joint protocol.

    Attributes:
        name: Row name.
        config: The training configuration.
        clip_ids: Clip-labelled test clips, pooled over the folds that ran.
        clip_predictions: Their per-frame predictions.
        clip_signs: Their label signs ``(N, 2)``.
        frame_ids: The frame-labelled test pieces (the same for every fold).
        frame_predictions: Per fold, the per-frame predictions of those pieces.
        frame_targets: Their targets.
        epochs: Best epoch per fold (an ensemble: its first member's; each member's are in ``members``).
        seconds: Training seconds summed over folds (an ensemble: over its members too).
        folds_total: k.
        members: For the mean of several results (:func:`ensemble_result`), those results.
    """

    name: str
    config: TrainConfig
    clip_ids: list[str]
    clip_predictions: list[FloatArray]
    clip_signs: FloatArray
    frame_ids: list[str]
    frame_predictions: list[list[FloatArray]]
    frame_targets: list[FloatArray]
    epochs: list[int]
    seconds: float
    folds_total: int
    members: tuple[JointCVResult, ...] = ()

    @property
    def folds_run(self) -> int:
        """Folds with predictions."""
        return len(self.epochs)

    def clip_scores(self) -> dict[str, Any]:
        """Clip-level scores of the pooled clip means (:func:`model_export.clip_metrics.clip_scores`)."""
        return clip_scores(clip_means(self.clip_predictions), self.clip_signs)

    def frame_scores(self) -> dict[str, Any]:
        """Per-frame metrics on the frame test pieces: each fold's, and their mean and std."""
        per_fold = [
            metrics(preds, self.frame_targets, self.config.targets) for preds in self.frame_predictions
        ]
        summary: dict[str, dict[str, dict[str, float]]] = {}
        for dim in self.config.targets:
            summary[dim] = {
                key: {
                    "mean": float(np.mean([m[dim][key] for m in per_fold])),
                    "std": float(np.std([m[dim][key] for m in per_fold])),
                }
                for key in ("r2", "tau", "mae")
            }
        return {"per_fold": per_fold, "summary": summary}

    def smoothed(self, smoothing: Smoothing) -> JointCVResult:
        """The same predictions after the causal smoother an export with ``smoothing`` ends with."""
        alpha, taps = smoothing.alpha, smoothing.taps
        return replace(
            self,
            name=f"{self.name} + smoothing {alpha:g}",
            clip_predictions=[smooth_causal(p, alpha, taps) for p in self.clip_predictions],
            frame_predictions=[
                [smooth_causal(p, alpha, taps) for p in fold] for fold in self.frame_predictions
            ],
            members=tuple(m.smoothed(smoothing) for m in self.members),
        )

    def jitter(self) -> dict[str, list[float]]:
        """Mean frame-to-frame change of predictions and labels, per output, on the frame test pieces."""
        predicted = [p for preds in self.frame_predictions for p in preds]
        return {"predictions": jitter(predicted), "labels": jitter(self.frame_targets)}


def ensemble_name(preset: str, members: int) -> str:
    """The report row (and card) name of the mean of ``members`` models of one preset."""
    return f"mean of {members} {preset}"


def ensemble_result(name: str, members: Sequence[JointCVResult]) -> JointCVResult:
    """The mean of several configurations' out-of-fold predictions: what their averaged model predicts.

    Each member was trained on the same folds, so clip by clip and frame by frame the mean of their
    predictions is exactly the prediction of a model whose output is the mean of theirs, trained
    fold by fold as they were (an ensemble, :class:`model_export.export.ExportModule`). The
    causal smoothing is linear, so smoothing the mean equals the mean of the smoothed members.

    Args:
        name: Row name.
        members: Two or more results over the same clip and frame test sets, folds and lengths.

    Returns:
        A result with the mean predictions, the first member's configuration and ``members`` set.

    Raises:
        ValueError: If fewer than two members are given, or they disagree on clips, folds or lengths.
    """
    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least two members, got {len(members)}")
    first = members[0]
    for m in members[1:]:
        if m.clip_ids != first.clip_ids or m.frame_ids != first.frame_ids or m.folds_run != first.folds_run:
            raise ValueError(
                f"{m.name} and {first.name} were not run on the same clips and folds "
                f"({len(m.clip_ids)} / {len(first.clip_ids)} clips, {m.folds_run} / {first.folds_run} folds)"
            )
        lengths = [p.shape for p in m.clip_predictions] + [p.shape for f in m.frame_predictions for p in f]
        want = [p.shape for p in first.clip_predictions] + [
            p.shape for f in first.frame_predictions for p in f
        ]
        if lengths != want:
            raise ValueError(f"{m.name} and {first.name} predicted different numbers of frames")

    def mean(arrays: Sequence[FloatArray]) -> FloatArray:
        total: FloatArray = np.stack(arrays).astype(np.float32).mean(axis=0, dtype=np.float64)
        return total.astype(np.float32)

    return replace(
        first,
        name=name,
        clip_predictions=[mean(ps) for ps in zip(*(m.clip_predictions for m in members), strict=True)],
        frame_predictions=[
            [mean(ps) for ps in zip(*folds, strict=True)]
            for folds in zip(*(m.frame_predictions for m in members), strict=True)
        ],
        seconds=float(sum(m.seconds for m in members)),
        members=tuple(members),
    )


def joint_run_key(
    name: str,
    cfg: TrainConfig,
    frame_clips: Sequence[Clip],
    clip_clips: Sequence[Clip],
    features: Mapping[str, FloatArray],
    protocol: Sequence[int],
) -> str:
    """Key of the stored folds: the single-dataset CV key of both datasets plus the protocol and labels."""
    base = cv_run_key(name, cfg, protocol[0], protocol[-1], [*frame_clips, *clip_clips], features)
    digest = hashlib.sha256(f"joint {base} {list(protocol)}".encode())
    for c in (*frame_clips, *clip_clips):
        digest.update(f"{c.clip_id} {c.label_kind} {c.confidence!r}".encode())
    return digest.hexdigest()[:16]


def cross_validate_joint(
    name: str,
    cfg: TrainConfig,
    frame_clips: Sequence[Clip],
    clip_clips: Sequence[Clip],
    features: Mapping[str, FloatArray],
    *,
    k: int = 5,
    frame_k: int = 10,
    frame_fold: int = 0,
    fold_seed: int = 0,
    folds_to_run: int | None = None,
    state_dir: Path | None = None,
    train_missing: bool = True,
    train_folds: Collection[int] | None = None,
) -> JointCVResult:
    """Run (or restore) the joint protocol's folds; see the module docstring.

    Args:
        name: Row name (and the stored folds' prefix).
        cfg: Training configuration.
        frame_clips: Frame-labelled clips (augmented variants are left out).
        clip_clips: Clip-labelled clips.
        features: Raw features by clip id; clips without features are skipped.
        k: Folds over the clip-labelled clips.
        frame_k: Folds of the frame-labelled dataset's split (10: the paper's).
        frame_fold: Which of those folds is the frame test set.
        fold_seed: Seed of both fold assignments.
        folds_to_run: Run only the first N folds.
        state_dir: Where finished folds are stored and found again.
        train_missing: Train the folds that are not stored (False: restore the stored ones only).
        train_folds: Train only these folds (0-based) when they are not stored; the others are restored
            if stored and left out if not. Lets two processes share one CV, each training its own folds.

    Returns:
        The predictions of every fold that ran or was restored, rounded to float16 as stored.
    """
    frames = [c for c in originals(frame_clips) if c.clip_id in features]
    clips = [c for c in clip_clips if c.clip_id in features]
    folds = joint_folds(
        [c.group for c in frames],
        [c.group for c in clips],
        k,
        frame_k=frame_k,
        frame_fold=frame_fold,
        seed=fold_seed,
    )
    key = joint_run_key(name, cfg, frames, clips, features, (k, frame_k, frame_fold, fold_seed))
    frame_test = [frames[i] for i in folds[0].frame_test]
    result = JointCVResult(
        name=name,
        config=cfg,
        clip_ids=[],
        clip_predictions=[],
        clip_signs=np.zeros((0, 2), np.float32),
        frame_ids=[c.clip_id for c in frame_test],
        frame_predictions=[],
        frame_targets=[],
        epochs=[],
        seconds=0.0,
        folds_total=k,
    )
    signs: list[FloatArray] = []
    for f, fold in enumerate(folds[: folds_to_run or k]):
        path = state_dir / f"{name}_{key}_fold{f}.npz" if state_dir is not None else None
        if path is not None and path.exists():
            stored = _load_fold(path)
            log.info("%s fold %d/%d restored from %s", name, f + 1, k, path)
        elif not train_missing or (train_folds is not None and f not in train_folds):
            continue
        else:
            test_clips = [clips[i] for i in fold.clip_test]
            stored = _run_fold(
                cfg,
                [frames[i] for i in fold.frame_train],
                [clips[i] for i in fold.clip_train],
                test_clips,
                frame_test,
                features,
                f,
            )
            if path is not None:
                _save_fold(path, stored)
            log.info(
                "%s fold %d/%d: best epoch %d, %.0fs", name, f + 1, k, stored["best_epoch"], stored["seconds"]
            )
        by_id = {c.clip_id: c for c in clips}
        result.clip_ids += stored["clip_ids"]
        result.clip_predictions += stored["clip_predictions"]
        signs += [np.sign(by_id[cid].targets[0]) for cid in stored["clip_ids"]]
        result.frame_predictions.append(stored["frame_predictions"])
        result.epochs.append(int(stored["best_epoch"]))
        result.seconds += float(stored["seconds"])
    result.clip_signs = np.asarray(signs, np.float32).reshape(-1, 2)
    n = [p.shape[0] for p in result.frame_predictions[0]] if result.frame_predictions else []
    result.frame_targets = [c.targets[:t] for c, t in zip(frame_test, n, strict=False)]
    return result


def _run_fold(
    cfg: TrainConfig,
    frame_train: Sequence[Clip],
    clip_train: Sequence[Clip],
    clip_test: Sequence[Clip],
    frame_test: Sequence[Clip],
    features: Mapping[str, FloatArray],
    fold: int,
) -> dict[str, Any]:
    """Train one fold's model and predict its test clips, rounded to float16 as they are stored."""
    trained = train_joint(cfg, frame_train, clip_train, features, fold)
    test = [*clip_test, *frame_test]
    seqs = make_sequences(
        [features[c.clip_id] for c in test], [c.targets for c in test], trained.normaliser, cfg.targets
    )
    preds = [p.astype(np.float16).astype(np.float32) for p in predict(trained.model, seqs)]
    return {
        "clip_ids": [c.clip_id for c in clip_test],
        "clip_predictions": preds[: len(clip_test)],
        "frame_predictions": preds[len(clip_test) :],
        "best_epoch": trained.best_epoch,
        "seconds": trained.seconds,
    }


def _save_fold(path: Path, fold: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez_compressed(
        tmp,
        clip_ids=np.asarray(fold["clip_ids"], dtype=str),
        clip_predictions=np.concatenate(fold["clip_predictions"]).astype(np.float16),
        clip_lengths=np.asarray([p.shape[0] for p in fold["clip_predictions"]]),
        frame_predictions=np.concatenate(fold["frame_predictions"]).astype(np.float16),
        frame_lengths=np.asarray([p.shape[0] for p in fold["frame_predictions"]]),
        best_epoch=fold["best_epoch"],
        seconds=fold["seconds"],
    )
    tmp.replace(path)


def _split(values: np.ndarray, lengths: np.ndarray) -> list[FloatArray]:
    return [p.astype(np.float32) for p in np.split(values, np.cumsum(lengths)[:-1])]


def _load_fold(path: Path) -> dict[str, Any]:
    with np.load(path, allow_pickle=False) as z:
        return {
            "clip_ids": [str(v) for v in z["clip_ids"]],
            "clip_predictions": _split(z["clip_predictions"], z["clip_lengths"]),
            "frame_predictions": _split(z["frame_predictions"], z["frame_lengths"]),
            "best_epoch": int(z["best_epoch"]),
            "seconds": float(z["seconds"]),
        }
