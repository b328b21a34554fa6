"""The error table: every kind of bad input is a clear 4xx in the one error shape, never a 5xx or a hang."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from model_export.testing import encode, synth_music
from tests.conftest import serving

F = 6373
LIMIT_BYTES = 1_000_000
LIMIT_S = 4.0


@pytest.fixture(scope="module")
def url(served_model: Path) -> Iterator[str]:
    with serving(served_model, max_upload_bytes=LIMIT_BYTES, max_duration_s=LIMIT_S) as base:
        yield base
        # Whatever came before, the server is still up and ready.
        assert httpx.get(f"{base}/v2/health/ready").status_code == 200


def expect_error(r: httpx.Response, status: int, code: str, *words: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    for word in words:
        assert word in body["error"]["message"]


class Counting:
    """A request body that records how much of it the client was asked to send."""

    def __init__(self, chunks: int, size: int = 64 * 1024) -> None:
        self.total = chunks * size
        self.sent = 0
        self._chunk = b"\0" * size
        self._chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        for _ in range(self._chunks):
            self.sent += len(self._chunk)
            yield self._chunk


def wav(seconds: float, sample_rate: int = 8_000) -> bytes:
    return encode(synth_music(seconds, sample_rate, seed=5), sample_rate)


# --- size and duration ----------------------------------------------------------------------------------


def test_declared_oversize_body_is_413_before_it_is_sent(url: str) -> None:
    body = Counting(chunks=1024)  # 64 MiB, 67x the limit
    r = httpx.post(
        f"{url}/v1/predict",
        content=body,
        headers={"content-type": "audio/wav", "content-length": str(body.total)},
        timeout=60,
    )
    expect_error(r, 413, "payload_too_large", f"Content-Length {body.total}", str(LIMIT_BYTES))
    assert body.sent < body.total // 2  # only what socket buffers took before the answer came


def test_streamed_oversize_body_is_413_once_the_limit_is_passed(url: str) -> None:
    body = Counting(chunks=1024)  # chunked: no length to check up front, the bytes are counted
    r = httpx.post(
        f"{url}/v1/predict/features", content=body, headers={"content-type": "application/x-npy"}, timeout=60
    )
    expect_error(r, 413, "payload_too_large", str(LIMIT_BYTES))
    assert body.sent < body.total // 2


def test_audio_longer_than_the_limit_is_413_but_a_range_within_it_is_fine(url: str) -> None:
    data = wav(6.0)
    r = httpx.post(f"{url}/v1/predict", files={"file": ("a.wav", data, "audio/wav")}, timeout=60)
    expect_error(r, 413, "audio_too_long", "limit is 4 s")
    ok = httpx.post(
        f"{url}/v1/predict",
        params={"offset_s": 1, "duration_s": 3},
        files={"file": ("a.wav", data)},
        timeout=60,
    )
    assert ok.status_code == 200, ok.text
    assert ok.json()["num_frames"] == 6


def test_features_longer_than_the_limit_are_413(url: str) -> None:
    x = np.zeros((int(LIMIT_S / 0.5) + 1, F), np.float32)
    r = httpx.post(
        f"{url}/v1/predict/features", content=npy(x), headers={"content-type": "application/x-npy"}
    )
    expect_error(r, 413, "too_many_frames", "9 frames", "at most 8")


# --- audio ----------------------------------------------------------------------------------------------


def test_unsupported_audio_format_is_415(url: str) -> None:
    r = httpx.post(
        f"{url}/v1/predict", files={"file": ("a.txt", b"hello, this is not audio " * 40, "text/plain")}
    )
    expect_error(r, 415, "unsupported_audio", "WAV, FLAC")


def test_corrupt_audio_is_422(url: str) -> None:
    truncated = wav(2.0)[:-5000]
    r = httpx.post(f"{url}/v1/predict", files={"file": ("a.wav", truncated, "audio/wav")})
    expect_error(r, 422, "corrupt_audio", "truncated")


def test_audio_shorter_than_a_frame_is_422(url: str) -> None:
    r = httpx.post(f"{url}/v1/predict", files={"file": ("a.wav", wav(0.3), "audio/wav")})
    expect_error(r, 422, "audio_too_short", "0.5 s")


def test_upload_without_a_file_field_or_with_another_content_type(url: str) -> None:
    r = httpx.post(f"{url}/v1/predict", files={"audio": ("a.wav", wav(1.0), "audio/wav")})
    expect_error(r, 422, "invalid_request", "no field 'file'")
    r = httpx.post(f"{url}/v1/predict", json={"file": "a.wav"})
    expect_error(r, 415, "unsupported_media_type", "multipart/form-data")


def test_offset_past_the_end_is_422(url: str) -> None:
    for offset in (30, 1e308):
        r = httpx.post(f"{url}/v1/predict", params={"offset_s": offset}, files={"file": ("a.wav", wav(2.0))})
        expect_error(r, 422, "invalid_request", "past the end")


# --- features -------------------------------------------------------------------------------------------


def npy(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x)
    return buf.getvalue()


def post_json(url: str, doc: object) -> httpx.Response:
    # Python's encoder writes NaN/Infinity literals, as many clients do.
    return httpx.post(
        f"{url}/v1/predict/features", content=json.dumps(doc), headers={"content-type": "application/json"}
    )


def test_wrong_feature_width_is_422_naming_the_expected_shape(url: str) -> None:
    expect_error(
        post_json(url, {"features": [[0.0] * 100] * 3}), 422, "invalid_features", "(T, 6373)", "(3, 100)"
    )


def test_ragged_feature_rows_are_422(url: str) -> None:
    expect_error(
        post_json(url, {"features": [[0.0] * F, [0.0] * (F - 1)]}), 422, "invalid_features", "(T, 6373)"
    )


def test_non_finite_features_are_422(url: str) -> None:
    row = [0.0] * F
    expect_error(
        post_json(url, {"features": [row, [*row[:-1], float("nan")]]}), 422, "invalid_features", "NaN"
    )
    bad = np.zeros((2, F), np.float32)
    bad[1, 7] = np.inf
    r = httpx.post(
        f"{url}/v1/predict/features", content=npy(bad), headers={"content-type": "application/x-npy"}
    )
    expect_error(r, 422, "invalid_features", "row 1, column 7")


@pytest.mark.parametrize("doc", [{"features": []}, {"features": [[]]}, {"items": []}])
def test_empty_features_are_422(url: str, doc: object) -> None:
    r = post_json(url, doc)
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "invalid_features"


def test_empty_body_is_422(url: str) -> None:
    r = httpx.post(f"{url}/v1/predict/features", content=b"", headers={"content-type": "application/json"})
    expect_error(r, 422, "invalid_features", "empty")


def test_bad_npy_is_422(url: str) -> None:
    headers = {"content-type": "application/x-npy"}
    r = httpx.post(f"{url}/v1/predict/features", content=b"\x93NUMPY not really", headers=headers)
    expect_error(r, 422, "invalid_features", ".npy")
    r = httpx.post(f"{url}/v1/predict/features", content=npy(np.zeros((2, F))), headers=headers)
    expect_error(r, 422, "invalid_features", "float32")
    r = httpx.post(f"{url}/v1/predict/features", content=npy(np.zeros((2, 10), np.float32)), headers=headers)
    expect_error(r, 422, "invalid_features", "(T, 6373)")


def test_features_in_another_media_type_are_415(url: str) -> None:
    r = httpx.post(f"{url}/v1/predict/features", content=b"1,2,3", headers={"content-type": "text/csv"})
    expect_error(r, 415, "unsupported_media_type", "application/x-npy")


# --- framework-level errors -----------------------------------------------------------------------------


def test_query_validation_errors_use_the_one_shape(url: str) -> None:
    r = httpx.post(f"{url}/v1/predict", params={"offset_s": "soon"}, files={"file": ("a.wav", b"x")})
    expect_error(r, 422, "invalid_request", "offset_s")
    r = httpx.post(f"{url}/v1/predict", params={"duration_s": 0}, files={"file": ("a.wav", b"x")})
    expect_error(r, 422, "invalid_request", "duration_s")


def test_unknown_route_and_wrong_method_use_the_one_shape(url: str) -> None:
    expect_error(httpx.get(f"{url}/v1/nothing"), 404, "not_found")
    r = httpx.get(f"{url}/v1/predict")
    expect_error(r, 405, "method_not_allowed")
    assert r.headers["allow"] == "POST"


def test_a_request_over_the_timeout_is_504(served_model: Path) -> None:
    data = wav(20.0, sample_rate=16_000)  # extraction takes far longer than the 50 ms allowed
    with serving(served_model, request_timeout_s=0.05) as base:
        r = httpx.post(f"{base}/v1/predict", files={"file": ("a.wav", data, "audio/wav")}, timeout=60)
        expect_error(r, 504, "timeout", "0.05 s")
        assert httpx.get(f"{base}/v2/health/ready").status_code == 200
