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
