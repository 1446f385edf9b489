"""Issue 26: the sweeper runs in a thread of the beat process, so it never waits behind the
ingest and report messages queued for a CPU worker."""

from __future__ import annotations

import time

import redis

from worker.maintenance import SWEEPER_LAST_RUN, SweepLoop


def test_beat_sweeps_every_interval_in_a_thread_of_its_own(beat, services, settings, wait):
    """No message on the maintenance queue is involved: a sweep happens whether or not a CPU
    worker is free (this test starts none)."""
    broker = redis.Redis.from_url(services["broker_url"])
    try:
        since = time.time()
        passes = []

        def swept_again() -> bool:
            value = broker.get(SWEEPER_LAST_RUN)
            if value is not None and float(value) > since and (not passes or float(value) > passes[-1]):
                passes.append(float(value))
            return len(passes) >= 3

        wait(swept_again, timeout=30, message="three sweeps by beat's own thread")
        assert max(b - a for a, b in zip(passes, passes[1:], strict=False)) < 10 * settings.sweep_interval_seconds
    finally:
        broker.close()


def test_a_failed_pass_is_logged_and_the_loop_goes_on(caplog):
    calls = []

    def context():
        calls.append(1)
        raise ConnectionRefusedError("postgres is away")

    loop = SweepLoop(context, interval=0.05)
    thread = loop.start()
    deadline = time.monotonic() + 10
    while len(calls) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    loop.stop()
    thread.join(5)
    assert len(calls) >= 3 and loop.passes == 0
    assert any("sweep failed (ConnectionRefusedError)" in r.getMessage() for r in caplog.records)
