"""Checkpoint -> self-describing ONNX file: the one artefact serving loads.

The exported graph is :class:`ExportModule`: the training :class:`~model_export.normaliser.Normaliser`
(rebuilt from the contract's statistics) followed by the :class:`~model_export.model.EmotionRNN`. It
maps *raw* openSMILE features ``features`` (B, T, F) float32 to ``emotion`` (B, T, O) in [-1, 1], so
serving feeds the extractor's output as is and the graph normalises it exactly as training did; no
second implementation of the normalisation exists that could drift.

The file carries its own description in ``metadata_props``: the full :class:`~app.core.contract.ModelContract`
(``contract.to_metadata()``) plus ``mer.model_config``, ``mer.train_config``, ``mer.model_name``,
``mer.model_version``, ``mer.dataset``, ``mer.metrics``, ``mer.export_date``, ``mer.versions`` and
``mer.weights_dtype``. Every export is verified before it is returned: ONNX Runtime with all graph
optimisations must reproduce the PyTorch module within :data:`PARITY_TOLERANCE` for several batch sizes
and lengths, or :class:`ExportError` is raised and no file is left behind.

Optional fp16 weights (``fp16=True``) halve the file: the model's large weights are first rounded to
the nearest float16 *in PyTorch*, the rounded module is exported, and then exactly those initializers
whose values survive a float16 round trip bit for bit are stored as FLOAT16 with a ``Cast`` to float in
front. The conversion is therefore lossless with respect to the rounded module (parity is checked
against it, at the same tolerance), all arithmetic stays float32, and the only accuracy cost is the
rounding itself, which is measured against the float32 model and logged. ONNX Runtime folds the casts
at load time, so memory at inference is the same as for float32 weights.

A model trained with an input rank is kept factorised in the graph (:func:`compact`), and several
checkpoints of one architecture and contract export as their mean (:class:`ExportModule`,
``mer.ensemble``); both are checked against the models as trained.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import json
import logging
import os
import platform
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as pkg_version
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import Tensor, nn

from app.core.contract import INPUT_NAME, METADATA_PREFIX, OUTPUT_NAME, ModelContract
from app.core.types import FloatArray
from model_export.checkpoint import check_model_matches_contract, load_checkpoint
from model_export.model import EmotionRNN, SubspaceInput, export_onnx
from model_export.normaliser import Normaliser
from model_export.smoothing import CausalSmoother, Smoothing

__all__ = [
    "ENSEMBLE_KEY",
    "PARITY_TOLERANCE",
    "ExportError",
    "ExportModule",
    "Member",
    "compact",
    "export_checkpoint",
    "verify_onnx",
]

log = logging.getLogger(__name__)

#: Metadata entry of an ensemble's graph: ``{"members": K}`` (absent for one model).
ENSEMBLE_KEY = METADATA_PREFIX + "ensemble"
#: Largest accepted |ONNX Runtime - PyTorch| over every output of the verification inputs.
PARITY_TOLERANCE = 1e-4
#: (B, T) pairs every export is verified at: T = 1 (no past at all), 2, the paper's 61-frame clip, and
#: 150 frames, past the attention window and the smoother's taps.
VERIFY_SHAPES = tuple((b, t) for t in (1, 2, 61, 150) for b in (1, 3))
#: Initializers with fewer elements stay float32 under ``fp16=True``: the saving would be nil and the
#: scalar constants (clip bounds, the attention mask's -1e9) must keep their exact values.
FP16_MIN_ELEMENTS = 1024


class ExportError(RuntimeError):
    """The exported graph does not reproduce the PyTorch module (or could not be written)."""


#: What a graph runs: a model, or one whose input weights are kept factorised (:func:`compact`).
Member = EmotionRNN | SubspaceInput


def compact(model: EmotionRNN, input_rank: int) -> Member:
    """The graph's form of a trained model: factorised if it was trained with an input rank that pays.

    A model trained with ``input_rank`` k (:class:`~model_export.model.SubspaceInput`) has input
    weights of rank k; when ``(F + 4H) k < F 4H`` the graph computes ``(x B) U^T`` instead of ``x W^T``
    (:meth:`SubspaceInput.factorise`): the same function to float rounding, with fewer weights to store
    and fewer multiply-adds per frame (k = 256 on LSTM_AT_400: 2.0 M instead of 10.2 M).
    """
    cfg = model.config
    gates = 4 * cfg.hidden_sizes[0]
    if input_rank <= 0 or (cfg.num_features + gates) * input_rank >= cfg.num_features * gates:
        return model
    return SubspaceInput.factorise(model, input_rank)


class ExportModule(nn.Module):
    """Raw features (B, T, F) -> emotion (B, T, O): the contract's normaliser, the model, the smoother.

    A model may be kept factorised (:func:`compact`). Given several models (an ensemble), the graph
    normalises once, runs every member on the same normalised frames and averages their outputs frame
    by frame before the smoother (which is linear, so this equals averaging the smoothed members).
    Every member must have the same architecture and the one contract: the same features, transform
    and normalisation statistics.

    Args:
        model: The trained model (expects standardised features), or two or more of them; each an
            :class:`EmotionRNN` or a factorised :class:`~model_export.model.SubspaceInput`.
        contract: The model's contract; its ``norm_mean``, ``norm_std``, ``feature_transform`` and
            ``clip_z`` build the front :class:`~model_export.normaliser.Normaliser`.
        smoothing: Causal smoothing of the outputs (:mod:`model_export.smoothing`); ``None``: none.

    Raises:
        ContractError: If a model's input or output width disagrees with the contract.
        ValueError: If no model is given, or the members' architectures differ.
    """

    def __init__(
        self,
        model: Member | Sequence[Member],
        contract: ModelContract,
        smoothing: Smoothing | None = None,
    ) -> None:
        super().__init__()
        models = [model] if isinstance(model, EmotionRNN | SubspaceInput) else list(model)
        if not models:
            raise ValueError("nothing to export: no model given")
        for m in models:
            check_model_matches_contract(m.config, contract)
            if m.config != models[0].config:
                raise ValueError(f"ensemble members differ in architecture: {m.config} != {models[0].config}")
        # Writable copies: the contract's arrays are read-only and torch warns about wrapping those.
        self.normaliser = Normaliser(
            contract.norm_mean.copy(), contract.norm_std.copy(), contract.feature_transform, contract.clip_z
        )
        # One model is the submodule "model" and an ensemble's are "members.k": the graph's node names
        # follow them, and recover_export_module (model_export.step) reads the weights back by them.
        self.single = len(models) == 1
        if self.single:
            self.model = models[0]
        else:
            self.members = nn.ModuleList(models)
        self.config = models[0].config
        self.smoother = (
            None
            if smoothing is None
            else CausalSmoother(smoothing.alpha, smoothing.taps, self.config.num_outputs)
        )

    @property
    def models(self) -> list[Member]:
        """The model, or the ensemble's members, in order."""
        if self.single:
            return [self.model]
        return [cast(Member, m) for m in self.members]

    def forward(self, x: Tensor) -> Tensor:
        """Normalise raw features as training did and predict every frame.

        Args:
            x: Raw features, (B, T, F) float32.

        Returns:
            (B, T, O) in [-1, 1].
        """
        z = self.normaliser(x)
        if self.single:
            y = cast(Tensor, self.model(z))
        else:
            y = torch.stack([cast(Tensor, m(z)) for m in self.members]).mean(dim=0)
        return y if self.smoother is None else cast(Tensor, self.smoother(y))


def export_checkpoint(
    ckpt_path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    onnx_path: str | os.PathLike[str],
    *,
    model_name: str,
    model_version: str,
    extra_metadata: Mapping[str, str] | None = None,
    fp16: bool = False,
    smoothing: Smoothing | None = None,
    factorise: bool = True,
) -> Path:
    """Export a training checkpoint (or several: their mean) to a verified, self-describing ONNX file.

    Args:
        ckpt_path: Checkpoint from ``python -m model_export train``, or two or more checkpoints of the
            same architecture and contract (the same training data and features), whose mean the graph
            computes (:class:`ExportModule`; recorded as ``mer.ensemble``).
        onnx_path: Destination; written atomically (a temporary file is renamed into place only after
            verification).
        model_name: Stored as ``mer.model_name``.
        model_version: Stored as ``mer.model_version``.
        extra_metadata: More ``metadata_props`` entries, written as given. ``mer.metrics`` here (JSON)
            replaces the metrics derived from the checkpoint (best epoch, its validation MSE, clips).
            Contract keys cannot be overridden.
        fp16: Store the large weights as float16 (see the module docstring).
        smoothing: Causal smoothing at the end of the graph (recorded as ``mer.smoothing``).
        factorise: Keep the input weights of a model trained with an input rank factorised in the
            graph (:func:`compact`); ``False``: multiplied out, as trained.

    Returns:
        The written path.

    Raises:
        ValueError: On a bad checkpoint or an ``extra_metadata`` key that would override the contract,
            or ``mer.metrics`` that is not JSON, or ensemble members whose contracts or architectures
            differ.
        ContractError: If the checkpoint's contract is invalid or inconsistent.
        ExportError: If ONNX Runtime does not reproduce the PyTorch module within tolerance.
    """
    paths = [ckpt_path] if isinstance(ckpt_path, str | os.PathLike) else list(ckpt_path)
    loaded = [load_checkpoint(path) for path in paths]
    models = [
        compact(model, int((meta.get("train_config") or {}).get("input_rank") or 0)) if factorise else model
        for model, _, meta in loaded
    ]
    contract = loaded[0][1]
    contract_meta = contract.to_metadata()
    for path, (_, other, _) in zip(paths, loaded, strict=True):
        # One graph normalises once for every member: each must have been trained on exactly this input.
        if other.to_metadata() != contract_meta:
            differ = sorted(k for k, v in other.to_metadata().items() if contract_meta.get(k) != v)
            raise ValueError(f"{path}: its contract differs from {paths[0]}'s in {differ}")
    metas = [meta for _, _, meta in loaded]
    extra = dict(extra_metadata or {})
    own = {METADATA_PREFIX + "weights_dtype", METADATA_PREFIX + "smoothing", ENSEMBLE_KEY}
    clash = sorted(set(extra) & (set(contract_meta) | own))
    if clash:
        raise ValueError(f"extra_metadata must not override {clash}")
    metrics = extra.pop(METADATA_PREFIX + "metrics", None)
    if metrics is None:
        own_metrics = [_checkpoint_metrics(meta) for meta in metas]
        metrics = json.dumps(own_metrics[0] if len(metas) == 1 else {"members": own_metrics}, sort_keys=True)
    else:
        json.loads(metrics)  # must be JSON like every other structured key; raises ValueError

    reference = ExportModule(models, contract, smoothing).eval()
    fp32_reference = ExportModule([m for m, _, _ in loaded], contract, smoothing).eval()
    if any(isinstance(m, SubspaceInput) for m in models):
        # The factorised graph against the model as trained: only the SVD's float rounding may differ.
        gap = _max_abs_diff_torch(reference, fp32_reference, contract)
        log.info("factorised input weights change outputs by at most %.2e", gap)
        if not gap <= PARITY_TOLERANCE:
            raise ExportError(f"the factorised model differs from the trained one by {gap:.3g}")
    if fp16:
        reference = copy.deepcopy(reference)
        for model in reference.models:
            _round_weights_to_fp16(model)
            if isinstance(model, SubspaceInput):
                with torch.no_grad():  # the projection is a buffer: rounded (and stored) like the weights
                    model.basis.copy_(model.basis.half().float())

    train_configs = [meta.get("train_config", {}) for meta in metas]
    datasets = sorted({str(meta.get("dataset", "")) for meta in metas})
    metadata = {
        **contract_meta,
        METADATA_PREFIX + "model_config": json.dumps(reference.config.to_dict(), sort_keys=True),
        METADATA_PREFIX + "train_config": json.dumps(
            train_configs[0] if len(metas) == 1 else train_configs, sort_keys=True
        ),
        METADATA_PREFIX + "model_name": model_name,
        METADATA_PREFIX + "model_version": model_version,
        METADATA_PREFIX + "dataset": "; ".join(datasets),
        METADATA_PREFIX + "metrics": metrics,
        METADATA_PREFIX + "export_date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        METADATA_PREFIX + "versions": json.dumps(_versions(), sort_keys=True),
        METADATA_PREFIX + "weights_dtype": "float16" if fp16 else "float32",
        METADATA_PREFIX + "smoothing": json.dumps(
            {"kind": "none"} if smoothing is None else smoothing.to_dict(), sort_keys=True
        ),
        **({} if len(models) == 1 else {ENSEMBLE_KEY: json.dumps({"members": len(models)})}),
        **extra,
    }

    out = Path(onnx_path)
    with atomic_path(out) as tmp:
        with legacy_exporter_quiet():
            # verify_onnx below establishes the graph's correctness for several B and T.
            export_onnx(
                reference,
                tmp,
                num_features=contract.num_features,
                input_name=INPUT_NAME,
                output_name=OUTPUT_NAME,
            )
        proto = onnx.load(os.fspath(tmp))
        if fp16:
            converted = _store_initializers_fp16(proto)
            log.info("fp16: %d initializers stored as float16", converted)
        proto.graph.doc_string = f"{model_name} {model_version}: raw {contract.features.feature_set} features"
        for key, value in metadata.items():
            proto.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
        onnx.checker.check_model(proto)
        onnx.save(proto, os.fspath(tmp))
        diff = verify_onnx(tmp, reference, contract)
        log.info(
            "exported %s%s: max |ORT - PyTorch| = %.2e",
            reference.config.name,
            "" if len(models) == 1 else f" (mean of {len(models)})",
            diff,
        )
        if fp16:
            deviation = _max_abs_diff_torch(reference, fp32_reference, contract)
            log.info("fp16 weights change outputs by at most %.2e vs the float32 model as trained", deviation)
    return out


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """A temporary file beside ``target`` that replaces it if the block succeeds (else is removed).

    A half-written model must never be what a service (or the next export) finds at ``target``.

    Yields:
        The temporary path to write.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        # mkstemp creates 0600; the model is read by the service, possibly as another user.
        tmp.chmod(0o644)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def legacy_exporter_quiet() -> Iterator[None]:
    """Silence the legacy ONNX exporter's notices around ``torch.onnx.export``.

    Its deprecation notice, the generic "batch size other than 1 with LSTM" caution, constant-folding
    notes and nn.LSTM's size checks seen by the tracer: every caller verifies the exported graph
    against PyTorch (several B and T, or many steps), which raises instead of warning.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", message="Converting a tensor to a Python boolean")
        yield


def verify_onnx(
    path: str | os.PathLike[str],
    reference: nn.Module,
    contract: ModelContract,
    *,
    shapes: tuple[tuple[int, int], ...] = VERIFY_SHAPES,
    tolerance: float = PARITY_TOLERANCE,
) -> float:
    """Check an exported file against its PyTorch module with ONNX Runtime (all optimisations on).

    Inputs are realistic raw features (standard-normal in the normalised space, mapped back through the
    contract's transform) with a few extreme values (0, +-1e12) mixed in, so the in-graph normaliser's
    compression and clipping are exercised too.

    Args:
        path: The ``.onnx`` file.
        reference: The module it was exported from, in eval mode.
        contract: The model's contract (for F and the raw-feature distribution).
        shapes: ``(B, T)`` pairs to run.
        tolerance: Largest accepted absolute difference.

    Returns:
        The largest absolute difference seen.

    Raises:
        ExportError: If the graph's interface is wrong or any difference exceeds ``tolerance``.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
    names = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
    if names != ([INPUT_NAME], [OUTPUT_NAME]):
        raise ExportError(f"graph interface is {names}, expected ([{INPUT_NAME!r}], [{OUTPUT_NAME!r}])")
    rng = np.random.default_rng(0)
    worst = 0.0
    for b, t in shapes:
        x = sample_raw_features(contract, b, t, rng)
        (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: x})
        with torch.no_grad():
            want = reference(torch.from_numpy(x)).numpy()
        if got.shape != want.shape:
            raise ExportError(f"B={b} T={t}: ONNX output shape {got.shape} != PyTorch {want.shape}")
        diff = float(np.max(np.abs(got - want)))
        if not diff <= tolerance:  # `not <=` also catches NaN
            raise ExportError(f"B={b} T={t}: max |ORT - PyTorch| = {diff:.3g} > {tolerance:g}")
        worst = max(worst, diff)
    return worst


def sample_raw_features(
    contract: ModelContract, batch: int, frames: int, rng: np.random.Generator
) -> FloatArray:
    """Plausible raw features (B, T, F) for a contract, with a few extreme values mixed in.

    Args:
        contract: Supplies F, the statistics and the transform to invert.
        batch: B.
        frames: T.
        rng: Random source.

    Returns:
        float32 array whose normalised values are mostly standard normal.
    """
    z = rng.standard_normal((batch, frames, contract.num_features))
    x = contract.norm_mean.astype(np.float64) + contract.norm_std.astype(np.float64) * z
    if contract.feature_transform == "signed_log1p":
        # Inverse of sign(x) log1p(|x|); |x| is capped so expm1 stays inside float32.
        x = np.sign(x) * np.expm1(np.minimum(np.abs(x), 80.0))
    flat = x.reshape(-1)
    idx = rng.choice(flat.size, size=min(flat.size, 3 * batch * frames), replace=False)
    flat[idx] = rng.choice(np.array([0.0, 1e12, -1e12]), size=idx.size)
    return np.ascontiguousarray(x, dtype=np.float32)


def _checkpoint_metrics(meta: Mapping[str, Any]) -> dict[str, Any]:
    """What a training checkpoint says about its own quality (no held-out test metrics)."""
    metrics: dict[str, Any] = {}
    best = meta.get("best_epoch")
    if isinstance(best, int):
        metrics["best_epoch"] = best
        for row in meta.get("history") or []:
            if row.get("epoch") == best and "val_mse" in row:
                metrics["best_val_mse"] = float(row["val_mse"])
    if isinstance(meta.get("clips"), int):
        metrics["clips"] = meta["clips"]
    return metrics


def _versions() -> dict[str, str]:
    def installed(name: str) -> str:
        try:
            return pkg_version(name)
        except PackageNotFoundError:
            return "not installed"

    return {
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "opensmile": installed("opensmile"),
        "python": platform.python_version(),
    }


def _round_weights_to_fp16(model: nn.Module) -> None:
    """Round large float parameters to the nearest float16 value, in place (kept as float32)."""
    with torch.no_grad():
        for param in model.parameters():
            if param.numel() >= FP16_MIN_ELEMENTS and torch.isfinite(param.half()).all():
                param.copy_(param.half().float())


def _store_initializers_fp16(model: onnx.ModelProto) -> int:
    """Store large float32 initializers that are exactly float16-representable as FLOAT16.

    Each converted initializer ``name`` becomes ``name__fp16`` plus a ``Cast(to=FLOAT)`` node that
    produces ``name`` again, so the consumers are untouched. Only bit-exact conversions are made.

    Returns:
        How many initializers were converted.
    """
    graph = model.graph
    kept: list[TensorProto] = []
    casts: list[onnx.NodeProto] = []
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT and int(np.prod(init.dims)) >= FP16_MIN_ELEMENTS:
            values = numpy_helper.to_array(init)
            with np.errstate(over="ignore"):  # out-of-range values are simply kept as float32
                half = values.astype(np.float16)
            if np.array_equal(half.astype(np.float32), values):
                kept.append(numpy_helper.from_array(half, name=init.name + "__fp16"))
                casts.append(
                    helper.make_node(
                        "Cast",
                        [init.name + "__fp16"],
                        [init.name],
                        to=TensorProto.FLOAT,
                        name=init.name + "/cast",
                    )
                )
                continue
        kept.append(init)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    # Casts first: the graph's nodes must stay topologically sorted.
    nodes = [*casts, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    return len(casts)


def _max_abs_diff_torch(a: nn.Module, b: nn.Module, contract: ModelContract) -> float:
    rng = np.random.default_rng(1)
    x = torch.from_numpy(sample_raw_features(contract, 3, 61, rng))
    with torch.no_grad():
        return float((a(x) - b(x)).abs().max())
