"""One child process: its own process group, a log file, optionally a data-dir lock.

Every child runs in a new session so that stopping it can signal the whole group
(Postgres forks a backend per connection, Celery a pool process per slot). When started
from the main thread the child also asks the kernel to signal it if this process dies,
so a crashed or killed parent does not leave servers holding ports.
"""

import ctypes
import fcntl
import os
import pwd
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from devstack.errors import DataDirInUseError, ServiceStartError

_PR_SET_PDEATHSIG = 1
_LOG_TAIL_LINES = 40


def log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    if not path.exists():
        return ""
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        handle.seek(max(0, handle.tell() - 16_384))
        text = handle.read().decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def _die_with_parent(parent_pid: int, death_signal: signal.Signals) -> Callable[[], None]:
    libc = ctypes.CDLL(None, use_errno=True)

    def arrange() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, int(death_signal), 0, 0, 0)
        # The parent may have died between fork and prctl; then nobody would signal us.
        if os.getppid() != parent_pid:
            os._exit(1)

    return arrange


class DataDirLock:
    """An exclusive flock that marks a service's data as in use by a running server."""

    def __init__(self, service: str, path: Path):
        self._path = path
        self._service = service
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataDirInUseError(
                f"{self._service} is already running on this data directory (lock {self._path}); "
                "stop the other stack first or use another data directory"
            ) from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class ServiceProcess:
    """A started process; `stop` signals, waits `grace` seconds, then kills its group."""

    def __init__(
        self,
        service: str,
        argv: list[str],
        log_path: Path,
        lock: DataDirLock | None,
        *,
        stop_signal: signal.Signals = signal.SIGTERM,
        death_signal: signal.Signals = signal.SIGKILL,
        account: pwd.struct_passwd | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ):
        """Spawn `argv`; `lock`, if any, must be held already and is released when the process stops."""
        self.service = service
        self.log_path = log_path
        self._stop_signal = stop_signal
        self._lock = lock
        self._stop_requested = False
        log_path.parent.mkdir(parents=True, exist_ok=True)
        in_main_thread = threading.current_thread() is threading.main_thread()
        try:
            with log_path.open("ab") as log:
                log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {service}: {' '.join(argv)}\n".encode())
                log.flush()
                # PDEATHSIG fires when the forking *thread* exits, so only arm it from the main thread.
                self._popen = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=_die_with_parent(os.getpid(), death_signal) if in_main_thread else None,
                    user=account.pw_uid if account else None,
                    group=account.pw_gid if account else None,
                    extra_groups=[] if account else None,
                    env=env,
                    cwd=cwd,
                )
        except BaseException:
            self._release_lock()
            raise
        self.pid = self._popen.pid

    def poll(self) -> int | None:
        """The exit status once the process has exited (negative: killed by that signal), else None."""
        return self._popen.poll()

    def request_stop(self) -> None:
        """Send the stop signal without waiting; `stop` then finishes the job."""
        if self._popen.poll() is None and not self._stop_requested:
            self._stop_requested = True
            self._signal_leader(self._stop_signal)

    def wait_until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll `ready` until true; raise ServiceStartError (and stop) on exit or timeout."""
        deadline = time.monotonic() + timeout
        last_failure = ""
        try:
            while True:
                if self._popen.poll() is not None:
                    raise self.start_error(f"the process exited with status {self._popen.returncode} before {what}")
                try:
                    if ready():
                        return
                except Exception as failure:  # failing to answer only means "not ready yet" until the deadline
                    last_failure = f" (last attempt: {type(failure).__name__}: {failure})"
                if time.monotonic() >= deadline:
                    raise self.start_error(f"no {what} within {timeout:.0f} s{last_failure}")
                time.sleep(0.05)
        except BaseException:
            # Not ready, or interrupted (Ctrl-C, SIGTERM) while waiting: nothing half-started stays behind.
            self.stop()
            raise

    def start_error(self, reason: str) -> ServiceStartError:
        return ServiceStartError(self.service, reason, self.log_path, log_tail(self.log_path))

    def stop(self, grace: float = 10.0) -> None:
        """Ask the server to shut down, then kill whatever is left of its process group."""
        try:
            if self._popen.poll() is None:
                self.request_stop()
                try:
                    self._popen.wait(grace)
                except subprocess.TimeoutExpired:
                    pass
            self._kill_group()
            self._popen.wait()
        finally:
            self._release_lock()

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()

    def _signal_leader(self, sig: signal.Signals) -> None:
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def _kill_group(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        # Children of a killed leader are reparented; wait until the group is really empty.
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            self._popen.poll()
            try:
                os.killpg(self.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.02)
