"""A Python client for the music emotion service (``httpx`` only; ``numpy`` for feature arrays).

Example:
    >>> from mer_client import Client
    >>> with Client("http://localhost:8000") as mer:
    ...     result = mer.predict("song.mp3", offset_s=30, duration_s=30)
    >>> result.summary.quadrant, len(result.frames)
    ('Q4', 60)

:class:`Client` is synchronous, :class:`AsyncClient` the same for ``asyncio``. Both retry 503s (model
not ready, overloaded, shutting down) and lost connections with exponential backoff, honouring the
server's ``Retry-After``; every other failure raises :class:`MERError` with the server's error code.
"""

from mer_client.client import AsyncClient, Client, RetryPolicy
from mer_client.errors import MERError, MERUnavailableError
from mer_client.models import Emotion, Frame, ModelInfo, Prediction, Summary

__all__ = [
    "AsyncClient",
    "Client",
    "Emotion",
    "Frame",
    "MERError",
    "MERUnavailableError",
    "ModelInfo",
    "Prediction",
    "RetryPolicy",
    "Summary",
]
