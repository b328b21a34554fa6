"""Logging set-up for the service's own loggers (``app.*``): plain text or one JSON object per line."""

from __future__ import annotations

import datetime as dt
import json
import logging

__all__ = ["JsonFormatter", "configure_logging"]

_HANDLER_NAME = "mer-json"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, and the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as a single JSON line."""
        entry = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str, json_lines: bool) -> None:
    """Set the level of the ``app`` loggers and, for ``json_lines``, give them a JSON handler.

    Calling it again (another app in the same process) replaces the handler instead of adding one.

    Args:
        level: ``debug``, ``info``, ``warning`` or ``error``.
        json_lines: Log JSON objects to stderr instead of propagating to the root logger's text.
    """
    logger = logging.getLogger("app")
    logger.setLevel(level.upper())
    for handler in [h for h in logger.handlers if h.get_name() == _HANDLER_NAME]:
        logger.removeHandler(handler)
    if json_lines:
        handler = logging.StreamHandler()
        handler.set_name(_HANDLER_NAME)
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
        # Otherwise a root handler (uvicorn's, basicConfig's) would print each record a second time.
        logger.propagate = False
    else:
        logger.propagate = True
        logging.basicConfig(level=level.upper())  # a no-op when the root logger is already set up
