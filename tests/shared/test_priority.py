"""NICE (issue 27): a process lowers its own CPU priority as it starts, never raises it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_PROBE = """
import os
from shared.config import get_settings
from shared.priority import lower_priority
print(lower_priority(get_settings().nice), os.getpriority(os.PRIO_PROCESS, 0))
print(lower_priority(3), os.getpriority(os.PRIO_PROCESS, 0))
"""


def _run(env: dict[str, str]) -> list[list[int]]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DERMASENTINEL_")}
    done = subprocess.run([sys.executable, "-c", _PROBE], env={**clean, "PYTHONPATH": str(ROOT), **env},
                          capture_output=True, text=True, check=True, cwd=ROOT)
    return [[int(x) for x in line.split()] for line in done.stdout.splitlines()]


def test_nice_lowers_the_priority_and_a_lower_nice_never_raises_it_again():
    base = os.getpriority(os.PRIO_PROCESS, 0)
    # A process started with NICE=10 runs at 10 (the API and background workers under `up`);
    # asking for less afterwards leaves it there (raising priority needs a privilege).
    assert _run({"DERMASENTINEL_NICE": "10"}) == [[max(10, base), max(10, base)]] * 2
    # Default 0: the analysis worker keeps the priority it was started with.
    assert _run({})[0] == [base, base]


_GROUP_PROBE = """
from shared.config import get_settings
from shared.priority import autogroup_nice, lower_priority
lower_priority(get_settings().nice)
print(autogroup_nice())
"""


def _group_after(env: dict[str, str], *, own_session: bool) -> int | None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DERMASENTINEL_")}
    done = subprocess.run([sys.executable, "-c", _GROUP_PROBE], env={**clean, "PYTHONPATH": str(ROOT), **env},
                          capture_output=True, text=True, check=True, cwd=ROOT, start_new_session=own_session)
    value = done.stdout.strip()
    return None if value == "None" else int(value)


def test_a_session_leader_lowers_its_autogroup_so_nice_counts_against_other_sessions():
    # `up` starts each process in a session of its own; with autogroups (the kernel default)
    # a thread's nice only ranks it within its session, so without the group's own nice a
    # niced API took as much CPU from the analysis worker as an un-niced one.
    from shared.priority import autogroup_nice

    mine = autogroup_nice()
    if mine is None:
        import pytest

        pytest.skip("this kernel has no /proc/self/autogroup (no autogroup scheduling): the thread nice is all")
    assert _group_after({"DERMASENTINEL_NICE": "10"}, own_session=True) == max(10, mine)
    # The analysis worker (NICE=0) leaves its group as it is.
    assert _group_after({}, own_session=True) == 0
    # A process inside someone else's session (a shell's) never lowers that session's group.
    assert _group_after({"DERMASENTINEL_NICE": "10"}, own_session=False) == mine
    assert autogroup_nice() == mine
