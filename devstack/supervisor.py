"""Keep child processes running: one supervisor for the backing services and the app's own.

A unit is started by a blocking `launch(restart)` callable that returns once its process
serves, and is then watched by `check()`, which the owner calls from its main loop (from
the main thread, so that a restarted child is still armed to die with its parent). When a
unit's process exits, whatever is left of its process group is killed, its data-dir lock
released, and it is launched again after a delay that doubles with each consecutive crash
(up to a cap) and resets once the unit has stayed up for a while. Every step is announced
as one line. `stop()` stops the units layer by layer, highest first (the app before the
services it uses), every unit of a layer at once.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from devstack._process import ServiceProcess

log = logging.getLogger(__name__)


class Supervised(Protocol):
    """A started unit: anything that exposes its process."""

    process: ServiceProcess


@dataclass(frozen=True)
class Backoff:
    """Restart delays: `first`, doubling per consecutive crash, at most `cap` seconds; a unit
    that ran `healthy_after` seconds since its last start counts as recovered."""

    first: float = 0.5
    cap: float = 10.0
    healthy_after: float = 30.0

    def delay(self, consecutive_crashes: int) -> float:
        return min(self.cap, self.first * 2 ** max(0, consecutive_crashes - 1))


@dataclass
class _Unit:
    name: str
    launch: Callable[[bool], Supervised]
    layer: int
    stop_grace: float
    current: Supervised | None
    started_at: float
    crashes: int = 0
    restarts: int = 0
    restart_at: float | None = None
    # Issue 26: how long ago the unit's process last reported in (None: not yet / cannot say),
    # and after how long without a report it is taken for hung, killed and restarted.
    heartbeat: Callable[[Supervised], float | None] | None = None
    hung_after: float | None = None


def describe_exit(status: int) -> str:
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit status {status}"


class Supervisor:
    def __init__(self, announce: Callable[[str], None] | None = None, backoff: Backoff = Backoff()):
        self._announce = announce or log.warning
        self._backoff = backoff
        self._units: dict[str, _Unit] = {}

    def start(
        self, name: str, launch: Callable[[bool], Supervised], *, layer: int = 0, stop_grace: float = 10.0,
        heartbeat: Callable[[Supervised], float | None] | None = None, hung_after: float | None = None,
    ) -> Supervised:
        """Launch a unit now (`launch(False)`) and keep it running from then on (`launch(True)`).
        With `heartbeat` and `hung_after`, a unit whose heartbeat is older than `hung_after`
        seconds is hung: killed (its whole process group) and restarted like one that exited."""
        if name in self._units:
            raise ValueError(f"{name} is already supervised")
        handle = launch(False)
        self._units[name] = _Unit(name, launch, layer, stop_grace, handle, time.monotonic(),
                                  heartbeat=heartbeat, hung_after=hung_after)
        return handle

    def _hung_for(self, unit: _Unit) -> float | None:
        if unit.current is None or unit.heartbeat is None or unit.hung_after is None:
            return None
        try:
            age = unit.heartbeat(unit.current)
        except Exception:  # a heartbeat that cannot be read says nothing
            return None
        return age if age is not None and age > unit.hung_after else None

    def get(self, name: str) -> Supervised | None:
        """The unit's running handle; None while it waits to be restarted, or if unknown."""
        unit = self._units.get(name)
        return unit.current if unit else None

    def names(self) -> list[str]:
        return list(self._units)

    def restarts(self, name: str) -> int:
        return self._units[name].restarts

    def exited(self) -> dict[str, int]:
        """Units whose process has exited and was not yet noticed by `check`: name → exit status."""
        found = {}
        for unit in self._units.values():
            status = unit.current.process.poll() if unit.current else None
            if status is not None:
                found[unit.name] = status
        return found

    def check(self) -> None:
        """One round: notice exited units, clean them up, relaunch those whose delay has passed."""
        for unit in list(self._units.values()):
            now = time.monotonic()
            if unit.current is not None:
                status = unit.current.process.poll()
                if status is None and (hung := self._hung_for(unit)) is not None:
                    self._announce(f"{unit.name} has not reported in for {hung:.0f}s (hung); killing it")
                    unit.current.process.stop(grace=0)  # SIGKILL to its group: a stopped process too
                    status = unit.current.process.poll()
                    if status is None:
                        status = -int(signal.SIGKILL)
                if status is None:
                    if unit.crashes and now - unit.started_at >= self._backoff.healthy_after:
                        unit.crashes = 0
                    continue
                # The leader is gone; its group may not be (Postgres backends, pool processes).
                unit.current.process.stop(grace=0)
                unit.current = None
                unit.crashes += 1
                delay = self._backoff.delay(unit.crashes)
                unit.restart_at = now + delay
                self._announce(f"{unit.name} exited ({describe_exit(status)}); restarting in {delay:.1f}s")
            if unit.restart_at is not None and now >= unit.restart_at:
                self._relaunch(unit)

    def _relaunch(self, unit: _Unit) -> None:
        try:
            handle = unit.launch(True)
        except Exception as failure:  # any failure to come back means "try again later", never "give up"
            unit.crashes += 1
            delay = self._backoff.delay(unit.crashes)
            unit.restart_at = time.monotonic() + delay
            reason = str(failure).splitlines()[0] if str(failure) else type(failure).__name__
            self._announce(f"{unit.name} did not restart ({reason}); next try in {delay:.1f}s")
            return
        unit.current, unit.restart_at, unit.started_at = handle, None, time.monotonic()
        unit.restarts += 1
        self._announce(f"{unit.name} restarted (pid {handle.process.pid}, restart {unit.restarts})")

    def stop(self) -> None:
        """Stop every unit, highest layer first, a layer's units together. Safe to call twice."""
        errors: list[BaseException] = []
        for layer in sorted({unit.layer for unit in self._units.values()}, reverse=True):
            units = [unit for unit in self._units.values() if unit.layer == layer]
            deadlines = {}
            for unit in units:
                if unit.current is not None:
                    unit.current.process.request_stop()
                    deadlines[unit.name] = time.monotonic() + unit.stop_grace
            for unit in units:
                handle, unit.current, unit.restart_at = unit.current, None, None
                if handle is None:
                    continue
                try:
                    handle.process.stop(grace=max(0.0, deadlines[unit.name] - time.monotonic()))
                except Exception as error:  # keep stopping the others; report the first failure below
                    errors.append(error)
            for unit in units:
                del self._units[unit.name]
        if errors:
            raise errors[0]
