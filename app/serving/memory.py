"""Giving freed memory back to the operating system after large requests.

glibc keeps freed heap memory for reuse: after a burst of long clips a process that peaked at 1.5 GB
stays there, idle (measured: 305 MB idle, 1.1–2 GB after a burst), and a container's memory limit
counts it. ``malloc_trim(0)`` hands the free pages back; the service calls it after work on audio
longer than :data:`TRIM_AFTER_S`, where it costs milliseconds against seconds of extraction. The
image also sets ``MALLOC_ARENA_MAX=2`` (fewer per-thread heaps, less memory held between peaks).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["TRIM_AFTER_S", "release_memory"]

log = logging.getLogger(__name__)

#: Clips at least this long (seconds of audio) are followed by a trim.
TRIM_AFTER_S = 120.0

_name = ctypes.util.find_library("c")
try:
    _trim = ctypes.CDLL(_name).malloc_trim if _name else None
except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim with
    _trim = None


def release_memory() -> bool:
    """Return free heap pages to the operating system; False where the C library cannot."""
    if _trim is None:
        return False
    return bool(_trim(0))
