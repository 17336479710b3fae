"""Structured logs: one JSON object per line, for the apps and for gunicorn.

Standard library only, so gunicorn.conf.py can use it in the master process
without importing the application (see the note on --preload there).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

# LogRecord attributes that are plumbing, not content.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "msg", ...extra}`; extra fields given to a log call are kept."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update((key, value) for key, value in vars(record).items() if key not in _STANDARD)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str, request_id: logging.Filter | None = None) -> None:
    """Send the root logger to stderr as JSON lines."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    if request_id is not None:
        handler.addFilter(request_id)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
