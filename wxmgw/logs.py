"""Machine-readable logs: one line per event.

Every record is an *event* name (the log message) plus fields. Lines about a
leg carry ``confId``, ``uuid`` and ``leg``. The JSON format is one object per
line; the text format is ``ts level event k=v ...`` for a human at a terminal.
Both cut the stream name of every RTMP URL in a line, tracebacks included
(:func:`wxmgw.access.redact`): a log reader cannot publish as a mini-program.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from wxmgw.access import redact

_FIELDS = "fields"


def event(
    logger: logging.Logger,
    name: str,
    level: int = logging.INFO,
    exc: BaseException | None = None,
    **fields: Any,
) -> None:
    """Log the event ``name`` with ``fields`` (None values left out) and ``exc``'s traceback."""
    if logger.isEnabledFor(level):
        clean = {k: v for k, v in fields.items() if v is not None}
        logger.log(level, name, extra={_FIELDS: clean}, exc_info=exc)


def _timestamp(record: logging.LogRecord) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{stamp}.{int(record.msecs):03d}Z"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = getattr(record, _FIELDS, {})
    return fields


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "event", ...fields, "exc"?}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        line.update(_fields(record))
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return redact(json.dumps(line, default=str, separators=(",", ":")))


class TextFormatter(logging.Formatter):
    """``ts level event k=v ...`` for reading at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        pairs = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        head = f"{_timestamp(record)} {record.levelname:<7} {record.getMessage()}"
        line = f"{head} {pairs}".rstrip()
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return redact(line)


def setup_logging(
    fmt: str = "json", log_file: str | None = None, level: int = logging.INFO
) -> None:
    """Route every logger (FFmpeg's, through PyAV, too) to one handler."""
    handler: logging.Handler = (
        logging.FileHandler(log_file, encoding="utf-8") if log_file
        else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
