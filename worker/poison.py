"""Malformed broker messages never stop a worker (issue 26).

Every message we send names one row by id (``shared.jobs.send``), and Postgres is the truth:
a message that cannot be read is worth nothing, and the sweeper re-sends anything real that
was lost. So a message that is not JSON, not a kombu envelope, whose body is not base64 or
not Celery's ``[args, kwargs, embed]``, whose headers are not a mapping or lack the task id,
that names an unknown task or gives a task the wrong arguments, is logged (its queue, the
task name when it is one of ours, and what was wrong with it: never its content, which may be
anything) and acknowledged, and the worker goes on with the next one.

Two layers catch what the libraries let through:

- ``Transport``/``Channel`` (kombu's Redis transport): the raw item popped from the list is
  parsed (JSON) and made into a ``Message`` before Celery sees it; a failure there raised out
  of the event loop and the worker exited (JSONDecodeError, TypeError, invalid base64, a
  missing ``properties``/``delivery_tag``). The item was already popped, so dropping it is
  the acknowledgement.
- ``PoisonProofConsumer`` (Celery's ``worker_consumer``): Celery catches some bad messages
  itself (undecodable bodies, unknown or invalid tasks) but logs their bodies, and lets any
  other exception out of its handler (a body that does not unpack into three parts, headers
  without an ``id``). Every exception is caught here, logged without content, and the message
  acknowledged.

Arguments that do not fit the task's signature, or are not ids, are refused the same way
before a pool process sees them (``CheckedRequest``): Celery's own failure lines would log them.
"""

from __future__ import annotations

import inspect
import logging
import uuid
from typing import Any

from celery.exceptions import InvalidTaskError
from celery.worker.consumer import Consumer
from celery.worker.request import Request
from kombu.transport import redis as kombu_redis

from shared.queues import TaskName

log = logging.getLogger("worker.poison")
_OUR_TASKS = frozenset(name.value for name in TaskName)
MALFORMED = "malformed broker message dropped"
# The id each task takes (its only argument): a UUID, or an outbox event id (a short string).
ID_ARGUMENTS = {
    TaskName.analyze.value: "uuid",
    TaskName.build_report.value: "uuid",
    TaskName.ingest_upload.value: "uuid",
    TaskName.deliver_webhook.value: "uuid",
    TaskName.dispatch_event.value: "text",
}


def _task_name(headers: object) -> str:
    """The message's task name when it is one of ours; otherwise a placeholder (a name we do
    not know could carry anything, so it is not logged)."""
    if isinstance(headers, dict):
        name = headers.get("task")
        if isinstance(name, str) and name in _OUR_TASKS:
            return name
        return "unknown task" if name is not None else "no task name"
    return "no headers"


def _queue_of(message: Any) -> str:
    info = getattr(message, "delivery_info", None)
    if isinstance(info, dict):
        key = info.get("routing_key") or info.get("exchange")
        if isinstance(key, str) and len(key) <= 64:
            return key
    return "?"


def _lost_connection(exc: BaseException, connection_errors: tuple[type[BaseException], ...]) -> bool:
    """Whether ``exc`` means the broker connection is gone (the consumer must reconnect). kombu's
    Redis transport counts KeyError among its connection errors; a malformed message raises
    KeyError too (no ``properties``, no ``id``), and a reconnect would only deliver it again."""
    return isinstance(exc, connection_errors) and not isinstance(exc, KeyError | TypeError | ValueError)


def _count(where: str) -> None:
    try:
        from shared.metrics import MALFORMED_MESSAGES

        MALFORMED_MESSAGES.labels(where).inc()
    except Exception:  # the count is a courtesy; dropping the message is what matters
        pass


def report(where: str, queue: str, task: str, problem: BaseException | str, size: int | None = None) -> None:
    what = problem if isinstance(problem, str) else type(problem).__name__
    log.error("%s (queue=%s, task=%s, problem=%s, bytes=%s); acknowledged, the worker goes on",
              MALFORMED, queue, task, what, "?" if size is None else size,
              extra={"malformed_message": where})
    _count(where)


class Channel(kombu_redis.Channel):
    def _brpop_read(self, **options: Any) -> bool:
        try:
            return bool(super()._brpop_read(**options))  # type: ignore[misc]  # kombu's Redis channel (untyped)
        except (ValueError, TypeError) as exc:
            # Only the parse of the popped item gets here (UnicodeDecodeError and
            # JSONDecodeError are ValueErrors): whatever _deliver meets is handled there.
            report("transport", "?", "unreadable", exc)
            return True


class Transport(kombu_redis.Transport):
    """kombu's Redis transport, except that an item it cannot make into a message is dropped
    with a log line instead of ending the worker's event loop."""

    Channel = Channel

    def _deliver(self, message: Any, queue: str | None) -> None:
        try:
            super()._deliver(message, queue)
        except Exception as exc:
            if _lost_connection(exc, tuple(self.connection_errors)):
                raise
            headers = message.get("headers") if isinstance(message, dict) else None
            report("transport", queue if isinstance(queue, str) else "?", _task_name(headers), exc)


class PoisonProofConsumer(Consumer):
    """Celery's consumer, with every message it cannot run acknowledged and logged without
    its content."""

    @property
    def _connection_errors(self) -> tuple[type[BaseException], ...]:
        consumer: Any = self  # set by Consumer.__init__ (the stubs do not list it)
        return tuple(consumer.connection_errors)

    def _drop(self, message: Any, problem: BaseException | str) -> None:
        report("consumer", _queue_of(message), _task_name(getattr(message, "headers", None)), problem,
               len(message.body) if isinstance(getattr(message, "body", None), bytes | str) else None)
        if not getattr(message, "acknowledged", True):
            message.ack_log_error(log, self._connection_errors)

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Any:
        handle = super().create_task_handler(*args, **kwargs)

        def on_task_received(message: Any) -> None:
            try:
                handle(message)
            except Exception as exc:
                if _lost_connection(exc, self._connection_errors):
                    raise
                self._drop(message, exc)

        return on_task_received

    def on_decode_error(self, message: Any, exc: BaseException) -> None:
        self._drop(message, exc)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        self._drop(message, "not a task message")

    def on_unknown_task(self, body: Any, message: Any, exc: BaseException) -> None:
        # Celery's own would also log the body and mark a result in a backend we do not have.
        self._drop(message, "unknown task")

    def on_invalid_task(self, body: Any, message: Any, exc: BaseException) -> None:
        self._drop(message, exc)


class CheckedRequest(Request):
    """A task message whose arguments do not fit the task's signature is invalid here, in the
    consumer, before it reaches a pool process (Celery would otherwise run it and fail it with
    a TypeError)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        request: Any = self  # Celery's Request sets these in __init__ (the stubs do not list them)
        arguments, keywords = request._args, request._kwargs
        try:
            if not isinstance(arguments, list | tuple) or not isinstance(keywords, dict):
                raise TypeError("arguments are not a list and a mapping")
            inspect.signature(request._task.run).bind(*arguments, **keywords)
        except TypeError:
            raise InvalidTaskError("its arguments do not fit the task") from None
        kind = ID_ARGUMENTS.get(request._type)
        if kind is not None and not _is_id(arguments[0] if arguments else None, kind):
            raise InvalidTaskError("its argument is not an id")


def _is_id(value: object, kind: str) -> bool:
    if not isinstance(value, str) or not 0 < len(value) <= 64:
        return False
    if kind == "uuid":
        try:
            uuid.UUID(value)
        except ValueError:
            return False
    return True


TRANSPORT = f"{__name__}:Transport"
REQUEST = f"{__name__}:CheckedRequest"
CONSUMER = f"{__name__}:PoisonProofConsumer"
