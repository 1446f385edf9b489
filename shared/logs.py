"""Log lines for every process: JSON for machines, a readable line for a person.

One structlog pipeline formats both our own loggers and the standard-library ones of
Celery, uvicorn and SQLAlchemy (their records pass through the same processors), so a
deployment reads one format. Ids are bound as context (``log_context``) and ride on every
line of the unit of work they describe: ``request_id`` (the API's ``X-Request-ID``, carried
in the Celery message), ``analysis_id``, ``batch_id``, ``tenant_id``, ``delivery_id``.
Patient metadata never belongs in a log: ``drop_patient_metadata`` removes such keys from
every line as a last guard, whoever bound them (docs/OBSERVABILITY.md).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import IO, Any

import structlog
from structlog.contextvars import bind_contextvars, bound_contextvars, get_contextvars
from structlog.typing import EventDict, WrappedLogger

from shared.config import Settings

# Keys that name or describe a patient (or are free text a person typed): never logged.
PATIENT_KEYS = frozenset({
    "age", "sex", "site", "anatomic_site", "external_id", "patient", "patient_id", "name", "dob",
    "birth_date", "notes", "note", "comment", "comments", "free_text", "metadata", "inputs",
    "pixel_spacing_mm", "scribe_note", "filename",
})
CONTEXT_KEYS = ("request_id", "analysis_id", "batch_id", "tenant_id", "delivery_id", "event_id")
# The Celery message header that carries the API request id into tasks.
REQUEST_ID_HEADER = "dermasentinel_request_id"
# uvicorn's access lines carry query strings, which can carry client references: off, as
# `dermasentinel api` has them (the request metrics cover traffic).
_SILENT = {"uvicorn.access": logging.WARNING}
_QUIET = {"httpx": logging.WARNING, "httpcore": logging.WARNING, "alembic": logging.WARNING,
          "sqlalchemy.engine": logging.WARNING, "botocore": logging.WARNING, "urllib3": logging.WARNING}


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
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _stringify_ids,
        drop_patient_metadata,
    ]


def make_formatter(console: bool) -> structlog.stdlib.ProcessorFormatter:
    renderer = (
        structlog.dev.ConsoleRenderer(colors=False)
        if console
        else structlog.processors.JSONRenderer()
    )
    tail = [] if console else [structlog.processors.format_exc_info]
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared_processors(),
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail, renderer],
    )


def configure_logging(settings: Settings, *, level: str | None = None, stream: IO[str] | None = None) -> None:
    """Route every logger of this process through one handler in the chosen format.
    Safe to call again (the API factory and the Celery worker both do)."""
    stream = stream or sys.stderr
    console = wants_console(settings.log_format, stream)
    level_name = (level or settings.log_level).upper()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(make_formatter(console))
    handler.set_name("dermasentinel")
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level_name)
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
        processors=[*shared_processors(), structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
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
