"""Chaos: real faults injected into a running stack, then every job counted.

    .venv/bin/python -m benchmarks.chaos                       # full size: every fault, 40 jobs, 20 s outages
    .venv/bin/python -m benchmarks.chaos --outage 300 --faults s3-down,postgres-stall   # 5-minute outages
    .venv/bin/python -m pytest tests/chaos                     # CI-sized: a few jobs, 3 s outages

Starts `dermasentinel up` (small model sizes, like the tests; short sweeper timings) in a
fresh data directory, then for each fault: a fresh tenant with a webhook endpoint on a real
loopback receiver, clients submitting synthetic lesions (with Idempotency-Key, honouring
Retry-After) before, during and after the fault, the fault itself, and up to
`--recovery` seconds for everything to settle. Then it counts, from Postgres and through
the API: lost, stuck, duplicated and failed jobs, missing reports, missing or duplicated
webhook events, HTTP 500s seen by the clients, and the recovery time. docs/CHAOS.md has
the faults, the counts and the timings this stack runs with.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import psycopg
import redis

import devstack
from devstack import UpProcess, free_port
from shared.queues import ANALYSIS_QUEUES

ROOT = Path(__file__).resolve().parent.parent
FINAL = {"succeeded", "rejected", "failed", "canceled"}
REPORTABLE = {"succeeded", "rejected", "failed"}
# What the chaos stack runs with: small models (as the tests), and sweeper, webhook and
# heartbeat timings short enough that a lost wake-up is found well inside the 60 s target.
STACK_SETTINGS = {
    "SEG_SIZE": "128",
    "CLS_SIZE": "128",
    "TTA_VIEWS": "5",
    "SWEEP_INTERVAL_SECONDS": "2",
    "STUCK_AFTER_SECONDS": "20",
    "RESEND_AFTER_SECONDS": "10",
    "WEBHOOK_ALLOW_CIDRS": "127.0.0.0/8",
    "WEBHOOK_RETRY_SCHEDULE": ",".join(["1", "2", "3"] + ["5"] * 60),
    "WEBHOOK_DISPATCH_INTERVAL_SECONDS": "1",
    "LOG_LEVEL": "INFO",
}


@dataclass(frozen=True)
class ChaosConfig:
    jobs: int = 40  # submitted per fault
    outage: float = 20.0  # Redis, S3, Postgres: seconds down or stalled
    receiver_outage: float = 90.0
    recovery: float = 60.0  # after the fault ends, everything must be final, reported and delivered
    clients: int = 4  # submitting threads
    lead: float = 3.0  # load before the fault


CI_CONFIG = ChaosConfig(jobs=5, outage=3.0, receiver_outage=4.0, clients=3, lead=1.5)


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _kill9(process: psutil.Process) -> None:
    try:
        process.kill()
    except psutil.NoSuchProcess:
        pass


# ---------------------------------------------------------------- the stack under test


class StackUnderTest(UpProcess):
    """`dermasentinel up` (devstack.UpProcess) in a fresh data directory, on a fixed API port so
    that a restarted `up` is found where the clients already look."""

    def __init__(self, work_dir: Path | None = None, extra_env: dict[str, str] | None = None):
        self.work_dir = work_dir or Path(tempfile.mkdtemp(prefix="dermasentinel-chaos-"))
        super().__init__(self.work_dir / "ds", port=free_port(), settings={**STACK_SETTINGS, **(extra_env or {})},
                         console_path=self.work_dir / "console.log")

    @property
    def dsn(self) -> str:
        return self.stack_env()["DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")

    @property
    def broker_url(self) -> str:
        return self.stack_env()["BROKER_URL"]

    def remove(self) -> None:
        shutil.rmtree(self.work_dir, ignore_errors=True)

    def new_tenant(self, name: str) -> str:
        """A fresh tenant and its API key, straight in Postgres (as `tenants create` does)."""
        from shared.config import Settings
        from shared.db import make_engine, make_session_factory, session_scope
        from shared.tenants import issue_key

        engine = make_engine(Settings(_env_file=None, database_url=self.stack_env()["DATABASE_URL"]))
        try:
            with session_scope(make_session_factory(engine)) as session:
                _, key = issue_key(session, name)
        finally:
            engine.dispose()
        return key


# ---------------------------------------------------------------- the webhook receiver


class Receiver(devstack.Receiver):
    """The loopback webhook receiver (devstack.Receiver), down and back on the same port with
    stop()/start(); `holding` keeps requests unanswered until `release`."""

    def _answered(self) -> list:
        return [r for r in list(self.requests) if r.status is not None and 200 <= r.status < 300]

    def delivered(self) -> set[tuple[str, str]]:
        """(analysis id, event type) of every event acknowledged."""
        return {(str((r.json().get("data") or {}).get("id")), r.type) for r in self._answered()}

    def duplicates(self) -> int:
        """Events acknowledged more than once, or one state change sent under several ids."""
        acknowledged = Counter(r.webhook_id for r in self._answered())
        ids_by_event: dict[tuple[str, str | None], set[str]] = defaultdict(set)
        for r in self._answered():
            ids_by_event[(str((r.json().get("data") or {}).get("id")), r.type)].add(r.webhook_id)
        again = sum(n - 1 for n in acknowledged.values() if n > 1)
        split = sum(len(ids) - 1 for ids in ids_by_event.values() if len(ids) > 1)
        return again + split


# ---------------------------------------------------------------- the clients


@dataclass
class Submission:
    index: int
    external_id: str
    key: str = field(default_factory=lambda: uuid.uuid4().hex)
    analysis_id: str | None = None
    answers: list[int] = field(default_factory=list)  # HTTP statuses, 0 for no answer


class Load:
    """Clients submitting `jobs` synthetic lesions spread over `window` seconds; each one is
    retried with its Idempotency-Key (on 429/503 after Retry-After) until accepted or `give_up_at`."""

    def __init__(self, api_url: str, api_key: str, prefix: str, jobs: int, clients: int, window: float):
        from worker.pipeline.synthetic import encode_jpeg, make_lesion

        self.api_url, self.api_key = api_url, api_key
        self.submissions = [Submission(i, f"{prefix}-{i:04d}") for i in range(jobs)]
        self.images = [
            encode_jpeg(make_lesion(seed=1000 + i % 7, size=(300, 400), radius_frac=0.2 + 0.01 * (i % 5)).image)
            for i in range(7)
        ]
        self.window, self.clients = window, clients
        self.give_up_at = float("inf")
        self.lock = threading.Lock()
        self.server_errors = 0  # 5xx other than 503, on any request
        self.unlabelled_refusals = 0  # 503/429 without Retry-After
        self.slowest_refusal = 0.0  # seconds until a 503/429 answer
        self.hangs = 0  # requests that got no answer within the client timeout
        self._next = 0
        self._threads: list[threading.Thread] = []
        self.started = 0.0

    def start(self) -> None:
        self.started = time.monotonic()
        for _ in range(self.clients):
            thread = threading.Thread(target=self._client, daemon=True)
            thread.start()
            self._threads.append(thread)

    def join(self) -> None:
        for thread in self._threads:
            thread.join()

    def _take(self) -> Submission | None:
        with self.lock:
            if self._next >= len(self.submissions):
                return None
            submission = self.submissions[self._next]
            self._next += 1
            return submission

    def _client(self) -> None:
        with httpx.Client(base_url=self.api_url, headers={"Authorization": f"Bearer {self.api_key}"},
                          timeout=httpx.Timeout(20.0, connect=3.0)) as http:
            while (submission := self._take()) is not None:
                due = self.started + self.window * submission.index / max(1, len(self.submissions))
                time.sleep(max(0.0, due - time.monotonic()))
                self._submit(http, submission)

    def _submit(self, http: httpx.Client, submission: Submission) -> None:
        while time.monotonic() < self.give_up_at:
            sent = time.monotonic()
            try:
                response = http.post(
                    "/v1/analyses",
                    headers={"Idempotency-Key": submission.key},
                    files={"image": ("lesion.jpg", self.images[submission.index % len(self.images)], "image/jpeg")},
                    data={"external_id": submission.external_id, "age": "50", "sex": "female", "site": "torso",
                          "priority": "interactive" if submission.index % 2 else "bulk"},
                )
            except httpx.TimeoutException:
                with self.lock:
                    self.hangs += 1
                submission.answers.append(0)
                continue
            except httpx.TransportError:
                submission.answers.append(0)
                time.sleep(0.5)
                continue
            submission.answers.append(response.status_code)
            if response.status_code in (200, 201, 202):
                submission.analysis_id = response.json()["id"]
                return
            self.note(response, time.monotonic() - sent)
            retry_after = response.headers.get("retry-after")
            time.sleep(min(5.0, float(retry_after)) if retry_after and retry_after.isdigit() else 1.0)

    def note(self, response: httpx.Response, seconds: float) -> None:
        with self.lock:
            if response.status_code >= 500 and response.status_code != 503:
                self.server_errors += 1
            if response.status_code in (429, 503):
                self.slowest_refusal = max(self.slowest_refusal, seconds)
                if "retry-after" not in response.headers:
                    self.unlabelled_refusals += 1


# ---------------------------------------------------------------- counting


@dataclass
class FaultResult:
    fault: str
    jobs: int = 0
    accepted: int = 0
    lost: int = 0
    stuck: int = 0
    failed: int = 0
    duplicated: int = 0
    missing_reports: int = 0
    missing_events: int = 0
    server_errors: int = 0
    recovery: float | None = None  # seconds from the fault's end until everything settled
    notes: list[str] = field(default_factory=list)
    orphans: int = 0
    details: list[str] = field(default_factory=list)  # which jobs and events, when something is wrong

    @property
    def problems(self) -> list[str]:
        found = [
            f"{n} {what}" for n, what in (
                (self.lost, "lost"), (self.stuck, "stuck"), (self.failed, "failed"),
                (self.duplicated, "duplicated"), (self.missing_reports, "missing reports"),
                (self.missing_events, "missing events"), (self.server_errors, "HTTP 5xx (not 503)"),
                (self.orphans, "orphan processes"), (self.jobs - self.accepted, "never accepted"),
            ) if n
        ]
        return found

    @property
    def ok(self) -> bool:
        return not self.problems


def _rows(dsn: str, tenant_key_prefix: str) -> list[tuple]:
    """(id, external_id, status, has_report) of this fault's analyses, from Postgres."""
    with psycopg.connect(dsn, connect_timeout=3) as conn:
        conn.execute("SET statement_timeout = 5000")
        return conn.execute(
            "SELECT a.id::text, a.external_id, a.status, r.analysis_id IS NOT NULL "
            "FROM analyses a LEFT JOIN reports r ON r.analysis_id = a.id WHERE a.external_id LIKE %s",
            (tenant_key_prefix + "-%",),
        ).fetchall()


class Run:
    """One fault against the stack: load, injection, settling, counts."""

    def __init__(self, stack: StackUnderTest, fault: str, config: ChaosConfig):
        self.stack, self.fault, self.config = stack, fault, config
        self.prefix = f"chaos-{fault}-{uuid.uuid4().hex[:6]}"
        self.receiver = Receiver()
        self.api_key = stack.new_tenant(self.prefix)
        self.result = FaultResult(fault)
        registered = httpx.post(
            f"{stack.api_url}/v1/webhook-endpoints", json={"url": self.receiver.url, "description": "chaos"},
            headers={"Authorization": f"Bearer {self.api_key}"}, timeout=30,
        )
        registered.raise_for_status()
        window = config.lead + (config.receiver_outage if fault == "receiver-down" else config.outage) + 1.0
        self.load = Load(stack.api_url, self.api_key, self.prefix, config.jobs, config.clients, window)

    def rows(self) -> list[tuple]:
        try:
            return _rows(self.stack.dsn, self.prefix)
        except psycopg.Error:
            return []

    def wait_for(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                self.result.notes.append(f"no {what} within {timeout:.0f}s")
                return
            time.sleep(0.1)

    def some_processing(self) -> bool:
        return any(status == "processing" for _, _, status, _ in self.rows())

    def settled(self) -> bool:
        rows = self.rows()
        accepted = {s.analysis_id for s in self.load.submissions if s.analysis_id}
        if not rows or accepted - {row[0] for row in rows}:
            return False
        delivered = self.receiver.delivered()
        for analysis_id, _, status, has_report in rows:
            if status not in FINAL or (status in REPORTABLE and not has_report):
                return False
            if (analysis_id, f"analysis.{status}") not in delivered:
                return False
            if status in REPORTABLE and (analysis_id, "analysis.report_ready") not in delivered:
                return False
        return True

    def execute(self) -> FaultResult:
        config, result = self.config, self.result
        self.load.give_up_at = time.monotonic() + 600  # bounded below, once the fault's end is known
        self.load.start()
        time.sleep(config.lead)
        fault_end = FAULTS[self.fault](self)
        self.load.give_up_at = fault_end + config.recovery
        self.load.join()
        deadline = fault_end + config.recovery
        while not self.settled() and time.monotonic() < deadline:
            time.sleep(0.5)
        if self.settled():
            result.recovery = max(0.0, time.monotonic() - fault_end)
        self.count()
        self.receiver.stop()
        return result

    def count(self) -> None:
        result, load = self.result, self.load
        rows = self.rows()
        by_external = defaultdict(list)
        for row in rows:
            by_external[row[1]].append(row)
        accepted = {s.analysis_id for s in load.submissions if s.analysis_id}
        # A submission whose answer was lost in transit may still have been stored: it counts.
        unanswered_stored = {
            row[0] for s in load.submissions if not s.analysis_id for row in by_external.get(s.external_id, [])
        }
        result.jobs = len(load.submissions)
        result.accepted = len(accepted | unanswered_stored)
        stored = {row[0] for row in rows}
        result.lost = len(accepted - stored)
        result.duplicated = sum(len(found) - 1 for found in by_external.values()) + self.receiver.duplicates()
        result.stuck = sum(1 for row in rows if row[2] not in FINAL)
        result.details += [f"lost: {analysis_id}" for analysis_id in sorted(accepted - stored)]
        result.details += [
            f"{row[2]}: {row[0]} ({row[1]})" for row in rows if row[2] not in FINAL or row[2] == "failed"
        ]
        result.details += [f"no report: {row[0]}" for row in rows if row[2] in REPORTABLE and not row[3]]
        result.failed = sum(1 for row in rows if row[2] == "failed")
        result.missing_reports = sum(1 for row in rows if row[2] in REPORTABLE and not row[3])
        delivered = self.receiver.delivered()
        missing = Counter()
        for analysis_id, _, status, _ in rows:
            expected = {f"analysis.{status}"} if status in FINAL else set()
            if status in REPORTABLE:
                expected.add("analysis.report_ready")
            for kind in sorted(kind for kind in expected if (analysis_id, kind) not in delivered):
                missing[kind] += 1
                result.details.append(f"never delivered: {kind} of {analysis_id}")
        result.missing_events = sum(missing.values())
        if missing:
            result.notes.append("never delivered: " + ", ".join(f"{n}x {kind}" for kind, n in sorted(missing.items())))
        result.lost += self.api_cross_check(accepted)
        result.server_errors = load.server_errors
        if load.hangs:
            result.notes.append(f"{load.hangs} submissions hung past 20s")
        if load.unlabelled_refusals:
            result.notes.append(f"{load.unlabelled_refusals} refusals without Retry-After")
        refusals = sum(1 for s in load.submissions for code in s.answers if code in (429, 503))
        if refusals:
            result.notes.append(f"{refusals}x 503/429 (slowest {load.slowest_refusal:.1f}s)")
        statuses = Counter(row[2] for row in rows)
        result.notes.append(" ".join(f"{k}={v}" for k, v in sorted(statuses.items())))

    def api_cross_check(self, accepted: set[str]) -> int:
        """Every accepted job must be visible to its client, with a final status; counts 404s."""
        missing = 0
        with httpx.Client(base_url=self.stack.api_url, headers={"Authorization": f"Bearer {self.api_key}"},
                          timeout=10) as http:
            for analysis_id in accepted:
                response = http.get(f"/v1/analyses/{analysis_id}")
                if response.status_code == 404:
                    missing += 1
                elif response.status_code >= 500 and response.status_code != 503:
                    self.load.server_errors += 1
        return missing


# ---------------------------------------------------------------- the faults
# Each takes the run, injects its fault and returns the monotonic time the fault ended.


def _kill(run: Run, victims: list[psutil.Process], what: str) -> float:
    for victim in victims:
        _kill9(victim)
    run.result.notes.append(f"killed {what} (pid {', '.join(str(v.pid) for v in victims)})")
    return time.monotonic()


def _kill_when_processing(run: Run, target: Callable[[], list[psutil.Process]], what: str) -> float:
    run.wait_for(run.some_processing, 60, "job in processing")
    return _kill(run, target(), what)


def kill_gpu_pool(run: Run) -> float:
    return _kill_when_processing(run, lambda: run.stack.child("--role gpu").children(), "the GPU pool process")


def kill_gpu_main(run: Run) -> float:
    return _kill_when_processing(run, lambda: [run.stack.child("--role gpu")], "the GPU worker's main process")


def kill_cpu_worker(run: Run) -> float:
    run.wait_for(lambda: any(status in FINAL for _, _, status, _ in run.rows()), 90, "first final job")
    return _kill(run, [run.stack.child("--role cpu")], "the reports (cpu) worker")


def kill_io_worker(run: Run) -> float:
    run.wait_for(lambda: bool(run.receiver.delivered()), 90, "first webhook")
    return _kill(run, [run.stack.child("--role io")], "the webhooks (io) worker")


def kill_io_mid_send(run: Run) -> float:
    """kill -9 of the webhooks (io) worker while it waits on the receiver's answer: those
    deliveries are claimed and never recorded, and must still arrive (sent again once the
    claim has aged past a send's timeout), not after the 2-minute lease."""
    receiver = run.receiver
    receiver.holding.set()
    try:
        run.wait_for(lambda: receiver.held > 0, 90, "webhook held at the receiver")
        time.sleep(0.5)  # let the worker's other sends reach the receiver too
        held = receiver.held
        killed = _kill(run, [run.stack.child("--role io")], "the webhooks (io) worker")
    finally:
        receiver.holding.clear()
        receiver.release.set()
    run.result.notes.append(f"{held} sends in flight")
    return killed


def kill_api(run: Run) -> float:
    return _kill(run, [run.stack.child("uvicorn")], "the API")


def _down_while_up_paused(run: Run, title: str, seconds: float) -> float:
    """Kill a service with `up`'s supervisor paused, so it stays down `seconds`, then let
    the supervisor find it dead and restart it (same port, same data)."""
    up = run.stack.up
    up.suspend()
    try:
        victim = run.stack.child(title)
        _kill9(victim)
        time.sleep(seconds)
    finally:
        up.resume()
    run.result.notes.append(f"{title} down {seconds:.0f}s")
    return time.monotonic()


def redis_down(run: Run) -> float:
    return _down_while_up_paused(run, "redis-server", run.config.outage)


def s3_down(run: Run) -> float:
    return _down_while_up_paused(run, "weed mini", run.config.outage)


def postgres_stall(run: Run) -> float:
    postmaster = run.stack.child("bin/postgres")
    stalled = [postmaster, *postmaster.children()]
    for process in stalled:
        process.suspend()
    try:
        time.sleep(run.config.outage)
    finally:
        for process in stalled:
            try:
                process.resume()
            except psutil.NoSuchProcess:
                pass
    run.result.notes.append(f"postgres stalled {run.config.outage:.0f}s ({len(stalled)} processes)")
    return time.monotonic()


def flushall(run: Run) -> float:
    gpu = run.stack.child("--role gpu")
    paused = [gpu, *gpu.children()]
    for process in paused:
        process.suspend()
    broker = redis.Redis.from_url(run.stack.broker_url, socket_timeout=5)
    try:
        queued = 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and queued < max(1, run.config.jobs // 2):
            queued = sum(broker.llen(queue.value) for queue in ANALYSIS_QUEUES)
            time.sleep(0.2)
        broker.flushall()
    finally:
        for process in paused:
            process.resume()
        broker.close()
    run.result.notes.append(f"FLUSHALL with {queued} wake-ups queued")
    return time.monotonic()


def receiver_down(run: Run) -> float:
    run.receiver.stop()
    time.sleep(run.config.receiver_outage)
    run.receiver.start()
    run.result.notes.append(f"receiver down {run.config.receiver_outage:.0f}s")
    return time.monotonic()


def kill_up(run: Run) -> float:
    """kill -9 of `up` itself: nothing it started may survive it; a new `up` on the same data
    directory then finishes what was accepted."""
    run.wait_for(run.some_processing, 60, "job in processing")
    everything = run.stack.descendants()
    os.kill(run.stack.process.pid, signal.SIGKILL)
    run.stack.process.wait()
    deadline = time.monotonic() + 20
    while (left := [p for p in everything if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    run.result.orphans = len(left)
    if left:
        run.result.notes.append("orphans: " + "; ".join(" ".join(p.cmdline())[:60] for p in left if _alive(p)))
        for process in left:
            _kill9(process)
    run.result.notes.append(f"killed up with {len(everything)} descendants")
    restarted = time.monotonic()
    run.stack.start()
    run.result.notes.append(f"up back in {time.monotonic() - restarted:.0f}s")
    return restarted


FAULTS: dict[str, Callable[[Run], float]] = {
    "gpu-pool-kill": kill_gpu_pool,
    "gpu-main-kill": kill_gpu_main,
    "cpu-worker-kill": kill_cpu_worker,
    "io-worker-kill": kill_io_worker,
    "io-kill-mid-send": kill_io_mid_send,
    "api-kill": kill_api,
    "redis-down": redis_down,
    "s3-down": s3_down,
    "postgres-stall": postgres_stall,
    "flushall": flushall,
    "receiver-down": receiver_down,
    "up-kill": kill_up,
}


def run_fault(stack: StackUnderTest, fault: str, config: ChaosConfig) -> FaultResult:
    return Run(stack, fault, config).execute()


# ---------------------------------------------------------------- the table


def table(results: list[FaultResult]) -> str:
    head = ("fault", "jobs", "lost", "stuck", "failed", "dup", "miss rep", "miss ev", "5xx", "recovery", "notes")
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in results:
        recovery = f"{r.recovery:.1f}s" if r.recovery is not None else "never"
        accepted = f"{r.accepted}/{r.jobs}" if r.accepted != r.jobs else str(r.jobs)
        lines.append(" | ".join(map(str, (
            r.fault, accepted, r.lost, r.stuck, r.failed, r.duplicated, r.missing_reports, r.missing_events,
            r.server_errors, recovery, "; ".join(r.notes + ([f"{r.orphans} orphans"] if r.orphans else [])),
        ))))
    return "\n".join("| " + line + " |" for line in lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faults", default=",".join(FAULTS), help="comma-separated, in order; default: all")
    parser.add_argument("--jobs", type=int, default=ChaosConfig.jobs, help="jobs submitted per fault")
    parser.add_argument("--outage", type=float, default=ChaosConfig.outage,
                        help="seconds Redis/S3 stay down and Postgres stalls (300: the 5-minute case)")
    parser.add_argument("--receiver-outage", type=float, default=ChaosConfig.receiver_outage)
    parser.add_argument("--recovery", type=float, default=ChaosConfig.recovery,
                        help="seconds after a fault within which everything must be final")
    parser.add_argument("--ci", action="store_true", help="the CI-sized run (as pytest tests/chaos)")
    parser.add_argument("--keep", action="store_true", help="keep the data directory and logs")
    args = parser.parse_args()

    faults = [name.strip() for name in args.faults.split(",") if name.strip()]
    unknown = [name for name in faults if name not in FAULTS]
    if unknown:
        parser.error(f"unknown faults {unknown}; choose from {', '.join(FAULTS)}")
    config = CI_CONFIG if args.ci else ChaosConfig(
        jobs=args.jobs, outage=args.outage, receiver_outage=args.receiver_outage, recovery=args.recovery
    )
    stack = StackUnderTest()
    results: list[FaultResult] = []
    started = time.monotonic()
    try:
        stack.start()
        print(f"stack up in {time.monotonic() - started:.0f}s; data and logs in {stack.work_dir}", flush=True)
        for fault in faults:
            result = run_fault(stack, fault, config)
            results.append(result)
            verdict = "ok" if result.ok else "FAILED: " + ", ".join(result.problems)
            print(f"{fault}: {verdict}", flush=True)
            for line in result.details[:20]:
                print(f"    {line}", flush=True)
    finally:
        stack.stop()
        supervisor_lines = [line for line in stack.console().splitlines() if "restart" in line]
        if not args.keep and results and all(r.ok for r in results):
            stack.remove()
    print(f"\n{table(results)}\n\ntotal {time.monotonic() - started:.0f}s; {config}")
    print("\nwhat `up` said:\n" + "\n".join(supervisor_lines))
    sys.exit(0 if all(r.ok for r in results) else 1)


if __name__ == "__main__":
    main()
