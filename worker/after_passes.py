"""What the analysis worker leaves until its passes pause (issue 27, docs/ENGINE.md "Host work
off the networks' time"): giving freed heap pages back to the OS, and, on a host whose report
worker shares the cores with the networks, the report requests of bulk jobs.

A drain (``run_analysis``: one task's passes, back to back) runs inside ``AfterPasses.passes``.
Each kind of work requested meanwhile is done from a thread of its own once no drain has run for
its ``idle`` seconds, and at the latest its ``most`` seconds after its first request since it
was last done, so passes that never pause still get it done.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from shared.jobs import HeldSend, publish_held
from shared.memory import release_freed_memory
from shared.queues import Queue

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    first: float  # monotonic time of its first request since it was last done
    idle: float
    most: float
    action: Callable[[list[Any]], object]
    items: list[Any] = field(default_factory=list)


class AfterPasses:
    def __init__(self) -> None:
        self._wake = threading.Condition()
        self._running = 0  # drains in this process now
        self._last_end = float("-inf")  # when the last of them ended (monotonic)
        self._pending: dict[str, _Pending] = {}
        self._thread: threading.Thread | None = None

    @contextmanager
    def passes(self) -> Iterator[None]:
        """Around a drain: while one runs, what waits for a pause waits (up to its ``most``)."""
        with self._wake:
            self._running += 1
        try:
            yield
        finally:
            with self._wake:
                self._running -= 1
                self._last_end = time.monotonic()
                self._wake.notify()

    def request(self, name: str, action: Callable[[list[Any]], object], idle: float, most: float,
                items: list[Any] | None = None) -> None:
        """Have ``action`` run (with every item requested under ``name`` since it last ran) once
        no drain has run for ``idle`` seconds, at the latest ``most`` seconds from now if none
        is pending yet."""
        with self._wake:
            pending = self._pending.setdefault(name, _Pending(time.monotonic(), idle, most, action))
            pending.items.extend(items or ())
            if self._thread is None or not self._thread.is_alive():  # none yet, or forked without it
                self._thread = threading.Thread(target=self._run, name="engine-after-passes", daemon=True)
                self._thread.start()
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not (due := self._take_due()):
                    self._wake.wait(self._next_check())
            for pending in due:
                try:
                    pending.action(pending.items)
                except Exception:
                    log.exception("work left for a pause in the passes failed")

    def _due_at(self, pending: _Pending) -> float:
        """When ``pending`` falls due as things stand: its ``most`` after its first request, or
        its ``idle`` after the last drain ended if none runs now."""
        paused_at = self._last_end + pending.idle if self._running == 0 else float("inf")
        return min(pending.first + pending.most, paused_at)

    def _take_due(self) -> list[_Pending]:
        now = time.monotonic()
        names = [name for name, pending in self._pending.items() if self._due_at(pending) <= now]
        return [self._pending.pop(name) for name in names]

    def _next_check(self) -> float | None:
        """Seconds until something falls due without a notify; None: only a notify can change it."""
        moment = min((self._due_at(pending) for pending in self._pending.values()), default=None)
        return None if moment is None else max(0.0, moment - time.monotonic())


AFTER_PASSES = AfterPasses()
# The freed images and tensors of the passes back to the OS: 2 s after a burst ends, at least
# every 10 s while it lasts. Trimming after every pass cost the worker more CPU than the pass's
# S3 calls (the trim itself, and the next pass faulting the same pages back in).
TRIM_IDLE_SECONDS, TRIM_AT_LEAST_EVERY_SECONDS = 2.0, 10.0
# Report requests go out this soon after the drains stop: the next task's drain of a burst starts
# within milliseconds of the last one's end.
REPORTS_IDLE_SECONDS = 0.5


def trim_soon() -> None:
    AFTER_PASSES.request("trim", lambda _: release_freed_memory(), TRIM_IDLE_SECONDS, TRIM_AT_LEAST_EVERY_SECONDS)


class ReportsLater:
    """``shared.jobs.SendsLater`` for report requests: held until the passes pause, at most
    ``most`` seconds, then published together (the report worker renders them after the burst,
    not on the cores the networks are using). Held only in this process's memory: should it die
    first, the sweeper re-sends the requests (``report_requested_at`` is in the row)."""

    queues = frozenset({Queue.reports.value})

    def __init__(self, most: float) -> None:
        self.most = most

    def hold(self, sends: list[HeldSend]) -> None:
        AFTER_PASSES.request("reports", publish_held, REPORTS_IDLE_SECONDS, self.most, list(sends))
