"""Training per the paper's protocol.

RMSProp, 10 sequences per update, MSE over the valid (unpadded) frames, at most 30 epochs, early
stopping when the validation loss has not improved by at least 1e-4 for 5 epochs (the best weights are
restored), shuffled order, seeded and deterministic on the CPU.

Batches are drawn by length (``batching = "bucketed"``, the default): each epoch sorts the training
sequences by their length times a random factor in [0.9, 1.1], cuts that order into batches of 10 and
shuffles the batches. A batch is padded to its longest sequence; VGMIDI pieces last 35–796 frames,
so random batches computed 2.2 frames for every real one, bucketed batches about 1.1. Every update still
sees 10 sequences, batch composition and order change every epoch, and the loss ignores padding.
``batching = "random"`` draws batches from a plain permutation.

Augmented renditions (clips whose ``variant_of`` names a training clip) stand in for their original:
each epoch, every training piece is presented once, as its original or one of its variants drawn
uniformly, so an epoch costs what it costs without augmentation. The drawing uses its own random
stream, so a run without variants is exactly what it was before variants existed. The normaliser's
statistics cover the originals and the variants (the inputs training sees); validation and test use
originals only. Inputs are normalised by :class:`~model_export.normaliser.Normaliser` with statistics
of the training part only; the same module sits at the front of the exported ONNX graph, so serving
normalises exactly as training did.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from app.core.contract import OUTPUTS
from app.core.types import FloatArray
from model_export.model import PRESETS, EmotionRNN, ModelConfig, SubspaceInput, build_model, fast_cpu_context
from model_export.normaliser import Normaliser, fit_statistics

log = logging.getLogger(__name__)


#: Losses for clip-level labels (see :class:`TrainConfig`).
CLIP_LOSSES = ("mean_mse", "hinge", "frame_mse")

#: Probes that can teach clip-level targets (``TrainConfig.clip_teacher_probe``; the probes themselves
#: live in :mod:`model_export.baseline`).
CLIP_TEACHERS = ("logistic", "rbf_svm")


@dataclass(frozen=True)
class Supervision:
    """What kind of label a training clip has (see ``Clip.label_kind``).

    Attributes:
        clip_level: The targets are one static label repeated on every frame, not per-frame ratings.
        confidence: The label's confidence in (0, 1].
    """

    clip_level: bool = False
    confidence: float = 1.0


FRAME_LABELS = Supervision()


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (defaults: the paper's).

    Attributes:
        preset: Model preset name (see ``model_export.model``).
        targets: Which outputs to learn: both (joint model) or one (the paper's separate models).
        epochs: Maximum epochs.
        batch_size: Sequences per update.
        lr: RMSProp learning rate.
        patience: Epochs without an improvement of ``min_delta`` before stopping.
        min_delta: Smallest validation-loss decrease that counts as an improvement.
        val_fraction: Share of the training groups held out for early stopping.
        seed: Seed for weights, shuffling and the validation split.
        threads: torch intra-op threads (0: all cores).
        feature_transform: Compression before standardisation (see ``app.core.contract``).
        clip_z: Standardised features are clipped to [-clip_z, clip_z].
        model_overrides: Fields of the preset's ``ModelConfig`` to change.
        batching: ``"bucketed"`` (sequences of similar length share a batch) or ``"random"``.
        clip_loss: How a clip-level label (``label_kind = "clip"``, e.g. 4Q's quadrant signs ``s``)
            becomes a loss on the clip's per-frame outputs ``y_t`` (:data:`CLIP_LOSSES`):
            ``"mean_mse"`` ``(mean_t y_t - m s)^2``; ``"hinge"`` ``max(0, m - s mean_t y_t)^2`` (only a
            clip mean on the wrong side of ``m`` costs, so clear clips may go further); ``"frame_mse"``
            ``mean_t (y_t - m s)^2`` (the static target on every frame).
        clip_target: ``m``, the level a clip-level sign stands for.
        clip_weight: Weight of a clip-labelled frame against a frame-labelled one in the loss.
        clip_confidence: Also weight each clip-labelled clip by its label's confidence (4Q: PQuad).
        weight_decay: RMSProp's L2 penalty on every weight (0: none, the paper's setting).
        domain_statistics: Standardise frame-labelled and clip-labelled clips each with their own
            statistics in training; the model (and serving) uses the clip-labelled ones.
        clip_crop_frames: If > 0, every epoch trains on a random span of at least this many frames of
            each clip-labelled clip (0: the whole clip, every epoch).
        input_noise: Standard deviation of Gaussian noise added to the standardised features of every
            training batch (0: none); a regulariser for 6373 inputs and a few hundred clips.
        lr_choices: Learning rates to try in each CV fold, keeping the one with the lowest
            validation loss (empty: ``lr`` only). Gives every model the same small tuning budget.
        weight_average: If > 0, the decay of an exponential moving average of the weights, updated
            after every step (0.995: a time constant of 200 updates, ~3 epochs of VGMIDI + 4Q). Validation,
            early stopping and the returned model use the average; the optimiser's own trajectory is
            unchanged. The model and its graph stay the same (only its weights differ).
        clip_teacher: ``w`` in [0, 1): if > 0, a clip-labelled clip's target level is
            ``m ((1 - w) s + w u)`` instead of ``m s``, where ``u`` is a probe teacher's graded score of
            the clip in (-1, 1) (:func:`model_export.baseline.teacher_levels`, cross-fitted over the
            training clips only, applied by :func:`model_export.joint.train_joint`): a clip the
            teacher finds clear keeps about ``m``, one it finds ambiguous or contrary gets a level nearer 0
            (up to 0.5, every target keeps its label's sign).
        teacher_folds: Folds of the teacher's cross-fitting over the training clips.
        clip_teacher_probe: Which probe teaches (:data:`CLIP_TEACHERS`): the linear probe (logistic
            regression) or the RBF-kernel SVM on the clip's feature mean and std.
        input_rank: If > 0, train the first LSTM layer's input weights inside the span of the training
            frames' ``input_rank`` leading principal directions (:func:`input_basis`,
            :class:`~model_export.model.SubspaceInput`): a constraint for 6 373 inputs and a few hundred
            clips. The returned model is the ordinary full-width one (the weights multiplied out), so
            the contract does not change; the export keeps the factorisation in the graph, the same
            function with fewer weights (:func:`model_export.export.compact`). 0: unconstrained (the
            paper's training).
    """

    preset: str = "LSTM_AT_400"
    targets: tuple[str, ...] = OUTPUTS
    epochs: int = 30
    batch_size: int = 10
    lr: float = 1e-3
    patience: int = 5
    min_delta: float = 1e-4
    val_fraction: float = 0.1
    seed: int = 0
    threads: int = 0
    feature_transform: str = "signed_log1p"
    clip_z: float = 10.0
    model_overrides: dict[str, Any] = field(default_factory=dict)
    batching: str = "bucketed"
    clip_loss: str = "mean_mse"
    clip_target: float = 0.5
    clip_weight: float = 1.0
    clip_confidence: bool = False
    weight_decay: float = 0.0
    domain_statistics: bool = False
    clip_crop_frames: int = 0
    input_noise: float = 0.0
    lr_choices: tuple[float, ...] = ()
    weight_average: float = 0.0
    clip_teacher: float = 0.0
    teacher_folds: int = 5
    clip_teacher_probe: str = "logistic"
    input_rank: int = 0

    def __post_init__(self) -> None:
        if self.clip_loss not in CLIP_LOSSES:
            raise ValueError(f"clip_loss must be one of {CLIP_LOSSES}, not {self.clip_loss!r}")
        if not 0.0 < self.clip_target <= 1.0 or self.clip_weight < 0:
            raise ValueError("clip_target must be in (0, 1] and clip_weight >= 0")
        if not 0.0 <= self.weight_average < 1.0:
            raise ValueError("weight_average must be in [0, 1)")
        if not 0.0 <= self.clip_teacher < 1.0 or self.teacher_folds < 2:
            raise ValueError("clip_teacher must be in [0, 1) and teacher_folds >= 2")
        if self.input_rank < 0:
            raise ValueError(f"input_rank must be >= 0, not {self.input_rank}")
        if self.clip_teacher_probe not in CLIP_TEACHERS:
            raise ValueError(
                f"clip_teacher_probe must be one of {CLIP_TEACHERS}, not {self.clip_teacher_probe!r}"
            )

    def model_config(self, num_features: int) -> ModelConfig:
        """The model configuration this run trains."""
        if self.preset not in PRESETS:
            raise KeyError(f"unknown preset {self.preset!r}; known: {sorted(PRESETS)}")
        return replace(
            PRESETS[self.preset],
            num_features=num_features,
            num_outputs=len(self.targets),
            **self.model_overrides,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (for checkpoints and reports)."""
        d = asdict(self)
        d["targets"] = list(self.targets)
        d["lr_choices"] = list(self.lr_choices)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """The configuration :meth:`to_dict` wrote; fields it lacks (added since) take their defaults.

        Raises:
            ValueError: On a key that is not a field (a report or checkpoint of something else).
        """
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"not TrainConfig fields: {unknown}")
        values = dict(d)
        for key in ("targets", "lr_choices"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


@dataclass
class TrainSequence:
    """One normalised training sequence: ``x`` (T, F), targets ``y`` (T, O) and their kind."""

    x: torch.Tensor
    y: torch.Tensor
    supervision: Supervision = FRAME_LABELS


@dataclass
class TrainResult:
    """A trained model and how training went."""

    model: EmotionRNN
    normaliser: Normaliser
    model_config: ModelConfig
    history: list[dict[str, float]]
    best_epoch: int
    seconds: float


def _pad(seqs: Sequence[TrainSequence]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    t_max = max(s.x.shape[0] for s in seqs)
    b, f, o = len(seqs), seqs[0].x.shape[1], seqs[0].y.shape[1]
    x = torch.zeros(b, t_max, f)
    y = torch.zeros(b, t_max, o)
    mask = torch.zeros(b, t_max, 1)
    for i, s in enumerate(seqs):
        t = s.x.shape[0]
        x[i, :t], y[i, :t], mask[i, :t] = s.x, s.y, 1.0
    return x, y, mask


#: Relative jitter of the lengths that bucketed batching sorts by, so batches differ between epochs.
BUCKET_JITTER = 0.1


def make_batches(
    lengths: Sequence[int], batch_size: int, rng: np.random.Generator, batching: str = "bucketed"
) -> list[list[int]]:
    """One epoch's batches of sequence indices (see the module docstring).

    Args:
        lengths: Length of every training sequence.
        batch_size: Sequences per batch (the last batch may be smaller).
        rng: Source of randomness (seeded by the caller).
        batching: ``"bucketed"`` or ``"random"``.

    Returns:
        Batches covering every index exactly once, in the order to train on them.
    """
    if batching == "random":
        order = rng.permutation(len(lengths))
        return [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    if batching != "bucketed":
        raise ValueError(f"unknown batching {batching!r}")
    jitter = rng.uniform(1 - BUCKET_JITTER, 1 + BUCKET_JITTER, size=len(lengths))
    order = np.argsort(np.asarray(lengths, dtype=np.float64) * jitter, kind="stable")
    batches = [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def _by_length(seqs: Sequence[TrainSequence], batch_size: int) -> list[list[int]]:
    # Evaluation order does not matter: group similar lengths to pad as little as possible.
    order = sorted(range(len(seqs)), key=lambda i: seqs[i].x.shape[0])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def batch_loss(
    pred: torch.Tensor,
    y: torch.Tensor,
    mask: torch.Tensor,
    seqs: Sequence[TrainSequence],
    cfg: TrainConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of the batch's losses and the number of real frames they are averaged over.

    A frame-labelled clip adds its squared errors per frame and output (the paper's MSE); a
    clip-labelled one adds ``clip_weight * T_i * O`` times its clip loss (:class:`TrainConfig`), so
    each of its frames counts like a rated frame, scaled by the weight. A batch of frame-labelled clips
    alone gives exactly the masked MSE of the paper's protocol.

    Returns:
        ``(numerator, frames * O)``; the loss is their ratio.
    """
    o = y.shape[-1]
    frames = mask.sum()
    if not any(s.supervision.clip_level for s in seqs):
        return (torch.square(pred - y) * mask).sum(), frames * o
    clip_rows = torch.tensor([s.supervision.clip_level for s in seqs])
    frame_se = (torch.square(pred - y) * mask)[~clip_rows].sum()
    lengths = mask[clip_rows].sum(dim=(1, 2))  # (C,)
    p, signs = pred[clip_rows], y[clip_rows][:, 0]  # (C, T, O), (C, O)
    m = cfg.clip_target
    if cfg.clip_loss == "frame_mse":
        per_clip = (torch.square(p - m * signs[:, None]) * mask[clip_rows]).sum(dim=(1, 2)) / (lengths * o)
    else:
        mean = (p * mask[clip_rows]).sum(dim=1) / lengths[:, None]  # (C, O)
        if cfg.clip_loss == "mean_mse":
            per_clip = torch.square(mean - m * signs).mean(dim=1)
        else:  # hinge
            per_clip = torch.square(torch.relu(m - signs * mean)).mean(dim=1)
    weights = torch.full_like(lengths, cfg.clip_weight)
    if cfg.clip_confidence:
        weights = weights * torch.tensor([s.supervision.confidence for s in seqs if s.supervision.clip_level])
    return frame_se + (weights * lengths * o * per_clip).sum(), frames * o


def select_targets(targets: FloatArray, names: Sequence[str]) -> FloatArray:
    """The columns of ``(T, 2)`` targets named by ``names`` (e.g. only valence)."""
    idx = [OUTPUTS.index(n) for n in names]
    return targets[:, idx]


def make_sequences(
    features: Sequence[FloatArray],
    targets: Sequence[FloatArray],
    normaliser: Normaliser,
    names: Sequence[str],
    supervision: Sequence[Supervision] | None = None,
) -> list[TrainSequence]:
    """Normalise each clip once and pair it with its selected targets (truncated to common length).

    ``supervision`` gives each clip's label kind (default: all frame-labelled).
    """
    kinds = supervision if supervision is not None else [FRAME_LABELS] * len(features)
    out = []
    with torch.no_grad():
        for f, t, kind in zip(features, targets, kinds, strict=True):
            n = min(f.shape[0], t.shape[0])
            x = normaliser(torch.from_numpy(np.ascontiguousarray(f[:n])))
            out.append(TrainSequence(x, torch.from_numpy(select_targets(t[:n], names).copy()), kind))
    return out


def evaluate_loss(
    model: nn.Module, seqs: Sequence[TrainSequence], batch_size: int, cfg: TrainConfig | None = None
) -> float:
    """The training loss over all valid frames of ``seqs`` (the MSE when all are frame-labelled)."""
    cfg = cfg or TrainConfig()
    model.eval()
    total, count = 0.0, 0.0
    with torch.no_grad():
        for batch in _by_length(seqs, batch_size):
            part = [seqs[i] for i in batch]
            x, y, mask = _pad(part)
            num, den = batch_loss(model(x), y, mask, part, cfg)
            total += float(num)
            count += float(den)
    return total / max(count, 1.0)


def predict(model: nn.Module, seqs: Sequence[TrainSequence], batch_size: int = 10) -> list[FloatArray]:
    """Per-sequence predictions ``(T, O)`` (padding removed)."""
    model.eval()
    out: list[FloatArray | None] = [None] * len(seqs)
    with torch.no_grad():
        for batch in _by_length(seqs, batch_size):
            pred = model(_pad([seqs[i] for i in batch])[0]).numpy()
            for j, i in enumerate(batch):
                out[i] = pred[j, : seqs[i].x.shape[0]].astype(np.float32)
    return [p for p in out if p is not None]


#: At most this many training frames (an even stride through every sequence) inform the input basis:
#: 20 000 frames x 6 373 inputs is 0.5 GB of float32, where all of VGMIDI + 4Q's ~65 000 would be 1.7 GB.
BASIS_FRAMES = 20_000


def input_basis(sequences: Sequence[torch.Tensor], rank: int, seed: int = 0) -> torch.Tensor:
    """The ``rank`` leading principal directions of normalised training frames, ``(F, rank)`` orthonormal.

    The frames of every sequence (every ``s``-th one when they number more than :data:`BASIS_FRAMES`)
    are centred and decomposed: a randomised SVD (:func:`torch.svd_lowrank`, 4 power iterations, seeded
    so runs repeat) when ``rank`` is small against the matrix, an exact one otherwise.

    Args:
        sequences: ``(T_i, F)`` normalised frames.
        rank: Directions to keep, ``1 <= rank <= min(frames used, F)``.
        seed: Seed of the randomised SVD (the global RNG is left untouched).

    Returns:
        The basis, float32.

    Raises:
        ValueError: When ``rank`` is out of range.
    """
    total = sum(int(x.shape[0]) for x in sequences)
    stride = max(1, math.ceil(total / BASIS_FRAMES))
    x = torch.cat([s[::stride] for s in sequences]).to(torch.float32)
    if not 1 <= rank <= min(x.shape):
        raise ValueError(f"input_rank must be in [1, {min(x.shape)}] for {x.shape[0]} frames, not {rank}")
    x = x - x.mean(dim=0, keepdim=True)
    q = rank + 10
    if 2 * q >= min(x.shape):
        vh: torch.Tensor = torch.linalg.svd(x, full_matrices=False)[2]
        return vh[:rank].T.contiguous()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _, _, v = torch.svd_lowrank(x, q=q, niter=4)
    return v[:, :rank].contiguous()


def train(
    cfg: TrainConfig,
    train_features: Sequence[FloatArray],
    train_targets: Sequence[FloatArray],
    val_features: Sequence[FloatArray],
    val_targets: Sequence[FloatArray],
    progress: bool = True,
    train_variants: Sequence[Sequence[FloatArray]] | None = None,
    train_supervision: Sequence[Supervision] | None = None,
    val_supervision: Sequence[Supervision] | None = None,
) -> TrainResult:
    """Train one model with early stopping on the given validation clips.

    Args:
        cfg: Hyper-parameters.
        train_features: Raw ``(T, F)`` features of the training clips.
        train_targets: ``(T, 2)`` arousal/valence of the training clips.
        val_features: Raw features of the validation clips (early stopping only).
        val_targets: Targets of the validation clips.
        progress: Log one line per epoch.
        train_variants: Per training clip, raw features of its augmented renditions (same labels);
            see the module docstring. ``None`` or empty lists: no augmentation.
        train_supervision: Per training clip, its label kind (``None``: all frame-labelled); clips
            with clip-level labels get the clip loss of ``cfg`` (see :func:`batch_loss`).
        val_supervision: The same for the validation clips.

    Returns:
        The best model (by validation loss), its normaliser and the loss history.
    """
    if train_variants is not None and len(train_variants) != len(train_features):
        raise ValueError("train_variants must have one (possibly empty) list per training clip")
    with fast_cpu_context(cfg.threads or None):
        return _train(
            cfg,
            train_features,
            train_targets,
            val_features,
            val_targets,
            progress,
            train_variants or [],
            train_supervision,
            val_supervision,
        )


def _train(
    cfg: TrainConfig,
    train_features: Sequence[FloatArray],
    train_targets: Sequence[FloatArray],
    val_features: Sequence[FloatArray],
    val_targets: Sequence[FloatArray],
    progress: bool,
    train_variants: Sequence[Sequence[FloatArray]],
    train_supervision: Sequence[Supervision] | None,
    val_supervision: Sequence[Supervision] | None,
) -> TrainResult:
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    torch.use_deterministic_algorithms(True)
    extra = [f for fs in train_variants for f in fs]
    kinds = list(train_supervision or [FRAME_LABELS] * len(train_features))
    normalisers = _normalisers(cfg, train_features, extra, kinds)
    normaliser = normalisers[True]

    def sequences(
        feats: Sequence[FloatArray], targs: Sequence[FloatArray], sup: Sequence[Supervision]
    ) -> list[TrainSequence]:
        if normalisers[False] is normalisers[True]:
            return make_sequences(feats, targs, normaliser, cfg.targets, sup)
        return [
            make_sequences([f], [t], normalisers[k.clip_level], cfg.targets, [k])[0]
            for f, t, k in zip(feats, targs, sup, strict=True)
        ]

    train_seqs = sequences(train_features, train_targets, kinds)
    # renditions[i]: the original and the variants of training piece i, one drawn per epoch.
    renditions = [[seq] for seq in train_seqs]
    for i, fs in enumerate(train_variants):
        renditions[i].extend(sequences(fs, [train_targets[i]] * len(fs), [kinds[i]] * len(fs)))
    augmented = any(len(r) > 1 for r in renditions)
    aug_rng = np.random.default_rng([cfg.seed, 0xA06])
    crop_rng = np.random.default_rng([cfg.seed, 0xC40])
    noise_gen = torch.Generator().manual_seed(cfg.seed * 7919 + 0x401)
    val_seqs = sequences(val_features, val_targets, val_supervision or [FRAME_LABELS] * len(val_features))
    model_cfg = cfg.model_config(int(normaliser.mean.shape[0]))
    full = build_model(model_cfg, seed=cfg.seed)
    model: EmotionRNN | SubspaceInput = full
    if cfg.input_rank:
        basis = input_basis([s.x for r in renditions for s in r], cfg.input_rank, cfg.seed)
        model = SubspaceInput(full, basis)
    optimiser = torch.optim.RMSprop(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    # The averaged copy only watches the optimiser's trajectory; it is what validation scores.
    averaged = (
        AveragedModel(
            model,
            multi_avg_fn=get_ema_multi_avg_fn(cfg.weight_average),  # type: ignore[no-untyped-call]
            use_buffers=True,
        )
        if cfg.weight_average
        else None
    )
    scored: nn.Module = model if averaged is None else averaged.module
    rng = np.random.default_rng(cfg.seed)
    history: list[dict[str, float]] = []
    best, best_epoch, best_state, stale = math.inf, 0, copy.deepcopy(model.state_dict()), 0
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        train_se, train_n = 0.0, 0.0
        if augmented:
            train_seqs = [r[int(aug_rng.integers(len(r)))] for r in renditions]
        epoch_seqs = (
            _cropped(train_seqs, cfg.clip_crop_frames, crop_rng) if cfg.clip_crop_frames else train_seqs
        )
        lengths = [s.x.shape[0] for s in epoch_seqs]
        for batch in make_batches(lengths, cfg.batch_size, rng, cfg.batching):
            part = [epoch_seqs[j] for j in batch]
            x, y, mask = _pad(part)
            if cfg.input_noise:
                # Gaussian noise on the standardised features, a fresh draw for every batch.
                x = x + cfg.input_noise * torch.randn(x.shape, generator=noise_gen) * mask
            optimiser.zero_grad(set_to_none=True)
            num, den = batch_loss(model(x), y, mask, part, cfg)
            loss = num / den
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
            if averaged is not None:
                averaged.update_parameters(model)
            weight = float(mask.sum())
            train_se += float(loss.detach()) * weight
            train_n += weight
        val = evaluate_loss(scored, val_seqs, cfg.batch_size, cfg) if val_seqs else train_se / train_n
        history.append(
            {"epoch": epoch, "train_mse": train_se / train_n, "val_mse": val, "s": time.perf_counter() - t0}
        )
        if progress:
            log.info(
                "epoch %d: train %.5f val %.5f (%.1fs)", epoch, train_se / train_n, val, history[-1]["s"]
            )
        if val < best - cfg.min_delta:
            best, best_epoch, stale = val, epoch, 0
            best_state = copy.deepcopy(scored.state_dict())
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    model.load_state_dict(best_state)
    final = model.fold() if isinstance(model, SubspaceInput) else model
    final.eval()
    return TrainResult(final, normaliser, model_cfg, history, best_epoch, time.perf_counter() - started)


def _cropped(seqs: Sequence[TrainSequence], min_frames: int, rng: np.random.Generator) -> list[TrainSequence]:
    """This epoch's view of the training clips: each clip-labelled one cut to a random span.

    A clip-level label holds for any stretch of the clip, and serving sees clips that start anywhere:
    a span of ``min_frames`` up to the whole clip, at a random start, is a new training sequence each
    epoch for the same label. Frame-labelled clips are passed on whole.
    """
    out = []
    for s in seqs:
        t = s.x.shape[0]
        if not s.supervision.clip_level or t <= min_frames:
            out.append(s)
            continue
        length = int(rng.integers(min_frames, t + 1))
        start = int(rng.integers(0, t - length + 1))
        out.append(TrainSequence(s.x[start : start + length], s.y[start : start + length], s.supervision))
    return out


def _normalisers(
    cfg: TrainConfig,
    train_features: Sequence[FloatArray],
    variants: Sequence[FloatArray],
    kinds: Sequence[Supervision],
) -> dict[bool, Normaliser]:
    """The input normaliser per label kind (``True``: clip-labelled); one shared unless ``domain_statistics``.

    With ``domain_statistics`` and both kinds present, each kind is standardised with its own
    training frames' statistics, and the clip-labelled (real-music) one is the model's: it is what the
    exported graph and serving apply to every input.
    """
    clip = [f for f, k in zip(train_features, kinds, strict=True) if k.clip_level]
    frame = [f for f, k in zip(train_features, kinds, strict=True) if not k.clip_level]

    def build(features: Sequence[FloatArray]) -> Normaliser:
        mean, std = fit_statistics(features, cfg.feature_transform)
        return Normaliser(mean, std, cfg.feature_transform, cfg.clip_z)

    if not (cfg.domain_statistics and clip and frame):
        shared = build([*train_features, *variants])
        return {False: shared, True: shared}
    return {False: build([*frame, *variants]), True: build(clip)}
