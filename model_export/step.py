"""The stateful step graph beside the sequence graph: a slice of frames and the state in, predictions out.

The sequence graph (:mod:`model_export.export`) maps a whole clip ``(B, T, F)`` to ``(B, T, O)``. A live
stream has one new frame every 500 ms and must not recompute its past, and a long song need not hold its
whole ``(T, F)`` normalised input at once, so every exported model can have a sibling *step graph* with
the same weights that carries the recurrence's state explicitly across slices of a clip:

* inputs ``features`` (B, S, F) (raw features of S >= 1 consecutive frames; S = 1 for a live stream)
  and the state tensors, outputs ``emotion`` (B, S, O) and, for each state input ``s``, ``s_next``;
* the state: each LSTM layer's ``h{i}`` and ``c{i}``, the attention window's past top-layer states
  ``past_h`` (B, W, H; most recent first; AT only), the output recurrence's ``y_prev`` (B, O), the
  smoother's past raw outputs ``past_y`` (B, taps - 1, O) and ``frames`` (B, 1), the number of frames
  seen (clamped at ``max(W, taps)``: all the masks need), all zero at the start of a clip.

A slice computes exactly what the same frames of the sequence graph compute (the same ONNX
``LSTM``/``RNN`` operators with initial states, the same attention scores over the same W past states
with the same masks and the same banded product, the same truncated, renormalised exponential
smoothing), so the two agree to float rounding for any way of cutting a clip into slices;
:func:`verify_step` checks it over 1 200 frames, one frame at a time and in uneven slices (parity
tolerance :data:`STEP_PARITY_TOLERANCE`). Graphs written before slices existed take ``(B, F)`` one frame
at a time; ``app.core.step`` still runs them for streams.

The server needs nothing architecture-specific: the state inputs, their shapes and their ``_next``
outputs are read from the step graph itself (``app.core.step``). The sequence model's metadata names the
sibling file and its SHA-256 (``mer.step_model``), so serving refuses a step graph that is not this
model's.

:func:`recover_export_module` rebuilds the PyTorch module from an exported sequence graph (weights from
its initializers, configuration from its metadata), so a step graph can be added to a model whose
training checkpoint is gone, such as the shipped one: its parity is then checked against the original
ONNX file itself.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from torch import Tensor, nn

from app.core.contract import (
    INPUT_NAME,
    METADATA_PREFIX,
    OUTPUT_NAME,
    STEP_MODEL_KEY,
    STEP_NEXT_SUFFIX,
    ModelContract,
)
from app.core.types import FloatArray
from model_export.export import (
    ENSEMBLE_KEY,
    ExportError,
    ExportModule,
    Member,
    _store_initializers_fp16,
    atomic_path,
    legacy_exporter_quiet,
    sample_raw_features,
)
from model_export.model import _MASKED_SCORE, EmotionRNN, ModelConfig, SubspaceInput, _banded_context
from model_export.smoothing import Smoothing

__all__ = [
    "STEP_PARITY_TOLERANCE",
    "StepModule",
    "add_step_graph",
    "export_step",
    "recover_export_module",
    "run_slices",
    "step_file_for",
    "verify_step",
]

#: Largest accepted |step graph - sequence graph| over the verification run.
STEP_PARITY_TOLERANCE = 1e-4
#: Steps of the verification run: 20 times the attention window and the smoother's taps.
VERIFY_STEPS = 1200


class StepModule(nn.Module):
    """Slices of frames of an :class:`~model_export.export.ExportModule`, with its state in and out.

    An ensemble's members each carry their own recurrent state, named with a prefix ``m{k}_``
    (``m0_h0``, ``m1_past_h``, ...); the smoother's history and the frame count are shared, as the
    smoother runs once on the members' mean.

    Args:
        export_module: The sequence module (normaliser, model(s), optional smoother) whose weights it uses.
    """

    def __init__(self, export_module: ExportModule) -> None:
        super().__init__()
        self.inner = export_module
        cfg = export_module.config
        smoother = export_module.smoother
        models = export_module.models
        self.prefixes = [""] if len(models) == 1 else [f"m{k}_" for k in range(len(models))]
        self.window = cfg.attention_window if _net(models[0]).attention is not None else 0
        self.taps = smoother.taps if smoother is not None else 1
        self.horizon = float(max(self.window, self.taps, 1))
        self.register_buffer("offsets", torch.arange(1, max(self.window, self.taps) + 1, dtype=torch.float32))
        alpha = smoother.alpha if smoother is not None else 0.0
        self.register_buffer(
            "smooth_weights", torch.tensor([alpha**j for j in range(1, self.taps)], dtype=torch.float32)
        )

    offsets: Tensor
    smooth_weights: Tensor

    def state_shapes(self, batch: int = 1) -> dict[str, tuple[int, ...]]:
        """Name -> shape of every state tensor, in the graph's input order."""
        cfg: ModelConfig = self.inner.config
        shapes: dict[str, tuple[int, ...]] = {}
        for prefix, model in zip(self.prefixes, self.inner.models, strict=True):
            for i, size in enumerate(cfg.hidden_sizes):
                shapes[f"{prefix}h{i}"] = (batch, size)
                shapes[f"{prefix}c{i}"] = (batch, size)
            if self.window:
                shapes[f"{prefix}past_h"] = (batch, self.window, cfg.top_hidden_size)
            if _net(model).output_rnn is not None:
                shapes[f"{prefix}y_prev"] = (batch, cfg.num_outputs)
        if self.taps > 1:
            shapes["past_y"] = (batch, self.taps - 1, cfg.num_outputs)
        shapes["frames"] = (batch, 1)
        return shapes

    def forward(self, features: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        """A slice of S >= 1 consecutive frames (S = 1 for a live stream's frame).

        Args:
            features: Raw features of the slice's frames, (B, S, F).
            *state: The state tensors in :meth:`state_shapes` order, as left by the previous slice.

        Returns:
            ``(emotion (B, S, O), *next_state)`` in the same order.
        """
        names = list(self.state_shapes())
        s = dict(zip(names, state, strict=True))
        x = self.inner.normaliser(features)  # (B, S, F)
        frames = s["frames"]  # (B, 1): frames before the slice, clamped at the horizon
        # Frames before each of the slice's frames: frames + j. Built from the slice's shape so the
        # tracer records a shape-dependent op and S stays dynamic.
        seen = frames + torch.cumsum(torch.ones_like(x[..., 0]), dim=1) - 1.0  # (B, S)
        out: dict[str, Tensor] = {}
        ys = [
            self._member(model, prefix, x, s, seen, out)
            for prefix, model in zip(self.prefixes, self.inner.models, strict=True)
        ]
        y = ys[0] if len(ys) == 1 else torch.stack(ys).mean(dim=0)
        emotion = y
        if self.taps > 1:
            k = self.taps - 1
            past = torch.cat([torch.flip(s["past_y"], dims=[1]), y], dim=1)  # (B, taps - 1 + S, O)
            present = (seen[..., None] >= self.offsets[:k]).to(y.dtype)  # (B, S, taps - 1)
            weights = self.smooth_weights * present
            num = y + _banded_context(weights, past)
            emotion = num / (1.0 + weights.sum(dim=-1, keepdim=True))
            out["past_y"] = torch.flip(past[:, -k:], dims=[1])
        out["frames"] = torch.clamp(seen[:, -1:] + 1.0, max=self.horizon)  # frames + S
        return (emotion, *(out[name] for name in names))

    def _member(
        self,
        member: Member,
        prefix: str,
        x: Tensor,
        s: Mapping[str, Tensor],
        seen: Tensor,
        out: dict[str, Tensor],
    ) -> Tensor:
        """One model's outputs (B, S, O) over the slice's normalised frames; its next state into ``out``."""
        if isinstance(member, SubspaceInput):
            x = x @ member.basis  # the factorised input projection, as in the sequence graph
        model = _net(member)
        for i, lstm in enumerate(model.encoder):
            x, (h, c) = lstm(x, (s[f"{prefix}h{i}"][None], s[f"{prefix}c{i}"][None]))
            out[f"{prefix}h{i}"], out[f"{prefix}c{i}"] = h[0], c[0]
        hs = x  # (B, S, H), the top layer's states over the slice
        z = hs
        if model.attention is not None:
            w = self.window
            att = model.attention
            # Oldest first, as the sequence graph pads: states[:, w + j] = h_j of the slice, and the
            # window's past before it (zeros where the clip had no frame yet, masked below).
            states = torch.cat([torch.flip(s[f"{prefix}past_h"], dims=[1]), hs], dim=1)  # (B, W + S, H)
            query = att.query(states[:, w - 1 : -1])  # W_a h_{t-1} + b for every frame of the slice
            keys = att.key(states)
            valid = seen[..., None] >= self.offsets[:w]  # (B, S, W): a real frame stands behind slot d
            scores = [
                att.score(torch.sigmoid(query + keys[:, w - d : -d])).squeeze(-1) for d in range(1, w + 1)
            ]
            e = torch.stack(scores, dim=-1).masked_fill(~valid, _MASKED_SCORE)
            alpha = torch.softmax(e, dim=-1) * valid  # all masked at t = 0: c_0 = 0
            z = torch.cat([hs, _banded_context(alpha, states)], dim=-1)
            out[f"{prefix}past_h"] = torch.flip(states[:, -w:], dims=[1])
        if model.output_rnn is not None:
            y, _ = model.output_rnn(z, s[f"{prefix}y_prev"][None])  # (B, S, O)
            out[f"{prefix}y_prev"] = y[:, -1]
            return cast(Tensor, y)
        assert model.output_linear is not None
        return torch.tanh(model.output_linear(z))


def _net(member: Member) -> EmotionRNN:
    """The recurrent model of a graph member (behind a factorised member's projection)."""
    return member.inner if isinstance(member, SubspaceInput) else member


def step_file_for(sequence_path: str | os.PathLike[str]) -> Path:
    """The sibling file a sequence graph's step graph is written to: ``x.onnx`` -> ``x.step.onnx``."""
    p = Path(sequence_path)
    return p.with_name(p.stem + ".step.onnx")


def export_step(step: StepModule, path: str | os.PathLike[str], *, doc: str = "") -> Path:
    """Export a :class:`StepModule` to ONNX (dynamic batch and slice axes), atomically.

    Args:
        step: The module, in eval mode.
        path: Destination ``.onnx``.
        doc: The graph's doc string.

    Returns:
        The written path.
    """
    shapes = step.state_shapes(batch=2)
    names = list(shapes)
    num_features = step.inner.config.num_features
    dummy = (torch.zeros(2, 3, num_features), *(torch.zeros(shape) for shape in shapes.values()))
    inputs = [INPUT_NAME, *names]
    outputs = [OUTPUT_NAME, *(n + STEP_NEXT_SUFFIX for n in names)]
    out = Path(path)
    with atomic_path(out) as tmp:
        with legacy_exporter_quiet():  # verify_step checks the graph
            torch.onnx.export(
                step,
                dummy,
                os.fspath(tmp),
                dynamo=False,
                opset_version=17,
                input_names=inputs,
                output_names=outputs,
                dynamic_axes={
                    name: {0: "batch", 1: "frames"} if name in (INPUT_NAME, OUTPUT_NAME) else {0: "batch"}
                    for name in inputs + outputs
                },
            )
        proto = onnx.load(os.fspath(tmp))
        # Weights that are exactly float16 (an fp16 export's rounded weights) are stored so, as in the
        # sequence graph: half the file, the same values.
        _store_initializers_fp16(proto)
        proto.graph.doc_string = doc or "step graph"
        onnx.checker.check_model(proto)
        onnx.save(proto, os.fspath(tmp))
    return out


#: Slice lengths the verification also cuts its frames into (cycled): a single frame, lengths around
#: the attention window and the smoother's taps, and long slices, so every state hand-over is crossed.
VERIFY_SLICES = (1, 2, 61, 7, 300, 5, 120)


def verify_step(
    step_path: str | os.PathLike[str],
    sequence_path: str | os.PathLike[str],
    contract: ModelContract,
    *,
    steps: int = VERIFY_STEPS,
    tolerance: float = STEP_PARITY_TOLERANCE,
    seed: int = 0,
) -> float:
    """Run the step graph over the same frames as the sequence graph, one by one and in slices; compare.

    Args:
        step_path: The step graph.
        sequence_path: The sequence graph it belongs to.
        contract: The model's contract (for the raw-feature distribution).
        steps: Frames to run.
        tolerance: Largest accepted absolute difference.
        seed: Random source of the frames.

    Returns:
        The largest absolute difference over all frames and outputs, of both runs.

    Raises:
        ExportError: If a difference exceeds ``tolerance`` (or is NaN).
    """
    x = sample_raw_features(contract, 1, steps, np.random.default_rng(seed))
    want = _session(sequence_path).run([OUTPUT_NAME], {INPUT_NAME: x})[0][0]
    session = _session(step_path)
    diff = 0.0
    for how, lengths in (("one frame at a time", (1,)), ("in slices", VERIFY_SLICES)):
        got = run_slices(session, x[0], lengths)
        gap = np.abs(got - want)
        worst = float(np.max(gap))
        if not worst <= tolerance:
            frame = int(np.argmax(gap.max(axis=1)))
            raise ExportError(
                f"step graph run {how} differs from the sequence graph by {worst:.3g} (frame {frame})"
            )
        diff = max(diff, worst)
    return diff


def run_slices(session: Any, frames: FloatArray, lengths: Sequence[int] = (1,)) -> FloatArray:
    """Feed ``frames`` (T, F) through a step-graph session from the zero state, in slices.

    Args:
        session: An ONNX Runtime session of a step graph.
        frames: Raw features (T, F).
        lengths: Slice lengths, cycled until the frames are used up (the last slice may be shorter).

    Returns:
        The predictions (T, O).
    """
    state = {
        i.name: np.zeros([1, *i.shape[1:]], dtype=np.float32)
        for i in session.get_inputs()
        if i.name != INPUT_NAME
    }
    names = [OUTPUT_NAME, *(n + STEP_NEXT_SUFFIX for n in state)]
    out: list[FloatArray] = []
    start = 0
    for length in itertools.cycle(lengths):
        if start >= len(frames):
            break
        results = session.run(names, {INPUT_NAME: frames[None, start : start + length], **state})
        out.append(results[0][0])
        state = dict(zip(state, results[1:], strict=True))
        start += length
    return np.concatenate(out)


def _session(path: str | os.PathLike[str]) -> Any:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = 1
    return ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])


def recover_export_module(path: str | os.PathLike[str]) -> tuple[ExportModule, ModelContract]:
    """Rebuild the PyTorch module of an exported sequence graph from its weights and metadata.

    The weights are read from the initializers of the graph's named nodes (the encoder's ``LSTM``
    operators, the attention's ``query``/``key``/``score`` products, the output ``RNN`` or linear
    layer; an ensemble's under ``/members.k/`` for each of the ``mer.ensemble`` members); ONNX's gate
    order (i, o, f, c) is mapped back to PyTorch's (i, f, g, o). The normaliser comes from the
    contract, the smoother from ``mer.smoothing``.

    Args:
        path: An ``.onnx`` file written by ``python -m model_export export``.

    Returns:
        ``(module in eval mode, contract)``.

    Raises:
        ExportError: If the graph lacks a node or weight the configuration needs, or a shape differs.
    """
    proto = onnx.load(os.fspath(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    contract = ModelContract.from_metadata(meta)
    config = ModelConfig.from_dict(json.loads(meta[METADATA_PREFIX + "model_config"]))
    smoothing_meta = json.loads(meta.get(METADATA_PREFIX + "smoothing", '{"kind": "none"}'))
    smoothing = (
        None
        if smoothing_meta.get("kind") == "none"
        else Smoothing(alpha=float(smoothing_meta["alpha"]), taps=int(smoothing_meta["taps"]))
    )
    values = _constant_values(proto.graph)
    nodes = {n.name: n for n in proto.graph.node}
    members = int(json.loads(meta[ENSEMBLE_KEY])["members"]) if ENSEMBLE_KEY in meta else 1
    scopes = ["/model"] if members == 1 else [f"/members.{k}" for k in range(members)]
    models = [_recover_model(config, scope, nodes, values, path) for scope in scopes]
    module = ExportModule(models, contract, smoothing)
    return module.eval(), contract


def _recover_model(
    config: ModelConfig,
    scope: str,
    nodes: Mapping[str, Any],
    values: Mapping[str, FloatArray],
    path: str | os.PathLike[str],
) -> Member:
    """The model whose nodes are named under ``scope`` in the graph (``/model``, ``/members.k``).

    A factorised member (:func:`model_export.export.compact`) has its projection ``x @ basis`` at
    ``scope/MatMul`` and its recurrent model under ``scope/inner``.
    """
    if f"{scope}/inner/encoder.0/LSTM" in nodes:
        node = nodes.get(f"{scope}/MatMul")
        basis = next((values[i] for i in (node.input if node is not None else []) if i in values), None)
        if basis is None or basis.ndim != 2 or basis.shape[0] != config.num_features:
            raise ExportError(f"{path}: no ({config.num_features}, k) projection at node {scope}/MatMul")
        inner = _recover_model(
            replace(config, num_features=int(basis.shape[1])), f"{scope}/inner", nodes, values, path
        )
        assert isinstance(inner, EmotionRNN)
        return SubspaceInput.from_parts(inner, torch.from_numpy(np.ascontiguousarray(basis)), config).eval()

    def weight(node_name: str, index: int) -> FloatArray:
        node = nodes.get(f"{scope}/{node_name}")
        if node is None or len(node.input) <= index or node.input[index] not in values:
            raise ExportError(f"{path}: no weight {index} of node {scope}/{node_name!r}")
        return values[node.input[index]]

    model = EmotionRNN(config)
    state: dict[str, FloatArray] = {}
    for i in range(len(config.hidden_sizes)):
        name = f"encoder.{i}/LSTM"
        w, r, b = (weight(name, k)[0] for k in (1, 2, 3))
        h4 = w.shape[0]
        state[f"encoder.{i}.weight_ih_l0"] = _onnx_to_torch_gates(w)
        state[f"encoder.{i}.weight_hh_l0"] = _onnx_to_torch_gates(r)
        state[f"encoder.{i}.bias_ih_l0"] = _onnx_to_torch_gates(b[:h4])
        state[f"encoder.{i}.bias_hh_l0"] = _onnx_to_torch_gates(b[h4:])
    if model.attention is not None:
        state["attention.query.weight"] = weight("attention/query/MatMul", 1).T
        state["attention.query.bias"] = _bias(nodes, values, f"{scope}/attention/query/Add", path)
        state["attention.key.weight"] = weight("attention/key/MatMul", 1).T
        state["attention.score.weight"] = weight("attention/score/MatMul", 1).T
    if model.output_rnn is not None:
        w, r, b = (weight("output_rnn/RNN", k)[0] for k in (1, 2, 3))
        o = w.shape[0]
        state |= {
            "output_rnn.weight_ih_l0": w,
            "output_rnn.weight_hh_l0": r,
            "output_rnn.bias_ih_l0": b[:o],
            "output_rnn.bias_hh_l0": b[o:],
        }
    else:
        state["output_linear.weight"] = weight("output_linear/MatMul", 1).T
        state["output_linear.bias"] = _bias(nodes, values, f"{scope}/output_linear/Add", path)
    expected = model.state_dict()
    if set(state) != set(expected):
        raise ExportError(f"{path}: recovered {sorted(state)}, the model has {sorted(expected)}")
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ExportError(f"{path}: {key} has shape {value.shape}, expected {tuple(expected[key].shape)}")
    model.load_state_dict(
        {k: torch.from_numpy(np.ascontiguousarray(v, np.float32)) for k, v in state.items()}
    )
    return model.eval()


def _onnx_to_torch_gates(a: FloatArray) -> FloatArray:
    """ONNX LSTM gate blocks (i, o, f, c) along axis 0 -> PyTorch's (i, f, g=c, o)."""
    i, o, f, c = np.split(a, 4, axis=0)
    return np.concatenate([i, f, c, o], axis=0)


def _bias(nodes: Mapping[str, Any], values: Mapping[str, FloatArray], name: str, path: object) -> FloatArray:
    node = nodes.get(name)
    found = [values[i] for i in (node.input if node is not None else []) if i in values]
    if len(found) != 1:
        raise ExportError(f"{path}: no bias at node {name!r}")
    return found[0]


def _constant_values(graph: onnx.GraphProto) -> dict[str, FloatArray]:
    """Every initializer as float32, also under the names its ``Cast``/``Identity`` nodes give it."""
    values = {i.name: numpy_helper.to_array(i).astype(np.float32) for i in graph.initializer}
    for node in graph.node:
        if node.op_type in ("Cast", "Identity") and node.input and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
    return values


def add_step_graph(sequence_path: str | os.PathLike[str], *, steps: int = VERIFY_STEPS) -> tuple[Path, float]:
    """Write the step graph beside an exported sequence graph and name it in the sequence graph's metadata.

    The step graph is built from the sequence graph's own weights (:func:`recover_export_module`),
    verified against the sequence graph over ``steps`` frames, and recorded as
    ``mer.step_model = {"file": <sibling name>, "sha256": <its hash>, "parity": <max diff>}``. Only
    that metadata entry of the sequence graph changes; its graph and weights stay as they are.

    Returns:
        ``(step graph path, max |step - sequence|)``.

    Raises:
        ExportError: If the graphs differ by more than :data:`STEP_PARITY_TOLERANCE`.
    """
    seq = Path(sequence_path)
    module, contract = recover_export_module(seq)
    step = StepModule(module).eval()
    target = step_file_for(seq)
    # The step file lands first, then the sequence graph that names it (its digest): a crash between
    # the two leaves the old sequence graph, which refuses the new step file by its SHA-256.
    with atomic_path(target) as tmp:
        export_step(step, tmp, doc=f"step graph of {seq.name}")
        diff = verify_step(tmp, seq, contract, steps=steps)
        digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
        proto = onnx.load(os.fspath(seq))
        kept = [p for p in proto.metadata_props if p.key != STEP_MODEL_KEY]
        del proto.metadata_props[:]
        proto.metadata_props.extend(kept)
        record = {"file": target.name, "sha256": digest, "parity": float(f"{diff:.3g}"), "steps": steps}
        proto.metadata_props.append(onnx.StringStringEntryProto(key=STEP_MODEL_KEY, value=json.dumps(record)))
    with atomic_path(seq) as seq_tmp:
        onnx.save(proto, os.fspath(seq_tmp))
    return target, diff
