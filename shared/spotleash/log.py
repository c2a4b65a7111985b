"""Structured logs: one JSON object per line with ``severity``, as Cloud Logging reads it; on a
terminal, one human line per record instead (time, level, message, key=value).

Pass context as keyword fields (``event_id``, ``lease_id``, ``instance_id``, ``reason``...).
Fields whose name looks secret are masked, so a token can never reach a log by accident.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

_SECRET_MARKERS = ("token", "secret", "password", "api_key", "apikey", "authorization", "private")
_configured = False


def _mask(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: ("***" if any(m in k.lower() for m in _SECRET_MARKERS) else v) for k, v in fields.items()}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": record.levelname if record.levelname != "WARNING" else "WARNING",
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_mask(getattr(record, "fields", {})))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def _plain(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if not text or any(c.isspace() or c in "\"=" for c in text) else text


class HumanFormatter(logging.Formatter):
    """``14:02:07 WARNING launch failed  instance_id=i-1 reason=no_capacity`` (local time)."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created).astimezone().strftime("%H:%M:%S")
        fields = _mask(getattr(record, "fields", {}))
        kv = " ".join(f"{k}={_plain(v)}" for k, v in fields.items() if v is not None)
        line = f"{when} {record.levelname:<7} {record.getMessage()}" + (f"  {kv}" if kv else "")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (OSError, ValueError):  # a closed or detached stream
        return False


def formatter_for(stream: Any) -> logging.Formatter:
    """Human lines for a person at a terminal; JSON for files, pipes and Cloud Logging."""
    return HumanFormatter() if is_terminal(stream) else JsonFormatter()


def configure(level: str = "INFO", stream: Any = None) -> None:
    """Route the root logger to stderr (idempotent): human lines on a terminal, JSON lines otherwise."""
    global _configured
    root = logging.getLogger()
    root.setLevel(level)
    if _configured:
        return
    out = stream or sys.stderr
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter_for(out))
    root.handlers[:] = [handler]
    _configured = True


class Logger:
    """A thin wrapper: ``log.info("launched", instance_id=..., reason=...)``."""

    def __init__(self, name: str) -> None:
        self._log = logging.getLogger(name)

    def _emit(self, level: int, message: str, fields: dict[str, Any], exc_info: bool = False) -> None:
        if self._log.isEnabledFor(level):
            self._log.log(level, message, extra={"fields": fields}, exc_info=exc_info)

    def debug(self, message: str, **fields: Any) -> None:
        self._emit(logging.DEBUG, message, fields)

    def info(self, message: str, **fields: Any) -> None:
        self._emit(logging.INFO, message, fields)

    def warning(self, message: str, **fields: Any) -> None:
        self._emit(logging.WARNING, message, fields)

    def error(self, message: str, **fields: Any) -> None:
        self._emit(logging.ERROR, message, fields)

    def exception(self, message: str, **fields: Any) -> None:
        self._emit(logging.ERROR, message, fields, exc_info=True)


def get_logger(name: str) -> Logger:
    return Logger(name)
