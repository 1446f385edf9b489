"""Issue 26: a hung process is a dead one. `up`'s supervisor kills and restarts a worker whose
main process stopped touching its heartbeat file; the Kubernetes probe command says the same;
the census and the sweeper stop counting the pool processes of a stopped main process."""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid

import pytest
import redis
from click.testing import CliRunner

from cli.main import cli
from devstack import Backoff, Supervisor, child_env, start_app
from shared import liveness
from shared.jobs import gpu_worker_census, hung_gpu_workers, report_gpu_worker

# A stand-in worker main process: touches its heartbeat file every 0.1 s, as MainHeartbeat does.
BEATING = (
    "import os, pathlib, sys, time\n"
    "path = pathlib.Path(sys.argv[1]) / 'heartbeats' / f'worker-{os.getpid()}'\n"
    "path.parent.mkdir(parents=True, exist_ok=True)\n"
    "while True:\n"
    "    path.touch(); time.sleep(0.1)\n"
)


def test_a_stopped_worker_is_killed_and_restarted_and_the_probe_fails_meanwhile(tmp_path, monkeypatch):
    said: list[str] = []
    supervisor = Supervisor(announce=said.append, backoff=Backoff(first=0.1))
    argv = [sys.executable, "-c", BEATING, str(tmp_path)]

    def launch(restart: bool):
        return start_app("worker-gpu", argv, child_env(), tmp_path / "worker.log")

    def age(handle):
        return liveness.file_age(liveness.heartbeat_file(tmp_path, handle.process.pid))

    monkeypatch.setenv("DERMASENTINEL_DATA_DIR", str(tmp_path))
    probe = CliRunner()
    first = supervisor.start("worker-gpu", launch, heartbeat=age, hung_after=1.0)
    try:
        deadline = time.monotonic() + 10
        while age(first) is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert probe.invoke(cli, ["worker-alive", "--max-age", "1"]).exit_code == 0
        os.kill(first.process.pid, signal.SIGSTOP)  # hung: alive, but it never reports in again
        time.sleep(1.5)
        stopped = probe.invoke(cli, ["worker-alive", "--max-age", "1"])
        assert stopped.exit_code == 1 and "hung" in stopped.output
        deadline = time.monotonic() + 15
        while not any(line.startswith("worker-gpu restarted") for line in said):
            assert time.monotonic() < deadline, said
            supervisor.check()
            time.sleep(0.05)
        assert any("has not reported in" in line and "(hung); killing it" in line for line in said), said
        again = supervisor.get("worker-gpu")
        assert again is not None and again.process.pid != first.process.pid
        with pytest.raises(ProcessLookupError):
            os.kill(first.process.pid, 0)
    finally:
        supervisor.stop()


def test_pool_processes_of_a_stopped_main_leave_the_census_and_count_as_hung(services):
    client = redis.Redis.from_url(services["broker_url"])
    node = f"gpu@issue26-{uuid.uuid4().hex[:6]}"
    live_main, stopped_main = liveness.main_id(node, 1), liveness.main_id(node, 2)
    live_pool, stopped_pool, orphan = f"{node}:11", f"{node}:21", f"{node}:31"
    try:
        now = time.time()
        client.zadd(liveness.WORKER_MAINS, {live_main: now, stopped_main: now - 120})
        for pool, parent in ((live_pool, live_main), (stopped_pool, stopped_main)):
            liveness.record_parent(client, pool, parent)
        for pool in (live_pool, stopped_pool, orphan):  # every pool process still reports in itself
            report_gpu_worker(client, pool, ready=True)
        ready, _ = gpu_worker_census(client, 15)
        assert live_pool in ready and orphan in ready  # a pool without a known main: counted, as before
        assert stopped_pool not in ready
        assert stopped_pool in hung_gpu_workers(client, 15) and live_pool not in hung_gpu_workers(client, 15)
    finally:
        with client.pipeline() as pipe:
            pipe.zrem(liveness.WORKER_MAINS, live_main, stopped_main)
            pipe.hdel(liveness.POOL_PARENTS, live_pool, stopped_pool)
            for key in ("dermasentinel:gpu-workers:ready", "dermasentinel:gpu-workers:broken"):
                pipe.zrem(key, live_pool, stopped_pool, orphan)
            pipe.execute()
        client.close()


def test_a_main_process_reports_its_stopped_pool_process_and_the_census_drops_it(services, tmp_path):
    """A pool process stopped with SIGSTOP while its main lives on: the main's next beat records
    it as stopped (from the kernel's process state), so the census stops counting it at once and
    the sweeper takes it for hung (its jobs go back without spending an attempt); after SIGCONT
    the next beat forgets it."""
    import subprocess

    client = redis.Redis.from_url(services["broker_url"])
    node = f"gpu@issue26-{uuid.uuid4().hex[:6]}"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # a pool process of ours
    pool = liveness.main_id(node, child.pid)
    heartbeat = liveness.MainHeartbeat(client, tmp_path, node, 5.0)
    try:
        liveness.record_parent(client, pool, heartbeat.member)
        report_gpu_worker(client, pool, ready=True)  # it reported in just before it was stopped
        heartbeat.beat()
        assert pool in gpu_worker_census(client, 15)[0] and pool not in hung_gpu_workers(client, 15)
        os.kill(child.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while not liveness.is_stopped(child.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        heartbeat.beat()
        assert pool not in gpu_worker_census(client, 15)[0]
        assert pool in hung_gpu_workers(client, 15)
        os.kill(child.pid, signal.SIGCONT)
        deadline = time.monotonic() + 5
        while liveness.is_stopped(child.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        heartbeat.beat()
        assert pool in gpu_worker_census(client, 15)[0] and pool not in hung_gpu_workers(client, 15)
    finally:
        child.kill()
        child.wait()
        heartbeat.stop()
        with client.pipeline() as pipe:
            pipe.hdel(liveness.POOL_PARENTS, pool)
            pipe.zrem(liveness.STOPPED_POOLS, pool)
            for key in ("dermasentinel:gpu-workers:ready", "dermasentinel:gpu-workers:broken"):
                pipe.zrem(key, pool)
            pipe.execute()
        client.close()
