"""Hostile input over real HTTP: bodies that stall, lie about their length or come in bursts; shutdown."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from model_export.testing import encode, synth_music
from tests.conftest import serving

REPO = Path(__file__).resolve().parents[1]
UPLOAD = 600_000
INFLIGHT = 1_000_000


def raw_request(url: str, head: bytes, body: bytes = b"") -> socket.socket:
    """Open a connection and send ``head`` and ``body``, leaving it open (the caller stalls it)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(head + body)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def post_head(length: int, path: str = "/v1/predict", ctype: str = "audio/wav") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


@pytest.fixture(scope="module")
def url(served_model: Path) -> Iterator[str]:
    with serving(
        served_model, max_upload_bytes=UPLOAD, max_inflight_body_bytes=INFLIGHT, body_read_timeout_s=2.0
    ) as base:
        yield base
        assert httpx.get(f"{base}/v2/health/ready").status_code == 200


def test_a_body_that_stalls_gets_408_in_the_json_shape_and_the_connection_closes(url: str) -> None:
    sock = raw_request(url, post_head(50_000), b"RIFF" + b"\0" * 1000)
    started = time.monotonic()
    status, headers, body = read_response(sock)
    elapsed = time.monotonic() - started
    assert status == 408
    assert headers["connection"] == "close"
    error = json.loads(body)["error"]
    assert error["code"] == "body_timeout"
    assert "1004 of 50000 bytes" in error["message"]
    assert 1.5 < elapsed < 6


def test_bodies_beyond_the_in_flight_budget_get_503_with_retry_after(url: str) -> None:
    holder = raw_request(url, post_head(UPLOAD - 1000), b"\0" * 1000)  # reserves 599 000 of 1 000 000
    time.sleep(0.3)
    try:
        clip = encode(synth_music(5.0, 8_000), 8_000)  # 80 kB: fits beside it
        assert (
            httpx.post(f"{url}/v1/predict", content=clip, headers={"content-type": "audio/wav"}).status_code
            == 200
        )
        big = httpx.post(
            f"{url}/v1/predict", content=b"\0" * 500_000, headers={"content-type": "audio/wav"}, timeout=30
        )
        assert big.status_code == 503
        assert big.json()["error"]["code"] == "overloaded"
        assert "budget is 1000000" in big.json()["error"]["message"]
        assert int(big.headers["retry-after"]) >= 1
    finally:
        holder.close()
    time.sleep(0.3)  # the server notices the disconnect and gives the reservation back
    again = httpx.post(f"{url}/v1/predict", content=b"\0" * 500_000, headers={"content-type": "audio/wav"})
    assert again.status_code == 415  # read in full, then found not to be audio: the budget was released


def test_a_chunked_body_reserves_as_it_arrives(url: str) -> None:
    holder = raw_request(url, post_head(UPLOAD - 1000), b"\0" * 10)
    time.sleep(0.3)
    try:

        def chunks() -> Iterator[bytes]:
            for _ in range(8):
                yield b"\0" * 64_000

        r = httpx.post(
            f"{url}/v1/predict", content=chunks(), headers={"content-type": "audio/wav"}, timeout=30
        )
        assert r.status_code == 503
    finally:
        holder.close()


def test_the_http_parsers_own_400_uses_the_json_shape(url: str) -> None:
    sock = raw_request(url, b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 12abc\r\n\r\n")
    status, headers, body = read_response(sock)
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["code"] == "bad_request"


def test_two_files_and_huge_integers_are_4xx_over_http(url: str) -> None:
    clip = encode(synth_music(1.0, 8_000), 8_000)
    files = [("file", ("a.wav", clip, "audio/wav")), ("file", ("b.wav", clip, "audio/wav"))]
    r = httpx.post(f"{url}/v1/predict", files=files)
    assert (r.status_code, r.json()["error"]["code"]) == (422, "invalid_request")
    digits = b"9" * 5001
    r = httpx.post(f"{url}/v1/predict/features", content=b'{"features": [[' + digits + b"]]}",
                   headers={"content-type": "application/json"})  # fmt: skip
    assert (r.status_code, r.json()["error"]["code"]) == (422, "invalid_features")
    doc = b'{"inputs": [{"name": "features", "shape": [1], "datatype": "FP32", "data": [' + digits + b"]}]}"
    r = httpx.post(f"{url}/v2/models/tiny/infer", content=doc, headers={"content-type": "application/json"})
    assert (r.status_code, r.json()["error"]["code"]) == (422, "invalid_request")


def test_sigterm_ends_the_process_within_the_graceful_timeout_despite_a_stalled_client(
    served_model: Path,
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MER_MODEL_PATH": str(served_model), "MER_INTRA_OP_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app", "--host", "127.0.0.1",
        "--port", str(port), "--http", "app.http.protocols:JsonErrorProtocol",
        "--timeout-graceful-shutdown", "2",
    ]  # fmt: skip
    server = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if httpx.get(f"{url}/v2/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        stalled = raw_request(url, post_head(50_000), b"RIFF")  # the body read timeout (60 s) is far away
        time.sleep(0.3)
        started = time.monotonic()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        elapsed = time.monotonic() - started
        stalled.close()
        assert elapsed < 2 + 2, elapsed
    finally:
        if server.poll() is None:
            server.kill()
