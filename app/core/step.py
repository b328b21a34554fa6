"""A model's step graph: a slice of frames of raw features and the state in, predictions and the state out.

Written by ``python -m model_export step`` (or ``export``) beside the sequence graph and named in its
metadata (``mer.step_model``: file, SHA-256), and found beside it as ``<model>.step.onnx`` or under the
recorded name (the digest decides); see ``model_export.step`` for what the state holds. This
module reads the state's names and shapes from the graph itself, so it knows nothing of the
architecture: a stream (or a long clip cut into slices) starts from :meth:`StepModel.initial_state`
(zeros) and threads the returned state through its frames. Graphs exported before slices existed take
one frame ``(B, F)`` per call: they still serve streams (:meth:`StepModel.step`), not slices.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from app.core.contract import INPUT_NAME, OUTPUT_NAME, STEP_MODEL_KEY, STEP_NEXT_SUFFIX
from app.core.errors import ContractError
from app.core.types import FloatArray

__all__ = ["StepGraphMissingError", "StepModel", "StepState"]

#: One stream's recurrent state: state input name -> (1, ...) float32 array.
StepState = dict[str, FloatArray]


class StepGraphMissingError(ContractError):
    """The model names a step graph but no file beside it is there (whole clips still work)."""


def _find_step_file(sequence_path: Path, name: str, digest: str) -> tuple[Path, bytes]:
    """The step file beside ``sequence_path`` whose SHA-256 is ``digest``, and its bytes.

    A model copied under another name usually has its step graph copied the same way
    (``custom.onnx`` + ``custom.step.onnx``), so that sibling is tried before the name recorded at
    export; the digest decides, so a stale file under either name is never used.
    """
    candidates = list(
        dict.fromkeys(
            [sequence_path.with_name(sequence_path.stem + ".step.onnx"), sequence_path.parent / name]
        )
    )
    present = [p for p in candidates if p.is_file()]
    if not present:
        raise StepGraphMissingError(
            f"step graph not beside {sequence_path.name} (looked for "
            + " and ".join(p.name for p in candidates)
            + f" in {sequence_path.parent}); copy the .step.onnx exported with it to stream live audio"
        )
    for path in present:
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() == digest:
            return path, data
    raise ContractError(
        f"{' and '.join(str(p) for p in present)}: not the step graph {sequence_path.name} was "
        "exported with (SHA-256)"
    )


class StepModel:
    """A loaded, verified step graph (thread-safe: the state lives with the caller).

    Attributes:
        path: The step graph's file.
        state_shapes: State input name -> shape for one stream (batch 1).
        parity: The recorded max |step - sequence| of its export check.
    """

    def __init__(self, session: Any, path: Path, num_features: int, num_outputs: int, parity: float) -> None:
        self._session = session
        self.path = path
        self.num_features = num_features
        self.num_outputs = num_outputs
        self.parity = parity
        self.state_shapes: dict[str, tuple[int, ...]] = {
            i.name: (1, *(int(d) for d in i.shape[1:])) for i in session.get_inputs() if i.name != INPUT_NAME
        }
        features = [i for i in session.get_inputs() if i.name == INPUT_NAME]
        #: True for a graph that takes (B, S, F) slices; False for one frame (B, F) per call.
        self.slices = bool(features) and len(features[0].shape) == 3
        self._outputs = [OUTPUT_NAME, *(name + STEP_NEXT_SUFFIX for name in self.state_shapes)]

    @classmethod
    def load(
        cls, sequence_path: Path, metadata: Mapping[str, str], *, num_features: int, num_outputs: int
    ) -> StepModel | None:
        """Load the step graph a sequence model's metadata names, or ``None`` if it names none.

        Args:
            sequence_path: The sequence graph (the step file is looked up beside it).
            metadata: The sequence graph's ``metadata_props``.
            num_features: F of the contract.
            num_outputs: O of the contract.

        Raises:
            StepGraphMissingError: If no step file is beside the model.
            ContractError: If the step file there is not the one recorded (SHA-256), or its interface
                does not match (serving refuses a model whose contract it cannot honour).
        """
        raw = metadata.get(STEP_MODEL_KEY)
        if raw is None:
            return None
        try:
            record = json.loads(raw)
            name, digest = str(record["file"]), str(record["sha256"])
            parity = float(record.get("parity", float("nan")))
        except (ValueError, KeyError, TypeError) as exc:
            raise ContractError(f"{sequence_path}: unreadable {STEP_MODEL_KEY}: {exc}") from exc
        if Path(name).name != name:
            raise ContractError(f"{sequence_path}: {STEP_MODEL_KEY} must name a file beside the model")
        path, data = _find_step_file(sequence_path, name, digest)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # One frame is a small GEMV: one thread per call, many streams in parallel.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.enable_cpu_mem_arena = False
        try:
            session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT's own exception classes
            raise ContractError(f"cannot load the step graph {path}: {exc}") from exc
        model = cls(session, path, num_features, num_outputs, parity)
        model._check_interface()
        return model

    def _check_interface(self) -> None:
        inputs = {i.name: i for i in self._session.get_inputs()}
        outputs = {o.name for o in self._session.get_outputs()}
        problems = []
        if (
            INPUT_NAME not in inputs
            or len(inputs[INPUT_NAME].shape) not in (2, 3)
            or list(inputs[INPUT_NAME].shape[-1:]) != [self.num_features]
        ):
            problems.append(f"input {INPUT_NAME!r} must be (batch, [frames,] {self.num_features})")
        missing = [n for n in self._outputs if n not in outputs]
        if missing:
            problems.append(f"outputs {missing} missing")
        if any(not all(isinstance(d, int) for d in shape[1:]) for shape in self.state_shapes.values()):
            problems.append("state shapes must be static past the batch axis")
        if problems:
            raise ContractError(f"{self.path}: step graph interface: " + "; ".join(problems))
        y, _ = self.step(np.zeros(self.num_features, dtype=np.float32), self.initial_state())
        if y.shape != (self.num_outputs,) or not np.all(np.isfinite(y)):
            raise ContractError(f"{self.path}: step graph returned {y.shape}, expected ({self.num_outputs},)")

    def initial_state(self) -> StepState:
        """The state at the start of a stream: all zeros."""
        return {name: np.zeros(shape, dtype=np.float32) for name, shape in self.state_shapes.items()}

    def step(self, features: npt.ArrayLike, state: StepState) -> tuple[FloatArray, StepState]:
        """Predict one frame.

        Args:
            features: Raw features of the frame, (F,).
            state: The stream's state (not modified).

        Returns:
            ``(prediction (O,), next state)``.
        """
        x = np.asarray(features, dtype=np.float32).reshape(1, self.num_features)
        if self.slices:
            y, state = self.run(x, state)
            return y[0], state
        results = self._session.run(self._outputs, {INPUT_NAME: x, **state})
        return np.asarray(results[0][0], dtype=np.float32), self._state(results[1:])

    def run(self, frames: FloatArray, state: StepState) -> tuple[FloatArray, StepState]:
        """Predict a slice of consecutive frames (a graph with :attr:`slices` only).

        Args:
            frames: Raw features (S, F) float32, S >= 1, validated by the caller.
            state: The state after the frames before them (not modified).

        Returns:
            ``(predictions (S, O), next state)``.

        Raises:
            ContractError: For a one-frame graph, which takes no slices.
        """
        if not self.slices:
            raise ContractError(f"{self.path}: this step graph takes one frame per call, not slices")
        results = self._session.run(self._outputs, {INPUT_NAME: frames[np.newaxis], **state})
        return np.asarray(results[0][0], dtype=np.float32), self._state(results[1:])

    def _state(self, results: list[Any]) -> StepState:
        return dict(zip(self.state_shapes, (np.asarray(r, dtype=np.float32) for r in results), strict=True))

    def info(self) -> dict[str, Any]:
        """What /v1/models/default says about the step graph."""
        return {
            "file": os.fspath(self.path.name),
            "parity": self.parity,
            "state": sorted(self.state_shapes),
            "slices": self.slices,
        }
