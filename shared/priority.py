"""Inference first on a busy host (issue 27): a process lowers its own CPU priority by the
``NICE`` setting as it starts (docs/ENGINE.md "Inference first").

Two knobs, because one is not enough on Linux: a thread's nice value only ranks it against
the threads of its own *autogroup*, and with ``kernel.sched_autogroup_enabled`` (the default
on desktop and most server kernels) every session is an autogroup of its own, which the
scheduler shares the CPUs between as equals. `dermasentinel up` starts each process in a
session of its own, so a niced API used to take exactly the CPU an un-niced one took from the
analysis worker (measured: two spinning processes at nice 10 and two at 0 in four sessions on
two cores got 2.40–2.55 CPU-s each in 6 s). A process that leads its own session therefore
lowers its autogroup's nice as well (``/proc/self/autogroup``: the group's weight against the
other sessions'); a process started inside someone else's session (a shell's) leaves the
group alone, so it never lowers its terminal's other programs."""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

AUTOGROUP = Path("/proc/self/autogroup")


def lower_priority(nice: int) -> int:
    """Run this process (and the threads and children it starts from now on) at niceness
    ``nice`` or lower priority; never raises it (that needs a privilege). Returns the niceness
    in force."""
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if nice > current:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
        except OSError as exc:  # a sandbox that refuses even lowering: run as it is
            log.warning("could not lower this process's CPU priority to nice %d: %s", nice, exc)
            return current
        current = nice
    if current > 0:
        lower_autogroup(current)
    return current


def autogroup_nice(path: Path = AUTOGROUP) -> int | None:
    """This process's autogroup nice value (``/autogroup-85 nice 0``), or None where the kernel
    has no autogroups."""
    try:
        return int(path.read_text().split("nice", 1)[1])
    except (OSError, IndexError, ValueError):
        return None


def lower_autogroup(nice: int, path: Path = AUTOGROUP) -> bool:
    """Lower this session's autogroup to ``nice`` when this process leads its session (its
    own, as under `up`); True when done. Never raises it, never touches a shared session."""
    if os.getsid(0) != os.getpid():
        return False
    current = autogroup_nice(path)
    if current is None or nice <= current:
        return False
    try:
        path.write_text(str(nice))
    except OSError as exc:  # a kernel or sandbox that refuses: the thread nice alone
        log.warning("could not lower this session's autogroup to nice %d: %s", nice, exc)
        return False
    return True
