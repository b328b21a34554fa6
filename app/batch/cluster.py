"""The Ray engine: the same job as a Ray Data pipeline over a cluster.

Stages (``ray.data``):

1. the driver streams the input (skipping ids already written, as the local engine does) in chunks of
   ``chunk`` tracks, each chunk a small dataset of (id, path, offset, duration);
2. **decode + extract** in an actor pool of CPU workers (``extract_actors``, one CPU each; an actor
   holds one openSMILE extractor for the model's contract, built once, and no model), features
   passed on as ``.npy`` bytes;
3. **predict** in a second actor pool (``predict_actors``): the predictor is loaded once per actor
   from the model's bytes (shipped once through the object store, so nodes need no copy of the file),
   on CUDA when the actor is given a GPU (``gpus_per_actor``), else on the provider setting, with no
   logical CPU of its own (inference is ~5 % of a track's CPU time);
4. the driver takes the rows as they stream out and writes them with the same
   :class:`~app.batch.output.OutputFolder` (atomic parts, errors file, resume) as the local engine.

Per-track failures travel as rows with an error code and never fail a Ray task. What has to be shared:
the audio paths must be readable on every node (a shared filesystem or mount); the output is written
where the driver runs. What scales: stages 2 and 3 with the cluster's CPUs and GPUs; what does not: the
driver's input stream and writer (rows are small, a few kB per track: far from the limit at any
extraction rate a cluster reaches; measured in ``bench/batch.py``).
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from app.batch.local import JobStats, pending, record_problem
from app.batch.output import OutputFolder
from app.batch.scoring import Failure, Limits, Scorer, TrackExtractor, failure
from app.batch.tracks import InputProblem, Item, Track
from app.core.contract import ModelContract
from app.core.predictor import Predictor, ProviderChoice

__all__ = ["RayOptions", "run_ray"]

_ERROR_KEYS = ("error_status", "error_code", "error_message")


@dataclass(frozen=True)
class RayOptions:
    """How the Ray job is laid out.

    Attributes:
        address: The cluster (``auto``, ``ray://host:10001``, ``host:6379``); ``None``: a local one.
        extract_actors: Decode + extract actors (one CPU each); ``None``: the cluster's CPUs.
        predict_actors: Predictor actors.
        gpus_per_actor: GPUs per predictor actor (0: CPU inference).
        chunk: Tracks per dataset (the driver's memory holds one chunk's inputs).
        batch_size: Tracks per predictor call batch.
    """

    address: str | None = None
    extract_actors: int | None = None
    predict_actors: int = 1
    gpus_per_actor: float = 0.0
    chunk: int = 4096
    batch_size: int = 8


class _Extract:
    """Stage 2: decode and extract, one openSMILE extractor per actor (no model: only its contract)."""

    def __init__(self, contract: ModelContract, limits: Limits) -> None:
        self.scorer = TrackExtractor(contract, limits)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, list[Any]] = {k: [] for k in ("features", "gain_db", "analysed_s", *_ERROR_KEYS)}
        for track, location in _tracks(batch):
            try:
                values, gain, seconds = self.scorer.extract(replace(track, path=location))
            except Exception as exc:  # recorded per track, the task succeeds
                item = failure(track.id, track.path, exc)
                values, gain, seconds = None, 0.0, 0.0
                problem: tuple[Any, ...] = (item.status, item.code, item.message)
            else:
                problem = (0, "", "")
            out["features"].append(b"" if values is None else _to_npy(values))
            out["gain_db"].append(gain)
            out["analysed_s"].append(seconds)
            for key, value in zip(_ERROR_KEYS, problem, strict=True):
                out[key].append(value)
        return {**batch, **out}


class _Predict:
    """Stage 3: predict, the model loaded once per actor (CUDA if the actor was given a GPU)."""

    def __init__(self, model_bytes: bytes, limits: Limits, providers: ProviderChoice) -> None:
        self.scorer = _scorer(model_bytes, limits, providers=providers)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        p = self.scorer.predictor
        rows: list[dict[str, Any]] = []
        for i, (track, _) in enumerate(_tracks(batch)):
            # Batches arrive as numpy columns: back to plain Python values for the JSON row.
            error = {
                "error_status": int(batch["error_status"][i]),
                "error_code": str(batch["error_code"][i]),
                "error_message": str(batch["error_message"][i]),
            }
            if error["error_code"]:
                rows.append({"id": track.id, "path": track.path, **error})
                continue
            features = np.load(io.BytesIO(batch["features"][i]), allow_pickle=False)
            try:
                scored = self.scorer.finish(
                    track, features, float(batch["gain_db"][i]), float(batch["analysed_s"][i])
                )
            except Exception as exc:
                item = failure(track.id, track.path, exc)
                rows.append({"id": track.id, "path": track.path, **_error_fields(item)})
                continue
            row = scored.row(p.model_name, p.model_version, self.scorer.config.sample_rate)
            rows.append({**row, "error_status": 0, "error_code": "", "error_message": ""})
        # One JSON-safe column keeps ragged per-frame lists and failures in one schema.
        return {"row": [_json(r) for r in rows]}


def run_ray(
    model_path: Path,
    limits: Limits,
    providers: ProviderChoice,
    items: Iterable[Item],
    out: OutputFolder,
    options: RayOptions,
    *,
    limit: int | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> JobStats:
    """Score ``items`` on a Ray cluster; same arguments and results as :func:`~app.batch.local.run_local`.

    Raises:
        ImportError: If Ray is not installed (the ``cluster`` extra).
        ModelNotReadyError, ContractError: If the model cannot be loaded (checked on the driver first).
    """
    import ray

    # Fail on the driver, before a cluster is touched, if the model is unusable.
    contract = Predictor.load(model_path, providers="cpu", intra_op_threads=1, warmup=False).contract
    model_bytes = model_path.read_bytes()
    stats = JobStats()
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=options.address, log_to_driver=False, configure_logging=False)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        cpus = ray.cluster_resources().get("CPU", 1)  # type: ignore[no-untyped-call]
        extract_actors = options.extract_actors or max(1, int(cpus))
        todo = pending(items, out.done_ids(), stats, limit)
        while chunk := list(islice(todo, options.chunk)):
            tracks = []
            for item in chunk:
                if isinstance(item, InputProblem):
                    record_problem(item, out, stats, progress)
                else:
                    tracks.append(_track_row(item))
            if not tracks:
                continue
            dataset = (
                ray.data.from_items(tracks, override_num_blocks=min(len(tracks), 4 * extract_actors))
                .map_batches(
                    _Extract,
                    fn_constructor_args=(contract, limits),
                    batch_size=1,
                    num_cpus=1,
                    compute=ray.data.ActorPoolStrategy(size=extract_actors),
                    batch_format="default",
                )
                .map_batches(
                    _Predict,
                    fn_constructor_args=(
                        model_bytes,
                        limits,
                        "cuda" if options.gpus_per_actor > 0 else providers,
                    ),
                    batch_size=options.batch_size,
                    # No logical CPU: inference is ~5 % of a track's CPU time (one ONNX Runtime thread),
                    # so a predictor shares the extractors' cores instead of idling one of them.
                    num_cpus=0,
                    num_gpus=options.gpus_per_actor,
                    compute=ray.data.ActorPoolStrategy(size=options.predict_actors),
                    batch_format="default",
                )
            )
            for record in dataset.iter_rows():
                row = json.loads(record["row"])
                seconds = _take(row, out, stats)
                if progress is not None:
                    progress(1, seconds)
    finally:
        if started_here:
            ray.shutdown()
    out.close()
    return stats


def _take(row: dict[str, Any], out: OutputFolder, stats: JobStats) -> float:
    status, code, message = (row.pop(k) for k in _ERROR_KEYS)
    if code:
        item = Failure(row["id"], row["path"], int(status), str(code), str(message))
        out.record_failure(item)
        stats.count_failure(item)
        return 0.0
    out.add(row)
    stats.done += 1
    stats.audio_s += float(row["duration_s"])
    return float(row["duration_s"])


def _scorer(model_bytes: bytes, limits: Limits, providers: ProviderChoice) -> Scorer:
    # ONNX Runtime loads from a path; the file can go as soon as the session holds the model.
    with tempfile.TemporaryDirectory(prefix="mer-model-") as tmp:
        path = Path(tmp) / "model.onnx"
        path.write_bytes(model_bytes)
        # Catalogue scoring runs whole clips: the live stream's step graph is not shipped to the workers.
        predictor = Predictor.load(path, providers=providers, intra_op_threads=1, warmup=False, step=False)
    return Scorer(predictor, limits)


def _track_row(track: Track) -> dict[str, Any]:
    return {
        "id": track.id,
        "path": os.path.abspath(track.path),
        "given_path": track.path,
        "offset_s": track.offset_s,
        "duration_s": -1.0 if track.duration_s is None else track.duration_s,
    }


def _tracks(batch: dict[str, Any]) -> Iterator[tuple[Track, str]]:
    """The batch's tracks (with the path as given, for the output) and where to read each."""
    for ident, path, given, offset, duration in zip(
        batch["id"], batch["path"], batch["given_path"], batch["offset_s"], batch["duration_s"], strict=True
    ):
        # Workers run in their own directories (and maybe on other nodes): decode the absolute path.
        track = Track(str(ident), str(given), float(offset), None if float(duration) < 0 else float(duration))
        yield track, str(path)


def _to_npy(values: np.ndarray[Any, Any]) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, values, allow_pickle=False)
    return buffer.getvalue()


def _error_fields(item: Failure) -> dict[str, Any]:
    return {"error_status": item.status, "error_code": item.code, "error_message": item.message}


def _json(row: dict[str, Any]) -> str:
    return json.dumps(row)
