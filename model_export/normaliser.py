"""The model's input front: feature compression and standardisation, in torch, fitted on training data.

:class:`Normaliser` is the first layer of every exported graph (so serving feeds raw features), and
:func:`fit_statistics` computes its statistics from a training part only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

from app.core.contract import FEATURE_TRANSFORMS, transform_features
from app.core.types import FloatArray

__all__ = ["Normaliser", "fit_statistics"]


class Normaliser(nn.Module):
    """``clip((transform(x) - mean) / std, -clip_z, clip_z)``: the model's input front.

    The same arithmetic as :meth:`app.core.contract.ModelContract.normalise`, in torch so that it is part
    of the exported graph.
    """

    mean: torch.Tensor
    std: torch.Tensor
    inv_std: torch.Tensor

    def __init__(self, mean: FloatArray, std: FloatArray, transform: str, clip_z: float) -> None:
        super().__init__()
        if transform not in FEATURE_TRANSFORMS:
            raise ValueError(f"unknown feature transform {transform!r}")
        self.transform = transform
        self.clip_z = float(clip_z)
        self.register_buffer("mean", torch.as_tensor(np.asarray(mean, np.float32)))
        self.register_buffer("std", torch.as_tensor(np.asarray(std, np.float32)))
        self.register_buffer("inv_std", 1.0 / self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise raw ``(..., F)`` features."""
        if self.transform == "signed_log1p":
            x = _signed_log1p(x)
        # One multiply instead of a division: at 976 x 6373 values per batch of 16 clips every pass
        # over the input counts (docs/performance.md); x * (1/s) is within an ulp of x / s.
        z = (x - self.mean) * self.inv_std
        return torch.clamp(z, -self.clip_z, self.clip_z)


#: Smallest |x| the log1p ratio is evaluated at (float32's epsilon): below it the ratio is 1 to float32
#: precision, and ``1 + |x|`` would round to 1 and make the ratio 0 / 0.
_RATIO_FLOOR = float(torch.finfo(torch.float32).eps)


def _signed_log1p(x: Tensor) -> Tensor:
    """``sign(x) * log(1 + |x|)``, accurate for tiny ``|x|``, in seven operators every runtime has.

    ONNX has no Log1p: ``torch.log1p`` exports as ``Log(1 + u)``, which is 0 for ``u`` under float32's
    epsilon. Some ComParE functionals live at ~1e-8 with a spread of ~1e-8, so that difference moved
    their standardised values by up to 1.0 (measured on the VGMIDI model). Goldberg's trick evaluates
    ``log1p(u) = u * r(u)`` with ``r = log(w) / (w - 1)`` at the rounded ``w = 1 + u``: ``r`` is
    smooth, so using the representable ``w`` costs a few ulps only. ``r`` is taken at
    ``max(u, eps)`` (``r`` is 1 to float32 precision below ``eps``, where ``w - 1`` would be 0), and
    ``sign(x) * |x| * r = x * r`` needs no Sign: Abs, Max, Add, Log, Sub, Div, Mul, where the earlier
    ``where(w == 1, u, log(w) * (u / (w - 1)))`` times ``sign(x)`` took ten passes over the input.
    """
    w = 1.0 + torch.clamp(torch.abs(x), min=_RATIO_FLOOR)
    # w - 1 first, so that Log is w's last use and ONNX Runtime may write it over w's buffer: for a
    # 10-minute song each of these (T, 6373) tensors is 30 MB.
    d = w - 1.0
    return x * (torch.log(w) / d)


def fit_statistics(features: Sequence[FloatArray], transform: str) -> tuple[FloatArray, FloatArray]:
    """Per-feature mean and std of the transformed frames of the training part only.

    Accumulated in float64 by streaming over clips; a feature that is constant in the training data
    gets std 1 (it then carries no information, and must not divide by zero).
    """
    n = 0
    total: npt.NDArray[np.float64] | None = None
    total_sq: npt.NDArray[np.float64] | None = None
    for f in features:
        x = transform_features(f.astype(np.float64), transform)
        s, sq = x.sum(axis=0), np.square(x).sum(axis=0)
        total = s if total is None else total + s
        total_sq = sq if total_sq is None else total_sq + sq
        n += x.shape[0]
    if total is None or total_sq is None or n == 0:
        raise ValueError("no training frames")
    mean = total / n
    var = np.maximum(total_sq / n - np.square(mean), 0.0)
    std = np.sqrt(var)
    std[std < 1e-8 * np.maximum(1.0, np.abs(mean))] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)
