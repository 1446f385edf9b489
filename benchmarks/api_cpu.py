"""CPU seconds per request of the API and the io worker, for the engine benchmark's background
load (issue 27): ``GET /v1/analyses/{id}``, the analyses list (``limit=20``) and
``POST /v1/webhook-endpoints/{id}/test`` with its signed delivery to a loopback receiver.

    .venv/bin/python -m benchmarks.api_cpu [--gets 400] [--lists 100] [--tests 100] [--analyses 6] [--rounds 3]

Starts ``dermasentinel up`` in a temporary DATA_DIR (SEG/CLS 128, untrained weights, the
engine benchmark's webhook settings), submits ``--analyses`` images and waits until each is
final with its report stored and its webhooks delivered (the analyses the engine benchmark's
load reads), then sends each kind of request in turn, one at a time, with the Python client
the engine benchmark uses, and prints the CPU seconds (user + system, /proc) the API process
and the io worker used per request, less what each uses idle over as long (measured just
before), per round and at the end the least and the median over ``--rounds``. Wall time per
request is printed too, for the record only: on a shared machine it
moves with the load; the CPU seconds much less.

``--in-process`` instead runs the API app in this process (no uvicorn, no `up`; Postgres, Redis
and S3 as ``benchmarks.batches.bench_context`` starts them, rate limits raised out of the way
but still counted) on four finished analyses inserted directly, each with a report and mask
and overlay keys, and prints this process's CPU per GET and per list over seven rounds: the
client's small share included, but no other process and no idle correction, so it moves less
with a busy machine than the numbers above.

``--profile DIR`` also records py-spy flame data (``py-spy`` on PATH, ptrace allowed) of the
API and the io worker for each phase, as speedscope JSON in DIR.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.engine import IMAGE_SIZE, _descendants, _role

PHASES = ("get", "list", "test")


def _cpu(root: int, roles: tuple[str, ...] = ("api", "worker-io")) -> dict[str, float]:
    """CPU seconds so far of the processes under ``root`` with these roles (user + system), and
    each role's system seconds alone as ``ROLE sys``."""
    ticks = os.sysconf("SC_CLK_TCK")
    used: dict[str, float] = {name + part: 0.0 for name in roles for part in ("", " sys")}
    for pid in _descendants(root):
        try:
            name = _role(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if name in roles:
            used[name] += (int(fields[11]) + int(fields[12])) / ticks
            used[name + " sys"] += int(fields[12]) / ticks
    return used


class _Profiler:
    def __init__(self, folder: Path | None, root: int):
        self.folder, self.root, self.running = folder, root, []

    def start(self, phase: str) -> None:
        if self.folder is None:
            return
        for pid in _descendants(self.root):
            try:
                role = _role(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
            except OSError:
                continue
            if role in ("api", "worker-io"):
                out = self.folder / f"{phase}-{role}-{pid}.json"
                self.running.append(subprocess.Popen(
                    ["py-spy", "record", "--pid", str(pid), "--format", "speedscope", "--rate", "200",
                     "--output", str(out), "--gil"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(1.0)

    def stop(self) -> None:
        for process in self.running:
            process.send_signal(2)
        for process in self.running:
            process.wait(timeout=60)
        self.running = []


def _measure(root: int, count: int, action: Callable[[int], Any], wait: Callable[[], None] | None,
             profiler: _Profiler, phase: str) -> dict[str, float]:
    idle_before, idle_started = _cpu(root), time.perf_counter()
    time.sleep(3.0)
    idle_after = _cpu(root)
    idle_seconds = time.perf_counter() - idle_started
    idle = {name: (idle_after[name] - idle_before[name]) / idle_seconds for name in idle_after}
    profiler.start(phase)
    before, started = _cpu(root), time.perf_counter()
    for n in range(count):
        action(n)
    if wait is not None:
        wait()
    seconds = time.perf_counter() - started
    after = _cpu(root)
    profiler.stop()
    per = {name: (after[name] - before[name] - idle[name] * seconds) / count * 1000 for name in after}
    print(f"   {phase}: {count} requests in {seconds:.1f} s ({seconds / count * 1000:.1f} ms each); CPU ms per request "
          f"(idle taken off): api {per['api']:.2f} (sys {per['api sys']:.2f}), io worker {per['worker-io']:.2f} "
          f"(sys {per['worker-io sys']:.2f}); idle CPU-s/s api "
          f"{idle['api']:.3f}, io {idle['worker-io']:.3f}", flush=True)
    return per


def in_process(requests: int, rounds: int = 7) -> None:
    import asyncio
    import random
    import uuid

    import httpx
    from sqlalchemy import insert

    from api.main import create_app
    from benchmarks.batches import _model, _result, bench_context
    from shared.clock import utcnow
    from shared.db import session_scope
    from shared.storage import image_key
    from shared.tables import Analysis, Report
    from shared.tenants import issue_key

    with bench_context(rate_limit="100000/second", client_address_rate="100000/second") as (context, _, _port):
        rng, ids = random.Random(0), []
        with session_scope(context.session_factory) as session:
            tenant, key = issue_key(session, "api-cpu")
            tenant_id = tenant.id
        with session_scope(context.session_factory) as session:
            for n in range(4):
                analysis_id, now, probability = uuid.uuid4(), utcnow(), rng.random()
                session.execute(insert(Analysis), [dict(
                    id=analysis_id, tenant_id=tenant_id, priority="interactive", attempt=1,
                    image_key=image_key(tenant_id, analysis_id, "jpg"), image_sha256=f"{n:064x}",
                    image_content_type="image/jpeg", image_width=1024, image_height=768, created_at=now,
                    updated_at=now, enqueued_at=now, status="succeeded", result=_result(rng, probability),
                    probability=probability, model=_model(rng), started_at=now, completed_at=now,
                    mask_key=f"{tenant_id}/{analysis_id}/mask.png",
                    overlay_key=f"{tenant_id}/{analysis_id}/overlay.png",
                )])
                session.execute(insert(Report), [dict(
                    analysis_id=analysis_id, tenant_id=tenant_id, pdf_key="report.pdf", pdf_sha256="0" * 64,
                    fhir={"resourceType": "Bundle", "entry": [{"n": i} for i in range(50)]}, render_ms=1.0,
                )])
                ids.append(str(analysis_id))
        app = create_app(context.settings)

        async def run() -> None:
            async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app, client=("127.0.0.1", 5000)), base_url="http://api",
                headers={"Authorization": f"Bearer {key}"},
            ) as http:
                paths = {"get": lambda n: f"/v1/analyses/{ids[n % len(ids)]}",
                         "list": lambda n: "/v1/analyses?limit=20"}
                for phase, path in paths.items():
                    for n in range(30):  # warm
                        (await http.get(path(n))).raise_for_status()
                    runs = []
                    for _ in range(rounds):
                        started = time.process_time()
                        for n in range(requests):
                            (await http.get(path(n))).raise_for_status()
                        runs.append((time.process_time() - started) / requests * 1000)
                    print(f"   in-process {phase}: CPU ms per request min {min(runs):.2f}, median "
                          f"{statistics.median(runs):.2f} ({' '.join(f'{r:.2f}' for r in runs)})", flush=True)

        asyncio.run(run())


def main() -> None:
    from dermasentinel_client import Client

    from devstack import Receiver, ServiceStartError, UpProcess
    from worker.pipeline.synthetic import encode_jpeg, make_lesion

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gets", type=int, default=400)
    parser.add_argument("--lists", type=int, default=100)
    parser.add_argument("--tests", type=int, default=100, help="test deliveries (POST .../test)")
    parser.add_argument("--analyses", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=1, help="repeat the three phases")
    parser.add_argument("--profile", type=Path, default=None, help="py-spy speedscope files into this folder")
    parser.add_argument("--in-process", action="store_true", help="GET and list against the app in this process")
    args = parser.parse_args()
    print(f"api_cpu: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}", flush=True)
    if args.in_process:
        in_process(150)
        return

    scratch = Path(tempfile.mkdtemp(prefix="dsbench-apicpu-"))
    up = UpProcess(scratch / "data", console_path=scratch / "up.log", settings={
        "SEG_SIZE": "128", "CLS_SIZE": "128", "TTA_VIEWS": "5", "LOG_LEVEL": "INFO",
        "WEBHOOK_ALLOW_CIDRS": "127.0.0.0/8", "WEBHOOK_TEST_RATE": "1000/second",
    })
    try:
        try:
            up.start(timeout=600)
        except ServiceStartError as failure:
            raise SystemExit(str(failure)) from None
        assert up.process is not None and up.api_url and up.api_key
        root = up.process.pid
        client = Client(base_url=up.api_url, api_key=up.api_key, timeout=120)
        events = Receiver(204)
        client.webhooks.create_endpoint(events.url)
        created = [client.analyses.create(encode_jpeg(make_lesion(seed=i, size=IMAGE_SIZE).image),
                                          filename=f"cpu-{i}.jpg", age=55, sex="female", site="torso")
                   for i in range(args.analyses)]
        ids = [str(a.id) for a in created]
        for analysis_id in ids:
            client.analyses.wait(analysis_id, timeout=1800, poll_interval=0.5)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and len(
                {r.json().get("data", {}).get("id") for r in list(events.requests)
                 if r.type == "analysis.report_ready"} & set(ids)) < len(ids):
            time.sleep(0.2)
        print(f"   {len(ids)} analyses final, reports and webhooks delivered", flush=True)
        receiver = Receiver(204)
        endpoint = client.webhooks.create_endpoint(receiver.url).id
        profiler = _Profiler(args.profile, root)
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
        client.analyses.get(ids[0])
        next(iter(client.analyses.list(page_size=20)), None)
        results: dict[str, list[dict[str, float]]] = {phase: [] for phase in PHASES}
        for _ in range(args.rounds):
            results["get"].append(_measure(root, args.gets, lambda n: client.analyses.get(ids[n % len(ids)]), None,
                                           profiler, "get"))
            results["list"].append(_measure(root, args.lists,
                                            lambda n: next(iter(client.analyses.list(page_size=20)), None), None,
                                            profiler, "list"))
            start = receiver.count

            def delivered(want: int = args.tests, start: int = start) -> None:
                deadline = time.monotonic() + 300
                while receiver.count - start < want and time.monotonic() < deadline:
                    time.sleep(0.02)
                if receiver.count - start < want:
                    raise SystemExit(f"only {receiver.count - start} of {want} test deliveries arrived")

            results["test"].append(_measure(root, args.tests, lambda n: client.webhooks.send_test(endpoint), delivered,
                                            profiler, "test"))
        # On a shared machine a neighbour's burst only adds CPU (caches, switches): the least of
        # the rounds is the steadiest reading, the median is printed beside it.
        for phase, runs in results.items():
            print(f"   {phase} over {len(runs)} rounds, CPU ms per request min / median: " + ", ".join(
                f"{role} {min(r[role] for r in runs):.2f} / {statistics.median(r[role] for r in runs):.2f}"
                for role in ("api", "worker-io")), flush=True)
        client.close()
        receiver.stop()
        events.stop()
    finally:
        up.stop()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
