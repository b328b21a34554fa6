from __future__ import annotations

import json
import logging
import sys

import pytest

from app.logs import JsonFormatter, configure_logging


def test_json_formatter_writes_one_parseable_object_per_record() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.getLogger("app.x").makeRecord(
            "app.x", logging.ERROR, __file__, 1, "model %s not usable", ("m.onnx",), sys.exc_info()
        )
    entry = json.loads(JsonFormatter().format(record))
    assert entry["level"] == "error"
    assert entry["logger"] == "app.x"
    assert entry["message"] == "model m.onnx not usable"
    assert "ValueError: boom" in entry["exc_info"]
    assert entry["time"].endswith("+00:00")


def test_configure_logging_twice_keeps_one_json_handler(capsys: pytest.CaptureFixture[str]) -> None:
    logger = logging.getLogger("app")
    try:
        configure_logging("info", json_lines=True)
        configure_logging("debug", json_lines=True)
        assert len([h for h in logger.handlers if isinstance(h.formatter, JsonFormatter)]) == 1
        assert logger.level == logging.DEBUG
        logging.getLogger("app.test").info("hello %d", 5)
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert json.loads(line)["message"] == "hello 5"
    finally:
        configure_logging("info", json_lines=False)
    assert not [h for h in logger.handlers if isinstance(h.formatter, JsonFormatter)]
    assert logger.propagate
