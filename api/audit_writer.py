"""The API's audit rows, group-committed (issue 22).

Every operation appends a row before its answer is sent (``api.deps.authorized``): a read whose
row cannot be written is refused, never answered unrecorded. One transaction per row made a
cheap audited read cost about twice as much (``python -m benchmarks.audit --reads``), so the
rows of concurrent requests share transactions: a request hands its entry to the writer and
waits; one flusher at a time takes everything waiting (up to ``MAX_BATCH``) and writes it in
one short transaction (``shared.audit.record_many``, chains locked in a fixed order), then
wakes each waiter with its outcome. Alone, a request waits for its own transaction as before;
under load, rows wait at most one flush for the next. A failed flush fails each of its
requests (503 through the usual handlers), never silently.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from fastapi.concurrency import run_in_threadpool

from api.capacity import Capacity
from shared import audit
from shared.context import AppContext

MAX_BATCH = 256


class AuditWriter:
    def __init__(self, context: Callable[[], AppContext], capacity: Capacity):
        # The app's context is made by its lifespan, after the writer: read when flushing.
        self.context, self.capacity = context, capacity
        self._waiting: list[tuple[audit.AuditEntry, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def append(self, entry: audit.AuditEntry) -> None:
        """Return once ``entry`` is committed; raise what its transaction raised."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Read by whoever awaits it; marked retrieved in case its request has gone meanwhile.
        done.add_done_callback(lambda future: future.cancelled() or future.exception())
        self._waiting.append((entry, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush())
        await asyncio.shield(done)

    async def _flush(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
            try:
                async with self.capacity.audit():
                    await run_in_threadpool(
                        audit.record_many, self.context().session_factory, [entry for entry, _ in batch]
                    )
            except Exception as exc:  # each waiting request answers with it
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                continue
            for _, done in batch:
                if not done.done():
                    done.set_result(None)
