"""Structured logs: one JSON object a line, carrying the id of the request being served."""
from __future__ import annotations

import contextvars
import datetime as _dt
import json
import logging
import sys

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("xds_request_id", default=None)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": _dt.datetime.fromtimestamp(record.created, _dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
        }
        rid = request_id.get()
        if rid:
            out["request_id"] = rid
        msg = record.getMessage()
        try:  # messages that are already JSON objects are merged rather than quoted
            data = json.loads(msg) if msg.startswith("{") else None
        except ValueError:
            data = None
        if isinstance(data, dict):
            out.update(data)
        else:
            out["msg"] = msg
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


class _Stderr(logging.StreamHandler):
    """Writes to sys.stderr as it is when a record is emitted: threads that outlive a swap of sys.stderr
    (the CLI run in process by a test runner) keep logging instead of writing to a closed file."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup(level: str = "INFO", fmt: str = "json") -> None:
    handler = _Stderr()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Alembic narrates every start-up at INFO ("Context impl ...") even when there is nothing to do.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))
