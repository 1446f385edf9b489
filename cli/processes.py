"""Starting the product's own processes (api, workers, beat) for `up`, tests and benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay, wait_fixed

if TYPE_CHECKING:
    from devstack import Program

STOP_GRACE_SECONDS = 15.0


def program_launcher(name: str, args: list[str], env: dict[str, str], log_dir: Path) -> Callable[[bool], Program]:
    """A supervisor launcher for `python -m <args>`, logging to `log_dir/<name>.log`."""
    from devstack import start_program

    def launch(restart: bool) -> Program:
        return start_program(name, [sys.executable, "-m", *args], log_dir / f"{name}.log", env)

    return launch


@dataclass
class Child:
    name: str
    process: subprocess.Popen
    log_path: Path


def spawn(name: str, args: list[str], env: dict[str, str], log_dir: Path) -> Child:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with open(log_path, "ab") as log_file:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            [sys.executable, "-m", *args],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Child(name, process, log_path)


def stop_all(children: list[Child], grace: float = STOP_GRACE_SECONDS) -> None:
    """Stop every child at once (SIGTERM together, one shared grace period)."""
    for child in children:
        if child.process.poll() is None:
            _signal_group(child.process, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in children:
        remaining = max(0.1, deadline - time.monotonic())
        try:
            child.process.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            _signal_group(child.process, signal.SIGKILL)
            child.process.wait(timeout=5)


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def stop_process(process: subprocess.Popen, grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left after ``grace`` seconds."""
    if process.poll() is None:
        _signal_group(process, signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait()


def _is_false(value: bool) -> bool:
    return not value


def wait_http(url: str, process: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    """Wait until ``url`` answers below 500, failing early (with the log) if ``process`` dies."""

    def answered() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"process exited early:\n{tail(log, 60)}")
        try:
            return httpx.get(url, timeout=1.0).status_code < 500
        except httpx.HTTPError:
            return False

    until_answered = Retrying(stop=stop_after_delay(timeout), wait=wait_fixed(0.2), retry=retry_if_result(_is_false))
    try:
        until_answered(answered)
    except RetryError:
        raise RuntimeError(f"{url} did not answer in {timeout:.0f}s:\n{tail(log, 60)}") from None
