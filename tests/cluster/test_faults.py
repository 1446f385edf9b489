"""Faults between hosts (issue 26), CI-sized: nothing accepted is lost, stuck or duplicated,
every report and webhook event arrives once, no client sees a 500 through HAProxy, and
everything is final within 60 s of the heal. Full sizes: `python -m benchmarks.cluster --full`."""

from __future__ import annotations

import pytest

from benchmarks.cluster import CI, CI_FAULTS, run_fault

RECOVERY_TARGET_S = 60.0


@pytest.mark.parametrize("fault", CI_FAULTS)
def test_the_cluster_recovers_from(fault, cluster, record):
    result = run_fault(cluster, fault, CI)
    record(result)
    described = f"{fault}: {', '.join(result.problems) or 'no problems'} ({'; '.join(result.notes)})\n" + "\n".join(
        result.details
    )
    assert result.ok, described
    assert result.server_500 == 0, described
    assert result.recovery is not None and result.recovery <= RECOVERY_TARGET_S, described
    if fault == "beat-partition":
        # The sweeper comes back within the target, and beat does not fire a burst of missed runs.
        assert result.extra["first_sweep_after_heal_s"] <= RECOVERY_TARGET_S, result.extra
        assert result.extra["sweeps_in_window_after_heal"] <= 2 * result.extra["sweeps_expected_in_window"] + 2, (
            result.extra
        )
    if fault == "api-host-lost":
        # HAProxy has both hosts again.
        assert cluster.backends_up() == 2
    if result.extra.get("same_id_redelivered"):
        # Seen once in the first two runs of the beat-host partition: a webhook delivered while the IO
        # worker's link to Postgres was cut, its outcome unrecorded, re-sent after the heal
        # under the same webhook-id (at-least-once; receivers drop it by id). Not a second event.
        pytest.xfail(f"{fault}: same webhook-id acknowledged again: " + "; ".join(result.details))
