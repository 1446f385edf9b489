"""Issue 25: `up`'s rough edges, without running a stack: a taken --port and a second `up` on the
same DATA_DIR are refused before anything starts, in one line; the user config `up` writes lets
client commands find the stack from any folder; `up` reuses its development key."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from cli.up import UP_LOCK, development_key, read_stack_env, write_stack_env, write_user_config
from devstack import DataDirLock
from shared.config import Settings, get_settings, settings_files, user_config_path


@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """No DERMASENTINEL_* variables, a user config folder of this test's, run from an empty folder."""
    for name in list(os.environ):
        if name.startswith("DERMASENTINEL_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def assert_one_line_refusal(result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_a_taken_port_is_refused_with_its_number_and_the_way_out(clean_env, monkeypatch):
    monkeypatch.setenv("DERMASENTINEL_DATA_DIR", str(clean_env / "ds"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["up", "--port", str(port)])
    assert_one_line_refusal(result, f"port {port} on 127.0.0.1 is in use", "--port 0")
    assert not (clean_env / "ds" / "stack").exists(), "refused before any service started"


def test_a_second_up_on_the_same_data_dir_is_refused_in_one_line(clean_env, monkeypatch):
    data_dir = clean_env / "ds"
    data_dir.mkdir()
    write_stack_env(data_dir / "stack.env", {"API_URL": "http://127.0.0.1:8123"})
    monkeypatch.setenv("DERMASENTINEL_DATA_DIR", str(data_dir))
    first = DataDirLock("dermasentinel up", data_dir / UP_LOCK)  # as the running `up` holds it
    first.acquire()
    try:
        result = CliRunner().invoke(cli, ["up", "--port", "0"])
    finally:
        first.release()
    assert_one_line_refusal(result, "another `dermasentinel up` is already running on", str(data_dir),
                            "http://127.0.0.1:8123", "DERMASENTINEL_DATA_DIR")
    assert not (data_dir / "stack").exists()


def test_client_commands_find_the_stack_from_any_folder_through_the_user_config(clean_env, monkeypatch):
    data_dir = clean_env / "somewhere" / "ds"
    write_stack_env(data_dir / "stack.env", {"DATA_DIR": str(data_dir), "API_URL": "http://127.0.0.1:8123",
                                             "API_KEY": "dsk_development", "DATABASE_URL": "postgresql://h/db"})
    path = write_user_config(data_dir, "http://127.0.0.1:8123")
    assert path == clean_env / "config" / "dermasentinel" / "config.env" == user_config_path()
    assert "API_KEY" not in path.read_text(), "the key stays in DATA_DIR/stack.env"
    assert read_stack_env(path) == {"DATA_DIR": str(data_dir), "API_URL": "http://127.0.0.1:8123"}

    settings = get_settings()  # from `elsewhere`, with no DERMASENTINEL_* set
    assert settings.api_url == "http://127.0.0.1:8123"
    assert settings.api_key.get_secret_value() == "dsk_development"
    assert settings.database_url == "postgresql+psycopg://h/db"
    assert settings_files() == (path, data_dir / "stack.env")

    # The README's flow: a tenant's own key, exported, wins over the development key.
    monkeypatch.setenv("DERMASENTINEL_API_KEY", "dsk_tenant")
    get_settings.cache_clear()
    assert get_settings().api_key.get_secret_value() == "dsk_tenant"

    # A DATA_DIR given explicitly, or a stack.env in this folder, is used instead.
    monkeypatch.setenv("DERMASENTINEL_DATA_DIR", str(clean_env / "other"))
    assert settings_files() == ()


def test_without_a_user_config_or_a_local_stack_nothing_is_read(clean_env):
    assert settings_files() == ()
    assert get_settings().api_url == ""
    result = CliRunner().invoke(cli, ["status"])
    assert_one_line_refusal(result, "no stack found", "dermasentinel up")


def test_the_key_option_is_the_api_key(clean_env, tmp_path):
    image = tmp_path / "x.jpg"
    image.write_bytes(b"\xff\xd8")
    result = CliRunner().invoke(cli, ["submit", str(image), "--api-url", "http://127.0.0.1:1", "--key", "dsk_k"])
    assert "no API key" not in result.output and "cannot reach the API at http://127.0.0.1:1" in result.output


def test_up_reuses_its_development_key_while_it_is_active(context):
    from shared import tenants
    from shared.db import session_scope
    from shared.tables import ApiKey

    def active_keys(session) -> int:
        tenant = tenants.find_tenant(session, "development")
        return sum(1 for key in session.query(ApiKey).filter_by(tenant_id=tenant.id) if key.revoked_at is None)

    with session_scope(context.session_factory) as session:
        first = development_key(session, None)
    with session_scope(context.session_factory) as session:
        before = active_keys(session)
        assert development_key(session, first) == first, "the stored key is reused"
        assert active_keys(session) == before, "no new key"
        _, other_key = tenants.issue_key(session, "clinic-not-development")
    with session_scope(context.session_factory) as session:
        assert development_key(session, other_key) != other_key, "only a key of the development tenant"
        assert development_key(session, "dsk_unknown") != "dsk_unknown"
    with session_scope(context.session_factory) as session:
        tenant = tenants.find_tenant(session, "development")
        for key in tenants.list_keys(session, tenant.id, include_revoked=False):
            tenants.revoke_key(session, tenant.id, key.id, allow_last=True)
    with session_scope(context.session_factory) as session:
        assert development_key(session, first) != first, "a revoked key is replaced"


def test_settings_read_by_the_servers_are_not_the_user_config(clean_env, monkeypatch):
    """The processes `up` starts get DATA_DIR explicitly: the user config never reaches them."""
    write_user_config(clean_env / "ds", "http://127.0.0.1:8123")
    monkeypatch.setenv("DERMASENTINEL_DATA_DIR", str(clean_env / "run"))
    assert Settings(_env_file=settings_files() or None).api_url == ""
