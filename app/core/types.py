"""Array type aliases, defined once for the whole project (core, serving, training, benchmarks)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["Float64Array", "FloatArray", "Int64Array"]

#: float32 arrays: audio samples, features, model inputs and outputs.
FloatArray = npt.NDArray[np.float32]
#: float64 arrays: times in seconds, statistics accumulated in double precision.
Float64Array = npt.NDArray[np.float64]
#: int64 arrays: MIDI ticks, indices.
Int64Array = npt.NDArray[np.int64]
