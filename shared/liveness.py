"""Worker main processes report that they are alive (issue 26): hung is dead.

A worker's *main* process (the one that reads the broker and hands messages to its pool) writes
a heartbeat every ``GPU_HEARTBEAT_SECONDS`` from a thread of its own:

- a file, ``DATA_DIR/heartbeats/worker-<pid>``, touched: what ``dermasentinel up``'s supervisor
  and the Kubernetes liveness probe (``dermasentinel worker-alive --max-age 60``) read;
- an entry in the broker's Redis, ``dermasentinel:workers:main`` (member ``node:pid``, score the
  time), and for each pool process the main it belongs to: readiness and the sweeper count a
  pool process as live only while its main process reports in too.

A stopped (SIGSTOP) or deadlocked-to-the-ground main process stops writing both; a pool
process of a stopped main still writes its own heartbeat, and used to keep ``/readyz`` at 200
while nothing read the queue.

The main process also looks at its pool processes at each beat: one the kernel shows as
stopped (SIGSTOP, a debugger) is recorded in ``dermasentinel:workers:stopped``. A stopped
process did not hang on its job, so its jobs are released without spending an attempt (a pool
process that merely went silent may have died of its job, and still spends one).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import cast

import redis
import redis.exceptions

WORKER_MAINS = "dermasentinel:workers:main"
POOL_PARENTS = "dermasentinel:workers:parent"  # hash: pool process id → its main's id
STOPPED_POOLS = "dermasentinel:workers:stopped"  # sorted set: pool process id, score when last seen stopped
HEARTBEAT_DIR = "heartbeats"
FORGET_AFTER_SECONDS = 3600.0  # a main gone this long leaves the census
FILE_PREFIX = "worker-"


def heartbeat_dir(data_dir: Path) -> Path:
    return Path(data_dir) / HEARTBEAT_DIR


def heartbeat_file(data_dir: Path, pid: int) -> Path:
    return heartbeat_dir(data_dir) / f"{FILE_PREFIX}{pid}"


def file_age(path: Path) -> float | None:
    """Seconds since the heartbeat file was last touched; None when there is none."""
    try:
        return max(0.0, time.time() - path.stat().st_mtime)
    except FileNotFoundError:
        return None


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (one we may not signal counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def freshest_worker(data_dir: Path) -> tuple[int, float] | None:
    """(pid, age) of the most recently reporting worker main process that still exists."""
    best: tuple[int, float] | None = None
    folder = heartbeat_dir(data_dir)
    if not folder.is_dir():
        return None
    for path in folder.glob(f"{FILE_PREFIX}*"):
        pid_text = path.name[len(FILE_PREFIX):]
        if not pid_text.isdigit() or not pid_alive(int(pid_text)):
            continue
        age = file_age(path)
        if age is not None and (best is None or age < best[1]):
            best = (int(pid_text), age)
    return best


def main_id(node: str, pid: int) -> str:
    return f"{node}:{pid}"


def stale_mains(client: redis.Redis, within_seconds: float) -> set[str]:
    """Main processes that reported in once but not within the window (hung, stopped or gone)."""
    since = time.time() - within_seconds
    found = cast(list[bytes], client.zrangebyscore(WORKER_MAINS, "-inf", f"({since}"))
    return {m.decode() for m in found}


def stopped_pools(client: redis.Redis, within_seconds: float) -> set[str]:
    """Pool processes their main process saw stopped (state T) within the window."""
    since = time.time() - within_seconds
    found = cast(list[bytes], client.zrangebyscore(STOPPED_POOLS, since, "+inf"))
    return {m.decode() for m in found}


def children(pid: int) -> list[int]:
    """The child processes of `pid` (Linux: /proc/PID/task/*/children; else none)."""
    found: list[int] = []
    for listing in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(word) for word in listing.read_text().split()]
        except (OSError, ValueError):
            continue
    return found


def is_stopped(pid: int) -> bool:
    """Whether the kernel shows the process as stopped (SIGSTOP/SIGTSTP: T; a debugger: t)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rsplit(")", 1)[-1].split()
    return bool(fields) and fields[0] in ("T", "t")


def parents(client: redis.Redis, pool_ids: list[str]) -> dict[str, str]:
    if not pool_ids:
        return {}
    values = cast(list[bytes | None], client.hmget(POOL_PARENTS, pool_ids))
    return {pool: value.decode() for pool, value in zip(pool_ids, values, strict=True) if value is not None}


def record_parent(client: redis.Redis, pool_id: str, parent: str) -> None:
    client.hset(POOL_PARENTS, pool_id, parent)


class MainHeartbeat:
    """The heartbeat thread of a worker's main process."""

    def __init__(self, client: redis.Redis, data_dir: Path, node: str, interval: float):
        self.client = client
        self.path = heartbeat_file(data_dir, os.getpid())
        self.member = main_id(node, os.getpid())
        self.interval = interval
        self.node = node
        self._stopped: set[str] = set()  # pool processes recorded as stopped, until they run again
        self._stop = threading.Event()

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        threading.Thread(target=self._run, name="main-heartbeat", daemon=True).start()

    def _run(self) -> None:
        while True:
            self.beat()
            if self._stop.wait(self.interval):
                return

    def beat(self) -> None:
        try:
            self.path.touch()
        except OSError:
            pass  # the Redis entry still says it
        stopped = {main_id(self.node, pid) for pid in children(os.getpid()) if is_stopped(pid)}
        try:
            now = time.time()
            with self.client.pipeline(transaction=False) as pipe:
                pipe.zadd(WORKER_MAINS, {self.member: now})
                pipe.zremrangebyscore(WORKER_MAINS, "-inf", now - FORGET_AFTER_SECONDS)
                if stopped:
                    pipe.zadd(STOPPED_POOLS, dict.fromkeys(stopped, now))
                if self._stopped - stopped:  # running again (SIGCONT) or gone
                    pipe.zrem(STOPPED_POOLS, *(self._stopped - stopped))
                pipe.zremrangebyscore(STOPPED_POOLS, "-inf", now - FORGET_AFTER_SECONDS)
                pipe.execute()
            self._stopped = stopped
        except redis.exceptions.RedisError:
            pass  # retried at the next beat

    def stop(self) -> None:
        self._stop.set()
        self.path.unlink(missing_ok=True)
        try:
            self.client.zrem(WORKER_MAINS, self.member)
        except redis.exceptions.RedisError:
            pass  # it ages out
