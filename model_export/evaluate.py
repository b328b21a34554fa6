"""k-fold cross-validation by song/piece, the paper's metrics, Table-1-style reports and figures.

Metrics follow the paper: predictions of all test folds are pooled, then per dimension
R² (1 - SS_res / SS_tot over all pooled frames), the mean over songs of Kendall's τ-b between the
predicted and true curve of each song (scipy), and the mean absolute error over all pooled frames.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import kendalltau

from app.core.types import FloatArray
from model_export.datasets.base import Clip, originals, variants_by_original
from model_export.splits import group_folds, validation_split
from model_export.train import (
    TrainConfig,
    TrainResult,
    make_sequences,
    predict,
    select_targets,
    train,
)

log = logging.getLogger(__name__)


def metrics(
    predictions: Sequence[FloatArray], targets: Sequence[FloatArray], names: Sequence[str]
) -> dict[str, dict[str, float]]:
    """R², mean per-song Kendall τ-b and MAE per output dimension over pooled predictions.

    Songs whose true or predicted curve is constant have no τ and are left out of its mean.
    """
    pred = np.concatenate(predictions).astype(np.float64)
    true = np.concatenate(targets).astype(np.float64)
    out: dict[str, dict[str, float]] = {}
    for d, name in enumerate(names):
        ss_res = float(np.sum((true[:, d] - pred[:, d]) ** 2))
        ss_tot = float(np.sum((true[:, d] - true[:, d].mean()) ** 2))
        taus = []
        for p, t in zip(predictions, targets, strict=True):
            if p.shape[0] > 1 and np.ptp(p[:, d]) > 0 and np.ptp(t[:, d]) > 0:
                taus.append(kendalltau(p[:, d], t[:, d], variant="b").statistic)
        out[name] = {
            "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan"),
            "tau": float(np.mean(taus)) if taus else float("nan"),
            "mae": float(np.mean(np.abs(true[:, d] - pred[:, d]))),
            "songs_with_tau": float(len(taus)),
        }
    return out


def _clip_tau(p: FloatArray, t: FloatArray, d: int) -> float:
    if p.shape[0] > 1 and np.ptp(p[:, d]) > 0 and np.ptp(t[:, d]) > 0:
        return float(kendalltau(p[:, d], t[:, d], variant="b").statistic)
    return float("nan")


def paired_tests(a: CVResult, b: CVResult) -> dict[str, Any]:
    """Per-piece errors of two models on the same pieces, compared with Wilcoxon signed-rank tests.

    For each output: the pieces' mean squared error (what R² sums) and Kendall τ (pieces where either
    curve is constant are left out), the median difference ``a - b`` and the two-sided p-value.

    Returns:
        ``{"models": [a, b], "pieces": n, "<output>": {"sq_error": {...}, "tau": {...}}}``.
    """
    from scipy.stats import wilcoxon

    b_by_id = dict(zip(b.clip_ids, zip(b.predictions, b.targets, strict=True), strict=True))
    common = [
        (pa, ta, b_by_id[cid][0])
        for cid, pa, ta in zip(a.clip_ids, a.predictions, a.targets, strict=True)
        if cid in b_by_id
    ]
    out: dict[str, Any] = {"models": [a.name, b.name], "pieces": len(common)}
    for d, name in enumerate(a.config.targets):
        tests: dict[str, Any] = {}
        sq_a = np.array([np.mean((pa[:, d] - ta[:, d]) ** 2) for pa, ta, _ in common])
        sq_b = np.array([np.mean((pb[:, d] - ta[:, d]) ** 2) for _, ta, pb in common])
        tau_a = np.array([_clip_tau(pa, ta, d) for pa, ta, _ in common])
        tau_b = np.array([_clip_tau(pb, ta, d) for _, ta, pb in common])
        keep = np.isfinite(tau_a) & np.isfinite(tau_b)
        for key, x, y in (("sq_error", sq_a, sq_b), ("tau", tau_a[keep], tau_b[keep])):
            diff = x - y
            p_value = float(wilcoxon(x, y).pvalue) if x.size >= 2 and np.any(diff != 0) else float("nan")
            tests[key] = {
                "pieces": int(x.size),
                "median_diff": float(np.median(diff)) if x.size else float("nan"),
                "p": p_value,
            }
        out[name] = tests
    return out


@dataclass
class CVResult:
    """Pooled out-of-fold predictions of one model configuration."""

    name: str
    config: TrainConfig
    clip_ids: list[str]
    predictions: list[FloatArray]
    targets: list[FloatArray]
    folds_run: int
    folds_total: int
    seconds: float
    epochs: list[int]
    #: Indices of the folds in the result (restored or run).
    folds: list[int] = field(default_factory=list)

    def scores(self) -> dict[str, dict[str, float]]:
        """The paper's metrics on the pooled predictions."""
        return metrics(self.predictions, self.targets, self.config.targets)


def cv_run_key(
    name: str,
    cfg: TrainConfig,
    k: int,
    fold_seed: int,
    clips: Sequence[Clip],
    features: Mapping[str, FloatArray],
    variants: Sequence[Clip] = (),
) -> str:
    """Key of a CV run's stored folds: everything a fold's predictions depend on.

    The feature and target values are included (another analysis rate or re-rendered audio keeps the
    clip ids but must not reuse old folds), and so are augmented variants when there are any (a run
    without them keeps the key it had before variants existed). The torch thread count is not: it
    changes speed, and at most the last bits of float reductions, not what a fold learns. Nor are
    settings at their defaults: a training option added later (at a default that changes nothing)
    must not orphan the folds stored before it existed.
    """
    defaults = TrainConfig().to_dict()
    settings = {
        key: value
        for key, value in cfg.to_dict().items()
        if key != "threads" and (key not in defaults or value != defaults[key])
    }
    digest = hashlib.sha256(
        json.dumps(
            [name, settings, k, fold_seed, [c.clip_id for c in clips]], sort_keys=True, default=str
        ).encode()
    )
    for c in clips:
        digest.update(np.ascontiguousarray(features[c.clip_id]).tobytes())
        digest.update(np.ascontiguousarray(c.targets).tobytes())
    for c in variants:
        digest.update(f"variant {c.clip_id} of {c.variant_of}".encode())
        digest.update(np.ascontiguousarray(features[c.clip_id]).tobytes())
    return digest.hexdigest()[:16]


def cross_validate(
    name: str,
    cfg: TrainConfig,
    clips: Sequence[Clip],
    features: Mapping[str, FloatArray],
    k: int = 10,
    folds_to_run: int | None = None,
    fold_seed: int = 0,
    state_dir: Path | None = None,
    train_missing: bool = True,
) -> CVResult:
    """k-fold CV by group; each fold's training part is split again for early stopping.

    Args:
        name: Row name in the report.
        cfg: Training configuration.
        clips: Labelled clips (those without features are skipped). Augmented variants
            (``variant_of`` set) never form folds: they join their original's training part only
            (see ``model_export.train``).
        features: Raw features by clip id (from the feature cache).
        k: Folds.
        folds_to_run: Run only the first N folds (for expensive ablations); the report says so.
        fold_seed: Seed of the fold assignment (same for every model, so rows are comparable).
        state_dir: If given, each finished fold's test predictions are stored there and reused by a
            later call with the same name, configuration, clips and folds, so a long CV can be
            interrupted and resumed (e.g. across sessions). Stored as float16 with the test clips'
            ids (a few hundred kB per fold), small enough to commit (``docs/results/<run>/folds``).
        train_missing: If False, only restore stored folds and leave the others out (a report
            rebuilt from what is stored, on a machine that cannot train).

    Returns:
        Pooled predictions of the folds that ran; ``seconds`` sums the training time of every fold,
        also of folds restored from ``state_dir``.
    """
    usable = [c for c in originals(clips) if c.clip_id in features]
    variants = {
        cid: [v for v in vs if v.clip_id in features] for cid, vs in variants_by_original(clips).items()
    }
    folds = group_folds([c.group for c in usable], k, fold_seed)
    run_key = cv_run_key(
        name, cfg, k, fold_seed, usable, features, [v for vs in variants.values() for v in vs]
    )
    seconds = 0.0
    ids: list[str] = []
    preds: list[FloatArray] = []
    trues: list[FloatArray] = []
    epochs: list[int] = []
    done: list[int] = []
    for f, test_idx in enumerate(folds[: folds_to_run or k]):
        fold_file = state_dir / f"{name}_{run_key}_fold{f}.npz" if state_dir else None
        test_ids = [usable[i].clip_id for i in test_idx]
        if fold_file is not None and fold_file.exists():
            fold_preds, best_epoch, fold_s = _load_fold(fold_file, test_ids)
            log.info("%s fold %d/%d restored from %s", name, f + 1, k, fold_file)
        elif not train_missing:
            continue
        else:
            fold_preds, best_epoch, fold_s, lr = _train_fold(cfg, f, usable, test_idx, features, variants)
            if fold_file is not None:
                _save_fold(fold_file, test_ids, fold_preds, best_epoch, fold_s, lr)
            log.info("%s fold %d/%d: best epoch %d (lr %g), %.0fs", name, f + 1, k, best_epoch, lr, fold_s)
        for i, p in zip(test_idx, fold_preds, strict=True):
            ids.append(usable[i].clip_id)
            preds.append(p)
            trues.append(select_targets(usable[i].targets, cfg.targets)[: p.shape[0]])
        epochs.append(best_epoch)
        seconds += fold_s
        done.append(f)
    return CVResult(
        name=name,
        config=cfg,
        clip_ids=ids,
        predictions=preds,
        targets=trues,
        folds_run=len(epochs),
        folds_total=k,
        seconds=seconds,
        epochs=epochs,
        folds=done,
    )


def _train_fold(
    cfg: TrainConfig,
    f: int,
    usable: Sequence[Clip],
    test_idx: Sequence[int],
    features: Mapping[str, FloatArray],
    variants: Mapping[str, Sequence[Clip]],
) -> tuple[list[FloatArray], int, float, float]:
    """Train one fold (each learning rate of ``cfg.lr_choices``, keeping the best on validation).

    Returns:
        The test clips' predictions (rounded to float16, as stored), the best epoch, the seconds of
        every training run of the fold, and the learning rate chosen.
    """
    test_set = set(test_idx)
    rest = [i for i in range(len(usable)) if i not in test_set]
    tr, va = validation_split([usable[i].group for i in rest], cfg.val_fraction, cfg.seed + f)
    train_ids, val_ids = [rest[i] for i in tr], [rest[i] for i in va]

    def feats(ix: Sequence[int]) -> list[FloatArray]:
        return [features[usable[i].clip_id] for i in ix]

    def targs(ix: Sequence[int]) -> list[FloatArray]:
        return [usable[i].targets for i in ix]

    best: tuple[float, float, TrainResult] | None = None
    seconds = 0.0
    for lr in cfg.lr_choices or (cfg.lr,):
        result = train(
            replace(cfg, seed=cfg.seed + f, lr=lr),
            feats(train_ids),
            targs(train_ids),
            feats(val_ids),
            targs(val_ids),
            train_variants=[
                [features[v.clip_id] for v in variants.get(usable[i].clip_id, [])] for i in train_ids
            ],
        )
        seconds += result.seconds
        val = min(h["val_mse"] for h in result.history)
        if best is None or val < best[0]:
            best = (val, lr, result)
    assert best is not None
    _, lr, result = best
    test_seqs = make_sequences(feats(test_idx), targs(test_idx), result.normaliser, cfg.targets)
    # Rounded as they are stored, so a report written now equals one rebuilt from the stored folds.
    fold_preds = [p.astype(np.float16).astype(np.float32) for p in predict(result.model, test_seqs)]
    return fold_preds, result.best_epoch, seconds, lr


def _save_fold(
    path: Path, ids: Sequence[str], preds: Sequence[FloatArray], best_epoch: int, seconds: float, lr: float
) -> None:
    """Store one fold's test predictions compactly (float16, a few hundred kB), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez_compressed(
        tmp,
        clip_ids=np.array(ids),
        predictions=np.concatenate(preds).astype(np.float16),
        lengths=np.array([p.shape[0] for p in preds]),
        best_epoch=best_epoch,
        seconds=seconds,
        lr=lr,
    )
    tmp.replace(path)


def _load_fold(path: Path, test_ids: Sequence[str]) -> tuple[list[FloatArray], int, float]:
    """A stored fold's predictions (float32), best epoch and seconds; checks it is this fold's clips."""
    with np.load(path, allow_pickle=False) as saved:
        if "clip_ids" in saved and [str(c) for c in saved["clip_ids"]] != list(test_ids):
            raise ValueError(f"{path} holds other clips than this fold's test set")
        lengths = saved["lengths"]
        preds = [p.astype(np.float32) for p in np.split(saved["predictions"], np.cumsum(lengths)[:-1])]
        return preds, int(saved["best_epoch"]), float(saved["seconds"])


def write_report(
    results: Sequence[CVResult],
    out_dir: Path,
    title: str,
    notes: str = "",
    paired: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """Write ``report.md`` and ``report.json`` laid out like the paper's Table 1 (one row per model).

    Args:
        results: One row each.
        out_dir: Where the report goes.
        title: Its title.
        notes: A paragraph under the table.
        paired: :func:`paired_tests` results, tabled under the rows.

    Returns:
        The JSON content.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for r in results:
        s = r.scores()
        rows.append(
            {
                "model": r.name,
                "config": r.config.to_dict(),
                "folds": f"{r.folds_run}/{r.folds_total}",
                "seconds": round(r.seconds, 1),
                "best_epochs": r.epochs,
                "clips": len(r.clip_ids),
                "frames": int(sum(p.shape[0] for p in r.predictions)),
                "metrics": s,
            }
        )
    doc = {"title": title, "notes": notes, "rows": rows, "paired": list(paired)}
    (out_dir / "report.json").write_text(json.dumps(doc, indent=2, default=float) + "\n")

    def cell(m: Mapping[str, dict[str, float]], dim: str, key: str) -> str:
        return f"{m[dim][key]:.3f}" if dim in m else "–"

    lines = [
        f"# {title}",
        "",
        "| Model | R² A | R² V | τ A | τ V | MAE A | MAE V | folds | wall |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        m = row["metrics"]
        lines.append(
            f"| {row['model']} | {cell(m, 'arousal', 'r2')} | {cell(m, 'valence', 'r2')} | "
            f"{cell(m, 'arousal', 'tau')} | {cell(m, 'valence', 'tau')} | {cell(m, 'arousal', 'mae')} | "
            f"{cell(m, 'valence', 'mae')} | {row['folds']} | {row['seconds'] / 60:.1f} min |"
        )
    for test in paired:
        first, second = test["models"]
        lines += [
            "",
            f"Paired Wilcoxon signed-rank tests, {first} − {second} on the {test['pieces']} pieces both have "
            "(per-piece mean squared error and Kendall τ; median difference, two-sided p):",
            "",
            "| output | Δ sq. error | p | Δ τ | p |",
            "|---|---|---|---|---|",
        ]
        for dim in (k for k in test if k not in ("models", "pieces")):
            se, tau = test[dim]["sq_error"], test[dim]["tau"]
            cells = f"{se['median_diff']:+.4f} | {se['p']:.3g} | {tau['median_diff']:+.3f} | {tau['p']:.3g}"
            lines.append(f"| {dim} | {cells} |")
    if notes:
        lines += ["", notes]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    return doc


def plot_figures(at: CVResult, nat: CVResult, out_dir: Path, clips_to_show: int = 4) -> list[Path]:
    """The paper's figures: predicted vs true curves (NAT overlaid) and per-clip error histograms.

    Returns:
        Paths of the PNG files written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    nat_by_id = dict(zip(nat.clip_ids, nat.predictions, strict=True))
    common = [i for i, cid in enumerate(at.clip_ids) if cid in nat_by_id]
    # Show clips spread over the error range: best, median and worst AT clips.
    err = [float(np.mean(np.abs(at.predictions[i] - at.targets[i]))) for i in common]
    order = [common[j] for j in np.argsort(err)]
    picks = [order[int(q * (len(order) - 1))] for q in np.linspace(0, 1, clips_to_show)]
    paths = []
    for d, dim in enumerate(at.config.targets):
        fig, axes = plt.subplots(len(picks), 1, figsize=(8, 2.2 * len(picks)), squeeze=False)
        for ax, i in zip(axes[:, 0], picks, strict=True):
            t = np.arange(at.targets[i].shape[0]) * 0.5
            ax.plot(t, at.targets[i][:, d], "k-", label="ground truth")
            ax.plot(t, at.predictions[i][:, d], "C0-", label="LSTM_AT")
            ax.plot(t, nat_by_id[at.clip_ids[i]][:, d], "C1--", label="LSTM_NAT")
            ax.set_title(at.clip_ids[i], fontsize=8)
            ax.set_ylim(-1.05, 1.05)
            ax.set_ylabel(dim)
        axes[-1, 0].set_xlabel("time (s)")
        axes[0, 0].legend(fontsize=7, loc="upper right")
        fig.tight_layout()
        path = out_dir / f"curves_{dim}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)

        fig, ax = plt.subplots(figsize=(6, 3.2))
        for res, color in ((at, "C0"), (nat, "C1")):
            errs = [
                float(np.mean(np.abs(p[:, d] - y[:, d])))
                for p, y in zip(res.predictions, res.targets, strict=True)
            ]
            ax.hist(
                errs, bins=20, alpha=0.55, color=color, label=f"{res.name} (median {np.median(errs):.3f})"
            )
        ax.set_xlabel(f"per-clip MAE, {dim}")
        ax.set_ylabel("clips")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"errors_{dim}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
