"""Structured logs: one line per event, as text or JSON (``NEWSLETTER_LOG_FORMAT``).

Call sites pass facts as ``extra`` fields (``subscriber_id``, ``delivery_id``,
``edition``, counts); the JSON formatter writes them as keys. Settings never reach a
log line: secrets are kept out of reprs (see config), and nothing logs a Settings.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from newsletter.text import json_safe, terminal_safe

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


_NOISE = {"color_message"}  # uvicorn's ANSI-coloured copy of its message


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {
        k: v
        for k, v in vars(record).items()
        if k not in _STANDARD and k not in _NOISE and not k.startswith("_") and v is not None
    }


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
            **_extras(record),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json_safe(json.dumps(entry, default=str, ensure_ascii=False))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        facts = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        line = f"{stamp} {record.levelname.lower():7} {record.name}: {record.getMessage()}"
        # A stored filter or a relay's reply in a message: escaped, so it can neither
        # start a forged line of its own nor drive the terminal the log is read on.
        line = terminal_safe(f"{line} {facts}" if facts else line)
        if record.exc_info:
            trace = self.formatException(record.exc_info).splitlines()
            line += "".join("\n" + terminal_safe(t) for t in trace)
        return line


def configure(*, fmt: str = "text", level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries speak at warning and above; the service's own events are the story.
    for noisy in ("apscheduler", "uvicorn.access", "aiosmtplib", "sqlalchemy"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
