"""`--log-format text|json` for `swarm-peer join` and `swarm-coordinator`: one place configures logging.

    add_log_format_argument(parser)          # the flag
    configure_logging(args.log_format)       # a handler on stdout, our loggers at INFO

json writes one JSON object per line: {"time": ISO-8601 UTC, "level", "logger", "message"} plus the
record's structured fields (`log.info("...", extra={"fields": {"step": 3}})`) and "exception" when
there is one. text writes "HH:MM:SS LEVEL logger: message". Our own loggers (`swarm.*`, `peers.*`)
log at INFO; everything else (hivemind, asyncio) at WARNING, as before.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import IO, Any

__all__ = ["LOG_FORMATS", "JsonFormatter", "add_log_format_argument", "configure_logging"]

LOG_FORMATS = ("text", "json")
_OWN_LOGGERS = ("swarm", "peers")
_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Standard names by number: hivemind renames some levels (WARNING shows as WARN) for its own handler.
_LEVELS = {logging.DEBUG: "DEBUG", logging.INFO: "INFO", logging.WARNING: "WARNING", logging.ERROR: "ERROR",
           logging.CRITICAL: "CRITICAL"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        entry: dict[str, Any] = {"time": f"{stamp}.{int(record.msecs):03d}Z",
                                 "level": _LEVELS.get(record.levelno, record.levelname), "logger": record.name,
                                 "message": record.getMessage()}
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update({key: value for key, value in fields.items() if key not in entry})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def add_log_format_argument(parser: argparse.ArgumentParser) -> None:
    """The `--log-format` flag."""
    parser.add_argument("--log-format", choices=LOG_FORMATS, default="text",
                        help="log lines as text or as one JSON object per line (time, level, logger, message) "
                             "[default: %(default)s]")


def configure_logging(log_format: str, stream: IO[str] | None = None) -> logging.Handler:
    """Route every log record through one handler on `stream` (stdout) in `log_format`; returns it."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"--log-format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(_TEXT, "%H:%M:%S"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    for name in _OWN_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)
    _route_hivemind()
    return handler


def _route_hivemind() -> None:
    """hivemind prints through a handler of its own; send its records to ours instead (one format)."""
    try:
        from hivemind.utils.logging import use_hivemind_log_handler
    except ImportError:  # pragma: no cover - hivemind is a dependency; keep logging usable without it
        return
    use_hivemind_log_handler("nowhere")
