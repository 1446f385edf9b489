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
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="dsbench-apicpu-"))
    up = UpProcess(scratch / "data", console_path=scratch / "up.log", settings={
        "SEG_SIZE": "128", "CLS_SIZE": "128", "TTA_VIEWS": "5", "LOG_LEVEL": "INFO",
        "WEBHOOK_ALLOW_CIDRS": "127.0.0.0/8", "WEBHOOK_TEST_RATE": "1000/second",
    })
    print(f"api_cpu: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}", flush=True)
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
