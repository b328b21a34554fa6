"""Live stream against a running service (CI: the container), loopback only.

Streams a WAV file to ``/v1/stream`` as s16le in 100 ms pieces, faster than real time, and checks what
comes back: ``ready``, one ``frame`` per completed 500 ms window (indices in order, times on the grid,
arousal and valence finite and in [-1, 1]), a ``summary`` with the same count, close code 1000. Also
checks that ``/v1/models/default`` names the step graph it loaded. Exits non-zero on a violation.
Usage: stream_check.py URL WAV.
"""

from __future__ import annotations

import json
import math
import sys
import time

import httpx
import numpy as np
import soundfile as sf
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect


def check(ok: object, what: object) -> None:
    """Stop with ``what`` unless ``ok``."""
    if not ok:
        raise SystemExit(f"stream check FAILED: {what}")


def main(url: str, wav: str) -> None:
    """Stream ``wav`` to ``url`` and check the frames (exits non-zero on a violation)."""
    info = httpx.get(f"{url}/v1/models/default", timeout=10).json()
    step = info.get("step_model")
    check(step, f"no step graph loaded: {info.get('step_model_problem')}")
    audio, rate = sf.read(wav, dtype="int16", always_2d=True)
    piece = rate // 10
    expected = math.floor(len(audio) / rate / 0.5)
    ws_url = url.replace("http://", "ws://") + "/v1/stream"
    frames: list[dict[str, object]] = []
    summary: dict[str, object] | None = None
    t0 = time.perf_counter()
    with connect(ws_url, open_timeout=10, close_timeout=10) as ws:
        ws.send(json.dumps({"sample_rate": rate, "channels": audio.shape[1], "format": "s16le"}))
        ready = json.loads(ws.recv(timeout=10))
        check(ready["type"] == "ready", ready)
        for i in range(0, len(audio), piece):
            ws.send(audio[i : i + piece].astype("<i2").tobytes())
        ws.send(json.dumps({"type": "end"}))
        try:
            while True:
                message = json.loads(ws.recv(timeout=60))
                if message["type"] == "frame":
                    frames.append(message)
                elif message["type"] == "summary":
                    summary = message
                else:
                    check(False, f"unexpected message {message}")
        except ConnectionClosed:
            pass
        code = ws.close_code
    took = time.perf_counter() - t0
    check(code == 1000, f"closed with {code}: {ws.close_reason}")
    check(len(frames) == expected, f"{len(frames)} frames, expected {expected}")
    for k, f in enumerate(frames):
        check(f["index"] == k and math.isclose(float(f["start_s"]), 0.5 * k), f)  # type: ignore[arg-type]
        for key in ("arousal", "valence"):
            v = float(f[key])  # type: ignore[arg-type]
            check(math.isfinite(v) and -1.0 <= v <= 1.0, f)
    check(summary is not None and summary["frames"] == expected, summary)
    values = np.array([[f["arousal"], f["valence"]] for f in frames], dtype=float)
    print(
        f"/v1/stream: {len(frames)} frames from {len(audio) / rate:.1f} s in {took:.2f} s via "
        f"{step['file']}, mean arousal/valence {values.mean(0).round(3).tolist()}, close 1000"
    )


if __name__ == "__main__":
    main(sys.argv[1].rstrip("/"), sys.argv[2])
