"""Benchmark: the API under a crowd, slow clients and oversized input (issue 10).

    python -m benchmarks.load [--clients 500] [--tenants 10] [--slow 50] [--duration 20] [--crowd-nice 0]

Starts a real stack (embedded Postgres, Redis and S3 unless DERMASENTINEL_DATABASE_URL /
_BROKER_URL / _S3_* are set; a fresh ``dsbench_*`` database, ``dsbench-`` buckets) and one
uvicorn API process with default settings, all on loopback. Then:

1. idle: one "victim" tenant's sequential polls and lists, p50/p95 latency;
2. burst: ``--clients`` concurrent clients over ``--tenants`` tenants (mixed: 60 % polls,
   25 % lists, 15 % small uploads) for ``--duration`` seconds, while one of those tenants
   also holds ``--slow`` uploads trickling 1 byte every 2 s, the victim keeps polling and a
   probe hits /healthz every 50 ms. Prints the count of answers by status (target: no 500,
   only 2xx/429/503, plus the slow uploads' 408), /healthz p99 (target < 200 ms), the
   victim's p95 against idle (target within 3x), peak API RSS (target < 1 GB).
   The victim and the /healthz probe run in a process of their own (httpx, as in phase 1);
   the crowd in another, on a minimal HTTP/1.1 keep-alive client (``RawClient``): with httpx
   the generator used several times the API's CPU per request, so on one machine it, not
   the API, was the bottleneck (~80 answers/s). ``--crowd-nice N`` runs the crowd at
   niceness N, for a machine where it should only take the CPU the API leaves;
3. recovery: seconds from the end of the burst until the victim's latency is back to normal
   (five answers in a row under 3x the idle p95; target < 5 s);
4. memory: four 6324x6324 PNGs (under the pixel cap) uploaded at once, and a 100 MiB JSON
   body without a key: status, time, and the API's RSS before, at peak and after.

The load generator runs on the same machine as the API: on a small machine its own CPU use
inflates every latency it measures.

    python -m benchmarks.load --unknown-key-flood 40 [--duration 20] [--idle 200] [--unknown-key-rate R]

Issue 22 instead: a victim tenant's sequential GETs (polls and lists), first idle, then while
a process of its own sends ``--unknown-key-flood`` requests per second (open loop: on time
whatever the answers) with random well-formed keys, each on a fresh connection. Prints the
flood's answers by status, the victim's p50/p95 idle and during the flood, and the ratio
(target: p95 within 2x idle). ``--unknown-key-rate`` sets the API's UNKNOWN_KEY_RATE (e.g.
``100000/second`` to see the flood without the limit).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import random
import statistics
import time
import uuid
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

import devstack
from benchmarks.batches import bench_context
from shared.config import Settings
from shared.context import AppContext
from shared.db import session_scope
from shared.tenants import issue_key
from worker.pipeline.synthetic import encode_jpeg, make_lesion

ROOT = Path(__file__).resolve().parent.parent
# Small on purpose (the API's load is measured, not the networks'): under MIN_IMAGE_SIDE, its
# analyses end rejected low_resolution, which is all this benchmark needs of the workers.
SMALL_JPEG = encode_jpeg(make_lesion(seed=7, size=(96, 128)).image)
CLIENT_TIMEOUT = 30.0
STILL_UPLOADING = "still uploading at the end"


@dataclass
class Tenant:
    key: str
    analysis_id: str = ""

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@dataclass
class LoadReport:
    statuses: Counter = field(default_factory=Counter)  # the crowd's answers (and client errors)
    slow_statuses: Counter = field(default_factory=Counter)
    victim_statuses: Counter = field(default_factory=Counter)
    victim_ms: list[float] = field(default_factory=list)
    health_statuses: Counter = field(default_factory=Counter)
    health_ms: list[float] = field(default_factory=list)
    peak_rss_mb: float = 0.0

    @property
    def server_errors(self) -> int:
        every = self.statuses + self.slow_statuses + self.victim_statuses + self.health_statuses
        return sum(n for status, n in every.items() if isinstance(status, int) and status >= 500 and status != 503)

    @property
    def client_errors(self) -> int:
        every = self.statuses + self.slow_statuses + self.victim_statuses + self.health_statuses
        return sum(n for status, n in every.items() if not isinstance(status, int) and status != STILL_UPLOADING)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def start_api(settings: Settings, log_path: Path, port: int) -> devstack.App:
    """The API as this benchmark runs it (devstack.start_api): warnings only, a deep accept backlog."""
    return devstack.start_api(devstack.child_env(settings), log_path, port=port,
                              args=["--log-level", "warning", "--backlog", "4096"])


def rss_mb(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        return psutil.Process(pid).memory_info().rss / 2**20
    except psutil.Error:
        return 0.0


def new_tenants(context: AppContext, count: int, tag: str) -> list[Tenant]:
    tenants = []
    with session_scope(context.session_factory) as session:
        for index in range(count):
            _, key = issue_key(session, f"load-{tag}-{index}-{uuid.uuid4().hex[:6]}")
            tenants.append(Tenant(key))
    return tenants


def seed(url: str, tenants: list[Tenant]) -> None:
    """One analysis per tenant, so polls have something to read."""
    with httpx.Client(base_url=url, timeout=CLIENT_TIMEOUT) as http:
        for tenant in tenants:
            response = http.post(
                "/v1/analyses", headers=tenant.headers, files={"image": ("l.jpg", SMALL_JPEG, "image/jpeg")}
            )
            response.raise_for_status()
            tenant.analysis_id = response.json()["id"]


async def _timed(http: httpx.AsyncClient, method: str, path: str, **kwargs) -> tuple[int | str, float]:
    started = time.perf_counter()
    try:
        response = await http.request(method, path, **kwargs)
        status: int | str = response.status_code
    except httpx.TimeoutException:
        status = "client timeout"
    except httpx.HTTPError as exc:
        status = f"client {type(exc).__name__}"
    return status, (time.perf_counter() - started) * 1000


class RawClient:
    """A minimal HTTP/1.1 keep-alive client for the crowd: one connection, one request at a
    time, a prebuilt request head. httpx costs the generator several times the API's own CPU
    per request, and on one machine that CPU is taken from the API and the victim."""

    def __init__(self, url: str, timeout: float = CLIENT_TIMEOUT):
        self.host, port = url.split("//", 1)[1].split(":")
        self.port = int(port)
        self.timeout = timeout
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, headers: dict[str, str], body: bytes = b"",
                      content_type: str = "") -> int:
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
        for name, value in headers.items():
            head += f"{name}: {value}\r\n"
        if content_type:
            head += f"Content-Type: {content_type}\r\n"
        if body or method in ("POST", "PUT", "PATCH"):
            head += f"Content-Length: {len(body)}\r\n"
        payload = head.encode() + b"\r\n" + body
        async with asyncio.timeout(self.timeout):
            reused = self.writer is not None
            try:
                return await self._exchange(payload)
            except (OSError, asyncio.IncompleteReadError):
                self.close()
                if not reused:
                    raise
            # The server closed an idle keep-alive connection as we sent: retry once, fresh.
            return await self._exchange(payload)

    async def _exchange(self, payload: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(payload)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length, chunked, close = 0, False, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"connection" and b"close" in value.lower():
                close = True
        if chunked:
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                await self.reader.readexactly(size + 2)
                if size == 0:
                    break
        elif length:
            await self.reader.readexactly(length)
        if close:
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


UPLOAD_BOUNDARY = "crowdboundary7f3a"
UPLOAD_BODY = (
    f'--{UPLOAD_BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="l.jpg"\r\n'
    "Content-Type: image/jpeg\r\n\r\n"
).encode() + SMALL_JPEG + f"\r\n--{UPLOAD_BOUNDARY}--\r\n".encode()


async def _raw_timed(client: RawClient, method: str, path: str, headers: dict[str, str], body: bytes = b"",
                     content_type: str = "") -> int | str:
    try:
        return await client.request(method, path, headers, body, content_type)
    except TimeoutError:
        client.close()
        return "client timeout"
    except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
        client.close()
        return f"client {type(exc).__name__}"


async def _crowd_client(url: str, tenant: Tenant, stop: asyncio.Event, statuses: Counter, rng) -> None:
    client = RawClient(url)
    poll, listing = f"/v1/analyses/{tenant.analysis_id}", "/v1/analyses?limit=20"
    upload_type = f"multipart/form-data; boundary={UPLOAD_BOUNDARY}"
    try:
        while not stop.is_set():
            roll = rng.random()
            if roll < 0.60:
                status = await _raw_timed(client, "GET", poll, tenant.headers)
            elif roll < 0.85:
                status = await _raw_timed(client, "GET", listing, tenant.headers)
            else:
                status = await _raw_timed(client, "POST", "/v1/analyses", tenant.headers, UPLOAD_BODY, upload_type)
            statuses[status] += 1
            if status in (429, 503):
                await asyncio.sleep(rng.uniform(0.05, 0.25))  # a polite client backs off a little
    finally:
        client.close()


async def victim_requests(http: httpx.AsyncClient, tenant: Tenant, statuses: Counter, timings: list[float],
                          stop: asyncio.Event | None = None, count: int | None = None, pause: float = 0.05) -> None:
    done = 0
    while (stop is None or not stop.is_set()) and (count is None or done < count):
        path = f"/v1/analyses/{tenant.analysis_id}" if done % 2 == 0 else "/v1/analyses?limit=20"
        status, ms = await _timed(http, "GET", path, headers=tenant.headers)
        statuses[status] += 1
        timings.append(ms)
        done += 1
        await asyncio.sleep(pause)


async def _health_probe(http: httpx.AsyncClient, stop: asyncio.Event, report: LoadReport) -> None:
    while not stop.is_set():
        status, ms = await _timed(http, "GET", "/healthz", timeout=5.0)
        report.health_statuses[status] += 1
        report.health_ms.append(ms)
        await asyncio.sleep(0.05)


async def slow_upload(url: str, tenant: Tenant, stop: asyncio.Event, statuses: Counter, pause: float = 2.0) -> None:
    """A valid upload whose body trickles in, one byte every ``pause`` seconds."""
    host, port = url.split("//", 1)[1].split(":")
    writer = None
    try:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            (f"POST /v1/analyses HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {tenant.key}\r\n"
             "Content-Type: multipart/form-data; boundary=slowboundary\r\nContent-Length: 1000000\r\n\r\n"
             '--slowboundary\r\nContent-Disposition: form-data; name="image"; filename="s.jpg"\r\n\r\n').encode()
        )
        await writer.drain()
        answer = asyncio.ensure_future(reader.readline())
        while not stop.is_set() and not answer.done():
            writer.write(b"\xff")
            await writer.drain()
            await asyncio.wait([answer], timeout=pause)
        if answer.done() and answer.result():
            statuses[int(answer.result().split()[1])] += 1
        else:
            answer.cancel()
            statuses[STILL_UPLOADING] += 1
    except (OSError, asyncio.IncompleteReadError) as exc:
        statuses[f"client {type(exc).__name__}"] += 1
    finally:
        if writer is not None:
            writer.close()


async def _rss_sampler(pid: int | None, stop: asyncio.Event, report: LoadReport) -> None:
    while not stop.is_set():
        report.peak_rss_mb = max(report.peak_rss_mb, rss_mb(pid))
        await asyncio.sleep(0.2)


async def _probes(url: str, victim: Tenant, stop: asyncio.Event, report: LoadReport) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=CLIENT_TIMEOUT) as own:
        await asyncio.gather(
            victim_requests(own, victim, report.victim_statuses, report.victim_ms, stop=stop),
            _health_probe(own, stop, report),
        )


def _probe_process(url: str, victim: Tenant, duration: float, results) -> None:
    """The victim and /healthz probes in a process of their own, so the crowd's client-side
    work does not show up as their latency."""

    async def probe() -> LoadReport:
        report, stop = LoadReport(), asyncio.Event()
        task = asyncio.create_task(_probes(url, victim, stop, report))
        await asyncio.sleep(duration)
        stop.set()
        await task
        return report

    report = asyncio.run(probe())
    results.put((report.victim_statuses, report.victim_ms, report.health_statuses, report.health_ms))


async def _crowd(url: str, crowd: list[Tenant], clients: int, duration: float, slow_tenant: Tenant | None,
                 slow_uploads: int, seed: int) -> tuple[Counter, Counter]:
    statuses: Counter = Counter()
    slow_statuses: Counter = Counter()
    stop = asyncio.Event()
    rng = random.Random(seed)
    tasks = [asyncio.create_task(_crowd_client(url, crowd[i % len(crowd)], stop, statuses, rng))
             for i in range(clients)]
    tasks += [asyncio.create_task(slow_upload(url, slow_tenant, stop, slow_statuses))
              for _ in range(slow_uploads if slow_tenant else 0)]
    await asyncio.sleep(duration)
    stop.set()
    await asyncio.gather(*tasks)
    return statuses, slow_statuses


def _crowd_process(url: str, crowd: list[Tenant], clients: int, duration: float, slow_tenant: Tenant | None,
                   slow_uploads: int, seed: int, nice: int, results) -> None:
    """The crowd in a process of its own. With ``nice`` it takes only the CPU the API and the
    victim leave: on one machine the load generator stands in for clients on other machines."""
    if nice:
        os.nice(nice)
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    results.put(asyncio.run(_crowd(url, crowd, clients, duration, slow_tenant, slow_uploads, seed)))


async def run_load(url: str, crowd: list[Tenant], victim: Tenant, *, clients: int, duration: float,
                   slow_tenant: Tenant | None = None, slow_uploads: int = 0, api_pid: int | None = None,
                   seed: int = 0, separate_probes: bool = False, crowd_nice: int | None = None) -> LoadReport:
    """``clients`` concurrent clients spread over ``crowd`` for ``duration`` seconds, plus slow
    uploads, a polling victim and a /healthz probe. With ``separate_probes`` the probes run in
    their own process; with ``crowd_nice`` (a niceness, 0 or more) the crowd does too, at that
    niceness. Stops everything it started."""
    report = LoadReport()
    stop = asyncio.Event()
    spawn = multiprocessing.get_context("spawn")
    prober = crowder = None
    if separate_probes:
        probe_results = spawn.Queue()
        prober = spawn.Process(target=_probe_process, args=(url, victim, duration, probe_results))
        prober.start()
    if crowd_nice is not None:
        crowd_results = spawn.Queue()
        crowder = spawn.Process(
            target=_crowd_process,
            args=(url, crowd, clients, duration, slow_tenant, slow_uploads, seed, crowd_nice, crowd_results),
        )
        crowder.start()
    tasks = [asyncio.create_task(_rss_sampler(api_pid, stop, report))]
    if prober is None:
        tasks.append(asyncio.create_task(_probes(url, victim, stop, report)))
    if crowder is None:
        statuses, slow_statuses = await _crowd(url, crowd, clients, duration, slow_tenant, slow_uploads, seed)
    else:
        statuses, slow_statuses = await asyncio.to_thread(crowd_results.get)
        crowder.join()
    report.statuses.update(statuses)
    report.slow_statuses.update(slow_statuses)
    stop.set()
    await asyncio.gather(*tasks)
    if prober is not None:
        victim_statuses, victim_ms, health_statuses, health_ms = await asyncio.to_thread(probe_results.get)
        prober.join()
        report.victim_statuses.update(victim_statuses)
        report.victim_ms.extend(victim_ms)
        report.health_statuses.update(health_statuses)
        report.health_ms.extend(health_ms)
    return report


async def recovery_seconds(url: str, victim: Tenant, normal_ms: float, limit: float = 30.0) -> float:
    """Seconds until five answers in a row are 200 and faster than ``normal_ms``."""
    started = time.perf_counter()
    streak = 0
    async with httpx.AsyncClient(base_url=url, timeout=CLIENT_TIMEOUT) as http:
        while streak < 5 and time.perf_counter() - started < limit:
            status, ms = await _timed(http, "GET", f"/v1/analyses/{victim.analysis_id}", headers=victim.headers)
            streak = streak + 1 if status == 200 and ms <= normal_ms else 0
            await asyncio.sleep(0.02)
    return time.perf_counter() - started


def big_png(side: int = 6324) -> bytes:
    """A PNG just under the 40-megapixel cap that compresses to ~100 KB."""
    import struct

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + bytes([200, 120, 90]) * side
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


async def memory_phase(url: str, tenant: Tenant, api_pid: int | None) -> None:
    png = big_png()
    stop = asyncio.Event()
    report = LoadReport()
    before = rss_mb(api_pid)
    sampler = asyncio.create_task(_rss_sampler(api_pid, stop, report))
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        started = time.perf_counter()
        answers = await asyncio.gather(*[
            _timed(http, "POST", "/v1/analyses", headers=tenant.headers, files={"image": ("big.png", png, "image/png")})
            for _ in range(4)
        ])
        elapsed = time.perf_counter() - started
    await asyncio.sleep(1.0)
    stop.set()
    await sampler
    print(f"  4 x 6324x6324 PNG ({len(png) // 1024} KiB each) at once: statuses {[s for s, _ in answers]}, "
          f"{elapsed:.1f} s; API RSS {before:.0f} -> peak {report.peak_rss_mb:.0f} -> after {rss_mb(api_pid):.0f} MiB")

    host, port = url.split("//", 1)[1].split(":")
    before = rss_mb(api_pid)
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /v1/batches HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 104857600\r\n\r\n")
    sent = 0
    answer = asyncio.ensure_future(reader.readline())
    chunk = b"[" + b"1," * (1 << 19)
    with contextlib.suppress(OSError):
        while not answer.done() and sent < 100 * 2**20:
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)
    status_line = (await answer).decode().strip()
    elapsed = time.perf_counter() - started
    writer.close()
    print(f"  100 MiB JSON to POST /v1/batches, no key: '{status_line}' after {elapsed * 1000:.0f} ms "
          f"({sent // 2**20} MiB sent); API RSS {before:.0f} -> {rss_mb(api_pid):.0f} MiB")


async def benchmark(url: str, context: AppContext, api_pid: int, args) -> None:
    crowd = new_tenants(context, args.tenants, "crowd")
    (victim,) = new_tenants(context, 1, "victim")
    seed(url, crowd + [victim])

    print(f"[1] idle: victim tenant, {args.idle} sequential polls/lists")
    idle_statuses: Counter = Counter()
    idle_ms: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=CLIENT_TIMEOUT) as http:
        await victim_requests(http, victim, idle_statuses, idle_ms, count=args.idle)
        health: list[float] = []
        for _ in range(50):
            health.append((await _timed(http, "GET", "/healthz"))[1])
    idle_p95 = percentile(idle_ms, 0.95)
    print(f"  statuses {dict(idle_statuses)}; p50 {statistics.median(idle_ms):.1f} ms, p95 {idle_p95:.1f} ms; "
          f"/healthz p99 {percentile(health, 0.99):.1f} ms; API RSS {rss_mb(api_pid):.0f} MiB")

    print(f"[2] burst: {args.clients} clients over {args.tenants} tenants for {args.duration:.0f} s, "
          f"{args.slow} slow uploads (1 byte / 2 s) from one of them")
    report = await run_load(url, crowd, victim, clients=args.clients, duration=args.duration,
                            slow_tenant=crowd[0], slow_uploads=args.slow, api_pid=api_pid, separate_probes=True,
                            crowd_nice=args.crowd_nice)
    total = sum(report.statuses.values())
    by_status = dict(sorted(report.statuses.items(), key=str))
    print(f"  crowd answers: {total} ({total / args.duration:.0f}/s) by status {by_status}")
    print(f"  slow uploads by outcome: {dict(report.slow_statuses)}")
    print(f"  500s (any request): {report.server_errors}; client timeouts/errors: {report.client_errors}")
    print(f"  /healthz: {len(report.health_ms)} probes, p50 {percentile(report.health_ms, 0.5):.1f} ms, "
          f"p99 {percentile(report.health_ms, 0.99):.1f} ms, max {max(report.health_ms):.1f} ms, "
          f"statuses {dict(report.health_statuses)}")
    loaded_p95 = percentile(report.victim_ms, 0.95)
    print(f"  victim tenant: {len(report.victim_ms)} requests, statuses {dict(report.victim_statuses)}, "
          f"p95 {loaded_p95:.1f} ms = {loaded_p95 / idle_p95:.1f} x idle")
    print(f"  API peak RSS {report.peak_rss_mb:.0f} MiB")

    print("[3] recovery")
    seconds = await recovery_seconds(url, victim, max(3 * idle_p95, 20.0))
    print(f"  victim back to normal (5 answers in a row under {max(3 * idle_p95, 20.0):.0f} ms) after {seconds:.2f} s")

    print("[4] memory")
    (big,) = new_tenants(context, 1, "big")
    await memory_phase(url, big, api_pid)


# --- issue 22: a flood of unknown keys ------------------------------------------------------


async def _flood(url: str, rate: float, duration: float) -> Counter:
    """``rate`` requests per second for ``duration`` seconds, open loop, each with a new random
    well-formed key on a fresh connection; their answers by status."""
    statuses: Counter = Counter()
    rng = random.Random(22)
    paths = ["/v1/analyses", "/v1/batches", f"/v1/analyses/{uuid.uuid4()}"]

    async def one() -> None:
        client = RawClient(url, timeout=10.0)
        key = "dsk_" + "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
                               for _ in range(43))
        statuses[await _raw_timed(client, "GET", rng.choice(paths), {"Authorization": f"Bearer {key}",
                                                                      "Connection": "close"})] += 1
        client.close()

    tasks: list[asyncio.Task] = []
    started = time.perf_counter()
    sent = 0
    while (elapsed := time.perf_counter() - started) < duration:
        due = int(elapsed * rate) + 1
        while sent < due:
            tasks.append(asyncio.create_task(one()))
            sent += 1
        await asyncio.sleep(max(0.0, sent / rate - (time.perf_counter() - started)))
    await asyncio.gather(*tasks)
    return statuses


def _flood_process(url: str, rate: float, duration: float, results) -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    results.put(asyncio.run(_flood(url, rate, duration)))


async def _victim_for(url: str, victim: Tenant, *, count: int | None = None,
                      duration: float | None = None) -> tuple[Counter, list[float]]:
    statuses: Counter = Counter()
    timings: list[float] = []
    stop = asyncio.Event()
    async with httpx.AsyncClient(base_url=url, timeout=CLIENT_TIMEOUT) as http:
        task = asyncio.create_task(victim_requests(http, victim, statuses, timings, stop=stop, count=count))
        if duration is not None:
            await asyncio.sleep(duration)
            stop.set()
        await task
    return statuses, timings


async def unknown_key_flood(url: str, context: AppContext, api_pid: int, args) -> float:
    """The victim's GET p95 idle, then during the flood, in this one run; returns the ratio."""
    (victim,) = new_tenants(context, 1, "victim")
    seed(url, [victim])
    await _victim_for(url, victim, count=20)  # warm: connection, key cache, the victim's key known

    print(f"[1] idle: victim tenant, {args.idle} sequential polls/lists")
    idle_statuses, idle_ms = await _victim_for(url, victim, count=args.idle)
    idle_p95 = percentile(idle_ms, 0.95)
    print(f"  statuses {dict(idle_statuses)}; p50 {statistics.median(idle_ms):.1f} ms, p95 {idle_p95:.1f} ms; "
          f"API RSS {rss_mb(api_pid):.0f} MiB")

    print(f"[2] flood: {args.unknown_key_flood:g} requests/s with random well-formed unknown keys for "
          f"{args.duration:.0f} s, the victim polling meanwhile")
    spawn = multiprocessing.get_context("spawn")
    results = spawn.Queue()
    flooder = spawn.Process(target=_flood_process, args=(url, args.unknown_key_flood, args.duration, results))
    flooder.start()
    await asyncio.sleep(1.0)  # the flood under way before the victim measures
    flood_statuses, flood_ms = await _victim_for(url, victim, duration=max(1.0, args.duration - 2.0))
    answers = await asyncio.to_thread(results.get)
    flooder.join()
    total = sum(answers.values())
    by_status = dict(sorted(answers.items(), key=str))
    print(f"  flood answers: {total} ({total / args.duration:.1f}/s) by status {by_status}")
    loaded_p95 = percentile(flood_ms, 0.95)
    ratio = loaded_p95 / idle_p95
    print(f"  victim: {len(flood_ms)} requests, statuses {dict(flood_statuses)}; p50 "
          f"{statistics.median(flood_ms):.1f} ms, p95 {loaded_p95:.1f} ms")
    print(f"  victim p95 idle {idle_p95:.1f} ms, during the flood {loaded_p95:.1f} ms: {ratio:.2f} x idle "
          f"(target <= 2 x); API RSS {rss_mb(api_pid):.0f} MiB")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument("--slow", type=int, default=50)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--idle", type=int, default=200)
    parser.add_argument("--crowd-nice", type=int, default=0,
                        help="niceness of the crowd's own process (0: same priority as the API)")
    parser.add_argument("--unknown-key-flood", type=float, default=None, metavar="RATE",
                        help="issue 22: the victim's p95 idle and during RATE requests/s with unknown keys, "
                        "instead of the crowd")
    parser.add_argument("--unknown-key-rate", default=None,
                        help="the API's UNKNOWN_KEY_RATE for this run (default: the setting's default)")
    args = parser.parse_args()

    workdir: Path | None = None
    try:
        with bench_context() as (context, workdir, port):
            api = None
            try:
                settings = context.settings
                if args.unknown_key_rate:
                    settings = settings.model_copy(update={"unknown_key_rate": args.unknown_key_rate})
                api = start_api(settings, workdir / "api.log", port)
                if args.unknown_key_flood:
                    asyncio.run(unknown_key_flood(settings.api_url, context, api.pid, args))
                else:
                    asyncio.run(benchmark(context.settings.api_url, context, api.pid, args))
            finally:
                if api is not None:
                    api.stop()
    finally:
        if workdir is not None:
            print(f"(logs in {workdir})")


if __name__ == "__main__":
    main()
