"""Each fault of issue 11 on a running stack: nothing accepted is lost, stuck or duplicated,
every report and webhook event arrives once, and no client ever sees a 500."""

from __future__ import annotations

import pytest

from benchmarks.chaos import CI_CONFIG, FAULTS, run_fault


@pytest.mark.parametrize("fault", list(FAULTS))
def test_the_stack_recovers_from(fault, chaos_stack, record):
    result = run_fault(chaos_stack, fault, CI_CONFIG)
    record(result)
    assert result.ok, f"{fault}: {', '.join(result.problems)} ({'; '.join(result.notes)})\n" + "\n".join(result.details)
    assert result.recovery is not None and result.recovery <= CI_CONFIG.recovery
