"""Serving-side inference: an exported ONNX model behind a small, validated, thread-safe API.

:class:`Predictor` opens a file written by ``model_export.export`` with ONNX Runtime, refuses it unless
its embedded :class:`~app.core.contract.ModelContract` is complete and its graph interface matches that
contract, warms it up, and maps raw feature arrays from :mod:`app.core.features` to per-frame emotion. The
graph normalises raw features itself, so nothing here touches the statistics.

Errors follow :mod:`app.core.errors`:

* :class:`~app.core.errors.ModelNotReadyError` (503): the file is missing or is not a loadable ONNX model,
  or the requested execution provider is not available (the process stays up, not ready, and says why).
* :class:`~app.core.errors.ContractError` (500): the model loads but its contract metadata is missing,
  invalid, or disagrees with the graph.
* :class:`~app.core.errors.InvalidFeaturesError` (422): a request's feature array has the wrong shape, type
  or non-finite values; the message names the expected ``(T, F)`` shape.

The module imports only numpy, onnxruntime and ``app``: no torch, onnx or web framework, so the serving
image stays small.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from app.core.contract import INPUT_NAME, METADATA_PREFIX, OUTPUT_NAME, ModelContract
from app.core.errors import ContractError, InvalidFeaturesError, ModelNotReadyError, ServiceError
from app.core.step import StepGraphMissingError, StepModel
from app.core.types import FloatArray

__all__ = ["WARMUP_FRAMES", "Predictor", "ProviderChoice"]

log = logging.getLogger(__name__)

#: Frames of the warm-up runs: the paper's 30 s clip (61 labels), the typical request.
WARMUP_FRAMES = 61
#: Batch sizes of the warm-up runs (single requests and a small batch).
WARMUP_BATCHES = (1, 4)
#: Slack on the contract's output range: tanh outputs are within it up to float rounding.
_RANGE_SLACK = 1e-5
#: A clip longer than this many frames (2 minutes) is run through the step graph in slices of this
#: length, its state carried across, when the model has a step graph that takes slices: memory then
#: stays that of a 2-minute clip whatever the length (the sequence graph's front holds several copies
#: of the whole (T, F) input), and the outputs equal the sequence graph's within the step graph's
#: recorded parity. 0 turns slicing off.
DEFAULT_SLICE_FRAMES = 240

ProviderChoice = Literal["auto", "cpu", "cuda"]
_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"


class Predictor:
    """A loaded, validated model; build with :meth:`load`.

    Attributes:
        path: The model file.
        provider: The execution provider ONNX Runtime actually runs the model on.
        contract: The model's I/O contract (from its metadata).
        metadata: All ``metadata_props`` of the file.
        model_name: ``mer.model_name`` (the file name if absent).
        model_version: ``mer.model_version`` (``"unknown"`` if absent).
        num_features: F, the width of a feature row.
        outputs: Output names, in order (the last axis of every result).
        ready: True once the warm-up runs have passed.

    Every method may be called from several threads at once: ONNX Runtime sessions are thread-safe
    and a predictor holds no per-call state.
    """

    def __init__(
        self, session: Any, contract: ModelContract, path: Path, slice_frames: int = DEFAULT_SLICE_FRAMES
    ) -> None:
        self._session = session
        #: Clips longer than this run in slices of it through the step graph (0: never); see
        #: :data:`DEFAULT_SLICE_FRAMES`.
        self.slice_frames = slice_frames
        self.path = path
        self.contract = contract
        self.provider: str = session.get_providers()[0]
        self.metadata: dict[str, str] = dict(session.get_modelmeta().custom_metadata_map)
        self.model_name = self.metadata.get(METADATA_PREFIX + "model_name") or path.stem
        self.model_version = self.metadata.get(METADATA_PREFIX + "model_version") or "unknown"
        self.num_features = contract.num_features
        self.outputs = contract.outputs
        self.ready = False
        #: The step graph for live streams and long clips in slices (``app.core.step``), if the model has one.
        self.step: StepModel | None = None
        #: Why a step graph the model names is not loaded (its file is missing), else ``None``.
        self.step_problem: str | None = None

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        providers: ProviderChoice = "auto",
        intra_op_threads: int,
        inter_op_threads: int = 1,
        warmup: bool = True,
        step: bool = True,
        slice_frames: int = DEFAULT_SLICE_FRAMES,
    ) -> Predictor:
        """Open, validate and (by default) warm up a model.

        Args:
            path: ONNX file written by ``model_export.export``.
            providers: ``"cpu"``; ``"cuda"`` (an error if CUDA is unavailable, never a silent CPU
                fallback); or ``"auto"``: CUDA when this onnxruntime build offers it, else CPU.
            intra_op_threads: Threads inside one operator (0: ONNX Runtime's default, all cores). With
                several worker processes, give each ``cores // workers``.
            inter_op_threads: Threads across independent operators (the graph is a chain: 1 suffices).
            warmup: Run the model on :data:`WARMUP_FRAMES`-frame inputs now (batch 1 and 4), so the
                first requests do not pay for allocations and kernel selection.
            step: Load the step graph the metadata names (live streams, long clips in slices); False
                where only whole clips are scored (e.g. Ray workers that get the sequence graph's bytes
                alone).
            slice_frames: Clips longer than this run in slices of it through a step graph that takes
                slices (0: always the sequence graph); see :data:`DEFAULT_SLICE_FRAMES`.

        Returns:
            The predictor; ``ready`` is True if ``warmup`` ran.

        Raises:
            ValueError: For an unknown ``providers`` value, negative thread counts or ``slice_frames``.
            ModelNotReadyError: If the file is missing or not a loadable ONNX model, or the requested
                provider is unavailable.
            ContractError: If the contract metadata is missing or invalid, the graph's inputs and
                outputs disagree with it, or the warm-up outputs break it.
        """
        model_path = Path(path)
        if intra_op_threads < 0 or inter_op_threads < 0:
            raise ValueError(f"thread counts must be >= 0, got {intra_op_threads}, {inter_op_threads}")
        if slice_frames < 0:
            raise ValueError(f"slice_frames must be >= 0, got {slice_frames}")
        wanted = _provider_list(providers)
        if not model_path.is_file():
            raise ModelNotReadyError(f"model file {model_path} does not exist")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = inter_op_threads
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Without the arena the memory of a long clip's run is freed when it ends; with it ONNX
        # Runtime keeps its peak for good (measured: +596 MB kept after 2 x 1798 frames, 35 MB without;
        # 61-frame latency unchanged).
        options.enable_cpu_mem_arena = False
        try:
            session = ort.InferenceSession(os.fspath(model_path), options, providers=wanted)
        except Exception as exc:  # ORT raises its own pybind classes (InvalidProtobuf, Fail, ...)
            raise ModelNotReadyError(f"cannot load {model_path} as an ONNX model: {exc}") from exc
        actual = session.get_providers()[0]
        if providers == "cuda" and actual != _CUDA:
            # ORT falls back to CPU when the CUDA provider fails to initialise; asked for CUDA, that
            # would silently serve at a fraction of the expected throughput.
            raise ModelNotReadyError(
                f"CUDA was requested but ONNX Runtime runs {model_path} on {actual} "
                "(CUDA provider failed to initialise; check the driver and CUDA/cuDNN libraries)"
            )
        meta = session.get_modelmeta().custom_metadata_map
        try:
            contract = ModelContract.from_metadata(meta)
        except ContractError as exc:
            raise ContractError(f"{model_path}: {exc.message}") from exc
        _check_interface(session, contract, model_path)
        predictor = cls(session, contract, model_path, slice_frames)
        # The live stream's step graph, when the model names one: refused (ContractError) if it is
        # not the one exported with the model; a missing file only takes live streams away.
        if step:
            try:
                predictor.step = StepModel.load(
                    model_path, meta, num_features=contract.num_features, num_outputs=len(contract.outputs)
                )
            except StepGraphMissingError as exc:
                predictor.step_problem = exc.message
                log.warning("%s; whole clips are served, live streams are not", exc.message)
        log.info("loaded %s %s (%s) on %s", predictor.model_name, predictor.model_version, model_path, actual)
        if warmup:
            predictor.warmup()
        return predictor

    def warmup(self) -> None:
        """Run the model on zero features at :data:`WARMUP_FRAMES` frames, batch 1 and 4; set ``ready``.

        Raises:
            ContractError: If the outputs have the wrong shape, are not finite, or leave the contract's
                output range.
        """
        low, high = self.contract.output_range
        for batch in WARMUP_BATCHES:
            x = np.zeros((batch, WARMUP_FRAMES, self.num_features), dtype=np.float32)
            y = self._run(x)
            if not np.all(np.isfinite(y)):
                raise ContractError(f"{self.path}: warm-up produced non-finite outputs")
            if y.min() < low - _RANGE_SLACK or y.max() > high + _RANGE_SLACK:
                raise ContractError(
                    f"{self.path}: warm-up outputs span [{y.min():.4g}, {y.max():.4g}], outside the "
                    f"contract's output_range {self.contract.output_range}"
                )
        self.ready = True

    def predict(self, features: npt.ArrayLike) -> FloatArray:
        """Predict every frame of one clip.

        Args:
            features: Raw features ``(T, F)`` from :meth:`app.core.features.FeatureExtractor.extract`,
                T >= 1, finite; any real dtype (converted to float32).

        Returns:
            ``(T, O)`` float32, columns in :attr:`outputs` order.

        Raises:
            InvalidFeaturesError: If the array is not ``(T, F)`` with T >= 1, not real-valued, or holds
                NaN/inf (or values beyond float32's range).
        """
        x = self.validate(features)
        return self._run_one(x)

    def predict_batch(self, clips: Sequence[npt.ArrayLike]) -> list[FloatArray]:
        """Predict several clips in one session call.

        The clips are right-padded with zeros to the longest and run as one ``(B, T_max, F)`` tensor.
        The model is causal, so padding after a clip cannot change its frames; each result is the
        clip's first ``T_i`` rows and equals :meth:`predict` of that clip up to float rounding. Memory
        grows with ``B * T_max``: batch clips of similar lengths.

        Args:
            clips: Raw feature arrays ``(T_i, F)``, each as for :meth:`predict`.

        Returns:
            One ``(T_i, O)`` float32 array per clip, in order (empty for no clips).

        Raises:
            InvalidFeaturesError: If any clip is invalid; the message says which.
        """
        arrays = [self.validate(clip, index=i) for i, clip in enumerate(clips)]
        if not arrays:
            return []
        if len(arrays) == 1:
            # No padded copy for a batch of one (a 10-minute song's features are 30 MB).
            return [self._run_one(arrays[0]).copy()]
        longest = max(a.shape[0] for a in arrays)
        batch = np.zeros((len(arrays), longest, self.num_features), dtype=np.float32)
        for i, a in enumerate(arrays):
            batch[i, : a.shape[0]] = a
        y = self._run(batch)
        # Copies: a view would keep the whole padded batch output alive for as long as any result.
        return [y[i, : a.shape[0]].copy() for i, a in enumerate(arrays)]

    def info(self) -> dict[str, Any]:
        """JSON-friendly description (for a model-info endpoint or logs)."""
        return {
            "name": self.model_name,
            "version": self.model_version,
            "path": str(self.path),
            "provider": self.provider,
            "ready": self.ready,
            "num_features": self.num_features,
            "outputs": list(self.outputs),
            "output_range": list(self.contract.output_range),
            "features": {
                "feature_set": self.contract.features.feature_set,
                "feature_level": self.contract.features.feature_level,
                "sample_rate": self.contract.features.sample_rate,
                "hop_s": self.contract.features.hop_s,
                "window_s": self.contract.features.window_s,
            },
            "step_model": None
            if self.step is None
            else {**self.step.info(), "slice_frames": self.slice_frames if self.step.slices else 0},
            "step_model_problem": self.step_problem,
        }

    def _expected(self) -> str:
        return f"expected raw features of shape (T, {self.num_features}) with T >= 1"

    def validate(self, features: npt.ArrayLike, index: int | None = None) -> FloatArray:
        """Check one clip's raw features and return them as contiguous float32 ``(T, F)``.

        :meth:`predict` and :meth:`predict_batch` call this; a server that batches requests calls it
        per request first, so that one client's bad array fails that request and not a whole batch.

        Args:
            features: Raw features, as for :meth:`predict`.
            index: Position of the clip in a batch, named in the error message.

        Returns:
            The features as C-contiguous float32 (the input itself if it already is).

        Raises:
            InvalidFeaturesError: If the array is not ``(T, F)`` with T >= 1, not real-valued, or holds
                NaN/inf (or values beyond float32's range); the message names the expected shape.
        """
        where = "" if index is None else f"clip {index}: "
        try:
            arr = np.asarray(features)
        except (ValueError, TypeError) as exc:  # ragged nested sequences, unconvertible objects
            raise InvalidFeaturesError(f"{where}{self._expected()}; not an array: {exc}") from exc
        if arr.dtype.kind not in "iuf":
            raise InvalidFeaturesError(f"{where}{self._expected()} of real numbers; got dtype {arr.dtype}")
        if arr.ndim != 2 or arr.shape[1] != self.num_features or arr.shape[0] < 1:
            raise InvalidFeaturesError(f"{where}{self._expected()}; got shape {arr.shape}")
        with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf: reported below
            x = np.ascontiguousarray(arr, dtype=np.float32)
        finite = np.isfinite(x)
        if not finite.all():
            row, col = (int(v) for v in np.argwhere(~finite)[0])
            raise InvalidFeaturesError(
                f"{where}{self._expected()} and finite values; {int((~finite).sum())} value(s) are "
                f"NaN, infinite or beyond float32 range (first at row {row}, column {col})"
            )
        return x

    def slices_for(self, frames: int) -> bool:
        """Whether a clip of ``frames`` frames runs in slices through the step graph."""
        step = self.step
        return step is not None and step.slices and 0 < self.slice_frames < frames

    def _run_one(self, x: FloatArray) -> FloatArray:
        """Predict one validated clip (T, F): the sequence graph, or slices of a long clip."""
        step = self.step
        if step is None or not self.slices_for(x.shape[0]):
            y: FloatArray = self._run(x[np.newaxis])[0]
            return y
        out = np.empty((x.shape[0], len(self.outputs)), dtype=np.float32)
        state = step.initial_state()
        for start in range(0, x.shape[0], self.slice_frames):
            part = x[start : start + self.slice_frames]
            try:
                y, state = step.run(part, state)
            except Exception as exc:  # ORT's own exception classes (e.g. out of memory)
                raise ServiceError(f"inference failed for a slice of shape {part.shape}: {exc}") from exc
            if y.shape != (part.shape[0], len(self.outputs)):
                raise ContractError(f"{step.path}: step graph returned shape {y.shape} for {part.shape}")
            out[start : start + part.shape[0]] = y
        return out

    def _run(self, x: FloatArray) -> FloatArray:
        try:
            (y,) = self._session.run([OUTPUT_NAME], {INPUT_NAME: x})
        except Exception as exc:  # ORT's own exception classes (e.g. out of memory)
            raise ServiceError(f"inference failed for input of shape {x.shape}: {exc}") from exc
        out = np.asarray(y, dtype=np.float32)
        expected = (*x.shape[:2], len(self.outputs))
        if out.shape != expected:
            raise ContractError(f"{self.path}: model returned shape {out.shape}, expected {expected}")
        return out


def _provider_list(choice: str) -> list[str]:
    """ONNX Runtime provider list for a choice, CPU last as the fallback for unsupported operators."""
    available = ort.get_available_providers()
    if choice == "cpu":
        return [_CPU]
    if choice == "cuda":
        if _CUDA not in available:
            raise ModelNotReadyError(
                f"CUDA was requested but this onnxruntime build offers only {available}; "
                "install onnxruntime-gpu or choose providers 'cpu' or 'auto'"
            )
        return [_CUDA, _CPU]
    if choice == "auto":
        return [_CUDA, _CPU] if _CUDA in available else [_CPU]
    raise ValueError(f"providers must be 'auto', 'cpu' or 'cuda', not {choice!r}")


def _check_interface(session: Any, contract: ModelContract, path: Path) -> None:
    """Refuse a graph whose input/output names, types or shapes disagree with its contract."""
    problems: list[str] = []
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if [i.name for i in inputs] != [INPUT_NAME]:
        problems.append(f"inputs are {[i.name for i in inputs]}, expected [{INPUT_NAME!r}]")
    if [o.name for o in outputs] != [OUTPUT_NAME]:
        problems.append(f"outputs are {[o.name for o in outputs]}, expected [{OUTPUT_NAME!r}]")
    if not problems:
        arg_problems = [
            _arg_problem(inputs[0], contract.num_features, static_width=True),
            _arg_problem(outputs[0], len(contract.outputs), static_width=False),
        ]
        problems.extend(p for p in arg_problems if p)
    if problems:
        raise ContractError(f"{path}: graph does not match its contract: " + "; ".join(problems))


def _arg_problem(arg: Any, width: int, *, static_width: bool) -> str | None:
    """Why a graph input/output is not a float (batch, time, width) tensor, or None if it is.

    The input's width must be declared (a graph that accepts any F cannot be checked against the
    contract); an output's may be symbolic, since every run checks the real output shape.
    """
    shape: Sequence[Any] = arg.shape
    if arg.type != "tensor(float)":
        return f"{arg.name} has type {arg.type}, expected tensor(float)"
    if len(shape) != 3:
        return f"{arg.name} has shape {list(shape)}, expected [batch, time, {width}]"
    if any(isinstance(d, int) for d in shape[:2]):
        return f"{arg.name} has shape {list(shape)}: batch and time must be dynamic"
    if not isinstance(shape[2], int):
        return None if not static_width else f"{arg.name} has no fixed width, the contract says {width}"
    if shape[2] != width:
        return f"{arg.name} has width {shape[2]}, the contract says {width}"
    return None
