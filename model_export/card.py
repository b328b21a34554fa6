"""Model cards: the facts about a shipped model, as JSON in its metadata and as Markdown beside it.

:func:`build_card` gathers the facts from what the export already knows (the checkpoint's model and
training configuration, its contract, the training history) and from the cross-validation report that
chose the setup; :func:`render_markdown` writes the human-readable card from the *same* dict, so the
Markdown file and the ``mer.card`` metadata entry cannot disagree.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from app.core.contract import ModelContract
from model_export.smoothing import Smoothing

#: Metadata key of the card (JSON) inside the ONNX file.
CARD_KEY = "mer.card"

#: What each known training dataset is, for the card.
DATASET_FACTS: dict[str, dict[str, str]] = {
    "vgmidi": {
        "name": "VGMIDI (Ferreira & Whitehead 2019)",
        "content": (
            "200 piano arrangements of video-game music (MIDI), each rated by 28-32 listeners per "
            "measure for valence and arousal in [-1, 1]; the mean over listeners is the target"
        ),
        "audio": (
            "rendered with fluidsynth and the FluidR3 General MIDI soundfont (Debian fluid-soundfont-gm), "
            "loudness-normalised to -14 LUFS with peaks at or under -1 dBFS"
        ),
        "timing": (
            "measure times from each annotation tool's equal slices of the piece's duration, resampled "
            "onto the 500 ms grid (see README, dataset alignment)"
        ),
        "licence": "research data; the model derived from it is for research use",
    },
    "fourq": {
        "name": "4Q audio emotion dataset (Panda, Malheiro & Paiva 2018), 600 of its 900 clips",
        "content": (
            "30 s AllMusic previews of commercial music (pop/rock, jazz, electronic, R&B, country, blues, "
            "rap, latin, folk, ...), one Russell quadrant per clip from AllMusic mood tags checked by "
            "listening; used as the signs of the clip's mean arousal and valence"
        ),
        "audio": "MP3 previews as distributed (mostly 96 kbps, 22.05-44.1 kHz), decoded by the service",
        "timing": "none: one static label per clip, no per-frame ratings",
        "licence": "research data (Panda et al., IEEE Trans. Affective Computing 2018); research use only",
    },
    "synthetic": {
        "name": "synthetic music-like clips (model_export.datasets.synthetic)",
        "content": "generated notes and chords whose arousal/valence are known functions of the controls",
        "audio": "synthesised by the generator",
        "timing": "exact",
        "licence": "generated; no restrictions",
    },
}

KNOWN_LIMITS = (
    "Trained on solo-piano renditions of video-game music: expect lower accuracy on other genres, "
    "on vocals, and on dense studio productions.",
    "Valence is far harder than arousal (as for every model on this data and in the paper); treat "
    "per-frame valence as a weak signal and prefer clip-level means.",
    "Targets are means over ~30 listeners per measure; between-piece differences dominate the labels, "
    "so within-piece movement is learnt less well than the overall level of a piece.",
    "The input level is normalised per clip (gated RMS to the contract's target), so absolute "
    "loudness carries no information; dynamics within a clip do.",
    "The model is causal: frame t depends on frames up to t only, so the first seconds of a clip "
    "are predicted with little context.",
)

#: Limits that hold for a model trained on one of the datasets (added to :data:`KNOWN_LIMITS`).
DATASET_LIMITS: dict[str, tuple[str, ...]] = {
    "fourq": (
        "The real-music labels are one quadrant per 30 s clip: they teach the level of a clip, not how "
        "emotion moves within it; the within-clip shape comes from the VGMIDI ratings alone.",
        "4Q's quadrants come from AllMusic mood tags (validated by listening), balanced 150 per "
        "quadrant; a catalogue with another balance will see other accuracies.",
    ),
}

LICENCES = (
    "openSMILE, which computes the input features, is licensed for research and education only; "
    "commercial use of the features, and of this model that depends on them, needs a licence from "
    "audEERING.",
    "VGMIDI is research data; this model is derived from it and shipped for research use.",
    "The service code is MIT-licensed (LICENSE).",
)
#: Licence lines of further training datasets.
DATASET_LICENCES: dict[str, str] = {
    "fourq": "4Q (Panda et al. 2018) is research data; this model is derived from it and shipped for "
    "research use only. Neither its audio nor features computed from it are part of this repository.",
}


def build_card(
    *,
    model_name: str,
    model_version: str,
    contract: ModelContract,
    checkpoint_meta: Mapping[str, Any],
    model_config: Mapping[str, Any],
    members: Sequence[Mapping[str, Any]] | None = None,
    cv_report: Mapping[str, Any] | None = None,
    cv_source: str | None = None,
    weights_dtype: str = "float32",
    rebuild: str = "make model",
    comparisons: Sequence[tuple[str, str, Mapping[str, Any]]] = (),
    smoothing: Smoothing | None = None,
    joint_cv: tuple[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Collect a model's card facts.

    Args:
        model_name: Name stored in the model.
        model_version: Version stored in the model.
        contract: The model's contract.
        checkpoint_meta: The training checkpoint (dataset, train_config, history, best_epoch, clips).
        model_config: The model's architecture (``ModelConfig.to_dict()``).
        members: For a model that is the mean of several trained models (an ensemble), every member's
            checkpoint metadata, in order (``checkpoint_meta`` is the first's; they share the data).
        cv_report: ``report.json`` of the cross-validation that chose the setup, if any.
        cv_source: Where that report lives (shown in the card).
        weights_dtype: How the weights are stored in the file.
        rebuild: Command that rebuilds the model from the shared data.
        comparisons: ``(label, source, report)`` of other CV runs to show beside it, e.g. the same
            preset before a change to the training data (the card's "before and after" table).
        smoothing: The causal output smoothing at the end of the graph, if any.
        joint_cv: ``(source, report)`` of the joint CV on clip-labelled data (real music), if any.

    Returns:
        A JSON-serialisable dict (stored as ``mer.card``, rendered by :func:`render_markdown`).
    """
    dataset = str(checkpoint_meta.get("dataset", ""))
    train_cfg = dict(checkpoint_meta.get("train_config") or {})
    best_epoch, epochs_run, best_val = _early_stopping(checkpoint_meta)
    preset = str(train_cfg.get("preset", ""))
    cv = None if cv_report is None else cv_section(cv_report, cv_source, preset)
    features = contract.features
    compared = [
        {
            "label": label,
            "source": source,
            "title": report.get("title"),
            "notes": report.get("notes"),
            "rows": [
                {"model": f"{label}: {r['model']}", "folds": r["folds"], "metrics": r["metrics"]}
                for r in report.get("rows", [])
            ],
        }
        for label, source, report in comparisons
    ]
    return {
        "model_name": model_name,
        "model_version": model_version,
        "task": "per-frame arousal and valence of music, one value per 500 ms frame, in [-1, 1]",
        "outputs": list(contract.outputs),
        "output_range": list(contract.output_range),
        "architecture": {
            "preset": preset,
            **dict(model_config),
            **({"members": len(members)} if members else {}),
        },
        "features": {
            "set": f"openSMILE {features.feature_set} {features.feature_level} ({contract.num_features})",
            "analysis_rate_hz": features.sample_rate,
            "window_s": features.window_s,
            "hop_s": features.hop_s,
            "frame_policy": features.frame_policy,
            "level_policy": features.level_policy,
            "target_level_dbfs": features.target_level_dbfs,
            "chunk_frames": features.chunk_frames,
            "chunk_preroll_frames": features.chunk_preroll_frames,
            "transform": contract.feature_transform,
            "clip_z": contract.clip_z,
            "opensmile_version": contract.opensmile_version,
        },
        "training_data": {
            "dataset": dataset,
            "parts": [{"dataset": d, **DATASET_FACTS.get(d, {})} for d in dataset.split("+")],
        },
        "smoothing": None if smoothing is None else smoothing.to_dict(),
        "joint_cv": None if joint_cv is None else joint_section(*joint_cv),
        "training": {
            "clips": checkpoint_meta.get("clips"),
            "config": train_cfg,
            "best_epoch": best_epoch,
            "epochs_run": epochs_run,
            "best_val_mse": best_val,
            "augmentation": dict(checkpoint_meta.get("augmentation") or {}),
            **(
                {
                    "members": [
                        dict(zip(_STOPPING_KEYS, _early_stopping(m), strict=True))
                        | {"config": dict(m.get("train_config") or {}), "clips": m.get("clips")}
                        for m in members
                    ]
                }
                if members
                else {}
            ),
        },
        "cross_validation": cv,
        "comparisons": compared,
        "weights_dtype": weights_dtype,
        "known_limits": [
            *(KNOWN_LIMITS if "fourq" not in dataset.split("+") else KNOWN_LIMITS[1:]),
            *(line for d in dataset.split("+") for line in DATASET_LIMITS.get(d, ())),
        ],
        "licences": [
            *LICENCES[:-1],
            *(DATASET_LICENCES[d] for d in dataset.split("+") if d in DATASET_LICENCES),
            LICENCES[-1],
        ],
        "rebuild": rebuild,
    }


_STOPPING_KEYS = ("best_epoch", "epochs_run", "best_val_mse")


def _early_stopping(meta: Mapping[str, Any]) -> tuple[Any, int, Any]:
    """A checkpoint's best epoch, epochs run and validation MSE at the best epoch."""
    best_epoch = meta.get("best_epoch")
    history = list(meta.get("history") or [])
    best_val = next((h.get("val_mse") for h in history if h.get("epoch") == best_epoch), None)
    return best_epoch, len(history), best_val


def cv_section(report: Mapping[str, Any], source: str | None, preset: str) -> dict[str, Any]:
    """The card's ``cross_validation`` entry: every row of a per-frame CV report and the preset's own.

    Args:
        report: ``report.json`` of the cross-validation (``model_export.evaluate.write_report``).
        source: Where that report lives (shown in the card).
        preset: The card's model preset; its row becomes ``this_preset`` (``None`` if absent).
    """
    rows = {str(r["model"]): r for r in report.get("rows", [])}
    return {
        "source": source,
        "title": report.get("title"),
        "notes": report.get("notes"),
        "rows": [
            {
                "model": name,
                "folds": row["folds"],
                "clips": row["clips"],
                "frames": row["frames"],
                "metrics": row["metrics"],
            }
            for name, row in rows.items()
        ],
        "this_preset": rows[preset]["metrics"] if preset in rows else None,
    }


def joint_section(source: str, report: Mapping[str, Any]) -> dict[str, Any]:
    """The card's ``joint_cv`` entry from the joint (clip-level, real music) CV report at ``source``."""
    return {
        "source": source,
        "title": report.get("title"),
        "notes": report.get("notes"),
        "rows": list(report.get("rows", [])),
    }


def refresh_card(
    card: Mapping[str, Any],
    *,
    cv: tuple[str, Mapping[str, Any]] | None = None,
    joint_cv: tuple[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """A card with its evaluation sections rebuilt from newer reports; every other fact stays.

    The CV behind a shipped model keeps running after the export (its folds accumulate across
    sessions): this brings the card's numbers up to date without retraining, which would change the
    weights the card describes.

    Args:
        card: A card from :func:`build_card` (e.g. the ``mer.card`` entry of an exported model).
        cv: ``(source, report)`` of the per-frame CV, replacing ``cross_validation``; ``None`` keeps it.
        joint_cv: ``(source, report)`` of the joint CV, replacing ``joint_cv``; ``None`` keeps it.

    Returns:
        The new card (the input is not modified).
    """
    out = dict(card)
    if cv is not None:
        out["cross_validation"] = cv_section(cv[1], cv[0], str(card["architecture"]["preset"]))
    if joint_cv is not None:
        out["joint_cv"] = joint_section(*joint_cv)
    return out


def _metric_rows(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = [
        "| Model | R² A | R² V | τ A | τ V | MAE A | MAE V | folds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        m = row["metrics"]

        def cell(dim: str, key: str, m: Mapping[str, Any] = m) -> str:
            return f"{m[dim][key]:.3f}" if dim in m else "–"

        lines.append(
            f"| {row['model']} | {cell('arousal', 'r2')} | {cell('valence', 'r2')} | "
            f"{cell('arousal', 'tau')} | {cell('valence', 'tau')} | {cell('arousal', 'mae')} | "
            f"{cell('valence', 'mae')} | {row['folds']} |"
        )
    return lines


def _augmentation_line(aug: Mapping[str, Any]) -> str:
    if not aug.get("per_piece"):
        return "- No augmentation: each piece was rendered once."
    return (
        f"- Augmentation: {aug['per_piece']} extra rendition(s) per piece "
        f"({aug.get('variant_clips')} variant clips, seed {aug.get('seed')}, recipe version "
        f"{aug.get('version')}); changes {aug.get('changes')}"
        + (f" (renditions applying {', '.join(aug['excluded'])} left out)" if aug.get("excluded") else "")
        + f"; {aug.get('policy')}."
    )


def render_markdown(card: Mapping[str, Any]) -> str:
    """The Markdown model card for ``card`` (from :func:`build_card`)."""
    feats, data, training = card["features"], card["training_data"], card["training"]
    arch = card["architecture"]
    cfg = training["config"]
    lines = [
        f"# Model card: {card['model_name']} {card['model_version']}",
        "",
        f"**Task.** {card['task']}; outputs {', '.join(card['outputs'])}. "
        "Generated from the model's own metadata (`mer.card`) by `python -m model_export export`; "
        f"rebuild with `{card['rebuild']}`.",
        "",
        "## Model",
        "",
        *(
            [
                f"- The mean of {arch['members']} models of one architecture, each trained on the same data "
                "with its own recipe (Members below): the graph normalises the features once, runs every "
                "member on them and averages their outputs frame by frame."
            ]
            if arch.get("members")
            else []
        ),
        f"- Preset `{arch.get('preset')}`: {arch.get('kind')} with LSTM layers {arch.get('hidden_sizes')}, "
        f"attention window {arch.get('attention_window')} frames, output feedback "
        f"{arch.get('output_feedback')} (Chaki et al. 2020).",
        f"- Weights stored as {card['weights_dtype']}; the feature standardisation is inside the graph.",
        *_smoothing_line(card),
        "",
        "## Input features",
        "",
        f"- {feats['set']}, openSMILE {feats['opensmile_version']}, audio resampled to "
        f"{feats['analysis_rate_hz']} Hz, {feats['window_s']} s windows every {feats['hop_s']} s "
        f"(`{feats['frame_policy']}`).",
        f"- Input level: `{feats['level_policy']}` to {feats['target_level_dbfs']} dBFS per clip; "
        f"features compressed with `{feats['transform']}`, standardised with the training statistics and "
        f"clipped to ±{feats['clip_z']}.",
        *(
            [
                f"- Clips longer than {feats['chunk_frames']} frames are extracted in chunks of at most "
                f"{feats['chunk_frames']} frames with {feats['chunk_preroll_frames']} frames of pre-roll, "
                "in parallel where the service has cores. The model was trained on such features; the "
                "cross-validation reports below were computed on one-pass features (their deviation is "
                'measured in docs/performance.md, "Long songs").'
            ]
            if feats.get("chunk_frames")
            else []
        ),
        "",
        "## Training data",
        "",
        *(
            line
            for part in data.get("parts", [data])
            for line in (
                f"- {part.get('name', part['dataset'])}: {part.get('content', '')}.",
                f"- Audio: {part.get('audio', '')}.",
                f"- Timing: {part.get('timing', '')}.",
            )
        ),
        *_clip_loss_line(cfg, data["dataset"]),
        *([] if training.get("members") else _regularisation_line(cfg)),
        f"- {training['clips']} clips; RMSProp lr {cfg.get('lr')}, {cfg.get('batch_size')} sequences per "
        f"update ({cfg.get('batching')} batches), at most {cfg.get('epochs')} epochs, early stopping "
        f"(patience {cfg.get('patience')}, min delta {cfg.get('min_delta')}) on a held-out "
        f"{cfg.get('val_fraction')} of the pieces"
        + (
            "; per member below."
            if training.get("members")
            else f"; best epoch {training['best_epoch']} of {training['epochs_run']}, validation MSE "
            f"{training['best_val_mse']:.4f}."
        ),
        _augmentation_line(training.get("augmentation") or {}),
        *_member_lines(training.get("members") or []),
        "",
        "## Evaluation",
        "",
    ]
    cv = card.get("cross_validation")
    if cv:
        lines += [
            f"Cross-validation that chose this setup ({cv.get('title')}; `{cv.get('source')}`). Metrics on "
            "the pooled out-of-fold predictions: R², mean per-piece Kendall τ-b, MAE."
            + (
                " These are single models of the members' preset; the ensemble's own VGMIDI scores are the "
                "VGMIDI columns of its row in the real-music table below."
                if arch.get("members")
                else ""
            ),
            "",
            *_metric_rows(cv["rows"]),
            "",
            str(cv.get("notes") or ""),
        ]
    else:
        lines.append("No cross-validation report was given to the export.")
    joint = card.get("joint_cv")
    if joint:
        from model_export.joint_report import markdown_table

        lines += [
            "",
            "### Real music (4Q, clip level)",
            "",
            f"{joint.get('title')} (`{joint.get('source')}`): clip prediction = mean of its frames, "
            "quadrant = the signs of that mean; VGMIDI columns: the same folds' models on VGMIDI's fold-1 "
            "test pieces.",
            "",
            *markdown_table(joint["rows"]),
            "",
            str(joint.get("notes") or ""),
        ]
    compared = card.get("comparisons") or []
    if compared:
        lines += [
            "",
            "### Before and after",
            "",
            "The same protocol on the same folds with other training inputs; each row names its run.",
            "",
            *_metric_rows([row for c in compared for row in c["rows"]]),
            "",
        ]
        lines += [f"- {c['label']}: `{c['source']}` ({c.get('title')})." for c in compared]
    lines += ["", "## Known limits", ""]
    lines += [f"- {item}" for item in card["known_limits"]]
    lines += ["", "## Licences", ""]
    lines += [f"- {item}" for item in card["licences"]]
    return "\n".join(lines).rstrip() + "\n"


def _smoothing_line(card: Mapping[str, Any]) -> list[str]:
    if "smoothing" not in card:  # cards written before smoothing existed
        return []
    smoothing = card["smoothing"]
    if not smoothing or smoothing.get("kind") == "none":
        return ["- No output smoothing: each frame is the model's own output."]
    return [
        f"- Outputs smoothed in the graph by a causal exponential moving average (decay {smoothing['alpha']} "
        f"per frame, {smoothing['taps']} frames of history, renormalised at the start of a clip)."
    ]


def _clip_loss_line(cfg: Mapping[str, Any], dataset: str) -> list[str]:
    if "+" not in dataset:
        return []
    weight = " weighted by the label's confidence" if cfg.get("clip_confidence") else ""
    teacher = cfg.get("clip_teacher") or 0.0
    probe = "RBF-kernel SVM" if cfg.get("clip_teacher_probe") == "rbf_svm" else "linear"
    level = (
        f"a level between 0 and ±{cfg.get('clip_target')} ({1 - teacher:g} × the label's sign + "
        f"{teacher:g} × a cross-fitted {probe} probe's graded score)"
        if teacher
        else f"±{cfg.get('clip_target')}"
    )
    return [
        f"- Loss: MSE per frame for the per-frame ratings; for a clip-level label `{cfg.get('clip_loss')}` "
        f"against {level} on the clip mean, each clip counting like its frames times "
        f"{cfg.get('clip_weight')}{weight}; batches drawn from both datasets by length; weight decay "
        f"{cfg.get('weight_decay', 0.0)}, dropout {card_dropout(cfg)}."
    ]


def _member_lines(members: Sequence[Mapping[str, Any]]) -> list[str]:
    if not members:
        return []
    lines = ["", "### Members", ""]
    for k, m in enumerate(members, start=1):
        what = "; ".join(_regularisation_parts(m["config"])) or "no regularisation"
        val = m.get("best_val_mse")
        lines.append(
            f"{k}. {what}; best epoch {m.get('best_epoch')} of {m.get('epochs_run')}, validation MSE "
            f"{'–' if val is None else f'{val:.4f}'}."
        )
    return lines


def _regularisation_line(cfg: Mapping[str, Any]) -> list[str]:
    parts = _regularisation_parts(cfg)
    return [f"- Regularisation: {'; '.join(parts)}."] if parts else []


def _regularisation_parts(cfg: Mapping[str, Any]) -> list[str]:
    parts = []
    if cfg.get("weight_average"):
        parts.append(
            "validation, early stopping and the kept weights use an exponential moving average of the "
            f"weights (decay {cfg['weight_average']} per update)"
        )
    if cfg.get("input_rank"):
        parts.append(
            "the first layer's input weights were trained inside the "
            f"{cfg['input_rank']} leading principal directions of the normalised training frames (the "
            "graph keeps them so: the frames projected onto those directions, then the trained weights; "
            "the same function as the full-width model with fewer weights)"
        )
    return parts


def card_dropout(cfg: Mapping[str, Any]) -> float:
    """The dropout a training configuration used (a model override, 0 by default)."""
    return float((cfg.get("model_overrides") or {}).get("dropout", 0.0))


def card_metrics(card: Mapping[str, Any]) -> dict[str, Any] | None:
    """The card's CV rows of the model's own setup, as ``mer.metrics`` stores them (``None``: none).

    ``cv``: the per-frame CV row of its preset; ``joint``: the clip-level (real music) and VGMIDI
    scores of its preset, smoothed as the model is, under the joint protocol.
    """
    preset = card["architecture"]["preset"]
    members = card["architecture"].get("members")
    out: dict[str, Any] = {}
    cv = card.get("cross_validation")
    if cv and cv.get("this_preset"):
        rows = {r["model"]: r for r in cv["rows"]}
        out.update(cv=rows[preset]["metrics"], cv_folds=rows[preset]["folds"])
    joint = card.get("joint_cv")
    if joint:
        from model_export.joint import ensemble_name

        smoothing = card.get("smoothing") or {}
        model = ensemble_name(preset, int(members)) if members else preset
        smoothed = smoothing.get("kind", "none") != "none"
        name = f"{model} + smoothing {smoothing['alpha']:g}" if smoothed else model
        row = next((r for r in joint["rows"] if r["model"] == name), None)
        if row is not None:
            out["joint"] = {"model": name, "folds": row["folds"], "clip": row["clip"], "frame": row["frame"]}
    return out or None


def load_report(path: Path) -> dict[str, Any]:
    """Read a ``report.json`` written by ``model_export.evaluate.write_report``."""
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or "rows" not in data:
        raise ValueError(f"{path} is not a cross-validation report (no 'rows')")
    return data
