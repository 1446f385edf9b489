"""Inference first on a busy host (issue 27): a process lowers its own CPU priority by the
``NICE`` setting as it starts (docs/ENGINE.md "Inference first")."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


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
        return nice
    return current
