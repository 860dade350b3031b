"""`--log-format text|json`: the formatter and the one handler `configure_logging` installs."""
from __future__ import annotations

import io
import json
import logging

import pytest

from peers.logs import JsonFormatter, configure_logging


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_json_lines_carry_time_level_logger_message_and_fields():
    record = logging.LogRecord("swarm.coordinator.rejects", logging.WARNING, __file__, 1, "p1 refused %d", (3,), None)
    record.fields = {"peer": "p1", "total": 3, "message": "not overwritten"}
    entry = json.loads(JsonFormatter().format(record))
    assert entry["level"] == "WARNING" and entry["logger"] == "swarm.coordinator.rejects"
    assert entry["message"] == "p1 refused 3" and entry["peer"] == "p1" and entry["total"] == 3
    assert entry["time"].endswith("Z") and "T" in entry["time"]


def test_exceptions_stay_on_one_line():
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord("peers", logging.ERROR, __file__, 1, "failed", (), __import__("sys").exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line and "RuntimeError: boom" in json.loads(line)["exception"]


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_configure_logging_one_handler_our_loggers_at_info(log_format):
    stream = io.StringIO()
    configure_logging(log_format, stream)
    configure_logging(log_format, stream)  # idempotent: still one handler
    assert len(logging.getLogger().handlers) == 1
    logging.getLogger("peers.daemon").info("hello %s", "there")
    logging.getLogger("somebody.else").info("not shown")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    if log_format == "json":
        assert json.loads(lines[0])["message"] == "hello there"
    else:
        assert lines[0].endswith("INFO peers.daemon: hello there")


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="--log-format"):
        configure_logging("xml")
