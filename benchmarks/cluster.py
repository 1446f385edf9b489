"""A cluster on one machine: hosts as network namespaces on one bridge, and the faults that live
between hosts (issue 26).

    python -m benchmarks.cluster --full          # every fault at full size, then the table
    python -m benchmarks.cluster --faults worker-partition --partition 60
    python -m benchmarks.cluster --faults gpu-pool-stopped,gpu-main-stopped   # SIGSTOP 120 s each
    python -m benchmarks.cluster --scale         # throughput with one and two worker hosts; Postgres per job
    python -m benchmarks.cluster --cleanup       # remove what a killed run left (namespaces, links, processes;
                                                 # it ends a run still going too)
    python -m pytest tests/cluster               # CI-sized

The hosts (each a network namespace with one veth link to the bridge, and a hostname of its
own so that Celery's node names differ):

    data    Postgres, Redis, S3 (the embedded ones tests/conftest.py and `up` start, listening on
            the host's address)
    api1    the API  \\ behind HAProxy, which runs beside the harness on the bridge's own address and
    api2    the API  /  checks each on /readyz?optional=gpu_workers (the Kubernetes readiness probe)
    gpu1    an analysis worker (`worker --role gpu`)
    gpu2    an analysis worker
    ops     the CPU and IO workers and beat

Every app process gets only the DERMASENTINEL_* variables the Kubernetes manifests set
(deploy/k8s/base: DATABASE_URL, BROKER_URL, S3_*, SECRET_KEY, DATA_DIR, LOG_LEVEL...) plus
the small model sizes and short sweeper timings the tests and benchmarks/chaos.py use.

Faults are made with iptables in the namespaces (a partition drops every packet between two
hosts; loss drops a share at random, both ways), by killing processes and taking links
down, and by stopping a GPU worker's pool or main process (SIGSTOP) with nothing to restart
it. This kernel has no `netem` qdisc, so delay comes from a small delaying TCP relay on the
data host in front of each of its services, always in the path, its delay switched on and
off at run time (docs/DECISIONS.md, issue 26).

Each fault is counted as benchmarks/chaos.py counts (lost, stuck, duplicated jobs and
webhook events, missing reports, HTTP 5xx through HAProxy) and timed: recovery is the time
from the heal until every accepted job is final, reported and its events delivered.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import ctypes
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import psycopg
from celery import Celery

from benchmarks.chaos import FINAL, ChaosConfig, FaultResult, Load, Receiver, Run
from devstack import App, start_app
from devstack.apps import api_command, beat_command, worker_command
from devstack.postgres import PostgresHandle, start_postgres
from devstack.redis import RedisHandle, start_redis
from devstack.s3 import S3Handle, start_s3
from shared.queues import ANALYSIS_QUEUES

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "ds26"  # every namespace, link and bridge of the harness starts with it (--cleanup)
HOSTS = {"data": 2, "api1": 11, "api2": 12, "gpu1": 21, "gpu2": 22, "ops": 31}
WORKER_HOSTS = ("gpu1", "gpu2")
API_PORT = 8000
LB_PORT = 8080
METRICS_PORT = 9100  # every worker's, as in the manifests (one per host: each host has its own ports)
# Ports the data host's relays listen on (the address clients use); the services listen on
# loopback of the data host, behind them.
RELAY_PORTS = {"postgres": 5432, "redis": 6379, "s3": 8333}
# Settings beyond the manifests': small networks (as the tests), and sweeper, heartbeat and
# webhook timings short enough that a lost wake-up is found inside the 60 s target (as chaos).
SMALL = {
    "SEG_SIZE": "128",
    "CLS_SIZE": "128",
    "TTA_VIEWS": "5",
    "MIN_IMAGE_SIDE": "32",
    "SWEEP_INTERVAL_SECONDS": "2",
    "STUCK_AFTER_SECONDS": "20",
    "RESEND_AFTER_SECONDS": "10",
    "WEBHOOK_RETRY_SCHEDULE": ",".join(["1", "2", "3"] + ["5"] * 60),
    "WEBHOOK_DISPATCH_INTERVAL_SECONDS": "1",
    "UNKNOWN_KEY_RATE": "1000/second",
}
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def unavailable() -> str | None:
    """Why the harness cannot run here, or None."""
    if sys.platform != "linux" or os.geteuid() != 0:
        return "the cluster harness needs root on Linux (network namespaces, veth links, iptables)"
    for tool in ("ip", "iptables", "haproxy", "unshare"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (.ci/run installs Debian's haproxy and iptables)"
    probe = f"{PREFIX}probe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode:
        return f"`ip netns add` fails here: {made.stderr.strip()}"
    try:
        rule = subprocess.run(["ip", "netns", "exec", probe, "iptables", "-A", "OUTPUT", "-d", "192.0.2.1",
                               "-m", "statistic", "--mode", "random", "--probability", "0.05", "-j", "DROP"],
                              capture_output=True, text=True)
        if rule.returncode:
            return f"iptables cannot add rules in a namespace here: {rule.stderr.strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True)
    if check and result.returncode:
        raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip() or result.stdout.strip()}")
    return result


@contextmanager
def inside(namespace: str) -> Iterator[None]:
    """This thread in the network namespace `namespace` (processes it starts stay there)."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
    try:
        if _libc.setns(target, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {namespace}")
        yield
    finally:
        _libc.setns(own, _CLONE_NEWNET)
        os.close(own)
        os.close(target)


def cleanup(prefix: str = PREFIX) -> list[str]:
    """Remove every namespace and link named `prefix`* and kill the processes inside them."""
    removed = []
    listing = _run("ip", "netns", "list", check=False).stdout.split()
    for namespace in [word for word in listing if word.startswith(prefix)]:
        pids = _run("ip", "netns", "pids", namespace, check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        _run("ip", "netns", "del", namespace, check=False)
        removed.append(f"netns {namespace} ({len(pids)} processes killed)")
    for line in _run("ip", "-o", "link", "show", check=False).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        if name.startswith(prefix):
            _run("ip", "link", "del", name, check=False)
            removed.append(f"link {name}")
    return removed


# ---------------------------------------------------------------- the delaying relay


class Relay:
    """A TCP relay (asyncio, a thread of the harness, listening in the data host's namespace)
    that forwards `listen` to `target` and holds each chunk `delay ± jitter` seconds in each
    direction, order kept: the link delay `tc netem` would give, on a kernel without netem."""

    def __init__(self, namespace: str, listen: tuple[str, int], target: tuple[str, int]):
        self.namespace, self.listen, self.target = namespace, listen, target
        self.delay = 0.0
        self.jitter = 0.0
        self.delay_from: dict[str, float] = {}  # more delay for one client host's address
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self._serve, name=f"relay-{listen[1]}", daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"the relay on {self.listen} did not start")

    def stop(self) -> None:
        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        self._thread.join(5)

    async def _shutdown(self) -> None:
        self._loop.set_exception_handler(lambda loop, context: None)  # connections cut at exit: expected
        if self._server is not None:
            self._server.close()
        current = asyncio.current_task()
        tasks = [task for task in asyncio.all_tasks() if task is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loop.stop()

    def _serve(self) -> None:
        # This thread lives in the data host's namespace: its sockets are the data host's.
        with inside(self.namespace):
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._connection, self.listen[0], self.listen[1], backlog=512)
            )
            self._ready.set()
            self._loop.run_forever()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        peer = (writer.get_extra_info("peername") or ("",))[0]
        await asyncio.gather(self._pipe(reader, up_writer, peer), self._pipe(up_reader, writer, peer),
                             return_exceptions=True)

    def _delay(self, peer: str) -> float:
        own = self.delay_from.get(peer, 0.0)
        if not self.delay:
            return own
        return max(0.0, self.delay + random.uniform(-self.jitter, self.jitter)) + own

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, chunk = await queue.get()
                if not chunk:
                    break
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(chunk)
                await writer.drain()

        sender = asyncio.ensure_future(deliver())
        last_due = 0.0
        try:
            while chunk := await reader.read(65536):
                last_due = max(last_due, time.monotonic() + self._delay(peer))  # never reorder a stream
                queue.put_nowait((last_due, chunk))
        except OSError:
            pass
        finally:
            queue.put_nowait((0.0, b""))
            try:
                await sender
            except OSError:
                pass
            try:
                writer.close()
            except OSError:
                pass


# ---------------------------------------------------------------- the cluster


@dataclass
class Host:
    name: str
    address: str
    namespace: str
    link: str  # the veth end on the bridge
    apps: dict[str, App] = field(default_factory=dict)


class Cluster:
    """Start with `start()`, stop with `stop()` (also at exit and on SIGTERM/SIGINT)."""

    def __init__(self, work_dir: Path | None = None, *, gpu_concurrency: int = 1, relays: bool = True):
        """`relays`: the data host's services behind the delaying relays (needed for the delay
        fault); without, clients reach them directly (the scale runs: no relay CPU in the count)."""
        self.tag = secrets.token_hex(1)
        self.name = f"{PREFIX}{self.tag}"
        self.subnet = f"10.26.{int(self.tag, 16)}"
        self.gateway = f"{self.subnet}.1"
        self.bridge = f"{self.name}br"
        self.work_dir = work_dir or Path(tempfile.mkdtemp(prefix="dermasentinel-cluster-"))
        self.hosts = {
            name: Host(name, f"{self.subnet}.{octet}", f"{self.name}-{name}", f"{self.name}{name}")
            for name, octet in HOSTS.items()
        }
        self.gpu_concurrency = gpu_concurrency
        self.use_relays = relays
        self.ports: dict[str, int] = {}
        self.postgres: PostgresHandle | None = None
        self.redis: RedisHandle | None = None
        self.s3: S3Handle | None = None
        self.relays: dict[str, Relay] = {}
        self.haproxy: App | None = None
        self.secret_key = ""
        self._stopped = False
        self._previous_handlers: dict[int, object] = {}

    # -------------------------------------------------------------- addresses

    @property
    def api_url(self) -> str:
        """HAProxy, in front of both API hosts."""
        return f"http://{self.gateway}:{LB_PORT}"

    @property
    def data(self) -> Host:
        return self.hosts["data"]

    @property
    def dsn(self) -> str:
        assert self.postgres is not None
        return (f"postgresql://{self.postgres.user}:{self.postgres.password}@{self.data.address}:"
                f"{self.ports['postgres']}/{self.postgres.database}")

    @property
    def broker_url(self) -> str:
        return f"redis://{self.data.address}:{self.ports['redis']}/0"

    def analysis_consumers(self, host: str, *, on: bool) -> None:
        """Have the GPU worker on `host` stop or start again reading the analysis queues, by
        Celery's remote control (`celery control cancel_consumer` / `add_consumer`), as an
        operator would; raises if it does not answer."""
        app = Celery("cluster-harness", broker=self.broker_url, set_as_current=False)
        node = f"gpu@{self.name}-{host}"
        try:
            for queue in ANALYSIS_QUEUES:  # in their order: interactive is read first again
                control = app.control.add_consumer if on else app.control.cancel_consumer
                if not control(queue.value, destination=[node], reply=True, timeout=10):
                    raise RuntimeError(f"{node} did not answer {'add' if on else 'cancel'}_consumer {queue.value}")
        finally:
            app.close()

    def app_env(self, host: Host, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of an app process: the manifests' variables, and nothing else of ours."""
        assert self.postgres and self.s3
        data = self.data.address
        env = {k: v for k, v in os.environ.items() if not k.startswith("DERMASENTINEL_")}
        env["PYTHONPATH"] = str(ROOT)
        settings = {
            "ENVIRONMENT": "development",  # production refuses plain-http URLs; the harness has no TLS
            "DATABASE_URL": self.dsn.replace("postgresql://", "postgresql+psycopg://"),
            "BROKER_URL": self.broker_url,
            "S3_ENDPOINT": f"{data}:{self.ports['s3']}",
            "S3_SECURE": "false",
            "S3_ACCESS_KEY": self.s3.access_key,
            "S3_SECRET_KEY": self.s3.secret_key,
            "S3_BUCKET_PREFIX": "dermasentinel",
            "SECRET_KEY": self.secret_key,
            "PUBLIC_URL": self.api_url,
            "API_URL": self.api_url,
            "DATA_DIR": str(self.work_dir / host.name / "data"),
            "LOG_LEVEL": "INFO",
            "WEBHOOK_ALLOW_CIDRS": f"{self.gateway}/32",
            **SMALL,
            **(extra or {}),
        }
        env.update({f"DERMASENTINEL_{k}": v for k, v in settings.items()})
        return env

    # -------------------------------------------------------------- start and stop

    def start(self) -> Cluster:
        atexit.register(self.stop)
        for sig in (signal.SIGTERM, signal.SIGINT):
            if threading.current_thread() is threading.main_thread():
                self._previous_handlers[sig] = signal.signal(sig, self._on_signal)
        try:
            self._network()
            self._data_host()
            self._migrate()
            # Every host at once (as a rollout would), then until HAProxy has both APIs and a GPU worker is live.
            for name in ("api1", "api2", *WORKER_HOSTS, "ops"):
                self.start_host(name, wait=False)
            self._haproxy()
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stop()
        raise SystemExit(128 + signum)

    def _network(self) -> None:
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        for host in self.hosts.values():
            _run("ip", "netns", "add", host.namespace)
            _run("ip", "link", "add", host.link, "type", "veth", "peer", "name", "eth0", "netns", host.namespace)
            _run("ip", "link", "set", host.link, "master", self.bridge, "up")
            ns = ("ip", "netns", "exec", host.namespace)
            _run(*ns, "ip", "addr", "add", f"{host.address}/24", "dev", "eth0")
            _run(*ns, "ip", "link", "set", "eth0", "up")
            _run(*ns, "ip", "link", "set", "lo", "up")
            _run(*ns, "ip", "route", "add", "default", "via", self.gateway)

    def _data_host(self) -> None:
        data_dir = self.work_dir / "data"
        from cryptography.fernet import Fernet

        self.secret_key = Fernet.generate_key().decode()
        listen = "127.0.0.1" if self.use_relays else self.data.address
        with inside(self.data.namespace):
            self.postgres = start_postgres(data_dir, host=listen, server_settings=_postgres_settings())
            self.redis = start_redis(data_dir, host=listen)
            self.s3 = start_s3(data_dir, host=listen)
        backends = {"postgres": self.postgres.port, "redis": self.redis.port, "s3": self.s3.port}
        if not self.use_relays:
            self.ports = backends
            return
        self.ports = dict(RELAY_PORTS)
        for service, port in RELAY_PORTS.items():
            relay = Relay(self.data.namespace, (self.data.address, port), ("127.0.0.1", backends[service]))
            relay.start()
            self.relays[service] = relay

    def _migrate(self) -> None:
        env = self.app_env(self.hosts["ops"])
        result = subprocess.run([sys.executable, "-m", "cli.main", "migrate"], env=env, capture_output=True,
                                text=True, cwd=ROOT, timeout=300)
        if result.returncode:
            raise RuntimeError(f"migrate failed: {result.stderr[-2000:]}")
        if "pg_stat_statements" in _postgres_settings().get("shared_preload_libraries", ""):
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")

    def _spawn(self, host: Host, name: str, argv: list[str], extra: dict[str, str] | None = None,
               ready_url: str | None = None) -> App:
        # A hostname of its own (Celery's node name is role@hostname), in the host's namespace.
        wrapped = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', f"{self.name}-{host.name}", *argv]
        log = self.work_dir / "logs" / f"{host.name}-{name}.log"
        with inside(host.namespace):
            app = start_app(f"{host.name}-{name}", wrapped, self.app_env(host, extra), log, cwd=ROOT,
                            ready_url=ready_url, timeout=180)
        host.apps[name] = app
        return app

    def start_host(self, name: str, *, wait: bool = True) -> None:
        """Start the processes a host runs (`wait`: an API host until /healthz answers)."""
        host = self.hosts[name]
        if name.startswith("api"):
            url = f"http://{host.address}:{API_PORT}"
            self._spawn(host, "api", api_command(API_PORT, host.address), ready_url=f"{url}/healthz" if wait else None)
        elif name in WORKER_HOSTS:
            self._spawn(host, "gpu", worker_command("gpu", self.gpu_concurrency, METRICS_PORT))
        elif name == "ops":
            self._spawn(host, "cpu", worker_command("cpu", None, METRICS_PORT))
            self._spawn(host, "io", worker_command("io", 4, METRICS_PORT + 1))
            self._spawn(host, "beat", beat_command())

    def stop_host(self, name: str, *, kill: bool = True) -> None:
        host = self.hosts[name]
        for app in host.apps.values():
            app.kill() if kill else app.stop()
        host.apps.clear()

    def _haproxy(self) -> None:
        config = self.work_dir / "haproxy.cfg"
        servers = "\n".join(
            f"  server {name} {self.hosts[name].address}:{API_PORT} check" for name in ("api1", "api2")
        )
        config.write_text(HAPROXY_CONFIG.format(bind=f"{self.gateway}:{LB_PORT}", servers=servers,
                                                socket=self.work_dir / "haproxy.sock", error_503=ERROR_503))
        self.haproxy = start_app("haproxy", ["haproxy", "-db", "-f", str(config)], dict(os.environ),
                                 self.work_dir / "logs" / "haproxy.log")

    def wait_ready(self, timeout: float = 300.0) -> None:
        """Until HAProxy answers /readyz with both API hosts up and a GPU worker is live."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                response = httpx.get(f"{self.api_url}/readyz", timeout=5)
                if response.status_code == 200 and self.backends_up() == 2:
                    return
                last = f"{response.status_code} {response.text[:300]}"
            except httpx.HTTPError as failure:
                last = repr(failure)
            time.sleep(1)
        raise RuntimeError(f"the cluster did not become ready in {timeout:.0f}s: {last}")

    def backends_up(self) -> int:
        """API hosts HAProxy currently sends to."""
        answer = self._haproxy_command("show servers state apis")
        return sum(1 for line in answer.splitlines()[2:] if line.split()[5:6] == ["2"])

    def _haproxy_command(self, command: str) -> str:
        import socket

        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(self.work_dir / "haproxy.sock"))
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        for name in self.hosts:
            if name != "data":
                try:
                    self.stop_host(name, kill=True)
                except Exception:  # a half-started host: the namespace sweep below ends the rest
                    pass
        if self.haproxy:
            self.haproxy.kill()
        for relay in self.relays.values():
            relay.stop()
        for handle in (self.s3, self.redis, self.postgres):
            if handle is not None:
                try:
                    handle.stop()
                except Exception:
                    pass
        cleanup(self.name)
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]

    def remove(self) -> None:
        shutil.rmtree(self.work_dir, ignore_errors=True)

    # -------------------------------------------------------------- faults

    def _iptables(self, host: str, *rule: str, delete: bool = False) -> None:
        _run("ip", "netns", "exec", self.hosts[host].namespace, "iptables", "-D" if delete else "-A", *rule)

    def partition(self, host: str, peer: str = "data") -> Callable[[], None]:
        """Drop every packet between `host` and `peer`; returns the heal."""
        address = self.hosts[peer].address
        rules = [("OUTPUT", "-d", address, "-j", "DROP"), ("INPUT", "-s", address, "-j", "DROP")]
        for rule in rules:
            self._iptables(host, *rule)

        def heal() -> None:
            for rule in rules:
                self._iptables(host, *rule, delete=True)

        return heal

    def _delaying_relays(self) -> list[Relay]:
        if not self.relays:
            raise RuntimeError("delay needs the relays (Cluster(relays=True))")
        return list(self.relays.values())

    def degrade_data_link(self, delay: float = 0.2, jitter: float = 0.05, loss: float = 0.05) -> Callable[[], None]:
        """`delay ± jitter` seconds each way on the data host's services and `loss` of its packets
        dropped at random, both ways; returns the heal."""
        relays = self._delaying_relays() if delay else []
        rules = [(chain, "-m", "statistic", "--mode", "random", "--probability", f"{loss}", "-j", "DROP")
                 for chain in ("INPUT", "OUTPUT")] if loss else []
        for rule in rules:
            self._iptables("data", *rule)
        for relay in relays:
            relay.delay, relay.jitter = delay, jitter

        def heal() -> None:
            for relay in self.relays.values():
                relay.delay, relay.jitter = 0.0, 0.0
            for rule in rules:
                self._iptables("data", *rule, delete=True)

        return heal

    def slow_host_link(self, name: str, delay: float) -> Callable[[], None]:
        """`delay` seconds each way between host `name` and the data host's services (its
        connections only; the others' are untouched); returns the heal."""
        relays, address = self._delaying_relays(), self.hosts[name].address
        for relay in relays:
            relay.delay_from[address] = delay

        def heal() -> None:
            for relay in self.relays.values():
                relay.delay_from.pop(address, None)

        return heal

    def lose_host(self, name: str) -> Callable[[], None]:
        """Its processes killed (SIGKILL, as a power cut) and its link down; returns the way back."""
        host = self.hosts[name]
        _run("ip", "link", "set", host.link, "down")
        self.stop_host(name, kill=True)

        def back() -> None:
            _run("ip", "link", "set", host.link, "up")
            self.start_host(name)

        return back

    # -------------------------------------------------------------- counting helpers

    def new_tenant(self, name: str) -> str:
        from shared.config import Settings
        from shared.db import make_engine, make_session_factory, session_scope
        from shared.tenants import issue_key

        url = self.dsn.replace("postgresql://", "postgresql+psycopg://")
        engine = make_engine(Settings(_env_file=None, database_url=url))
        try:
            with session_scope(make_session_factory(engine)) as session:
                _, key = issue_key(session, name)
        finally:
            engine.dispose()
        return key

    def log(self, host: str, app: str) -> str:
        path = self.work_dir / "logs" / f"{host}-{app}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def processes(self, host: str) -> list[psutil.Process]:
        pids = _run("ip", "netns", "pids", self.hosts[host].namespace, check=False).stdout.split()
        found = []
        for pid in pids:
            try:
                found.append(psutil.Process(int(pid)))
            except (psutil.NoSuchProcess, ValueError):
                pass
        return found


def _postgres_settings() -> dict[str, str]:
    """pg_stat_statements when this Postgres has it (for statements per job), and room for the
    connections of seven hosts."""
    settings = {"max_connections": "300"}
    from devstack.postgres import _postgres_bin

    lib = _postgres_bin().parent / "lib"
    if any(lib.glob("pg_stat_statements*")) or any(lib.glob("postgresql/pg_stat_statements*")):
        settings["shared_preload_libraries"] = "pg_stat_statements"
        settings["pg_stat_statements.track"] = "all"
    return settings


# No API host ready: a problem+json 503 with Retry-After, like the API's own refusals.
ERROR_503 = (
    'http-error status 503 content-type "application/problem+json" string '
    '"{\\"type\\":\\"about:blank\\",\\"title\\":\\"Service Unavailable\\",\\"status\\":503,'
    '\\"detail\\":\\"no API host is ready\\"}" hdr Retry-After 5'
)
HAPROXY_CONFIG = """\
global
  maxconn 4096
  stats socket {socket} mode 600 level admin
  tune.bufsize 131072

defaults
  mode http
  timeout connect 2s
  timeout client 60s
  timeout server 30s
  # The Kubernetes readiness probe's timeout (deploy/k8s/base/api.yaml: timeoutSeconds 8).
  timeout check 8s
  {error_503}
  # A request whose server vanished before answering goes to the other one: connection
  # failures, and an empty answer or none (a killed API) once the request was buffered.
  # Safe for POST /v1/analyses only because clients send an Idempotency-Key.
  option http-buffer-request
  retries 3
  option redispatch 1
  retry-on conn-failure empty-response response-timeout

frontend api
  bind {bind}
  default_backend apis

backend apis
  balance roundrobin
  option httpchk GET /readyz?optional=gpu_workers
  http-check expect status 200
  # The readiness probe's failureThreshold (3), checked every 2 s instead of 10 s so that a CI-sized
  # fault sees the rotation change; a dead host's requests are retried on the other at once (above).
  default-server inter 2s fall 3 rise 2 on-marked-down shutdown-sessions
{servers}
"""


# ---------------------------------------------------------------- faults, counted


@dataclass(frozen=True)
class ClusterConfig:
    jobs: int = 40
    clients: int = 4
    lead: float = 5.0  # load before the fault
    partition: float = 300.0  # worker host partitioned from the data host
    degraded: float = 120.0  # delay and loss on the data link
    host_down: float = 60.0  # a worker host lost
    api_down: float = 30.0  # an API host lost, under load
    beat_partition: float = 60.0
    recovery: float = 120.0  # within which everything must be final after the heal
    stopped: float = 120.0  # a GPU host's pool or main process stopped (SIGSTOP)
    stop_early: bool = False  # CI: SIGCONT once every job is final (bounded by `stopped`)
    stop_load: float = 0.0  # seconds of load during the stop (0: most of it)


FULL = ClusterConfig()
CI = ClusterConfig(jobs=8, clients=3, lead=3.0, partition=25.0, degraded=12.0, host_down=15.0, api_down=8.0,
                   beat_partition=10.0, recovery=90.0, stopped=90.0, stop_early=True, stop_load=12.0)
# The CI suite's faults (tests/cluster; about 5.5 minutes with the start): a lost worker host is
# much like a partitioned one for the jobs it held, so it runs in the benchmark only.
CI_FAULTS = ("worker-partition", "api-host-lost", "data-link", "beat-partition", "gpu-pool-stopped",
             "gpu-main-stopped")
SLOW_LINK_BEFORE_STOP_S = 0.25  # gpu1's link delay each way until its pool or main is stopped
STOP_TARGET_S = 90.0  # every job accepted before or during a stop is final within this of the stop


@dataclass
class ClusterResult(FaultResult):
    duration: float = 0.0  # how long the fault lasted
    server_500: int = 0  # answers exactly 500 through HAProxy
    extra: dict[str, float] = field(default_factory=dict)


class ClusterRun(Run):
    """One fault: clients through HAProxy, the fault, the heal, then chaos.Run's counting."""

    def __init__(self, cluster: Cluster, fault: str, config: ClusterConfig,
                 inject: Callable[[ClusterRun], float]):
        self.stack, self.fault, self.cluster = cluster, fault, cluster  # Run reads stack.dsn / api_url
        self.config = ChaosConfig(jobs=config.jobs, clients=config.clients, lead=config.lead,
                                  recovery=config.recovery)
        self.cluster_config = config
        self.inject = inject
        self.prefix = f"cluster-{fault}-{uuid.uuid4().hex[:6]}"
        self.receiver = Receiver(host=cluster.gateway)
        self.receiver.start()
        self.api_key = cluster.new_tenant(self.prefix)
        self.result = ClusterResult(fault)
        registered = httpx.post(
            f"{cluster.api_url}/v1/webhook-endpoints", json={"url": self.receiver.url, "description": "cluster"},
            headers={"Authorization": f"Bearer {self.api_key}"}, timeout=30,
        )
        registered.raise_for_status()
        window = config.lead + self.fault_length() * 0.8 + 1.0
        self.load = Load(cluster.api_url, self.api_key, self.prefix, config.jobs, config.clients, window)
        self.finishers: list[Callable[[], None]] = []  # checks of the fault's own, after settling

    def fault_length(self) -> float:
        c = self.cluster_config
        return {"worker-partition": c.partition, "data-link": c.degraded, "worker-host-lost": c.host_down,
                "api-host-lost": c.api_down, "beat-partition": c.beat_partition,
                "gpu-pool-stopped": c.stop_load or c.stopped, "gpu-main-stopped": c.stop_load or c.stopped,
                }.get(self.fault, 10.0)

    def execute(self) -> ClusterResult:
        config, result = self.config, self.result
        self.load.give_up_at = time.monotonic() + 3600
        original_note = self.load.note

        def note(response: httpx.Response, seconds: float) -> None:
            if response.status_code == 500:
                result.server_500 += 1
            original_note(response, seconds)

        self.load.note = note  # type: ignore[method-assign]
        self.load.start()
        time.sleep(config.lead)
        started = time.monotonic()
        healed = self.inject(self)
        result.duration = healed - started
        self.load.give_up_at = healed + config.recovery
        self.load.join()
        deadline = healed + config.recovery
        while not self.settled() and time.monotonic() < deadline:
            time.sleep(0.5)
        if self.settled():
            result.recovery = max(0.0, time.monotonic() - healed)
        for finish in self.finishers:
            finish()
        self.count()
        self.count_deliveries()
        self.receiver.stop()
        return result  # type: ignore[return-value]

    def count_deliveries(self) -> None:
        """Which webhook duplicates (chaos.Receiver.duplicates counts both kinds): the same
        webhook-id acknowledged again (a delivery whose record could not be written, re-sent:
        receivers drop it by id) or one state change sent under several ids (a real duplicate)."""
        answered = [r for r in list(self.receiver.requests) if r.status is not None and 200 <= r.status < 300]
        by_id = Counter(r.webhook_id for r in answered)
        ids_by_event: dict[tuple[str, str | None], set[str]] = defaultdict(set)
        for r in answered:
            ids_by_event[(str((r.json().get("data") or {}).get("id")), r.type)].add(r.webhook_id)
        again = {webhook_id: n for webhook_id, n in by_id.items() if n > 1}
        split = {event: ids for event, ids in ids_by_event.items() if len(ids) > 1}
        self.result.extra["same_id_redelivered"] = float(sum(n - 1 for n in again.values()))
        # Counted apart (chaos.Run.count had them in `duplicated`): at-least-once delivery's own.
        self.result.duplicated -= int(self.result.extra["same_id_redelivered"])
        self.result.extra["event_under_several_ids"] = float(sum(len(ids) - 1 for ids in split.values()))
        self.result.details += [f"webhook-id {webhook_id} acknowledged {n} times" for webhook_id, n in again.items()]
        self.result.details += [f"{kind} of {analysis} sent under {len(ids)} ids" for (analysis, kind), ids in
                                split.items()]


def _hold(seconds: float) -> None:
    time.sleep(seconds)


def _holds_jobs(run: ClusterRun, host: str) -> bool:
    """Whether a worker on `host` has claimed one of this run's jobs (Celery's node name,
    role@hostname, is in analyses.claimed_by)."""
    try:
        with psycopg.connect(run.cluster.dsn, connect_timeout=3) as conn:
            return bool(conn.execute(
                "SELECT 1 FROM analyses WHERE external_id LIKE %s AND status = 'processing' AND claimed_by LIKE %s",
                (run.prefix + "-%", f"%{run.cluster.name}-{host}%"),
            ).fetchone())
    except psycopg.Error:
        return False


@contextmanager
def _jobs_go_to_gpu1(run: ClusterRun) -> Iterator[None]:
    """Until the block ends gpu2 reads no analysis queue, and gpu1's link to the data host is
    SLOW_LINK_BEFORE_STOP_S slower each way: the next jobs go to gpu1, and one it claims stays
    held for seconds, long enough for a fault to find it held (docs/DECISIONS.md, issue 26:
    Redis gave gpu2 every job of a CI-sized run more than once, and at 64 px a pass takes
    milliseconds)."""
    cluster = run.cluster
    cluster.analysis_consumers("gpu2", on=False)
    heal_link = cluster.slow_host_link("gpu1", SLOW_LINK_BEFORE_STOP_S)
    try:
        yield
    finally:
        heal_link()
        cluster.analysis_consumers("gpu2", on=True)


def worker_partition(run: ClusterRun) -> float:
    """gpu1 cannot reach the data host (Postgres, Redis, S3) while it holds jobs."""
    with _jobs_go_to_gpu1(run):
        run.wait_for(lambda: _holds_jobs(run, "gpu1"), 60, "a job held by gpu1")
        heal = run.cluster.partition("gpu1")
    _hold(run.cluster_config.partition)
    heal()
    return time.monotonic()


def data_link(run: ClusterRun) -> float:
    """200 ms ± 50 ms each way and 5 % of packets lost on the data host's link."""
    heal = run.cluster.degrade_data_link(0.2, 0.05, 0.05)
    _hold(run.cluster_config.degraded)
    heal()
    return time.monotonic()


def worker_host_lost(run: ClusterRun) -> float:
    """gpu1's processes killed and its link down while it holds jobs; then it comes back."""
    with _jobs_go_to_gpu1(run):
        run.wait_for(lambda: _holds_jobs(run, "gpu1"), 60, "a job held by gpu1")
        back = run.cluster.lose_host("gpu1")
    _hold(run.cluster_config.host_down)
    back()
    return time.monotonic()


def api_host_lost(run: ClusterRun) -> float:
    """api1 lost under load; HAProxy must route around it. Ends when api1 is back in rotation."""
    back = run.cluster.lose_host("api1")
    _hold(run.cluster_config.api_down)
    back()
    deadline = time.monotonic() + 60
    while run.cluster.backends_up() < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    return time.monotonic()




def sweeps_done(cluster: Cluster) -> float | None:
    """Sweeps finished so far (None: no answer). The sweeper runs in a thread of beat (issue 26,
    ``SWEEP_IN_BEAT``) and counts its passes in the broker's Redis on the data host; read from
    here, outside the partition, each pass the beat host finished is seen once it reached Redis."""
    import redis

    from worker.maintenance import SWEEPER_PASSES

    client = redis.Redis(host=cluster.data.address, port=cluster.ports["redis"], socket_timeout=2,
                         socket_connect_timeout=2)
    try:
        return float(client.get(SWEEPER_PASSES) or 0)
    except redis.exceptions.RedisError:
        return None
    finally:
        client.close()


BURST_WINDOW_S = 12.0  # after a beat-host partition heals: sweeps counted for a burst


def beat_partition(run: ClusterRun) -> float:
    """The ops host (beat, CPU and IO workers) cut from the data host. The sweeper must come
    back within 60 s of the heal and not run in a burst (beat catching up on missed runs)."""
    cluster = run.cluster
    seen: list[tuple[float, float]] = []  # (monotonic time, sweeps so far) at each change
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            count = sweeps_done(cluster)
            if count is not None and (not seen or count != seen[-1][1]):
                seen.append((time.monotonic(), count))
            stop.wait(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    heal = cluster.partition("ops")
    _hold(run.cluster_config.beat_partition)
    heal()
    healed = time.monotonic()

    def finish() -> None:
        # At least BURST_WINDOW_S after the heal, and until a sweep was seen (60 s at most).
        while time.monotonic() < healed + 60 and (
            time.monotonic() < healed + BURST_WINDOW_S or not any(at > healed for at, _ in seen)
        ):
            time.sleep(0.5)
        stop.set()
        watcher.join()
        before = [count for at, count in seen if at <= healed]
        after = [(at, count) for at, count in seen if at > healed]
        base = before[-1] if before else 0.0
        interval = float(SMALL["SWEEP_INTERVAL_SECONDS"])
        run.result.extra["first_sweep_after_heal_s"] = after[0][0] - healed if after else float("inf")
        in_window = max((count for at, count in after if at <= healed + BURST_WINDOW_S), default=base) - base
        run.result.extra["sweeps_in_window_after_heal"] = in_window
        run.result.extra["sweeps_expected_in_window"] = BURST_WINDOW_S / interval

    run.finishers.append(finish)
    return healed


# ---------------------------------------------------------------- a stopped GPU worker (SIGSTOP)


def gpu_main(cluster: Cluster, host: str) -> psutil.Process:
    """The GPU worker's main process on `host`: the one whose heartbeat file is there
    (shared.liveness), i.e. the process that reads the broker; its children are the pool."""
    from shared.liveness import FILE_PREFIX, heartbeat_dir, pid_alive

    folder = heartbeat_dir(cluster.work_dir / host / "data")
    pids = [int(path.name[len(FILE_PREFIX):]) for path in folder.glob(f"{FILE_PREFIX}*")
            if path.name[len(FILE_PREFIX):].isdigit()]
    alive = [pid for pid in pids if pid_alive(pid)]
    if len(alive) != 1:
        raise RuntimeError(f"expected one GPU worker main process on {host}, found {alive}")
    return psutil.Process(alive[0])


def _stop_rows(run: ClusterRun) -> list[tuple]:
    """(id, status, claimed_by, attempt, transient_retries, created_at, completed_at) of this run's jobs."""
    with psycopg.connect(run.cluster.dsn, connect_timeout=3) as conn:
        return conn.execute(
            "SELECT id::text, status, claimed_by, attempt, transient_retries, extract(epoch FROM created_at)::float8, "
            "extract(epoch FROM completed_at)::float8 FROM analyses WHERE external_id LIKE %s",
            (run.prefix + "-%",),
        ).fetchall()


def _transitions(run: ClusterRun) -> list[tuple]:
    """(analysis id, status, stage, epoch seconds) of this run's jobs, in commit order."""
    with psycopg.connect(run.cluster.dsn, connect_timeout=3) as conn:
        return conn.execute(
            "SELECT t.analysis_id::text, t.status, t.stage, extract(epoch FROM t.at)::float8 "
            "FROM analysis_transitions t JOIN analyses a ON a.id = t.analysis_id "
            "WHERE a.external_id LIKE %s ORDER BY t.id",
            (run.prefix + "-%",),
        ).fetchall()


def _bare_readyz(cluster: Cluster, host: str = "api1") -> int:
    """The API host's own readiness, bare (every check required, GPU workers included)."""
    try:
        return httpx.get(f"http://{cluster.hosts[host].address}:{API_PORT}/readyz", timeout=8).status_code
    except httpx.HTTPError:
        return 0


def _readiness_without_gpu_workers(run: ClusterRun, stop: Callable[[], None], resume: Callable[[], None]) -> None:
    """Every GPU worker stopped (`stop`): an API host's bare /readyz must say not ready (the
    census counts no stopped worker), while HAProxy (whose probe leaves GPU workers optional)
    keeps both API hosts; then `resume`, and ready again."""
    cluster, extra = run.cluster, run.result.extra
    stop()
    stopped = time.monotonic()
    try:
        while time.monotonic() < stopped + 45 and _bare_readyz(cluster) == 200:
            time.sleep(0.5)
        extra["readyz_not_ready_after_s"] = time.monotonic() - stopped if _bare_readyz(cluster) != 200 else float("inf")
        extra["api_hosts_in_rotation_meanwhile"] = float(cluster.backends_up())
    finally:
        resume()
    resumed = time.monotonic()
    while time.monotonic() < resumed + 45 and _bare_readyz(cluster) != 200:
        time.sleep(0.5)
    extra["readyz_ready_again_s"] = time.monotonic() - resumed if _bare_readyz(cluster) == 200 else float("inf")


def _signal_all(processes: list[psutil.Process], sig: signal.Signals) -> None:
    for process in processes:
        try:
            process.send_signal(sig)
        except psutil.NoSuchProcess:
            pass


def _stop_gpu_worker(run: ClusterRun, part: str) -> float:
    """gpu1's pool processes (`part` "pool") or its main process ("main") stopped with SIGSTOP
    while it holds jobs, for `stopped` seconds (CI: until every job accepted so far is final,
    at most that long), then SIGCONT. Nothing helps: no supervisor restarts anything (the
    cluster is Kubernetes-like; its liveness probe would restart the main after 60 s, the
    pool is invisible to it); the sweeper's census must release the held jobs to gpu2, without
    spending their attempt. Afterwards the stopped process's late writes must be fenced off."""
    cluster, config, extra = run.cluster, run.cluster_config, run.result.extra
    main = gpu_main(cluster, "gpu1")
    victims = main.children() if part == "pool" else [main]

    def gpu1_holds() -> set:
        return {row[0] for row in _stop_rows(run)
                if row[1] == "processing" and f"{cluster.name}-gpu1" in (row[2] or "")}

    with _jobs_go_to_gpu1(run):
        for _ in range(3):
            run.wait_for(lambda: _holds_jobs(run, "gpu1"), 60, "a job held by gpu1")
            held = gpu1_holds()
            _signal_all(victims, signal.SIGSTOP)
            stopped_at, stopped = time.time(), time.monotonic()
            if part != "pool":
                break
            # Its pool stopped, gpu1 can finish nothing more: read again once what it sent before
            # the signal (held in the relay for the link's delay) has landed. A job finished in
            # between was never held.
            time.sleep(2 * SLOW_LINK_BEFORE_STOP_S + 0.3)
            held &= gpu1_holds()
            if held:
                break
            _signal_all(victims, signal.SIGCONT)  # it finished all it held just before the stop: again
    run.result.notes.append(f"stopped gpu1's {part} (pid {', '.join(str(v.pid) for v in victims)})")
    try:
        while time.monotonic() < stopped + config.stopped:
            if config.stop_early and all(sub.analysis_id for sub in run.load.submissions) and all(
                    row[1] in FINAL for row in _stop_rows(run)):
                break
            time.sleep(0.5)
        if part == "main":
            # The only GPU worker left stopped too: nothing can analyse, so not ready.
            other = gpu_main(cluster, "gpu2")
            _readiness_without_gpu_workers(run, lambda: _signal_all([other], signal.SIGSTOP),
                                           lambda: _signal_all([other], signal.SIGCONT))
        else:
            others = gpu_main(cluster, "gpu2").children()
            _readiness_without_gpu_workers(run, lambda: _signal_all(others, signal.SIGSTOP),
                                           lambda: _signal_all(others, signal.SIGCONT))
    finally:
        _signal_all(victims, signal.SIGCONT)
    resumed, resumed_at = time.monotonic(), time.time()
    stop_s = resumed - stopped

    def finish() -> None:
        # Let the resumed process try its late writes (its pass, its outcomes) before counting.
        time.sleep(max(0.0, resumed + 6.0 - time.monotonic()))
        after = _stop_rows(run)
        transitions = _transitions(run)
        accepted_by_resume = [r for r in after if r[5] <= resumed_at]
        final_ids = {r[0] for r in after if r[1] in FINAL}
        by_id = {r[0]: r for r in after}
        extra["held_at_stop"] = float(len(held))
        extra["held_finished_by_gpu2"] = float(sum(
            1 for i in held if by_id[i][1] in FINAL and f"{cluster.name}-gpu2" in (by_id[i][2] or "")))
        extra["held_released_without_attempt"] = float(sum(1 for i in held if by_id[i][4] > 0))
        extra["attempts_spent_max"] = float(max((r[3] - r[4] for r in after if r[1] in FINAL), default=0))
        releases = [at for i, status, _, at in transitions if i in held and status == "queued" and at > stopped_at]
        pickups = [at for i, status, _, at in transitions
                   if i in held and status == "processing" and at > (min(releases) if releases else stopped_at)]
        extra["release_after_stop_s"] = (max(releases) - stopped_at) if releases else float("inf")
        extra["held_picked_up_after_stop_s"] = (max(pickups) - stopped_at) if pickups else float("inf")
        if part == "main" and not releases:
            # gpu1's pool process went on with what it held (its main only reads the broker).
            extra["release_after_stop_s"] = extra["held_picked_up_after_stop_s"] = 0.0
        # Each job accepted before the SIGCONT: final within this of the stop, or of its
        # acceptance when it came later (a job accepted 100 s into the stop cannot be final
        # 90 s after the stop began; what matters is that the stop did not hold it).
        waits = [r[6] - max(r[5], stopped_at) if r[6] is not None else float("inf") for r in accepted_by_resume]
        extra["worst_final_after_stop_s"] = max(waits, default=0.0)
        before = [r[6] for r in accepted_by_resume if r[5] <= stopped_at]
        extra["accepted_before_final_after_stop_s"] = (
            max(before) - stopped_at if before and None not in before else float("inf") if before else 0.0)
        extra["held_final_after_stop_s"] = max(
            (by_id[i][6] - stopped_at if by_id[i][6] is not None else float("inf") for i in held), default=0.0)
        during = sorted(r[6] - r[5] for r in accepted_by_resume if r[5] > stopped_at and r[6] is not None)
        if during:
            extra["accepted_during_n"] = float(len(during))
            extra["accepted_during_latency_p50_s"] = during[len(during) // 2]
            extra["accepted_during_latency_max_s"] = during[-1]
        extra["stopped_s"] = stop_s
        # Fencing: after a job's first final state nothing changes its status or stage again.
        first_final: dict[str, float] = {}
        late = 0
        for i, status, _, at in transitions:
            if i in first_final:
                late += 1
            elif status in FINAL:
                first_final[i] = at
        extra["changes_after_final"] = float(late)
        # Where each held job's time went (for a miss: which host claimed it, when each stage came).
        for i in sorted(held):
            steps = [f"{status}{'/' + stage if stage else ''}@{at - stopped_at:+.1f}s"
                     for j, status, stage, at in transitions if j == i and at > stopped_at - 5]
            run.result.details.append(f"held {i} (finished by {by_id[i][2]}): {', '.join(steps)}")
        missing = {r[0] for r in accepted_by_resume} - final_ids
        run.result.details += [f"not final: {i}" for i in sorted(missing)]

    run.finishers.append(finish)
    return resumed


def gpu_pool_stopped(run: ClusterRun) -> float:
    """gpu1's pool process stopped (SIGSTOP) while it holds jobs; its main goes on reporting in."""
    return _stop_gpu_worker(run, "pool")


def gpu_main_stopped(run: ClusterRun) -> float:
    """gpu1's main process (the one that reads the broker) stopped (SIGSTOP) while it holds jobs."""
    return _stop_gpu_worker(run, "main")


FAULTS: dict[str, Callable[[ClusterRun], float]] = {
    "worker-partition": worker_partition,
    "data-link": data_link,
    "worker-host-lost": worker_host_lost,
    "api-host-lost": api_host_lost,
    "beat-partition": beat_partition,
    "gpu-pool-stopped": gpu_pool_stopped,
    "gpu-main-stopped": gpu_main_stopped,
}


def run_fault(cluster: Cluster, fault: str, config: ClusterConfig) -> ClusterResult:
    return ClusterRun(cluster, fault, config, FAULTS[fault]).execute()


def table(results: list[ClusterResult]) -> str:
    head = ("fault", "held", "jobs", "lost", "stuck", "failed", "dup", "miss rep", "miss ev", "500", "5xx",
            "recovery", "notes")
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in results:
        recovery = f"{r.recovery:.1f}s" if r.recovery is not None else "never"
        accepted = f"{r.accepted}/{r.jobs}" if r.accepted != r.jobs else str(r.jobs)
        notes = r.notes + [f"{k}={v:.1f}" for k, v in r.extra.items()]
        lines.append(" | ".join(map(str, (
            r.fault, f"{r.duration:.0f}s", accepted, r.lost, r.stuck, r.failed, r.duplicated, r.missing_reports,
            r.missing_events, r.server_500, r.server_errors, recovery, "; ".join(notes),
        ))))
    return "\n".join("| " + line + " |" for line in lines)


# ---------------------------------------------------------------- scale


def _cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def _machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    fields = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) / hz, sum(fields) / hz


def throughput(cluster: Cluster, jobs: int, worker_hosts: tuple[str, ...]) -> dict[str, float]:
    """`jobs` bulk jobs submitted at once through HAProxy; completions per minute with the
    given worker hosts running (the others stopped), and CPU seconds by host."""
    for name in WORKER_HOSTS:
        if name not in worker_hosts and cluster.hosts[name].apps:
            cluster.stop_host(name, kill=False)
        elif name in worker_hosts and not cluster.hosts[name].apps:
            cluster.start_host(name)
    time.sleep(15)  # workers loaded and registered
    key = cluster.new_tenant(f"scale-{len(worker_hosts)}-{uuid.uuid4().hex[:6]}")
    prefix = f"scale{len(worker_hosts)}-{uuid.uuid4().hex[:6]}"
    load = Load(cluster.api_url, key, prefix, jobs, 4, 0.0)
    for submission in load.submissions:
        submission.index = 0  # every one bulk (chaos.Load alternates by index parity)
    cpu_before = {name: _cpu_seconds(cluster.processes(name)) for name in cluster.hosts}
    busy_before, total_before = _machine_busy()
    stats_before = _pg_counters(cluster)
    started = time.monotonic()
    load.give_up_at = started + 600
    load.start()
    load.join()
    ids = [s.analysis_id for s in load.submissions if s.analysis_id]
    with psycopg.connect(cluster.dsn) as conn:
        while time.monotonic() < started + 1200:
            done = conn.execute("SELECT count(*) FROM analyses WHERE id::text = ANY(%s) AND status = ANY(%s)",
                                (ids, list(FINAL))).fetchone()[0]
            conn.commit()
            if done >= len(ids):
                break
            time.sleep(1)
    elapsed = time.monotonic() - started
    busy_after, total_after = _machine_busy()
    stats_after = _pg_counters(cluster)
    cpu = {name: _cpu_seconds(cluster.processes(name)) - cpu_before[name] for name in cluster.hosts}
    result = {
        "jobs": float(len(ids)),
        "seconds": elapsed,
        "jobs_per_min": 60 * len(ids) / elapsed,
        "machine_busy_share": (busy_after - busy_before) / max(1e-9, total_after - total_before),
        **{f"cpu_s_{name}": seconds for name, seconds in cpu.items()},
    }
    for name, value in stats_after.items():
        if name in stats_before and name != "connections_now":
            result[f"{name}_per_job"] = (value - stats_before[name]) / max(1, len(ids))
    result["pg_connections_now"] = stats_after["connections_now"]
    return result


def _pg_counters(cluster: Cluster) -> dict[str, float]:
    """Transactions, rows and (with pg_stat_statements) statements so far, and connections now."""
    with psycopg.connect(cluster.dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT xact_commit + xact_rollback, tup_inserted, tup_updated, tup_deleted, tup_fetched "
            "FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
        counters = dict(zip(("transactions", "rows_inserted", "rows_updated", "rows_deleted", "rows_fetched"),
                            map(float, row), strict=True))
        try:
            calls = conn.execute("SELECT sum(calls) FROM pg_stat_statements").fetchone()[0]
            if calls is not None:
                counters["statements"] = float(calls)
        except psycopg.Error:
            pass
        connections = conn.execute(
            "SELECT host(client_addr), count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "GROUP BY 1"
        ).fetchall()
    counters["connections_now"] = float(sum(n for _, n in connections))
    import redis

    with redis.Redis(host=cluster.data.address, port=cluster.ports["redis"], socket_timeout=5) as client:
        stats = client.info("commandstats")
    counters["redis_commands"] = float(sum(entry["calls"] for entry in stats.values()))
    return counters


def connections_by_host(cluster: Cluster) -> dict[str, int]:
    """Postgres connections now, by the host they come from (pg_stat_activity's client address;
    through the relays every client would be the data host's loopback)."""
    by_address = {host.address: name for name, host in cluster.hosts.items()}
    with psycopg.connect(cluster.dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT host(client_addr), count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() GROUP BY 1"
        ).fetchall()
    counts = {name: 0 for name in cluster.hosts if name != "data"}
    for address, n in rows:
        name = by_address.get(address or "", "harness" if address == cluster.gateway else "other")
        counts[name] = counts.get(name, 0) + n
    return counts


def background(cluster: Cluster, seconds: float = 20.0) -> dict[str, float]:
    """Postgres statements and transactions, and Redis commands, per second with no jobs:
    heartbeats, sweeps, webhook wake-ups and readiness checks."""
    before = _pg_counters(cluster)
    time.sleep(seconds)
    after = _pg_counters(cluster)
    return {f"idle_{name}_per_s": (after[name] - before[name]) / seconds
            for name in ("statements", "transactions", "redis_commands") if name in before}


def scale(cluster: Cluster, jobs: int) -> dict[str, dict[str, float]]:
    measured = {}
    for label, hosts in (("one worker host", ("gpu1",)), ("two worker hosts", WORKER_HOSTS)):
        run = throughput(cluster, jobs, hosts)
        connections = connections_by_host(cluster)
        measured[label] = {**run, **{f"pg_conn_{k}": float(v) for k, v in connections.items()},
                           **background(cluster)}
    return measured


# ---------------------------------------------------------------- the command


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="every fault at full size (5-minute partition)")
    parser.add_argument("--faults", default="", help=f"comma-separated, in order; from {', '.join(FAULTS)}")
    parser.add_argument("--partition", type=float, help="seconds a worker host stays partitioned")
    parser.add_argument("--jobs", type=int, help="jobs per fault")
    parser.add_argument("--scale", action="store_true", help="throughput with one and two worker hosts")
    parser.add_argument("--scale-jobs", type=int, default=60)
    parser.add_argument("--ci", action="store_true", help="the CI sizes")
    parser.add_argument("--cleanup", action="store_true",
                        help="remove namespaces, links and processes left behind (ends any run still going)")
    parser.add_argument("--prefix", default=PREFIX, help="with --cleanup: only names starting with this")
    parser.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    args = parser.parse_args(argv)

    if args.cleanup:
        if not args.prefix.startswith(PREFIX):
            parser.error(f"--prefix must start with {PREFIX}")
        removed = cleanup(args.prefix)
        print("\n".join(removed) or "nothing to remove")
        return
    reason = unavailable()
    if reason:
        parser.exit(2, f"cannot run the cluster: {reason}\n")
    config = CI if args.ci else FULL
    overrides = {k: v for k, v in (("partition", args.partition), ("jobs", args.jobs)) if v is not None}
    if overrides:
        config = ClusterConfig(**{**vars(config), **overrides})
    faults = [f.strip() for f in args.faults.split(",") if f.strip()] or (list(FAULTS) if args.full or args.ci
                                                                          else [])
    unknown = [f for f in faults if f not in FAULTS]
    if unknown:
        parser.error(f"unknown faults {unknown}; choose from {', '.join(FAULTS)}")
    if not faults and not args.scale:
        parser.error("nothing to do: give --full, --ci, --faults or --scale")
    cluster = Cluster(relays=bool(faults))
    started = time.monotonic()
    results: list[ClusterResult] = []
    try:
        cluster.start()
        print(f"cluster up in {time.monotonic() - started:.0f}s ({cluster.subnet}.0/24); logs in "
              f"{cluster.work_dir / 'logs'}", flush=True)
        for fault in faults:
            result = run_fault(cluster, fault, config)
            results.append(result)
            print(f"{fault}: {'ok' if result.ok and not result.server_500 else 'FAILED: ' + ', '.join(result.problems)}"
                  f" (recovery {result.recovery})", flush=True)
            for line in result.details[:20]:
                print(f"    {line}", flush=True)
        if args.scale:
            measured = scale(cluster, args.scale_jobs)
            for label, values in measured.items():
                print(f"\n{label}:")
                for name, value in values.items():
                    print(f"  {name:32s} {value:10.2f}")
            one, two = measured["one worker host"], measured["two worker hosts"]
            print(f"\nratio two/one: {two['jobs_per_min'] / one['jobs_per_min']:.2f}x")
    finally:
        cluster.stop()
        if not args.keep and all(r.ok for r in results):
            cluster.remove()
    if results:
        print(f"\n{table(results)}\n\ntotal {time.monotonic() - started:.0f}s; {config}")
    sys.exit(0 if all(r.ok and not r.server_500 for r in results) else 1)


if __name__ == "__main__":
    main()
