"""``/v1/stream``: live audio over a WebSocket, one JSON frame per completed 500 ms window.

Protocol (README, "Live streams"):

1. The client opens the socket and sends a text message, the header:
   ``{"sample_rate": 44100, "channels": 2, "format": "s16le"}`` (``"f32le"`` for float32), plus
   ``"api_key"`` when the server has one and the client cannot send ``Authorization: Bearer``
   (browsers cannot set headers on a WebSocket).
2. The server answers ``{"type": "ready", ...}`` (model, analysis rate, hop, what the level policy does).
3. The client sends raw interleaved little-endian PCM as binary messages of any size; the server sends
   ``{"type": "frame", "index", "start_s", "end_s", "arousal", "valence"}`` for every window as soon as
   the window and openSMILE's look-ahead are in.
4. The client sends the text ``{"type": "end"}``; the server sends the remaining frames and
   ``{"type": "summary", ...}``, then closes with 1000.

Every other ending is a close code with a reason: 1003 (a header or message of the wrong kind or an
unsupported format), 1007 (NaN/inf samples), 1008 (bad API key, idle for ``stream_idle_timeout_s``,
longer than ``stream_max_duration_s``), 1009 (a message over ``stream_max_message_bytes``), 1011 (the
model has no step graph, or the stream failed), 1013 (not ready, or ``stream_max_concurrent`` streams
are running).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from app.core.errors import (
    AudioTooLongError,
    CorruptAudioError,
    ModelNotReadyError,
    OverloadedError,
    ServiceError,
    UnsupportedAudioError,
)
from app.core.stream import StreamFormat
from app.serving.lifecycle import ServiceState
from app.serving.stream import StreamSession
from app.settings import Settings

__all__ = ["StreamCloseError", "router"]

log = logging.getLogger(__name__)

router = APIRouter()

#: Close codes (RFC 6455 and IANA's registry).
NORMAL, UNSUPPORTED, INVALID_DATA, POLICY, TOO_BIG, INTERNAL, TRY_LATER = (
    1000,
    1003,
    1007,
    1008,
    1009,
    1011,
    1013,
)
#: Longest a close reason may be (the control frame holds 123 bytes of it).
_REASON_BYTES = 120


class StreamCloseError(Exception):
    """End the stream with this close code and reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@router.websocket("/v1/stream")
async def stream(websocket: WebSocket) -> None:
    """Live audio in, one prediction per completed 500 ms window out (see the module docstring)."""
    state: ServiceState = websocket.app.state.mer
    await websocket.accept()
    session: StreamSession | None = None
    sender: asyncio.Task[None] | None = None
    code, reason = NORMAL, "end of stream"
    try:
        if not state.ready or state.service is None:
            raise StreamCloseError(TRY_LATER, f"model not ready: {state.reason}")
        service = state.service
        settings = service.settings
        header = await _receive_header(websocket, settings)
        _check_key(websocket, header, settings)
        try:
            fmt = StreamFormat.parse(header)
            session = service.streams.open(fmt)
        except UnsupportedAudioError as exc:
            raise StreamCloseError(UNSUPPORTED, exc.message) from exc
        except OverloadedError as exc:
            raise StreamCloseError(TRY_LATER, exc.message) from exc
        except ModelNotReadyError as exc:
            raise StreamCloseError(INTERNAL, exc.message) from exc
        predictor = service.predictor
        await websocket.send_json(
            {
                "type": "ready",
                "model": {"name": predictor.model_name, "version": predictor.model_version},
                "analysis_sample_rate": service.config.sample_rate,
                "hop_s": service.config.hop_s,
                "window_s": service.config.window_s,
                "level_policy": service.config.level_policy
                + (
                    " (running: each 0.4 s block scaled by the level of the blocks before it)"
                    if service.config.level_policy != "none"
                    else ""
                ),
                "max_duration_s": settings.stream_max_duration_s,
                "max_message_bytes": settings.stream_max_message_bytes,
            }
        )
        sender = asyncio.create_task(_send_frames(websocket, session, state))
        summary = await _receive_audio(websocket, session, settings)
        await sender
        await websocket.send_json(summary)
    except StreamCloseError as exc:
        code, reason = exc.code, exc.reason
    except WebSocketDisconnect:
        code, reason = -1, "client went away"
    except CorruptAudioError as exc:
        code, reason = INVALID_DATA, exc.message
    except AudioTooLongError as exc:
        code, reason = POLICY, exc.message
    except ServiceError as exc:
        code, reason = INTERNAL, exc.message
    except Exception:
        log.exception("live stream failed")
        code, reason = INTERNAL, "internal error"
    finally:
        if sender is not None and not sender.done():
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender
        if session is not None:
            await session.close()
        state.metrics.stream_closes.labels(code=str(code)).inc()
        if code != -1:
            with contextlib.suppress(Exception):
                await websocket.close(code=code, reason=_truncate(reason))


async def _receive_header(websocket: WebSocket, settings: Settings) -> dict[str, Any]:
    message = await _receive(websocket, settings.stream_idle_timeout_s)
    text = message.get("text")
    if text is None:
        raise StreamCloseError(UNSUPPORTED, "the first message must be the JSON header (a text message)")
    if len(text) > 4096:
        raise StreamCloseError(TOO_BIG, "the header is longer than 4096 characters")
    try:
        header = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StreamCloseError(UNSUPPORTED, f"the header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise StreamCloseError(UNSUPPORTED, "the header must be a JSON object")
    return header


def _check_key(websocket: WebSocket, header: dict[str, Any], settings: Settings) -> None:
    if settings.api_key is None:
        return
    expected = settings.api_key.get_secret_value().encode()
    given = header.get("api_key")
    auth = websocket.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    if not isinstance(given, str) or not hmac.compare_digest(given.encode(), expected):
        raise StreamCloseError(POLICY, "unauthorized: a valid API key is required")


async def _receive(websocket: WebSocket, timeout_s: float) -> dict[str, Any]:
    try:
        message = await asyncio.wait_for(_receive_any(websocket), timeout_s)
    except TimeoutError as exc:
        raise StreamCloseError(POLICY, f"idle for {timeout_s:g} s") from exc
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    return message


async def _receive_any(websocket: WebSocket) -> dict[str, Any]:
    return dict(await websocket.receive())


async def _receive_audio(websocket: WebSocket, session: StreamSession, settings: Settings) -> dict[str, Any]:
    """Push binary messages until the client's end message; return the summary."""
    wall_limit = settings.stream_max_duration_s + settings.stream_idle_timeout_s
    while True:
        remaining = wall_limit - (time.monotonic() - session.started)
        if remaining <= 0:
            raise StreamCloseError(POLICY, f"the stream was open longer than {wall_limit:g} s")
        message = await _receive(websocket, min(settings.stream_idle_timeout_s, remaining))
        data = message.get("bytes")
        if data is not None:
            if len(data) > settings.stream_max_message_bytes:
                raise StreamCloseError(
                    TOO_BIG, f"a message is larger than {settings.stream_max_message_bytes} bytes"
                )
            await session.push(data)
            continue
        text = message.get("text") or ""
        try:
            control = json.loads(text)
        except json.JSONDecodeError:
            control = None
        if isinstance(control, dict) and control.get("type") == "end":
            return await session.finish()
        raise StreamCloseError(UNSUPPORTED, 'text messages after the header must be {"type": "end"}')


async def _send_frames(websocket: WebSocket, session: StreamSession, state: ServiceState) -> None:
    while True:
        frame = await session.frames.get()
        if frame is None:
            return
        await websocket.send_json(frame.to_json())
        state.metrics.stream_frames.inc()


def _truncate(reason: str) -> str:
    data = reason.encode()[:_REASON_BYTES]
    return data.decode(errors="ignore")
