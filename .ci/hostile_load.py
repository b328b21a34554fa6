"""Hostile load against a running service (CI: the container with --memory 2g), loopback only.

1. a decompression bomb (0.55 MB FLAC: 899 s of silence at 192 kHz) x 4 at once;
2. 16 uploads of 95 MB at once (half multipart, half raw WAV bodies);
3. a body that stalls after 1 MB of a declared 50 MB;
4. then an ordinary prediction, which must succeed.

Every answer must be 200, a 4xx or 503 (never a 5xx otherwise, never a dropped connection). Prints
what each got and how long it took; exits non-zero on a violation. Usage: hostile_load.py URL.
"""

from __future__ import annotations

import io
import os
import socket
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import soundfile as sf

ALLOWED = {200, 503} | set(range(400, 500))


def encode(signal: np.ndarray, rate: int, fmt: str) -> bytes:
    """16-bit audio file bytes."""
    buf = io.BytesIO()
    sf.write(buf, signal, rate, format=fmt, subtype="PCM_16")
    return buf.getvalue()


def post(url: str, body: bytes, multipart: bool, ctype: str) -> int | str:
    """POST one upload; its status, or the name of the transport error."""
    try:
        if multipart:
            r = httpx.post(f"{url}/v1/predict", files={"file": ("f", body, ctype)}, timeout=600)
        else:
            r = httpx.post(f"{url}/v1/predict", content=body, headers={"content-type": ctype}, timeout=600)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}"
    return r.status_code


def burst(name: str, url: str, jobs: list[tuple[bytes, bool, str]]) -> list[int | str]:
    """Send all ``jobs`` at once; print what they got."""
    t0 = time.monotonic()
    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(lambda j: post(url, *j), jobs))
    print(f"{name}: {dict(Counter(results))} in {time.monotonic() - t0:.1f} s", flush=True)
    return results


def stalled(url: str, declared: int, sent: int, wait_s: float) -> int | str:
    """Declare ``declared`` bytes, send ``sent``, stall; the status the server answers with."""
    host, port = url.removeprefix("http://").split(":")
    t0 = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=wait_s) as sock:
        head = (
            f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: audio/wav\r\nContent-Length: {declared}"
        )
        sock.sendall(head.encode() + b"\r\n\r\n" + b"\0" * sent)
        try:
            answer = sock.recv(4096)
        except TimeoutError:
            return "no answer"
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else "garbled"
    print(f"stalled body: HTTP {status} after {time.monotonic() - t0:.1f} s", flush=True)
    return status


def mark(what: str) -> None:
    """Let an outside memory sampler (MARK_FILE) note where a phase ended."""
    if path := os.environ.get("MARK_FILE"):
        with open(path, "a") as f:
            f.write(f"{time.time():.1f} {what}\n")


def main() -> int:
    """Run the four steps; 0 when every answer was allowed and the last prediction succeeded."""
    url = sys.argv[1]
    bomb = encode(np.zeros(899 * 192_000, np.int16), 192_000, "FLAC")
    print(f"bomb: {len(bomb) / 1e6:.2f} MB of FLAC, 899 s at 192 kHz", flush=True)
    seconds = 95e6 / (44_100 * 2 * 2)
    rng = np.random.default_rng(0)
    big = encode((rng.standard_normal((round(seconds * 44_100), 2)) * 1000).astype(np.int16), 44_100, "WAV")
    print(f"upload: {len(big) / 1e6:.1f} MB WAV, {seconds:.0f} s stereo at 44.1 kHz", flush=True)
    results = burst("bomb x 4", url, [(bomb, False, "audio/flac")] * 4)
    mark("after the bombs")
    results += burst("95 MB x 16", url, [(big, i % 2 == 0, "audio/wav") for i in range(16)])
    mark("after the uploads")
    del big
    results.append(stalled(url, 50_000_000, 1_000_000, wait_s=60))
    clip = encode((np.sin(np.arange(16_000 * 8) / 8) * 8000).astype(np.int16), 16_000, "WAV")
    final = httpx.post(f"{url}/v1/predict", content=clip, headers={"content-type": "audio/wav"}, timeout=120)
    frames = len(final.json().get("frames", []))
    print(f"ordinary prediction afterwards: HTTP {final.status_code}, {frames} frames")
    bad = [r for r in results if r not in ALLOWED]
    if bad or final.status_code != 200:
        print(f"FAILED: disallowed answers {bad}, final {final.status_code}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
