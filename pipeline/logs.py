"""Logging for people and for cron: text lines, or one JSON object per line.

``--log-format json`` writes ``{"time", "level", "event", "message", ...}`` per line, where
``event`` names what happened (``run_start``, ``progress``, ``summary``, ``stop``...; ``log``
for anything else) and the record's structured fields (``counts``, ``run_id``, ...) are kept as
JSON values. Code adds them with ``log.info(msg, extra=fields(event="progress", counts=...))``.
``--log-file F`` appends the log to F as well (in the chosen format); the terminal keeps text.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from pathlib import Path
from typing import Any

EXTRA = "caption_fields"  # the LogRecord attribute holding a record's structured fields


def fields(event: str, **values: Any) -> dict[str, Any]:
    """``extra=`` for a log call: its event name and structured fields."""
    return {EXTRA: {"event": event, **values}}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        extra: dict[str, Any] = dict(getattr(record, EXTRA, None) or {})
        out: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "event": extra.pop("event", "log"),
            "message": record.getMessage(),
            **extra,
        }
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def setup_logging(
    verbose: bool = False, log_file: Path | None = None, log_format: str = "text"
) -> None:
    """Configure the root logger: stderr, and ``log_file`` if given (appended)."""
    root = logging.getLogger()
    for handler in list(root.handlers):  # ours from an earlier call; others (pytest's) stay
        if getattr(handler, "_caption", False):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    text = logging.Formatter(TEXT_FORMAT, datefmt="%H:%M:%S")
    chosen: logging.Formatter = JsonFormatter() if log_format == "json" else text
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(text if log_file is not None else chosen)
    stderr._caption = True  # type: ignore[attr-defined]
    root.addHandler(stderr)
    if log_file is not None:
        handler = logging.FileHandler(log_file, mode="a", encoding="utf-8")
        if log_format == "text":
            handler.setFormatter(
                logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S")
            )
        else:
            handler.setFormatter(chosen)
        handler._caption = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # never log request lines
