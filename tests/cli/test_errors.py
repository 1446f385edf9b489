"""Issue 25: no traceback reaches a user from any CLI command.

Every command and sub-command of ``cli.main.cli`` (found by walking the group, so a new command
must be listed here) runs with minimal valid arguments against a stopped stack (database,
broker, object store and API on closed ports), against a wrong API URL (a web server that is
not DermaSentinel), and with settings that cannot work (an API URL without a scheme, a
database host that does not exist): each exits non-zero with one ``Error:`` line and no
traceback. The server commands (``up``, ``api``, ``worker``, ``beat``) run until stopped and
``bench`` starts a stack of its own, so they are not run here; a second ``up`` on a data
directory in use is (tests/cli/test_up_cli.py).
"""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from cli.main import cli
from devstack import free_port
from shared.config import get_settings

ROOT = Path(__file__).resolve().parents[2]
SERVER_COMMANDS = {"up", "api", "worker", "beat", "bench"}
FAKE_ID = str(uuid.UUID(int=25))


def leaf_commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from leaf_commands(command, (*path, name))
        else:
            yield (*path, name)


def arguments(command: tuple[str, ...], files: dict[str, Path]) -> list[str]:
    """Minimal valid arguments of each command (KeyError: a new command to list here)."""
    table: dict[tuple[str, ...], list[str]] = {
        ("migrate",): ["--timeout", "0"],
        ("status",): [],
        ("tenants", "create"): ["clinic"],
        ("tenants", "keys", "list"): ["clinic"],
        ("tenants", "keys", "create"): ["clinic"],
        ("tenants", "keys", "revoke"): ["clinic", FAKE_ID],
        ("tenants", "export"): ["clinic", str(files["out_dir"])],
        ("tenants", "delete"): ["clinic", "--yes"],
        ("tenants", "disable"): ["clinic"],
        ("tenants", "enable"): ["clinic"],
        ("secrets", "reencrypt"): [],
        ("submit",): [str(files["image"])],
        ("reprocess",): [FAKE_ID],
        ("models", "import"): [str(files["checkpoint"]), "--kind", "fusion"],
        ("models", "list"): [],
        ("models", "activate"): ["fusion", "fusion-1"],
        ("models", "rollback"): ["fusion"],
        ("models", "shadow"): ["fusion", "fusion-1", "--fraction", "0.2"],
        ("models", "compare"): ["fusion-1"],
        ("feedback", "export"): [str(files["out_dir"] / "feedback.csv")],
        ("batch", "submit"): [str(files["folder"]), "--wait"],
        ("batch", "list"): [],
        ("batch", "status"): [FAKE_ID],
        ("batch", "cancel"): [FAKE_ID],
        ("batch", "results"): [FAKE_ID, "--out", str(files["out_dir"] / "results.csv")],
        ("train", "fusion"): ["--images", str(files["folder"]), "--csv", str(files["csv"]),
                              "--out", str(files["out_dir"] / "fusion")],
        ("train", "scalpel"): ["--images", str(files["folder"]), "--masks", str(files["folder"]),
                               "--out", str(files["out_dir"] / "scalpel")],
        ("evaluate",): ["--images", str(files["folder"]), "--csv", str(files["csv"]),
                        "--out", str(files["out_dir"] / "eval"), "--fusion-model", "active"],
        ("audit", "verify"): [],
        ("audit", "export"): ["--tenant", "clinic"],
        ("monitor", "clear"): ["--tenant", "clinic"],
        ("worker-alive",): ["--max-age", "60"],
    }
    return table[command]


COMMANDS = [c for c in leaf_commands(cli) if c[0] not in SERVER_COMMANDS]


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    from worker.pipeline.synthetic import encode_jpeg, make_lesion

    folder = tmp_path / "photos"
    folder.mkdir()
    image = folder / "lesion.jpg"
    image.write_bytes(encode_jpeg(make_lesion(seed=1, size=(64, 64)).image))
    csv = tmp_path / "labels.csv"
    csv.write_text("image_name,target\nlesion,0\n")
    checkpoint = tmp_path / "fusion.pth"
    checkpoint.write_bytes(b"not a checkpoint\n")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    return {"folder": folder, "image": image, "csv": csv, "checkpoint": checkpoint, "out_dir": out_dir}


@pytest.fixture
def not_dermasentinel() -> Iterator[str]:
    """A web server that is not DermaSentinel: HTML for everything (200 for GET, 404 else)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self, status: int) -> None:
            length = int(self.headers.get("content-length") or 0)
            self.rfile.read(length)
            body = b"<html>\n<body>\n<h1>Welcome to nginx!</h1>\n</body>\n</html>\n"
            self.send_response(status)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._answer(200)

        def do_POST(self) -> None:
            self._answer(404)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _closed() -> int:
    return free_port()


def stopped_stack() -> dict[str, str]:
    return {
        "DATABASE_URL": f"postgresql://ds:secret@127.0.0.1:{_closed()}/dermasentinel",
        "BROKER_URL": f"redis://127.0.0.1:{_closed()}/0",
        "S3_ENDPOINT": f"127.0.0.1:{_closed()}",
        "S3_ACCESS_KEY": "key",
        "S3_SECRET_KEY": "secret",
        "API_URL": f"http://127.0.0.1:{_closed()}",
        "API_KEY": "dsk_" + "x" * 40,
    }


@pytest.fixture
def environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Only the given DERMASENTINEL_* settings; no stack.env and no user config to fall back on."""

    def apply(values: dict[str, str]) -> None:
        for name in list(os.environ):
            if name.startswith("DERMASENTINEL_"):
                monkeypatch.delenv(name)
        monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
        monkeypatch.setenv("DERMASENTINEL_DATA_DIR", str(tmp_path / "data"))
        for name, value in values.items():
            monkeypatch.setenv("DERMASENTINEL_" + name, value)
        get_settings.cache_clear()

    yield apply
    get_settings.cache_clear()


def assert_one_error_line(command: tuple[str, ...], exit_code: int, stderr: str) -> None:
    shown = " ".join(command)
    assert "Traceback" not in stderr, f"{shown} printed a traceback:\n{stderr}"
    assert "Usage:" not in stderr, f"{shown}: the test's arguments are wrong:\n{stderr}"
    assert exit_code not in (0, None), f"{shown} succeeded:\n{stderr}"
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [n for n, line in enumerate(lines) if line.startswith("Error:")]
    assert len(errors) == 1 and errors[0] == len(lines) - 1, f"{shown}: not one closing Error line:\n{stderr}"


def run(command: tuple[str, ...], files: dict[str, Path]) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [*command, *arguments(command, files)])
    # An exception the boundary let through is the runner's, not an exit: that is the bug.
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{' '.join(command)} raised {result.exception!r}") from result.exception
    return result.exit_code, result.stderr


def test_every_command_is_listed_or_a_server():
    missing = []
    for command in COMMANDS:
        try:
            arguments(command, {key: Path("x") for key in ("folder", "image", "csv", "checkpoint", "out_dir")})
        except KeyError:
            missing.append(" ".join(command))
    assert not missing, f"commands without arguments in this test: {missing}"
    assert len(COMMANDS) >= 24


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_against_a_stopped_stack_each_command_says_one_line(command, files, environment):
    environment(stopped_stack())
    code, stderr = run(command, files)
    assert_one_error_line(command, code, stderr)


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_against_a_wrong_api_url_each_command_says_one_line(command, files, environment, not_dermasentinel):
    environment({**stopped_stack(), "API_URL": not_dermasentinel})
    code, stderr = run(command, files)
    assert_one_error_line(command, code, stderr)


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_with_settings_that_cannot_work_each_command_says_one_line(command, files, environment):
    environment({**stopped_stack(), "API_URL": "localhost:8000", "DATABASE_URL": "postgresql://ds@db.invalid/ds",
                 "BROKER_URL": "redis://db.invalid:6379/0", "S3_ENDPOINT": "db.invalid:9000"})
    code, stderr = run(command, files)
    assert_one_error_line(command, code, stderr)


def test_the_messages_say_what_to_do(files, environment, not_dermasentinel):
    environment(stopped_stack())
    _, submit = run(("submit",), files)
    assert "cannot reach the API at http://127.0.0.1:" in submit and "dermasentinel up" in submit
    assert "DERMASENTINEL_API_URL" in submit
    _, tenants = run(("tenants", "create"), files)
    assert "cannot reach the database at 127.0.0.1:" in tenants and "DERMASENTINEL_DATABASE_URL" in tenants
    assert "secret" not in tenants, "the database password stays out"
    environment({**stopped_stack(), "API_URL": not_dermasentinel})
    _, wrong = run(("submit",), files)
    assert "HTTP 404" in wrong and "not the DermaSentinel API" in wrong and "<html>" not in wrong
    assert "--api-url / DERMASENTINEL_API_URL" in wrong


def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(files, environment, monkeypatch):
    environment(stopped_stack())

    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("something nobody expected")

    monkeypatch.setattr("cli.exports.export_feedback", broken)
    code, stderr = run(("feedback", "export"), files)
    assert_one_error_line(("feedback", "export"), code, stderr)
    assert "unexpected error: KeyError" in stderr and "--log-level DEBUG" in stderr

    result = CliRunner().invoke(cli, ["--log-level", "DEBUG", "feedback", "export", str(files["out_dir"] / "f.csv")])
    assert result.exit_code == 1
    assert "Traceback" in result.stderr and "something nobody expected" in result.stderr


def test_a_bad_setting_names_the_variable(files, environment):
    environment({**stopped_stack(), "SEG_SIZE": "100", "DATABASE_URL": "mysql://ds@127.0.0.1/ds"})
    code, stderr = run(("models", "list"), files)
    assert_one_error_line(("models", "list"), code, stderr)
    assert "DERMASENTINEL_SEG_SIZE" in stderr and "DERMASENTINEL_DATABASE_URL" in stderr


@pytest.mark.parametrize("command", [("submit",), ("tenants", "create"), ("models", "list"), ("feedback", "export"),
                                     ("batch", "submit")], ids=" ".join)
def test_the_installed_command_prints_no_traceback_either(command, files, tmp_path):
    """The same as a user runs it: a process of its own, its real stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DERMASENTINEL_")}
    env.update({"DERMASENTINEL_" + k: v for k, v in stopped_stack().items()})
    env.update({"XDG_CONFIG_HOME": str(tmp_path / "config"), "DERMASENTINEL_DATA_DIR": str(tmp_path / "data"),
                "PYTHONPATH": str(ROOT)})
    done = subprocess.run([sys.executable, "-m", "cli.main", *command, *arguments(command, files)], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert_one_error_line(command, done.returncode, done.stderr)
    assert done.returncode == 1
