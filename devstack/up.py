"""`dermasentinel up` as a child process, for the tests and benchmarks that run the whole product
from outside (the chaos faults, the `up` tests, the engine's end-to-end run):

    up = UpProcess(work / "ds", settings={"SEG_SIZE": "128"}).start()
    up.api_url, up.api_key, up.stack_env()["DATABASE_URL"], up.child("--role gpu")
    up.stop()                                      # SIGTERM, as Ctrl-C; returns the exit status

Its console (stdout and stderr) goes to a file; `child()` and `descendants()` need psutil
(the test extra), imported only when called.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from devstack.apps import ENV_PREFIX, child_env
from devstack.errors import ServiceStartError

if TYPE_CHECKING:
    import psutil

READY_LINE = "DermaSentinel is running at"


class UpProcess:
    """`python -m cli.main up --port PORT` with DATA_DIR=`data_dir` and `settings` (names without
    the DERMASENTINEL_ prefix) in an environment otherwise free of the caller's DERMASENTINEL_*."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = 0,
        settings: Mapping[str, str] | None = None,
        console_path: Path | None = None,
        args: Sequence[str] = (),
        config_home: Path | None = None,
    ):
        self.data_dir = Path(data_dir)
        self.port = port
        self.args = list(args)
        self.console_path = console_path or self.data_dir.parent / "console.log"
        given = {"DATA_DIR": str(self.data_dir), **(settings or {})}
        self.env = child_env({ENV_PREFIX + name.upper(): value for name, value in given.items()})
        # `up` records where its stack is in the user config (XDG_CONFIG_HOME/dermasentinel/):
        # a folder of this run's, never the real user's.
        self.config_home = Path(config_home) if config_home else self.data_dir.parent / "config"
        self.env["XDG_CONFIG_HOME"] = str(self.config_home)
        self.process: subprocess.Popen | None = None
        self.starts = 0
        # Known once it runs (from DATA_DIR/stack.env); with a fixed port, known now.
        self.api_url: str | None = f"http://127.0.0.1:{port}" if port else None
        self.api_key: str | None = None

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", "cli.main", "up", "--port", str(self.port), *self.args]

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def spawn(self) -> int:
        """Start it without waiting; returns the console offset where this run's output begins."""
        self.starts += 1
        self.console_path.parent.mkdir(parents=True, exist_ok=True)
        with self.console_path.open("ab") as console:
            console.write(f"\n=== start {self.starts} of dermasentinel up\n".encode())
            console.flush()
            offset = console.tell()
            self.process = subprocess.Popen(
                self.command, env=self.env, stdout=console, stderr=subprocess.STDOUT, start_new_session=True
            )
        return offset

    def start(self, timeout: float = 240.0) -> UpProcess:
        """Start it and return once it says it is running (ServiceStartError with its console if
        it exits first or takes longer than `timeout`). With a fixed `port`, it must be there."""
        offset = self.spawn()
        deadline = time.monotonic() + timeout
        assert self.process is not None
        while READY_LINE not in (this_run := self.console()[offset:]):
            if self.process.poll() is not None or time.monotonic() > deadline:
                reason = (f"exited with status {self.process.returncode}" if self.process.poll() is not None
                          else f"not running within {timeout:.0f} s")
                raise ServiceStartError("dermasentinel up", reason, self.console_path, this_run[-4000:])
            time.sleep(0.5)
        if self.port and f"running at http://127.0.0.1:{self.port}" not in this_run:
            raise ServiceStartError("dermasentinel up", f"did not get port {self.port}", self.console_path,
                                    this_run[-4000:])
        written = self.stack_env()
        self.api_url, self.api_key = written["API_URL"], written["API_KEY"]
        return self

    def run(self, timeout: float) -> int:
        """Run it to the end (e.g. with `--exit-after-demo`); returns its exit status."""
        self.spawn()
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    # ---------------------------------------------------------------- what it says

    def console(self) -> str:
        return self.console_path.read_text(errors="replace") if self.console_path.exists() else ""

    def wait_console(self, text: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.console():
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} never appeared:\n{self.console()[-3000:]}")
            time.sleep(0.2)

    def stack_env(self) -> dict[str, str]:
        """DATA_DIR/stack.env, the names without the DERMASENTINEL_ prefix."""
        lines = (self.data_dir / "stack.env").read_text().splitlines()
        return dict(line.removeprefix(ENV_PREFIX).split("=", 1) for line in lines if "=" in line)

    # ---------------------------------------------------------------- its processes

    @property
    def up(self) -> psutil.Process:
        import psutil

        return psutil.Process(self.pid)

    def child(self, text: str) -> psutil.Process:
        """The direct child of `up` whose command line (or process title) contains `text`."""
        import psutil

        for child in self.up.children():
            try:
                if text in " ".join(child.cmdline()):
                    return child
            except psutil.NoSuchProcess:
                continue
        raise LookupError(f"no child of up runs {text!r}")

    def descendants(self) -> list[psutil.Process]:
        return self.up.children(recursive=True)

    # ---------------------------------------------------------------- the end

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (as Ctrl-C), up to `timeout` seconds for it to stop everything, then SIGKILL."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL of `up` (and its group) now; what it started dies with it (PDEATHSIG)."""
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()
