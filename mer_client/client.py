"""``Client`` and ``AsyncClient``: the service's v1 routes and health probe, with retries.

Both build the same requests and read the same responses (:class:`_Call`); only sending and sleeping
differ. Retried: 503 (whatever its code: ``overloaded``, ``model_not_ready``, ``shutting_down``) and
transport errors (refused or dropped connections, timeouts). Each retry waits the server's
``Retry-After`` when it sent one, else ``backoff_s * 2**attempt`` with jitter, never more than
``max_wait_s``. Every route of the service is a pure function of its input, so repeating a POST is
safe.
"""

from __future__ import annotations

import asyncio
import io
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

from mer_client.errors import MERError, MERUnavailableError
from mer_client.models import ModelInfo, Prediction

__all__ = ["AsyncClient", "Client", "RetryPolicy"]

T = TypeVar("T")
Audio = str | os.PathLike[str] | bytes | bytearray | memoryview


@dataclass(frozen=True)
class RetryPolicy:
    """How unavailable servers are retried.

    Attributes:
        retries: Retries after the first attempt (0: none).
        backoff_s: First wait without a ``Retry-After``; doubled each retry, with ±25 % jitter.
        max_wait_s: Longest single wait (also caps ``Retry-After``).
    """

    retries: int = 3
    backoff_s: float = 0.5
    max_wait_s: float = 30.0

    def wait_s(self, attempt: int, retry_after_s: float | None) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        if retry_after_s is not None:
            return min(retry_after_s, self.max_wait_s)
        wait: float = self.backoff_s * 2**attempt * random.uniform(0.75, 1.25)
        return min(wait, self.max_wait_s)


@dataclass(frozen=True)
class _Call:
    """One request, and how its response body becomes a result."""

    method: str
    path: str
    parse: Callable[[httpx.Response], Any]
    params: dict[str, float] | None = None
    content: bytes | None = None
    files: dict[str, tuple[str, bytes, str]] | None = None
    headers: dict[str, str] | None = None

    def send_kwargs(self) -> dict[str, Any]:
        return {
            "params": self.params,
            "content": self.content,
            "files": self.files,
            "headers": self.headers,
        }


def _predict_call(audio: Audio, offset_s: float | None, duration_s: float | None) -> _Call:
    if isinstance(audio, bytes | bytearray | memoryview):
        data, name = bytes(audio), "audio"
    else:
        path = Path(audio)
        data, name = path.read_bytes(), path.name
    params = {k: v for k, v in (("offset_s", offset_s), ("duration_s", duration_s)) if v is not None}
    return _Call(
        "POST",
        "/v1/predict",
        _prediction,
        params=params or None,
        files={"file": (name, data, "application/octet-stream")},
    )


def _features_call(features: Any) -> _Call:
    import numpy as np  # only this call needs numpy

    array = np.asarray(features, dtype=np.float32)
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return _Call(
        "POST",
        "/v1/predict/features",
        _prediction,
        content=buffer.getvalue(),
        headers={"Content-Type": "application/x-npy"},
    )


def _prediction(response: httpx.Response) -> Prediction:
    return Prediction.from_json(response.json())


def _model(response: httpx.Response) -> ModelInfo:
    return ModelInfo.from_json(response.json())


def _error(response: httpx.Response) -> MERError:
    """The server's error, from its one JSON shape (or the status when the body is something else)."""
    retry_after: float | None = None
    header = response.headers.get("Retry-After")
    if header is not None:
        try:
            retry_after = max(0.0, float(header))
        except ValueError:
            retry_after = None
    code, message = f"http_{response.status_code}", response.text[:500]
    try:
        body = response.json()
        code, message = str(body["error"]["code"]), str(body["error"]["message"])
    except (ValueError, KeyError, TypeError):
        pass
    cls = MERUnavailableError if response.status_code == 503 else MERError
    return cls(response.status_code, code, message, retry_after)


def _outcome(call: _Call, response: httpx.Response) -> Any:
    """The parsed result, or a 503 to retry (returned); any other failure is raised at once."""
    if response.is_success:
        return call.parse(response)
    failure = _error(response)
    if response.status_code != 503:
        raise failure
    return failure


def _unreachable(exc: httpx.TransportError) -> MERUnavailableError:
    return MERUnavailableError(0, "unreachable", f"{type(exc).__name__}: {exc}")


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class Client:
    """Synchronous client.

    Args:
        base_url: Where the service listens, e.g. ``http://localhost:8000``.
        api_key: The service's ``MER_API_KEY``, if it has one (sent as a bearer token).
        timeout_s: Per-request timeout (a long song takes seconds to analyse).
        retry: Retry policy for 503s and lost connections.
        transport: An ``httpx`` transport (tests, proxies); default: a pooled HTTP transport.

    Example:
        >>> with Client("http://localhost:8000", api_key="secret") as mer:
        ...     mer.ready()
        True
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self._http = httpx.Client(
            base_url=base_url, headers=_headers(api_key), timeout=timeout_s, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def predict(
        self, audio: Audio, offset_s: float | None = None, duration_s: float | None = None
    ) -> Prediction:
        """Per-frame emotion of an audio file (a path or its bytes), or of a time range of it.

        Raises:
            MERError: The server refused it (e.g. ``unsupported_audio``, ``audio_too_long``).
            MERUnavailableError: Still 503 or unreachable after the retries.
        """
        result: Prediction = self._send(_predict_call(audio, offset_s, duration_s))
        return result

    def predict_features(self, features: Any) -> Prediction:
        """Per-frame emotion of raw ComParE_2016 features ``(T, 6373)`` (sent as float32 ``.npy``)."""
        result: Prediction = self._send(_features_call(features))
        return result

    def model(self) -> ModelInfo:
        """The served model's facts and card."""
        result: ModelInfo = self._send(_Call("GET", "/v1/models/default", _model))
        return result

    def ready(self) -> bool:
        """Whether the service is ready (one probe, no retries: a 503 or no connection is ``False``)."""
        try:
            return self._http.get("/v2/health/ready").status_code == 200
        except httpx.TransportError:
            return False

    def _send(self, call: _Call) -> Any:
        for attempt in range(self.retry.retries + 1):
            try:
                outcome = _outcome(call, self._http.request(call.method, call.path, **call.send_kwargs()))
            except httpx.TransportError as exc:
                outcome = _unreachable(exc)
            if not isinstance(outcome, MERError):
                return outcome
            if attempt == self.retry.retries:
                raise outcome
            time.sleep(self.retry.wait_s(attempt, outcome.retry_after_s))
        raise AssertionError("unreachable")  # the loop returns or raises


class AsyncClient:
    """The same as :class:`Client`, for ``asyncio``.

    Example:
        >>> async with AsyncClient("http://localhost:8000") as mer:
        ...     results = await asyncio.gather(*(mer.predict(p) for p in paths))
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self._http = httpx.AsyncClient(
            base_url=base_url, headers=_headers(api_key), timeout=timeout_s, transport=transport
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def predict(
        self, audio: Audio, offset_s: float | None = None, duration_s: float | None = None
    ) -> Prediction:
        """See :meth:`Client.predict`."""
        result: Prediction = await self._send(_predict_call(audio, offset_s, duration_s))
        return result

    async def predict_features(self, features: Any) -> Prediction:
        """See :meth:`Client.predict_features`."""
        result: Prediction = await self._send(_features_call(features))
        return result

    async def model(self) -> ModelInfo:
        """See :meth:`Client.model`."""
        result: ModelInfo = await self._send(_Call("GET", "/v1/models/default", _model))
        return result

    async def ready(self) -> bool:
        """See :meth:`Client.ready`."""
        try:
            return (await self._http.get("/v2/health/ready")).status_code == 200
        except httpx.TransportError:
            return False

    async def _send(self, call: _Call) -> Any:
        for attempt in range(self.retry.retries + 1):
            try:
                response = await self._http.request(call.method, call.path, **call.send_kwargs())
                outcome = _outcome(call, response)
            except httpx.TransportError as exc:
                outcome = _unreachable(exc)
            if not isinstance(outcome, MERError):
                return outcome
            if attempt == self.retry.retries:
                raise outcome
            await asyncio.sleep(self.retry.wait_s(attempt, outcome.retry_after_s))
        raise AssertionError("unreachable")
