"""Live extraction: raw PCM in pieces of any size -> the features of each 500 ms window as it completes.

The offline path (:meth:`app.core.features.FeatureExtractor.extract`) hands openSMILE a whole clip at
once. A stream hands it the same kind of audio a piece at a time: one openSMILE instance per stream runs
in its own thread on the same configuration (openSMILE's external audio source, the interface the
``opensmile`` wrapper itself uses), and its sink calls back with each window's functionals as soon as
openSMILE has computed them. For the same samples openSMILE's output does not depend on how they were
cut into pieces, so a stream's features *equal* one offline pass over the same audio, bit for bit
(tested), with three stated differences:

1. **Level** (``level_policy = "gated-rms"``): the offline gain is computed over the whole clip, which
   a stream does not have. A stream's gain is causal, :class:`RunningGain`: piecewise constant over
   0.4 s blocks, block ``b`` scaled by the gated-RMS gain of blocks ``0 .. b-1`` (block 0 by its own,
   so its samples wait until it is complete: 0.4 s, less than the first window). It converges to the
   offline gain as the stream goes on; the deviation is measured (``bench/stream.py``). With
   ``level_policy = "none"`` a stream equals the offline pass exactly.
2. **Chunks**: a model whose contract cuts long clips into chunks gets one continuous pass here (a
   stream has no length to lay chunks out by); the offline chunked features differ from one pass as
   documented in the README (median |dz| 0, 0.67 % of values by more than 0.01).
3. **End**: at :meth:`LiveExtractor.finish` the look-ahead after the last complete window is zeros,
   as offline at the end of a clip; a trailing partial window is dropped, as offline.

Frames are computed once openSMILE has the window and the look-ahead its descriptors need (~0.2 s for
the Viterbi-smoothed voicing), so a frame's latency is that plus openSMILE's compute.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import soxr
from opensmile.core.config import config as _smile_config

from app.core.contract import FeatureConfig
from app.core.errors import CorruptAudioError, UnsupportedAudioError
from app.core.features import (
    LOOKAHEAD_S,
    FeatureExtractor,
    level_gain_from_blocks,
)
from app.core.types import FloatArray

__all__ = ["SAMPLE_FORMATS", "LiveExtractor", "RunningGain", "StreamFormat"]

#: Raw PCM sample formats a stream may send, with their bytes per sample.
SAMPLE_FORMATS: dict[str, int] = {"s16le": 2, "f32le": 4}
SampleFormat = Literal["s16le", "f32le"]
#: Most channels a stream may declare (the same bound as decoded files: mixed to mono anyway).
MAX_CHANNELS = 32
#: Longest a write into openSMILE's input buffer waits for it to drain, seconds (a hung instance must
#: not hold a stream forever).
WRITE_TIMEOUT_S = 30.0
_INT16_TOP = np.float32(32767 / 32768)


@dataclass(frozen=True)
class StreamFormat:
    """What a stream's raw PCM is.

    Attributes:
        sample_rate: Hz, 8 000 to 192 000.
        channels: Interleaved channels, 1 to :data:`MAX_CHANNELS` (averaged to mono).
        sample_format: ``"s16le"`` or ``"f32le"``.
    """

    sample_rate: int
    channels: int
    sample_format: SampleFormat

    @classmethod
    def parse(cls, header: Any) -> StreamFormat:
        """Validate a client's header (a JSON object's fields).

        Raises:
            UnsupportedAudioError: For a missing or out-of-range rate, channel count or format.
        """
        if not isinstance(header, dict):
            raise UnsupportedAudioError("the stream header must be a JSON object")
        rate, channels, fmt = header.get("sample_rate"), header.get("channels", 1), header.get("format")
        problems = []
        if isinstance(rate, bool) or not isinstance(rate, int) or not 8_000 <= rate <= 192_000:
            problems.append(f"sample_rate must be an integer from 8000 to 192000 Hz, not {rate!r}")
        if isinstance(channels, bool) or not isinstance(channels, int) or not 1 <= channels <= MAX_CHANNELS:
            problems.append(f"channels must be an integer from 1 to {MAX_CHANNELS}, not {channels!r}")
        if fmt not in SAMPLE_FORMATS:
            problems.append(f"format must be one of {sorted(SAMPLE_FORMATS)}, not {fmt!r}")
        if problems or not isinstance(rate, int) or not isinstance(channels, int):
            raise UnsupportedAudioError("; ".join(problems))
        return cls(
            sample_rate=rate,
            channels=channels,
            sample_format="s16le" if fmt == "s16le" else "f32le",
        )

    @property
    def frame_bytes(self) -> int:
        """Bytes per sample frame (all channels)."""
        return SAMPLE_FORMATS[self.sample_format] * self.channels


class RunningGain:
    """The causal level policy of a stream: one gain per 0.4 s block, from the blocks before it.

    Args:
        config: The feature configuration (its level policy, target and analysis rate).
    """

    def __init__(self, config: FeatureConfig) -> None:
        self.config = config
        self.block = max(1, round(0.4 * config.sample_rate))
        self._powers: list[float] = []
        self._peak = 0.0
        self._partial_sq = 0.0
        self._partial_n = 0
        self._partial_peak = 0.0
        self._gain = 1.0
        self.gains_db: list[float] = []  # the gain of each block, for measurement

    @property
    def enabled(self) -> bool:
        """Whether the policy scales at all (``level_policy != "none"``)."""
        return self.config.level_policy != "none"

    def scale(self, x: FloatArray, *, final: bool = False) -> tuple[FloatArray, int]:
        """Scale what can be scaled of ``x`` (analysis-rate mono); return it and how many samples it used.

        Until block 0 is complete nothing is returned (its gain needs it whole) unless ``final``.
        """
        if not self.enabled:
            return x, x.size
        out = np.empty_like(x)
        done = 0
        while done < x.size:
            if not self._powers and self._partial_n + (x.size - done) < self.block and not final:
                break  # block 0 waits for itself
            room = self.block - self._partial_n
            piece = x[done : done + room]
            if not self._powers and self._partial_n == 0:
                # Block 0: its own gain (the level needs the block whole, which we now have, or the end).
                first = x[done : done + self.block]
                power = float(np.dot(first, first) / max(first.size, 1))
                self._gain = self._gain_for([power], float(np.max(np.abs(first), initial=0.0)))
            np.multiply(piece, np.float32(self._gain), out=out[done : done + piece.size])
            self._partial_sq += float(np.dot(piece, piece))
            self._partial_peak = max(self._partial_peak, float(np.max(np.abs(piece), initial=0.0)))
            self._partial_n += piece.size
            done += piece.size
            if self._partial_n == self.block:
                self._powers.append(self._partial_sq / self.block)
                self._peak = max(self._peak, self._partial_peak)
                self.gains_db.append(20.0 * math.log10(self._gain))
                self._partial_sq, self._partial_n, self._partial_peak = 0.0, 0, 0.0
                self._gain = self._gain_for(self._powers, self._peak)
        return out[:done], done

    def _gain_for(self, powers: list[float], peak: float) -> float:
        db = level_gain_from_blocks(np.asarray(powers, dtype=np.float64), peak, self.config)
        return float(10.0 ** (db / 20.0))


class LiveExtractor:
    """One stream's openSMILE instance: :meth:`push` raw PCM, get each window's features by callback.

    Not thread-safe: one caller pushes (the callback runs on openSMILE's thread, in window order).

    Args:
        extractor: The service's extractor (its configuration and openSMILE setup are reused).
        fmt: The stream's PCM format.
        on_frame: Called as ``on_frame(index, features)`` for every complete window, ``features`` a
            (F,) float32 array with non-finite values replaced as offline.
    """

    def __init__(
        self, extractor: FeatureExtractor, fmt: StreamFormat, on_frame: Callable[[int, FloatArray], None]
    ) -> None:
        self.config = extractor.config
        self.format = fmt
        self._on_frame = on_frame
        self._gain = RunningGain(self.config)
        self._resampler = (
            None
            if fmt.sample_rate == self.config.sample_rate
            else soxr.ResampleStream(
                fmt.sample_rate, self.config.sample_rate, 1, dtype="float32", quality="HQ"
            )
        )
        self._leftover = b""
        self._held = np.zeros(0, dtype=np.float32)  # analysis-rate samples waiting for block 0's gain
        self.input_frames = 0  # sample frames received (at the client's rate)
        self.samples = 0  # analysis-rate samples handed to openSMILE
        self._frames_limit: int | None = None  # set at finish(): the frame policy's count
        self._next_index = 0
        self._error: BaseException | None = None
        smile = extractor._smile  # the wrapper's configured Smile: same feature set and include
        options = smile._options()
        options["source"] = os.path.join(smile.default_config_root, _smile_config.EXTERNAL_INPUT_CONFIG)
        options["sampleRate"] = self.config.sample_rate
        options["nBits"] = 16
        self._smile = smile._smile(options=options)
        self._smile.external_sink_set_callback_ex(_smile_config.EXTERNAL_OUTPUT_COMPONENT, self._sink)
        self._thread = threading.Thread(target=self._run, name="mer-stream-opensmile", daemon=True)
        self._thread.start()
        self._closed = False

    @property
    def duration_s(self) -> float:
        """Seconds of audio received so far."""
        return self.input_frames / self.format.sample_rate

    @property
    def frames_done(self) -> int:
        """Frames delivered to ``on_frame`` so far."""
        return self._next_index

    def _run(self) -> None:
        try:
            self._smile.run()
        except BaseException as exc:
            self._error = exc

    def _sink(self, data: np.ndarray, _meta: Any) -> None:
        index = self._next_index
        if self._frames_limit is not None and index >= self._frames_limit:
            return  # a window completed only by the final zeros: not a frame (partial window)
        values = np.asarray(data, dtype=np.float32).reshape(-1).copy()
        if not np.all(np.isfinite(values)):
            big = float(np.finfo(np.float32).max)
            values = np.nan_to_num(values, nan=0.0, posinf=big, neginf=-big)
        self._next_index += 1
        self._on_frame(index, values)

    def push(self, data: bytes) -> None:
        """Feed raw PCM (any length; a partial sample frame waits for the next piece).

        Raises:
            CorruptAudioError: On non-finite float samples or if openSMILE failed.
        """
        buf = self._leftover + data
        usable = len(buf) - len(buf) % self.format.frame_bytes
        self._leftover = buf[usable:]
        if usable == 0:
            return
        raw = buf[:usable]
        if self.format.sample_format == "s16le":
            x = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
        else:
            x = np.frombuffer(raw, dtype="<f4").astype(np.float32)
            if not np.all(np.isfinite(x)):
                raise CorruptAudioError("the stream holds NaN or infinite samples")
        frames = x.size // self.format.channels
        self.input_frames += frames
        mono = x.reshape(frames, self.format.channels).mean(axis=1, dtype=np.float32)
        if self._resampler is not None:
            mono = self._resampler.resample_chunk(mono)
        self._write(mono, final=False)

    def finish(self, timeout_s: float = WRITE_TIMEOUT_S) -> None:
        """End the stream: flush the resampler, add the look-ahead's zeros, wait for the last frames.

        Raises:
            CorruptAudioError: If openSMILE failed.
            TimeoutError: If openSMILE does not finish within ``timeout_s``.
        """
        tail = np.zeros(0, dtype=np.float32)
        if self._resampler is not None:
            tail = self._resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        self._write(tail, final=True)
        self._frames_limit = self.samples // self.config.window_samples
        zeros = np.zeros(math.ceil(LOOKAHEAD_S * self.config.sample_rate), dtype=np.int16)
        self._write_pcm(zeros.tobytes())
        self._smile.external_audio_source_set_eoi(_smile_config.EXTERNAL_SOURCE_COMPONENT)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise TimeoutError("openSMILE did not finish the stream in time")
        self.close()
        if self._error is not None:
            raise CorruptAudioError(f"feature extraction failed: {self._error}")

    def close(self) -> None:
        """Stop and free the openSMILE instance (idempotent); frames not yet delivered are dropped."""
        if self._closed:
            return
        if self._thread.is_alive():
            self._frames_limit = self._next_index  # deliver nothing more
            self._smile.external_audio_source_set_eoi(_smile_config.EXTERNAL_SOURCE_COMPONENT)
            self._thread.join(WRITE_TIMEOUT_S)
        self._closed = True
        if not self._thread.is_alive():
            self._smile.free()

    def _write(self, mono: FloatArray, *, final: bool) -> None:
        if self._held.size:
            mono = np.concatenate([self._held, mono])
        scaled, used = self._gain.scale(mono, final=final)
        self._held = mono[used:].copy()
        if scaled.size:
            # Exactly the offline conversion: clip to int16's range, times 32768, truncated.
            pcm = (np.clip(scaled, -1.0, _INT16_TOP) * np.float32(32768.0)).astype(np.int16)
            self.samples += pcm.size
            self._write_pcm(pcm.tobytes())

    def _write_pcm(self, pcm: bytes) -> None:
        deadline = time.monotonic() + WRITE_TIMEOUT_S
        while not self._smile.external_audio_source_write_data(_smile_config.EXTERNAL_SOURCE_COMPONENT, pcm):
            # The source's buffer is full: openSMILE is behind; wait for it (bounded).
            if self._error is not None or not self._thread.is_alive():
                raise CorruptAudioError(f"feature extraction stopped: {self._error}")
            if time.monotonic() > deadline:
                raise TimeoutError("openSMILE did not take the stream's audio in time")
            time.sleep(0.002)
