"""Log lines an operator can follow: every line written while a task is handled carries its `task_id`, and every
line of an HTTP request (and of the tasks it created, on whichever node runs them, and their callbacks) carries the
request's `request_id`. `log_format: text | json` picks the line format.

The ids travel in context variables: the HTTP middleware sets the request id, the worker and the callback sender
set the task's ids around their work, and asyncio copies them into the tasks and threads it starts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import uuid
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from sdapi.observability import tracing

_task_id: ContextVar[str | None] = ContextVar("sdapi_task_id", default=None)
_request_id: ContextVar[str | None] = ContextVar("sdapi_request_id", default=None)
# The trace a task's run continues (its traceparent's trace id), when tracing is on.
_trace_id: ContextVar[str | None] = ContextVar("sdapi_trace_id", default=None)

REQUEST_ID_HEADER = "X-Request-ID"
# A request id a client sends is kept when it looks like an id (it is echoed into headers and logs), else replaced.
_ACCEPTABLE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def current_request_id() -> str | None:
    return _request_id.get()


def request_id_from(header: str | None) -> str:
    """The request id to use: the client's own when it is a plausible id, else a new one."""
    if header and _ACCEPTABLE_REQUEST_ID.match(header):
        return header
    return uuid.uuid4().hex


@contextlib.contextmanager
def request_context(request_id: str) -> Iterator[None]:
    token = _request_id.set(request_id)
    try:
        yield
    finally:
        _request_id.reset(token)


@contextlib.contextmanager
def task_context(task_id: str, request_id: str | None = None, traceparent: str | None = None) -> Iterator[None]:
    """Lines logged inside carry `task_id` (and the id of the request that created the task, and its trace's id when
    tracing is on)."""
    task_token = _task_id.set(task_id)
    request_token = _request_id.set(request_id)
    trace_token = _trace_id.set(tracing.trace_id_of(traceparent))
    try:
        yield
    finally:
        _trace_id.reset(trace_token)
        _request_id.reset(request_token)
        _task_id.reset(task_token)


def set_request_id(request_id: str | None) -> None:
    """Record, for the rest of the current context, the request a task being handled came from."""
    _request_id.set(request_id)


class ContextFilter(logging.Filter):
    """Puts the current task_id, request_id and trace_id on every record (None when there is none): the trace of
    the task being handled, else of the span current here (an HTTP request's)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.task_id = _task_id.get()
        record.request_id = _request_id.get()
        record.trace_id = _trace_id.get() or tracing.current_trace_id()
        return True


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message [task=… request=… trace=…]`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        pairs = (
            ("task", getattr(record, "task_id", None)),
            ("request", getattr(record, "request_id", None)),
            ("trace", getattr(record, "trace_id", None)),
        )
        ids = [f"{name}={value}" for name, value in pairs if value]
        return f"{line} [{' '.join(ids)}]" if ids else line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, task_id, request_id, trace_id (and the traceback, if
    any)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "task_id": getattr(record, "task_id", None),
            "request_id": getattr(record, "request_id", None),
            "trace_id": getattr(record, "trace_id", None),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def mute_import_warnings() -> None:
    """diffusers warns through a handler of its own while it is imported (e.g. that optimum and optimum-onnx share
    a package name): keep it to errors, so a command's output stays its own."""
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


def configure_logging(level: str, log_format: str) -> None:
    """Route every logger (uvicorn's included) through one stderr handler in `log_format`. diffusers prints a
    warning through its own handler as it is imported: it is kept to errors until the engine routes its logs here
    (sdapi.engines.loading.route_library_logs)."""
    mute_import_warnings()
    logging.captureWarnings(True)  # warnings.warn() from libraries becomes a log line too
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
