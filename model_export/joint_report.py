"""Reports of the joint protocol: clip-level and frame-level scores, figures, genres, label confidence.

Rows are :class:`~model_export.joint.JointCVResult` objects and *references*: an exported model
scored on the same clip-labelled clips (e.g. the shipped model, which never saw them; its frame-level
row comes from its own card), or numbers quoted from elsewhere (e.g. the linear probe in
``../shared/data/4q/ABOUT.md``), each saying where it comes from.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from app.core.contract import OUTPUTS
from app.core.predictor import Predictor
from app.core.types import FloatArray
from model_export.clip_metrics import QUADRANT_NAMES, clip_means, clip_scores, scores_by_confidence
from model_export.datasets.base import Clip
from model_export.joint import JointCVResult

__all__ = [
    "confidence_lines",
    "genre_accuracy",
    "markdown_table",
    "reference_row",
    "result_row",
    "write_joint_report",
]


def result_row(result: JointCVResult) -> dict[str, Any]:
    """The report row of a joint CV result."""
    source = f"joint CV, {result.folds_run}/{result.folds_total} folds"
    if result.members:
        # The mean of several trained models: each member's recipe and early stopping, not the first's.
        source += f"; the mean of the predictions of {len(result.members)} models: " + ", ".join(
            m.name for m in result.members
        )
        recipe: dict[str, Any] = {
            "members": [
                {"model": m.name, "config": m.config.to_dict(), "best_epochs": m.epochs}
                for m in result.members
            ]
        }
        epochs: dict[str, Any] = {}
    else:
        recipe, epochs = {"config": result.config.to_dict()}, {"best_epochs": result.epochs}
    return {
        "model": result.name,
        "source": source,
        **recipe,
        "folds": f"{result.folds_run}/{result.folds_total}",
        **epochs,
        "seconds": round(result.seconds, 1),
        "clip": result.clip_scores(),
        "frame": result.frame_scores()["summary"],
        "frame_per_fold": result.frame_scores()["per_fold"],
        "jitter": result.jitter(),
    }


def reference_row(
    model_path: Path, clips: Sequence[Clip], features: Mapping[str, FloatArray], label: str | None = None
) -> dict[str, Any]:
    """Score an exported model on clip-labelled clips it never saw; frame metrics from its card's CV.

    Args:
        model_path: The ONNX file.
        clips: Clip-labelled clips (all of them: the model was trained without them).
        features: Their raw features.
        label: Row name (default: the model's name and version).
    """
    predictor = Predictor.load(model_path, providers="cpu", intra_op_threads=0, warmup=False)
    usable = [c for c in clips if c.clip_id in features]
    means = clip_means([predictor.predict(features[c.clip_id]) for c in usable])
    signs = np.asarray([np.sign(c.targets[0]) for c in usable], np.float32)
    card = json.loads(predictor.metadata.get("mer.card", "null") or "null") or {}
    cv = (card.get("cross_validation") or {}).get("this_preset")
    frame = None
    if cv:
        frame = {
            d: {k: {"mean": cv[d][k], "std": 0.0} for k in ("r2", "tau", "mae")} for d in OUTPUTS if d in cv
        }
    rows = (card.get("cross_validation") or {}).get("rows") or []
    return {
        "model": label or f"{predictor.model_name} {predictor.model_version}",
        "source": f"{model_path.name} on all {len(usable)} clips; frame scores from its card's CV"
        + (f" ({rows[0]['folds']} folds)" if rows else ""),
        "folds": "–",
        "clip": clip_scores(means, signs),
        "by_confidence": scores_by_confidence(means, signs, [c.confidence for c in usable]),
        "frame": frame,
        "jitter": None,
    }


def genre_accuracy(
    ids: Sequence[str],
    means: FloatArray,
    signs: FloatArray,
    genres: Mapping[str, Sequence[str]],
    min_clips: int = 15,
) -> list[dict[str, Any]]:
    """Quadrant accuracy per genre (a clip counts in each of its genres), for genres with enough clips."""
    by_genre: dict[str, list[int]] = {}
    for i, cid in enumerate(ids):
        for g in genres.get(cid, ()):
            by_genre.setdefault(g, []).append(i)
    out = []
    for g, idx in sorted(by_genre.items(), key=lambda kv: -len(kv[1])):
        if len(idx) < min_clips:
            continue
        s = clip_scores(means[idx], signs[idx])
        out.append(
            {
                "genre": g,
                "clips": len(idx),
                "quadrant_accuracy": s["quadrant_accuracy"],
                "arousal_sign": s["arousal"]["sign_accuracy"],
                "valence_sign": s["valence"]["sign_accuracy"],
            }
        )
    return out


def _f(value: float | None, digits: int = 3, sign: bool = False) -> str:
    if value is None or not np.isfinite(value):
        return "–"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _frame_cell(row: Mapping[str, Any], key: str) -> str:
    frame = row.get("frame")
    if not frame:
        return "–"
    parts = []
    for d in OUTPUTS:
        v = frame.get(d, {}).get(key)
        if v is None:
            parts.append("–")
        elif v.get("std"):
            parts.append(f"{v['mean']:.3f}±{v['std']:.3f}")
        else:
            parts.append(f"{v['mean']:.3f}")
    return " / ".join(parts)


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The report's table: clip-level scores, VGMIDI per-frame scores and jitter, one row each."""
    lines = [
        "| Model | quadrant acc | macro F1 | sign A / V | AUC A / V | mean A / V | VGMIDI R² A / V | "
        "τ A / V | MAE A / V | jitter A / V (labels) | folds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        c = row.get("clip") or {}
        a, v = c.get("arousal") or {}, c.get("valence") or {}
        clip_cells = [
            _f(c.get("quadrant_accuracy")),
            _f(c.get("macro_f1")),
            f"{_f(a.get('sign_accuracy'))} / {_f(v.get('sign_accuracy'))}",
            f"{_f(a.get('auc'))} / {_f(v.get('auc'))}",
            f"{_f(a.get('mean_prediction'), sign=True)} / {_f(v.get('mean_prediction'), sign=True)}",
        ]
        j = row.get("jitter")
        jit = "–"
        if j:
            (pa, pv), (la, lv) = j["predictions"], j["labels"]
            jit = f"{pa:.4f} / {pv:.4f} ({la:.4f} / {lv:.4f})"
        cells = [
            str(row["model"]),
            *clip_cells,
            _frame_cell(row, "r2"),
            _frame_cell(row, "tau"),
            _frame_cell(row, "mae"),
            jit,
            str(row.get("folds", "–")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def confidence_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The report's table of clip scores by label confidence, for the rows that carry them."""
    shown = [r for r in rows if r.get("by_confidence")]
    if not shown:
        return []
    lines = [
        "Clip scores by label confidence (4Q: PQuad, the share of a clip's mood tags in its quadrant), the "
        "clips in groups of about equal size, least sure first:",
        "",
        "| model | confidence | clips | quadrant acc | sign A / V | AUC A / V |",
        "|---|---|---|---|---|---|",
    ]
    for row in shown:
        for part in row["by_confidence"]:
            lo, hi = part["confidence"]
            a, v = part["arousal"], part["valence"]
            lines.append(
                f"| {row['model']} | {lo:.2f}–{hi:.2f} | {part['clips']} | {_f(part['quadrant_accuracy'])} | "
                f"{_f(a['sign_accuracy'])} / {_f(v['sign_accuracy'])} | {_f(a['auc'])} / {_f(v['auc'])} |"
            )
    return lines


def _confusion_lines(row: Mapping[str, Any]) -> list[str]:
    conf = row["clip"]["confusion"]
    lines = [
        f"Confusion matrix of {row['model']} (rows: true quadrant, columns: predicted):",
        "",
        "| true \\ predicted | " + " | ".join(QUADRANT_NAMES) + " |",
        "|---|" + "---|" * len(QUADRANT_NAMES),
    ]
    for q, counts in zip(QUADRANT_NAMES, conf, strict=True):
        lines.append(f"| {q} | " + " | ".join(str(n) for n in counts) + " |")
    return lines


def plot_clip_means(results: Sequence[JointCVResult], out_dir: Path) -> Path:
    """Predicted clip means on the valence–arousal plane, coloured by the true quadrant, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 4.2), squeeze=False)
    colours = {"Q1": "C2", "Q2": "C3", "Q3": "C0", "Q4": "C1"}
    for ax, res in zip(axes[0], results, strict=True):
        m = clip_means(res.clip_predictions)
        for q, (a, v) in {"Q1": (1, 1), "Q2": (1, -1), "Q3": (-1, -1), "Q4": (-1, 1)}.items():
            sel = (res.clip_signs[:, 0] == a) & (res.clip_signs[:, 1] == v)
            ax.scatter(m[sel, 1], m[sel, 0], s=8, alpha=0.6, color=colours[q], label=f"true {q}")
        ax.axhline(0, color="k", lw=0.5)
        ax.axvline(0, color="k", lw=0.5)
        ax.set_xlim(-1, 1)
        ax.set_ylim(-1, 1)
        ax.set_xlabel("predicted valence (clip mean)")
        ax.set_ylabel("predicted arousal (clip mean)")
        ax.set_title(res.name, fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = out_dir / "clip_means.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_joint_report(
    results: Sequence[JointCVResult],
    out_dir: Path,
    title: str,
    notes: str = "",
    references: Sequence[Mapping[str, Any]] = (),
    genres: Mapping[str, Sequence[str]] | None = None,
    detailed: Collection[str] | None = None,
    confidence: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Write ``report.md``, ``report.json`` and ``clip_means.png`` for the joint protocol.

    Args:
        results: Joint CV results (one row each).
        out_dir: Report folder.
        title: Report title.
        notes: Text under the table (data, protocol, command).
        references: Extra rows: :func:`reference_row`, or numbers measured elsewhere in the same shape
            (``model``, ``source``, ``folds`` and a ``clip`` dict with any of the score keys).
        genres: Genres per clip id, for the per-genre accuracy of each result.
        detailed: Names of the results that get a genre table and a panel in the figure (``None``: all).
        confidence: Label confidence per clip id (4Q: PQuad): every result's row gets its clip scores by
            confidence (:func:`~model_export.clip_metrics.scores_by_confidence`), shown in one table
            with the references' that carry them.

    Returns:
        The JSON content.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    result_rows = [result_row(r) for r in results]
    if confidence is not None:
        for scored, r in zip(result_rows, results, strict=True):
            scored["by_confidence"] = scores_by_confidence(
                clip_means(r.clip_predictions), r.clip_signs, [confidence[i] for i in r.clip_ids]
            )
    rows = [*references, *result_rows]
    doc: dict[str, Any] = {"title": title, "notes": notes, "rows": rows}
    shown = [r for r in results if detailed is None or r.name in detailed]
    if genres is not None:
        doc["genres"] = {
            r.name: genre_accuracy(r.clip_ids, clip_means(r.clip_predictions), r.clip_signs, genres)
            for r in shown
        }
    (out_dir / "report.json").write_text(json.dumps(doc, indent=1, default=float) + "\n")
    lines = [f"# {title}", "", *markdown_table(rows), ""]
    lines += [f"- **{row['model']}**: {row['source']}" for row in rows if row.get("source")]
    for row in rows:
        if (row.get("clip") or {}).get("confusion"):
            lines += ["", *_confusion_lines(row)]
    by_confidence = confidence_lines(rows)
    if by_confidence:
        lines += ["", *by_confidence]
    for name, table in (doc.get("genres") or {}).items():
        lines += ["", f"Quadrant accuracy per genre, {name} (genres with at least 15 clips):", ""]
        lines += ["| genre | clips | quadrant acc | arousal sign | valence sign |", "|---|---|---|---|---|"]
        lines += [
            f"| {g['genre']} | {g['clips']} | {g['quadrant_accuracy']:.3f} | {g['arousal_sign']:.3f} | "
            f"{g['valence_sign']:.3f} |"
            for g in table
        ]
    if notes:
        lines += ["", notes]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    if shown:
        plot_clip_means(shown, out_dir)
    return doc
