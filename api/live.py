"""Live progress as Server-Sent Events (issue 25): ``GET /v1/analyses/{id}/events`` and
``GET /v1/batches/{id}/events``.

Postgres is the truth and the change feed. A trigger appends every state change of an analysis
to ``analysis_transitions`` in the transaction that made it (migration 0018), so a stream
replays them in order and resumes after the id its client saw last, whichever API replica it
reconnects to. Each API process runs one ``ProgressFeed``: every ``SSE_POLL_SECONDS`` it asks,
in one short query, which of the analyses and batches its open streams follow changed, and
wakes those streams; each then reads what is new in a short session of its own, through the
tenant's fair database slots. No stream holds a connection while it waits, nothing depends on
Redis, and a lost wake-up only delays an event to the stream's own re-read
(``REREAD_SECONDS``). docs/DECISIONS.md (issue 25, live progress) says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

from fastapi.concurrency import run_in_threadpool
from sqlalchemy.exc import SQLAlchemyError
from sse_starlette import EventSourceResponse, ServerSentEvent

from api.auth import TenantRef
from api.capacity import Capacity
from api.problems import Problem
from api.services import progress as service
from shared.clock import iso
from shared.config import Settings
from shared.context import AppContext
from shared.db import session_scope
from shared.schemas.progress import AnalysisStateEvent, BatchProgressEvent
from shared.tables import Batch

log = logging.getLogger(__name__)
T = TypeVar("T")

ANALYSIS, BATCH = "analysis", "batch"
# What a browser's EventSource waits before it reconnects (the SSE `retry:` field).
RETRY_MS = 2000
# A stream reads again this often even when the feed woke it for nothing (the feed's query
# failing, or a batch item committed out of id order); a batch's ETA is fresh as often.
REREAD_SECONDS = 5.0
SEPARATOR = "\n"
MEDIA_TYPE = "text/event-stream"
_UNAVAILABLE = object()



def stream_schema(event: str, data: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI schema of one event of a stream (each event an object of its SSE fields, as
    SSE-aware tools such as Schemathesis read it): ``data`` is JSON, described by ``data``."""
    return {
        "type": "object",
        "properties": {
            "event": {"type": "string", "enum": [event]},
            "id": {"type": "string"},
            "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": data},
            "retry": {"type": "integer"},
        },
        "required": ["event", "id", "data"],
    }


ANALYSIS_STREAM_SCHEMA = stream_schema("state", AnalysisStateEvent.model_json_schema(mode="serialization"))
BATCH_STREAM_SCHEMA = stream_schema(
    "progress",
    {
        "allOf": [
            {"$ref": "#/components/schemas/BatchOut"},
            {"type": "object", "properties": {"final": {"type": "boolean"}}, "required": ["final"]},
        ]
    },
)
_COMMON = """A `: heartbeat` comment every `SSE_HEARTBEAT_SECONDS` (15 s) keeps proxies from closing a
quiet stream; a stream also ends after `SSE_MAX_STREAM_SECONDS` (30 min): reconnect with
`Last-Event-ID`. Browsers: `EventSource` cannot send the `Authorization` header; read the stream
with `fetch()`, as the web app does (never put an API key in a URL)."""
ANALYSIS_DESCRIPTION = f"""Server-Sent Events (`text/event-stream`) for one analysis: each change of its
`status` or `stage`, in the order they happened, as `event: state` with an `id` and `data` (JSON:
`analysis_id`, `status`, `stage`, `at`, `final`; its schema is the event's `contentSchema`). The
stream starts with every change so far, or those after `Last-Event-ID` when a reconnecting client
sends it (no duplicates, no gaps), sends each new one within about a second, and ends after the
final state (`succeeded`, `rejected`, `failed`, `canceled`): read the result with `GET
/v1/analyses/{{id}}`. {_COMMON} Same scope as `GET /v1/analyses/{{id}}` (`analyses:read`); audited
as `analysis.events`."""
BATCH_DESCRIPTION = f"""Server-Sent Events (`text/event-stream`) for one batch: `event: progress`
with `data` as `GET /v1/batches/{{id}}` answers it (counts per status, `state`, percent done,
throughput and ETA) plus `final`, first at once and then whenever its counts or state change,
ending after the batch ended (`completed`, `canceled`, `expired`). Each event carries the whole
progress, so none is lost between two; its `id` names that progress: a client reconnecting
with `Last-Event-ID` is sent nothing until something changed. {_COMMON} Same scope as `GET
/v1/batches/{{id}}` (`analyses:read`); audited as `batch.events`."""


class ProgressFeed:
    """Which analyses and batches this process's open streams follow, and the one loop that
    finds out which of them changed (``api.services.progress.latest_changes``)."""

    def __init__(self, context: Callable[[], AppContext], poll_seconds: float) -> None:
        self._context = context
        self.poll_seconds = poll_seconds
        self._followers: dict[tuple[str, uuid.UUID], set[asyncio.Event]] = defaultdict(set)
        self._seen: dict[tuple[str, uuid.UUID], object] = {}
        self._task: asyncio.Future[None] | None = None

    @contextlib.contextmanager
    def follow(self, kind: str, ident: uuid.UUID) -> Iterator[asyncio.Event]:
        """An event the loop sets when the thing may have changed; the stream clears it."""
        key, woken = (kind, ident), asyncio.Event()
        self._followers[key].add(woken)
        try:
            yield woken
        finally:
            followers = self._followers.get(key)
            if followers is not None:
                followers.discard(woken)
                if not followers:
                    del self._followers[key]
                    self._seen.pop(key, None)

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        delay = self.poll_seconds
        while True:
            await asyncio.sleep(delay)
            if not self._followers:
                continue
            keys = list(self._followers)
            try:
                changes = await run_in_threadpool(self._read, keys)
            except Exception as exc:  # the database away (or worse): the loop outlives it; streams re-read meanwhile
                delay = min(delay * 2, REREAD_SECONDS)
                level = logging.INFO if isinstance(exc, SQLAlchemyError) else logging.WARNING
                log.log(level, "live progress: change check failed (%s); next in %.1f s", type(exc).__name__, delay)
                continue
            delay = self.poll_seconds
            for key in keys:
                if key not in self._followers:  # its last stream ended during the check
                    continue
                marker = changes.get(key)  # None once deleted: its streams wake and end
                if key not in self._seen or self._seen[key] != marker:
                    self._seen[key] = marker
                    for woken in self._followers.get(key, ()):
                        woken.set()

    def _read(self, keys: list[tuple[str, uuid.UUID]]) -> dict[tuple[str, uuid.UUID], object]:
        with session_scope(self._context().session_factory) as session:
            changes = service.latest_changes(
                session, [i for kind, i in keys if kind == ANALYSIS], [i for kind, i in keys if kind == BATCH]
            )
        found: dict[tuple[str, uuid.UUID], object] = {(ANALYSIS, i): m for i, m in changes.analyses.items()}
        found.update({(BATCH, i): m for i, m in changes.batches.items()})
        return found


async def read(capacity: Capacity, context: AppContext, tenant: TenantRef, work: Callable[..., T], *args: Any) -> T:
    """``work(session, tenant, *args)`` in one short session on a worker thread, within one of
    the tenant's database slots: the event loop never waits on Postgres."""

    def run() -> T:
        with session_scope(context.session_factory) as session:
            return work(session, tenant, *args)

    async with capacity.database(tenant.id):
        return await run_in_threadpool(run)


async def _read_or_wait(capacity: Capacity, context: AppContext, tenant: TenantRef, work: Callable[..., T],
                        *args: Any) -> T | object:
    """As ``read``, but a busy or absent database is waited out: the stream stays open (its
    heartbeats go on) and reads again later."""
    try:
        return await read(capacity, context, tenant, work, *args)
    except (SQLAlchemyError, Problem) as exc:
        log.info("live progress: read failed (%s); reading again shortly", type(exc).__name__)
        return _UNAVAILABLE


def response(events: AsyncIterator[ServerSentEvent], settings: Settings) -> EventSourceResponse:
    return EventSourceResponse(
        events,
        ping=settings.sse_heartbeat_seconds,
        sep=SEPARATOR,
        ping_message_factory=lambda: ServerSentEvent(comment="heartbeat", sep=SEPARATOR),
    )


async def _until_woken(woken: asyncio.Event, deadline: float) -> bool:
    """Wait for a wake-up or the re-read interval; False once the stream's time is up."""
    left = deadline - time.monotonic()
    if left <= 0:
        return False
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(woken.wait(), min(REREAD_SECONDS, left))
    woken.clear()
    return True


def analysis_event(analysis_id: uuid.UUID, ident: int, status: str, stage: str | None, at: Any) -> ServerSentEvent:
    body = AnalysisStateEvent(
        analysis_id=analysis_id,
        status=status,
        stage=stage,
        at=iso(at) or "",
        final=status in service.FINAL_STATUSES,
    )
    return ServerSentEvent(body.model_dump_json(), event="state", id=str(ident), sep=SEPARATOR)


async def analysis_events(
    feed: ProgressFeed,
    context: AppContext,
    capacity: Capacity,
    tenant: TenantRef,
    analysis_id: uuid.UUID,
    after: int,
) -> AsyncIterator[ServerSentEvent]:
    """Every state change after ``after``, in order, then each new one as it commits; ends
    after the final one (or when the analysis is erased, or after SSE_MAX_STREAM_SECONDS)."""
    deadline = time.monotonic() + context.settings.sse_max_stream_seconds
    yield ServerSentEvent(retry=RETRY_MS, sep=SEPARATOR)
    with feed.follow(ANALYSIS, analysis_id) as woken:
        while True:
            found = await _read_or_wait(capacity, context, tenant, service.analysis_progress, analysis_id, after)
            if isinstance(found, service.AnalysisProgress):
                for change in found.transitions:
                    yield analysis_event(analysis_id, change.id, change.status, change.stage, change.at)
                    after = change.id
                if found.transitions and found.transitions[-1].status in service.FINAL_STATUSES:
                    return
                if not found.transitions and found.final:
                    if after == 0:  # final before transitions were recorded (migration 0018): its own row
                        yield analysis_event(analysis_id, 0, found.status, found.stage, found.updated_at)
                    return
                if len(found.transitions) == service.PAGE:
                    continue
            elif found is None:
                return  # erased meanwhile
            if not await _until_woken(woken, deadline):
                return


def batch_fingerprint(body: BatchProgressEvent) -> str:
    """The event id of a batch's progress: the same counts and state give the same id, so a
    client resuming with it is sent nothing until they change. (Each event carries the whole
    progress: nothing is lost between two.)"""
    what = body.model_dump(mode="json", include={"state", "counts", "total", "dispositions"})
    return "b" + hashlib.blake2b(json.dumps(what, sort_keys=True).encode(), digest_size=8).hexdigest()


async def batch_events(
    feed: ProgressFeed,
    context: AppContext,
    capacity: Capacity,
    tenant: TenantRef,
    batch_id: uuid.UUID,
    last_id: str | None,
    shape: Callable[[Batch, Any], BatchProgressEvent],
) -> AsyncIterator[ServerSentEvent]:
    """The batch's progress now (unless ``last_id`` is this very progress), then again each time
    its counts or state change; ends after the batch ended (or is deleted, or after
    SSE_MAX_STREAM_SECONDS)."""
    deadline = time.monotonic() + context.settings.sse_max_stream_seconds
    yield ServerSentEvent(retry=RETRY_MS, sep=SEPARATOR)
    with feed.follow(BATCH, batch_id) as woken:
        while True:
            found = await _read_or_wait(capacity, context, tenant, service.batch_progress, batch_id)
            if isinstance(found, tuple):
                body = shape(*found)
                ident = batch_fingerprint(body)
                if ident != last_id:
                    data = body.model_dump_json(exclude_unset=True)
                    yield ServerSentEvent(data, event="progress", id=ident, sep=SEPARATOR)
                    last_id = ident
                if body.final:
                    return
            elif found is None:
                return
            if not await _until_woken(woken, deadline):
                return
