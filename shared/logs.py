"""Log lines for every process: JSON for machines, a readable line for a person.

One structlog pipeline formats both our own loggers and the standard-library ones of
Celery, uvicorn and SQLAlchemy (their records pass through the same processors), so a
deployment reads one format. Ids are bound as context (``log_context``) and ride on every
line of the unit of work they describe: ``request_id`` (the API's ``X-Request-ID``, carried
in the Celery message), ``analysis_id``, ``batch_id``, ``tenant_id``, ``delivery_id``.
Patient metadata never belongs in a log: ``drop_patient_metadata`` removes such keys from
every line as a last guard, whoever bound them (docs/OBSERVABILITY.md).

Tracebacks (issue 22) are rendered the same bounded way in every format: the last
``MAX_FRAMES`` frames of at most ``MAX_CHAIN`` chained exceptions, file, line and code only,
never a frame's local variables (Rich's console tracebacks printed them: API keys, form
fields, request bodies); exception messages are cut to ``MAX_MESSAGE`` characters with API
keys masked, and a line may drop them altogether (``HIDE_EXCEPTION_MESSAGE``, as the API's
500s do). The API writes its lines from a thread of their own (``background=True``): the event
loop only puts a record on a bounded queue.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import logging
import queue
import re
import sys
import time
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from logging.handlers import QueueHandler, QueueListener
from types import TracebackType
from typing import IO, Any

import structlog
from structlog.contextvars import bind_contextvars, bound_contextvars, get_contextvars
from structlog.typing import EventDict, WrappedLogger

from shared.config import Settings

# Keys that name or describe a patient (or are free text a person typed): never logged.
PATIENT_KEYS = frozenset({
    "age", "sex", "site", "anatomic_site", "external_id", "patient", "patient_id", "name", "dob",
    "birth_date", "notes", "note", "comment", "comments", "free_text", "metadata", "inputs",
    "pixel_spacing_mm", "scribe_note", "filename", "patient_reference", "encounter_reference",
})
CONTEXT_KEYS = ("request_id", "analysis_id", "batch_id", "tenant_id", "delivery_id", "event_id")
# The Celery message header that carries the API request id into tasks.
REQUEST_ID_HEADER = "dermasentinel_request_id"
# uvicorn's access lines carry query strings, which can carry client references: off, as
# `dermasentinel api` has them (the request metrics cover traffic).
_SILENT = {"uvicorn.access": logging.WARNING}
_QUIET = {"httpx": logging.WARNING, "httpcore": logging.WARNING, "alembic": logging.WARNING,
          "sqlalchemy.engine": logging.WARNING, "botocore": logging.WARNING, "urllib3": logging.WARNING}


# Tracebacks: how much of one is written (issue 22).
MAX_FRAMES = 20
MAX_CHAIN = 3
MAX_MESSAGE = 300
# A line's extra key: write the exception's type, never its message (which can quote the SQL
# parameters, a form value or a key); the API's 500s set it.
HIDE_EXCEPTION_MESSAGE = "hide_exception_message"
_API_KEY = re.compile(r"dsk_[A-Za-z0-9_\-]{6,}")
# The API's queue of records waiting for the writer thread: bounded, a burst drops lines
# (counted) rather than growing without limit.
QUEUE_SIZE = 10_000


def mask_keys(text: str) -> str:
    """API keys (``dsk_…``) in ``text`` replaced by their prefix and a mark."""
    return _API_KEY.sub("dsk_[masked]", text)


def bounded_traceback(exc: BaseException, *, frames: int = MAX_FRAMES, messages: bool = True) -> str:
    """A traceback of ``exc`` written for a log: the last ``frames`` frames of each of at most
    ``MAX_CHAIN`` chained exceptions (cause first, as Python prints them), file, line, function
    and source line; no local variables. With ``messages`` each exception's message follows
    its type, masked (``mask_keys``) and cut to ``MAX_MESSAGE`` characters; without, only the
    type (and, for a database error, its SQLSTATE and constraint name)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < MAX_CHAIN and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    blocks = []
    for index, item in enumerate(reversed(chain)):
        if index:
            blocks.append("\nDuring handling of the above exception, another exception occurred:\n")
        blocks.append(_frames(item.__traceback__, frames))
        blocks.append(_describe(item, messages))
    return "\n".join(blocks)


def _frames(tb: TracebackType | None, limit: int) -> str:
    walked = list(traceback.walk_tb(tb))
    shown = walked[-limit:] if limit > 0 else []
    summary = traceback.StackSummary.extract(iter(shown), capture_locals=False)
    omitted = len(walked) - len(shown)
    head = "Traceback (most recent call last" + (f"; {omitted} earlier frames not shown" if omitted else "") + "):"
    lines = [head]
    for frame in summary:
        lines.append(f'  File "{frame.filename}", line {frame.lineno}, in {frame.name}')
        if frame.line:
            lines.append(f"    {frame.line.strip()[:200]}")
    return "\n".join(lines)


def _describe(exc: BaseException, messages: bool) -> str:
    kind = type(exc)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    if not messages:
        return name + _database_detail(exc)
    text = str(exc)
    if len(text) > MAX_MESSAGE:
        text = text[:MAX_MESSAGE] + f"… ({len(text) - MAX_MESSAGE} more characters)"
    return f"{name}: {mask_keys(text)}" if text else name


def _database_detail(exc: BaseException) -> str:
    """What identifies a database error without its values: the driver's error type, SQLSTATE
    and constraint."""
    cause = getattr(exc, "orig", None) or exc
    state = getattr(cause, "sqlstate", None)
    if not state:
        return ""
    diag = getattr(cause, "diag", None)
    constraint = getattr(diag, "constraint_name", None)
    kind = type(cause)
    return f" ({kind.__module__}.{kind.__qualname__}, SQLSTATE {state}" + (
        f", constraint {constraint})" if constraint else ")"
    )


def _exception_of(exc_info: object) -> BaseException | None:
    if isinstance(exc_info, BaseException):
        return exc_info
    if isinstance(exc_info, tuple) and len(exc_info) == 3 and isinstance(exc_info[1], BaseException):
        return exc_info[1]
    if exc_info is True:
        return sys.exc_info()[1]
    return None


def resolve_exc_info(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """``exc_info=True`` becomes the exception being handled, while the caller still handles it
    (a line may be written later, by another thread)."""
    if event_dict.get("exc_info") is True:
        event_dict["exc_info"] = sys.exc_info()
    return event_dict


def render_exception(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """``exc_info`` as a bounded ``exception`` text (``bounded_traceback``), in every format."""
    hide = bool(event_dict.pop(HIDE_EXCEPTION_MESSAGE, False))
    exc = _exception_of(event_dict.pop("exc_info", None))
    if exc is not None:
        event_dict["exception"] = bounded_traceback(exc, messages=not hide)
    elif isinstance(event_dict.get("exception"), str):
        event_dict["exception"] = mask_keys(event_dict["exception"])
    return event_dict


def drop_patient_metadata(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Remove any key that names patient metadata, at any depth of a dict value."""
    return _without_patient_keys(event_dict)


def _without_patient_keys(mapping: Mapping[str, Any]) -> dict[str, Any]:
    cleaned = {}
    for key, value in mapping.items():
        if isinstance(key, str) and key.lower() in PATIENT_KEYS:
            continue
        cleaned[key] = _without_patient_keys(value) if isinstance(value, dict) else value
    return cleaned


def _stringify_ids(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    for key in CONTEXT_KEYS:
        value = event_dict.get(key)
        if value is None:
            event_dict.pop(key, None)
        elif not isinstance(value, str):
            event_dict[key] = str(value)
    return event_dict


# Extras libraries put on their records for their own formatters: uvicorn's `color_message` is
# its message again with ANSI colour codes (issue 25: it reached JSON lines).
_FORMATTER_EXTRAS = ("color_message",)


def _drop_formatter_extras(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    for key in _FORMATTER_EXTRAS:
        event_dict.pop(key, None)
    return event_dict


def wants_console(setting: str, stream: IO[str] | None = None) -> bool:
    if setting == "auto":
        stream = stream or sys.stderr
        return bool(getattr(stream, "isatty", lambda: False)())
    return setting == "console"


def shared_processors() -> list:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        _drop_formatter_extras,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _stringify_ids,
        drop_patient_metadata,
    ]


def make_formatter(console: bool) -> structlog.stdlib.ProcessorFormatter:
    # Both renderers get the exception as bounded text (render_exception): the console
    # renderer's own formatter (Rich, when installed) prints every frame's local variables.
    renderer = (
        structlog.dev.ConsoleRenderer(colors=False)
        if console
        else structlog.processors.JSONRenderer()
    )
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared_processors(),
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, render_exception, renderer],
    )


class _BackgroundHandler(QueueHandler):
    """Puts records on the writer thread's bounded queue, formatting nothing: the caller (the
    API's event loop) pays for a copy of the record, not for rendering a traceback. The
    context bound to the caller's task (request id, tenant id) rides along as record
    attributes, since the writer thread has none of its own."""

    def __init__(self, records: queue.Queue) -> None:
        super().__init__(records)
        self.dropped = 0

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record = copy.copy(record)
        if record.args and not isinstance(record.msg, dict):
            record.msg, record.args = record.getMessage(), None
        for key, value in get_contextvars().items():
            record.__dict__.setdefault(key, value)
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1


_listener: QueueListener | None = None
_records: queue.Queue | None = None


def stop_background_writer() -> None:
    """Write what is queued and end the writer thread (at exit, and before reconfiguring)."""
    global _listener, _records
    if _listener is not None:
        flush()
        with contextlib.suppress(queue.Full):  # a queue still full: the daemon thread goes with us
            _listener.stop()  # writes what is queued, then ends the thread
    _listener, _records = None, None


def flush(timeout: float = 5.0) -> None:
    """Wait until the writer thread has written every queued line (tests, shutdown)."""
    records, deadline = _records, time.monotonic() + timeout
    while records is not None and records.unfinished_tasks and time.monotonic() < deadline:
        time.sleep(0.01)


def configure_logging(
    settings: Settings, *, level: str | None = None, stream: IO[str] | None = None, background: bool = False
) -> None:
    """Route every logger of this process through one handler in the chosen format.
    Safe to call again (the API factory and the Celery worker both do). With ``background``
    lines are formatted and written by a thread of their own (the API: never on its event
    loop); not for processes that fork after configuring (a Celery prefork pool), whose
    children would have no such thread."""
    global _listener, _records
    stream = stream or sys.stderr
    console = wants_console(settings.log_format, stream)
    level_name = (level or settings.log_level).upper()
    stop_background_writer()
    writer = logging.StreamHandler(stream)
    writer.setFormatter(make_formatter(console))
    handler: logging.Handler = writer
    if background:
        _records = queue.Queue(QUEUE_SIZE)
        _listener = QueueListener(_records, writer)
        _listener.start()
        handler = _BackgroundHandler(_records)
    handler.set_name("dermasentinel")
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level_name)
    # Python's warnings (Celery's deprecation notices at start-up) as log lines in this format,
    # not text on stderr (issue 25).
    logging.captureWarnings(True)
    # uvicorn and Celery install handlers of their own; theirs go, so their lines reach ours.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "celery.task", "celery.redirected"):
        library = logging.getLogger(name)
        library.handlers.clear()
        library.propagate = True
    for name, quiet in _SILENT.items():
        logging.getLogger(name).setLevel(quiet)
    if level_name != "DEBUG":
        for name, quiet in _QUIET.items():
            logging.getLogger(name).setLevel(quiet)
    structlog.configure(
        processors=[*shared_processors(), resolve_exc_info, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> Any:
    return structlog.stdlib.get_logger(name)


@contextmanager
def log_context(**ids: object) -> Iterator[None]:
    """Bind ids (None values are skipped) to every line logged inside the block, in this
    thread or task. Worker threads of a pool do not inherit it: bind there again."""
    values = {k: str(v) for k, v in ids.items() if v is not None}
    with bound_contextvars(**values):
        yield


def bind(**ids: object) -> None:
    bind_contextvars(**{k: str(v) for k, v in ids.items() if v is not None})


def current_request_id() -> str | None:
    return get_contextvars().get("request_id")


atexit.register(stop_background_writer)
