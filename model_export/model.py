"""The paper's recurrent models: LSTM_NAT (baseline) and LSTM_AT (causal attention, output feedback).

Chaki et al. 2020, *Attentive RNNs for Continuous-time Emotion Prediction in Music Clips*. A model maps
standardised ComParE_2016 functionals ``x`` of shape (B, T, F) (one row per 500 ms frame) to arousal and
valence ``y`` of shape (B, T, O) in [-1, 1] (O = 2, or 1 for the paper's separate per-dimension models).
Feature standardisation/compression is *not* part of these modules: the export step prepends it as a
separate front layer, so the model stays pure.

Architecture (one forward pass, no Python loop over T):

1. ``encoder``: 1 or 2 stacked unidirectional LSTM layers, ``h_t`` = hidden state of the top layer.
2. ``attention`` (AT only, the paper's eqs. 14-17): at frame t an additive score over *past* top-layer
   states, ``e_tj = v^T sigmoid(W_a h_{t-1} + U_a h_j + b)`` for ``j < t`` (eq. 15; sigmoid is the
   paper's attention activation, sec. 4.1), ``alpha_tj = softmax_j(e_tj)`` (eq. 16) and
   ``c_t = sum_j alpha_tj h_j`` (eq. 17), with ``c_1 = 0`` (no past). Only the ``W`` most recent past
   frames ``j in [t-W, t-1]`` are attended (``attention_window``, see :class:`ModelConfig`).
3. ``output`` (eq. 14, ``y_t = g1(h_t, y_{t-1}, c_t)``): ``y_{t-1}`` only enters the output layer, so g1
   is a one-layer ``nn.RNN(input=[h_t; c_t], hidden=O, tanh)``: its hidden state *is* ``y_t``
   (``y_t = tanh(W_z [h_t; c_t] + W_y y_{t-1} + b)``, ``y_0 = 0``). tanh gives the [-1, 1] scale.

Consequences of the output-as-RNN-state design:

* The model only ever sees its *own* previous outputs, in training as in inference: training is
  free-running by construction (no teacher forcing, no exposure bias, nothing to schedule).
* Every part is causal (forward LSTMs, attention over the past only, forward output RNN), so a clip
  right-padded inside a batch gives, at its valid frames, exactly the outputs of the clip alone; padded
  frames only need masking in the loss.
* The LSTMs and the output recurrence export to ONNX's ``LSTM``/``RNN`` operators with a dynamic time
  axis; attention is a fixed, W-long loop of static slices, so nothing in the graph depends on T.

LSTM_NAT uses the same output RNN over ``h_t`` alone, so by default NAT and AT *both* feed ``y_{t-1}``
back and differ only in attention, which isolates the effect the paper measures. The paper does not
spell out whether its NAT baseline feeds its output back; ``output_feedback=False`` gives the plain
variant ``y_t = tanh(W_z z_t + b)`` for either kind.

Training speed on CPU: with F = 6373 the input projection (F -> 4H gates) dominates. PyTorch's native
LSTM kernel (used when oneDNN/mkldnn is off) already computes it as *one* matmul over all B*T frames
before the recurrence, and its weight gradient as one matmul in the backward pass (profiled:
``[610, 6373] @ [6373, 1600]`` forward, ``[1600, 610] @ [610, 6373]`` backward), so a hand-written
"projection outside the LSTM" has nothing left to gain; oneDNN's fused LSTM layer is slower. Measured
on the 2-core build machine, ``torch.set_num_threads(2)``, forward + backward of 45 000 frames as
batches of 10 x 61 frames (Adam adds 3-5 s): LSTM_NAT_400 58 s default vs 42 s with oneDNN off,
LSTM_AT_400 63-66 s vs 51 s (the attention adds about 20 %). With other processes competing for the
cores the oneDNN path degraded far more (NAT 310 s vs 105 s). Train inside :func:`fast_cpu_context`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
import torch.nn.functional as func
from torch import Tensor, nn

from app.core.contract import INPUT_NAME, NUM_COMPARE_FEATURES, OUTPUT_NAME

__all__ = [
    "PRESETS",
    "CausalWindowAttention",
    "EmotionRNN",
    "ModelConfig",
    "SubspaceInput",
    "build_model",
    "export_onnx",
    "fast_cpu_context",
    "from_preset",
]

#: Score given to attention slots with no frame behind them (t - d < 0). Finite on purpose: at t = 0
#: every slot is masked and -inf would make the softmax 0/0 = NaN (in the forward pass and in the
#: gradient); with a finite value the row is uniform and then zeroed by the mask. Scores are bounded by
#: ``||v||_1`` (sigmoid is in (0, 1)), so exp(-1e9 - score) is exactly 0 in float32 for any real model.
_MASKED_SCORE = -1e9

Kind = Literal["AT", "NAT"]


@dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of one model; serialisable for checkpoints and ONNX metadata.

    Attributes:
        kind: ``"AT"`` (attention, eqs. 14-17) or ``"NAT"`` (no attention).
        hidden_sizes: LSTM layer sizes, bottom to top, 1 or 2 layers (the paper's ``LSTM_AT_300_128``
            is ``(300, 128)``).
        attention_dim: Size A of the additive attention's hidden layer (``W_a``, ``U_a``: H -> A,
            ``v``: A -> 1); ``None`` means the top hidden size. Ignored for NAT.
        attention_window: W, how many most-recent past frames ``j in [t-W, t-1]`` frame t attends to.
            The paper attends to the whole past; a bound keeps memory and time linear in T for full
            songs (O(B T (A + W)) at inference instead of O(B T^2 A)). The default 60 frames = 30 s
            gives every frame of a clip of up to 61 frames (the paper's 30 s excerpts with 61 labels)
            its complete past, so on the paper's data the bounded model *is* the paper's model
            (W >= T - 1 is exact, tested); on longer audio each frame attends to the last 30 s, which
            is also the longest context the model ever saw in training on such clips. Ignored for NAT.
        num_features: Input width F (6373 ComParE_2016 functionals).
        num_outputs: O, 2 (arousal, valence) or 1 (the paper's separate per-dimension models).
        dropout: Dropout probability between LSTM layers and on the top layer's states (training only).
        output_feedback: Whether ``y_{t-1}`` feeds back into ``y_t`` (eq. 14). If False the output layer
            is ``y_t = tanh(W_z z_t + b)``.
    """

    kind: Kind = "AT"
    hidden_sizes: tuple[int, ...] = (400,)
    attention_dim: int | None = None
    attention_window: int = 60
    num_features: int = NUM_COMPARE_FEATURES
    num_outputs: int = 2
    dropout: float = 0.0
    output_feedback: bool = True

    def __post_init__(self) -> None:
        # JSON round trips turn tuples into lists; normalise so equality and hashing keep working.
        object.__setattr__(self, "hidden_sizes", tuple(int(h) for h in self.hidden_sizes))
        problems: list[str] = []
        if self.kind not in ("AT", "NAT"):
            problems.append(f"kind must be 'AT' or 'NAT', not {self.kind!r}")
        if not 1 <= len(self.hidden_sizes) <= 2 or min(self.hidden_sizes, default=0) < 1:
            problems.append(f"hidden_sizes must be 1 or 2 positive sizes, not {self.hidden_sizes}")
        if self.attention_dim is not None and self.attention_dim < 1:
            problems.append(f"attention_dim must be positive or None, not {self.attention_dim}")
        if self.attention_window < 1:
            problems.append(f"attention_window must be >= 1, not {self.attention_window}")
        if self.num_features < 1:
            problems.append(f"num_features must be positive, not {self.num_features}")
        if self.num_outputs < 1:
            problems.append(f"num_outputs must be positive, not {self.num_outputs}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), not {self.dropout}")
        if problems:
            raise ValueError("invalid ModelConfig: " + "; ".join(problems))

    @property
    def top_hidden_size(self) -> int:
        """H, the size of the top LSTM layer (the states attention and the output see)."""
        return self.hidden_sizes[-1]

    @property
    def attention_size(self) -> int:
        """A, the resolved ``attention_dim``."""
        return self.top_hidden_size if self.attention_dim is None else self.attention_dim

    @property
    def name(self) -> str:
        """The paper's naming, e.g. ``LSTM_AT_300_128``."""
        return f"LSTM_{self.kind}_" + "_".join(str(h) for h in self.hidden_sizes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict; :meth:`from_dict` inverts it exactly."""
        d = dataclasses.asdict(self)
        d["hidden_sizes"] = list(self.hidden_sizes)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """Rebuild a config from :meth:`to_dict` output.

        Args:
            data: Field values; missing fields take their defaults.

        Returns:
            The config.

        Raises:
            ValueError: On unknown keys (e.g. a checkpoint from a newer layout) or invalid values.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig fields: {unknown}")
        kwargs = dict(data)
        if "hidden_sizes" in kwargs:
            kwargs["hidden_sizes"] = tuple(kwargs["hidden_sizes"])
        return cls(**kwargs)


def _presets() -> dict[str, ModelConfig]:
    sizes: tuple[tuple[int, ...], ...] = ((400,), (300,), (200,), (300, 128), (400, 200))
    out: dict[str, ModelConfig] = {}
    for hidden in sizes:
        for kind in ("NAT", "AT"):
            cfg = ModelConfig(kind=kind, hidden_sizes=hidden)
            out[cfg.name] = cfg
    return out


#: The paper's configurations by name (``LSTM_{AT|NAT}_{sizes}``), all with default F, O, W.
PRESETS: Mapping[str, ModelConfig] = _presets()


class CausalWindowAttention(nn.Module):
    """Additive attention over the W most recent past states (eqs. 15-17, sigmoid activation).

    For frame t (0-based) and offset ``d = 1..W`` (past frame ``j = t - d``)::

        e_{t,d}     = v^T sigmoid(W_a h_{t-1} + U_a h_{t-d} + b)        (eq. 15)
        alpha_{t,d} = softmax_d(e_{t,d})  over d with t - d >= 0          (eq. 16)
        c_t         = sum_d alpha_{t,d} h_{t-d},   c_0 = 0                (eq. 17)

    Implementation: ``W_a h`` and ``U_a h`` are computed once, (B, T, A) each; the loop runs over the W
    static offsets, each a shifted view of the front-padded tensor (slice ``[W-d : -d]``, independent of
    T, so the ONNX graph keeps T dynamic) reduced to a (B, T) score at once. The context is one batched
    matmul: the weights are skewed into a banded (B, T, T + W) matrix (row t holds its W weights at
    the columns of ``h_{t-W} .. h_{t-1}`` in the front-padded states) by padding, flattening and
    re-slicing, the shift trick of relative-position attention. That replaces W multiply-adds over
    (B, T, H) with one GEMM (2x the multiply-adds, but ONNX Runtime runs a GEMM ~20x faster per
    multiply-add than element-wise passes); its (B, T, T + W) operand costs 4 (T + W) bytes per frame
    (8.4 kB per frame for a 2 048-frame clip). Peak memory at inference is O(B T (A + W + H + T)),
    never (B, T, W, A). Under autograd each offset's sigmoid output is
    saved for the backward pass, so *training* memory is O(B T W A): small for clip-length training
    sequences (B=10, T=61, W=60, A=400: 59 MB), wrap in ``torch.utils.checkpoint`` for song-length ones.
    """

    def __init__(self, hidden_size: int, attention_dim: int, window: int) -> None:
        super().__init__()
        self.window = window
        self.query = nn.Linear(hidden_size, attention_dim)  # W_a and the bias b
        self.key = nn.Linear(hidden_size, attention_dim, bias=False)  # U_a
        # A bias on v would add the same constant to every score of a row: softmax ignores it.
        self.score = nn.Linear(attention_dim, 1, bias=False)  # v

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """Attend from every frame to its past window.

        Args:
            h: Top LSTM states, (B, T, H).

        Returns:
            ``(c, alpha)``: context (B, T, H) with ``c[:, 0] = 0``, and weights (B, T, W) where
            ``alpha[:, t, d-1]`` is the weight of ``h_{t-d}``; zero where ``t - d < 0``; each row
            ``t >= 1`` sums to 1, row 0 is all zero.
        """
        w = self.window
        # W_a h_{t-1} + b at position t; row 0 gets padding but all of its slots are masked anyway.
        query = func.pad(self.query(h), (0, 0, 1, 0))[:, :-1]
        keys = func.pad(self.key(h), (0, 0, w, 0))  # (B, W + T, A): keys[:, w + j] = U_a h_j
        states = func.pad(h, (0, 0, w, 0))  # zero padding: masked slots contribute nothing to c
        # 1 where a real frame stands behind the slot. Built from h's shape, not torch.arange(T), so the
        # tracer records a shape-dependent op instead of freezing T into the graph.
        present = func.pad(torch.ones_like(h[..., 0]), (w, 0))  # (B, W + T)

        scores: list[Tensor] = []
        valid: list[Tensor] = []
        for d in range(1, w + 1):
            # [w-d : -d] has length T for any T >= 1: frame t sees position t - d.
            scores.append(self.score(torch.sigmoid(query + keys[:, w - d : -d])).squeeze(-1))
            valid.append(present[:, w - d : -d])
        mask = torch.stack(valid, dim=-1) > 0.5  # (B, T, W)
        e = torch.stack(scores, dim=-1).masked_fill(~mask, _MASKED_SCORE)
        # The mask multiply zeroes row 0 (all slots masked, softmax uniform there) so c_0 = 0 and
        # alpha says honestly that frame 0 attends to nothing.
        alpha = torch.softmax(e, dim=-1) * mask
        return _banded_context(alpha, states), alpha


def _banded_context(alpha: Tensor, states: Tensor) -> Tensor:
    """``c_t = sum_d alpha[:, t, d-1] h_{t-d}`` as one matmul of a skewed band with the padded states.

    Args:
        alpha: Weights (B, T, W), offset ``d`` in column ``d - 1``.
        states: Front-padded states (B, W + T, H): ``states[:, W + j] = h_j``.

    Returns:
        Context (B, T, H).
    """
    b, t, w = alpha.shape
    # Offset d of row t must land in column t + W - d: reverse the offsets (column c = W - d), then
    # shift row t right by t: pad each row to T + W + 1, flatten, cut T * (T + W), re-read as rows of
    # T + W. Sizes come from the tensors, so the exported graph keeps B and T dynamic.
    rev = torch.flip(alpha, dims=[-1])
    band = func.pad(rev, (0, t + 1)).reshape(b, t * (t + w + 1))[:, : t * (t + w)].reshape(b, t, t + w)
    return torch.bmm(band, states)


class EmotionRNN(nn.Module):
    """LSTM_NAT / LSTM_AT: standardised features (B, T, F) -> emotion (B, T, O) in [-1, 1].

    See the module docstring for the equations and design; build with :func:`build_model` or
    :func:`from_preset`. Initial LSTM states and ``y_0`` are zero.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        sizes = (config.num_features, *config.hidden_sizes)
        # Separate single-layer LSTMs: the paper's stacks have different sizes per layer (300, 128).
        self.encoder = nn.ModuleList(
            nn.LSTM(sizes[i], sizes[i + 1], batch_first=True) for i in range(len(config.hidden_sizes))
        )
        self.dropout = nn.Dropout(config.dropout)
        hidden = config.top_hidden_size
        self.attention: CausalWindowAttention | None = None
        if config.kind == "AT":
            self.attention = CausalWindowAttention(hidden, config.attention_size, config.attention_window)
        out_in = 2 * hidden if self.attention is not None else hidden
        self.output_rnn: nn.RNN | None = None
        self.output_linear: nn.Linear | None = None
        if config.output_feedback:
            self.output_rnn = nn.RNN(out_in, config.num_outputs, nonlinearity="tanh", batch_first=True)
        else:
            self.output_linear = nn.Linear(out_in, config.num_outputs)
        self._init_weights()

    def _init_weights(self) -> None:
        """Keras' recurrent defaults: Glorot-uniform input weights, orthogonal recurrent, forget bias 1.

        PyTorch's default U(-1/sqrt(H), 1/sqrt(H)) for every weight makes a 6373-wide input projection
        start with pre-activations of standard deviation ~8 for standardised inputs: the gates
        saturate before training starts. Glorot scaling keeps them near 1.
        """
        for module in self.modules():
            if isinstance(module, nn.LSTM | nn.RNN):
                for name, param in module.named_parameters():
                    if name.startswith("weight_ih"):
                        nn.init.xavier_uniform_(param)
                    elif name.startswith("weight_hh"):
                        nn.init.orthogonal_(param)
                    elif name.startswith("bias"):
                        nn.init.zeros_(param)
                        if isinstance(module, nn.LSTM) and name.startswith("bias_ih"):
                            h = param.shape[0] // 4
                            nn.init.ones_(param[h : 2 * h])  # PyTorch gate order: input, forget, ...
            elif isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def encode(self, x: Tensor) -> Tensor:
        """Top-layer LSTM states ``h_t`` (B, T, H) for features x (B, T, F)."""
        h = x
        for i, lstm in enumerate(self.encoder):
            if i > 0:
                h = self.dropout(h)
            h, _ = lstm(h)
        return cast(Tensor, self.dropout(h))

    def forward(self, x: Tensor) -> Tensor:
        """Predict emotion for every frame.

        Args:
            x: Standardised features, (B, T, F) float32, T >= 1. Clips of different lengths may be
                right-padded: outputs at a clip's valid frames do not depend on what follows.

        Returns:
            (B, T, O) in [-1, 1].
        """
        h = self.encode(x)
        z = h
        if self.attention is not None:
            context, _ = self.attention(h)
            z = torch.cat([h, context], dim=-1)
        if self.output_rnn is not None:
            y, _ = self.output_rnn(z)  # hidden state = y_t; y_{t-1} fed back through W_hh (eq. 14)
            return cast(Tensor, y)
        assert self.output_linear is not None
        return torch.tanh(cast(Tensor, self.output_linear(z)))

    def attention_weights(self, x: Tensor) -> Tensor:
        """The attention weights alpha (B, T, W) for features x; see :class:`CausalWindowAttention`.

        Raises:
            ValueError: For a NAT model.
        """
        if self.attention is None:
            raise ValueError(f"{self.config.name} has no attention")
        _, alpha = self.attention(self.encode(x))
        return cast(Tensor, alpha)


class SubspaceInput(nn.Module):
    """Training-time view of an :class:`EmotionRNN` whose input weights live in a fixed k-dim subspace.

    The first LSTM layer's input weights ``W`` (4H, F) are written ``W = U B^T`` with a fixed basis
    ``B`` (F, k) of orthonormal columns and a trainable ``U`` (4H, k): the model can only respond to the
    part of each frame inside the span of ``B`` (the training frames' leading principal directions,
    :func:`model_export.train.input_basis`). With F = 6373 inputs and a few hundred clips this is a
    constraint on what the 10 M input weights can fit, not a new layer: :meth:`fold` multiplies it out
    into an ordinary full-width :class:`EmotionRNN` with the same outputs (what a checkpoint stores), so
    the interface and the contract are those of the paper's model. Training is also cheaper: the
    (frames, F) x (F, 4H) input projection becomes (frames, F) x (F, k) then (k, 4H), and so is
    inference when the export keeps the factorisation (:meth:`factorise`,
    :func:`model_export.export.compact`).

    Args:
        model: A full-width model (its initialisation is kept, projected onto the subspace:
            ``U = W B``, so the folded start is the usual Glorot start restricted to the subspace).
        basis: ``(F, k)`` with orthonormal columns, ``k <= F``.
    """

    def __init__(self, model: EmotionRNN, basis: Tensor) -> None:
        super().__init__()
        full = model.config
        f = full.num_features
        if basis.ndim != 2 or basis.shape[0] != f or not 1 <= basis.shape[1] <= f:
            raise ValueError(f"basis must be ({f}, k), not {tuple(basis.shape)}")
        self.full_config = full
        self.inner = build_model(dataclasses.replace(full, num_features=int(basis.shape[1])), seed=0)
        state = model.state_dict()
        state[_INPUT_WEIGHT] = state[_INPUT_WEIGHT] @ basis
        self.inner.load_state_dict(state)
        self.basis: Tensor
        self.register_buffer("basis", basis.detach().clone().contiguous())

    @property
    def config(self) -> ModelConfig:
        """The full-width model's configuration (F inputs: the interface, not the inner k)."""
        return self.full_config

    @classmethod
    def factorise(cls, model: EmotionRNN, rank: int, *, tolerance: float = 1e-4) -> SubspaceInput:
        """``model`` with input weights of rank ``rank`` written back as ``U B^T``: the same function.

        A model trained with ``input_rank`` (:func:`model_export.train.train`) is stored multiplied
        out; its input weights still have rank ``rank``, so their SVD gives a basis ``B`` (the leading
        right singular vectors) with ``W = (W B) B^T`` to float rounding. The graph can then compute
        ``(x B) U^T``: (F + 4H) k weights and multiply-adds per frame instead of F 4H.

        Args:
            model: A full-width model.
            rank: ``k``.
            tolerance: Largest accepted ratio of the first dropped singular value to the largest.

        Raises:
            ValueError: If the input weights do not have rank ``rank`` (within ``tolerance``).
        """
        w = model.state_dict()[_INPUT_WEIGHT].double()
        if not 1 <= rank < min(w.shape):
            raise ValueError(f"rank must be in [1, {min(w.shape) - 1}], not {rank}")
        _, singular, vt = torch.linalg.svd(w, full_matrices=False)
        dropped = float(singular[rank] / singular[0])
        if dropped > tolerance:
            raise ValueError(
                f"the input weights have rank above {rank}: singular value {rank + 1} is {dropped:.2g} of "
                "the largest (was the model trained with this input rank?)"
            )
        out = cls(model, vt[:rank].T.float().contiguous())
        out.train(model.training)
        return out

    @classmethod
    def from_parts(cls, inner: EmotionRNN, basis: Tensor, config: ModelConfig) -> SubspaceInput:
        """The module whose projection is ``basis`` (F, k) and whose model behind it is ``inner``."""
        out = cls(build_model(config, seed=0), basis)
        out.inner.load_state_dict(inner.state_dict())
        out.train(inner.training)
        return out

    def forward(self, x: Tensor) -> Tensor:
        """:meth:`EmotionRNN.forward` of the folded model, computed through the subspace."""
        return cast(Tensor, self.inner(x @ self.basis))

    def fold(self) -> EmotionRNN:
        """The full-width :class:`EmotionRNN` with input weights ``U B^T``: the same function of x."""
        out = build_model(self.full_config, seed=0)
        state = self.inner.state_dict()
        state[_INPUT_WEIGHT] = state[_INPUT_WEIGHT] @ self.basis.T
        out.load_state_dict(state)
        out.train(self.training)
        return out


#: The first LSTM layer's input weights (the only parameters that see the F inputs).
_INPUT_WEIGHT = "encoder.0.weight_ih_l0"


def build_model(config: ModelConfig, *, seed: int | None = None) -> EmotionRNN:
    """Build a model with PyTorch's default initialisation.

    Args:
        config: The hyperparameters.
        seed: If given, the weights depend only on (config, seed), and the global RNG state is left
            untouched.

    Returns:
        The model, in training mode (call ``.eval()`` for inference/export).
    """
    if seed is None:
        return EmotionRNN(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return EmotionRNN(config)


def from_preset(name: str, *, seed: int | None = None, **overrides: Any) -> EmotionRNN:
    """Build one of :data:`PRESETS`, e.g. ``from_preset("LSTM_AT_400", num_outputs=1)``.

    Args:
        name: Preset name.
        seed: See :func:`build_model`.
        **overrides: :class:`ModelConfig` fields to change.

    Returns:
        The model.

    Raises:
        KeyError: For an unknown preset name.
    """
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    return build_model(dataclasses.replace(PRESETS[name], **overrides), seed=seed)


@contextlib.contextmanager
def fast_cpu_context(num_threads: int | None = None) -> Iterator[None]:
    """Context for CPU training/inference: oneDNN (mkldnn) off, optionally a thread count.

    With oneDNN off PyTorch runs its native LSTM, which computes the input projection of all frames as
    one matmul before the recurrence; oneDNN's LSTM was measured 1.25-1.4x slower on this model on an
    idle machine and about 3x slower on a busy one (numbers in the module docstring). Numerics are
    unchanged up to float rounding. Only the oneDNN *enabled* flag and the thread count are touched,
    and both are restored on exit.

    Args:
        num_threads: If given, ``torch.set_num_threads`` for the duration: the number of cores
            normally; on a machine shared with other busy processes 1 thread can be faster than 2,
            because each time step's small ops wait for a descheduled worker thread.
    """
    previous_threads = torch.get_num_threads()
    # Only the `enabled` flag: torch.backends.mkldnn.flags() would also reset deterministic/tf32/precision.
    previous_enabled = torch._C._get_mkldnn_enabled()
    try:
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        torch._C._set_mkldnn_enabled(False)
        yield
    finally:
        torch._C._set_mkldnn_enabled(previous_enabled)
        torch.set_num_threads(previous_threads)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    num_features: int,
    opset: int = 17,
    input_name: str = INPUT_NAME,
    output_name: str = OUTPUT_NAME,
) -> None:
    """Export a (B, T, F) -> (B, T, O) module to ONNX with dynamic batch and time axes.

    Uses the legacy TorchScript exporter (``dynamo=False``): it maps ``nn.LSTM``/``nn.RNN`` to ONNX's
    ``LSTM``/``RNN`` operators. The dummy input has T = 3 and B = 2 so that no size is 1 (the tracer may
    special-case size-1 axes); nothing in :class:`EmotionRNN` reads T as a Python int, so the graph holds
    for every T >= 1. The module is exported as is: call ``.eval()`` first (dropout).

    Args:
        model: The module, e.g. an :class:`EmotionRNN` or a wrapper that prepends standardisation.
        path: Destination ``.onnx`` file.
        num_features: F of the dummy input.
        opset: ONNX opset.
        input_name: Name of the graph input.
        output_name: Name of the graph output.
    """
    dummy = torch.zeros(2, 3, num_features)
    torch.onnx.export(
        model,
        (dummy,),
        os.fspath(path),
        dynamo=False,
        opset_version=opset,
        input_names=[input_name],
        output_names=[output_name],
        dynamic_axes={input_name: {0: "batch", 1: "time"}, output_name: {0: "batch", 1: "time"}},
    )
