"""The embedded stack starts real Postgres, Redis and S3 servers and leaves nothing behind."""

import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import psycopg
import pytest
import redis
from minio import Minio

from shared.stack import DataDirInUseError, EmbeddedStack, ServiceStartError, StackEndpoints, start_postgres, start_redis

REPO_ROOT = Path(__file__).resolve().parents[2]



def children_using(folder: Path) -> list:
    """Our child processes that belong to this stack (other tests' services may be running)."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if str(folder) in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found

def libpq_url(endpoints: StackEndpoints) -> str:
    return endpoints.database_url.replace("postgresql+psycopg://", "postgresql://")


def s3_client(endpoints: StackEndpoints) -> Minio:
    return Minio(
        endpoints.s3_endpoint,
        access_key=endpoints.s3_access_key,
        secret_key=endpoints.s3_secret_key,
        secure=endpoints.s3_secure,
    )


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def every_port_used(data_dir: Path) -> list[int]:
    recorded = json.loads((data_dir / "ports.json").read_text())
    return [port for ports in recorded.values() for port in ports]


def process_group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_each_service_works_and_stop_leaves_nothing_running(tmp_path: Path) -> None:
    stack = EmbeddedStack(tmp_path)
    endpoints = stack.start()
    leaders = [stack.postgres.pid, stack.redis.pid, stack.s3.pid]
    ports = every_port_used(tmp_path)
    assert all(port_open(port) for port in (stack.postgres.port, stack.redis.port, stack.s3.port))
    try:
        assert endpoints.database_url.startswith("postgresql+psycopg://")
        assert endpoints.database_url.endswith("/dermasentinel")
        with psycopg.connect(libpq_url(endpoints)) as conn:
            conn.execute("CREATE TABLE analysis (id serial PRIMARY KEY, risk_band text NOT NULL)")
            conn.execute("INSERT INTO analysis (risk_band) VALUES ('high')")
            assert conn.execute("SELECT risk_band FROM analysis").fetchall() == [("high",)]

        broker = redis.Redis.from_url(endpoints.broker_url)
        broker.set("analysis:1", "queued")
        assert broker.get("analysis:1") == b"queued"
        broker.close()

        client = s3_client(endpoints)
        client.make_bucket("lesion-images")
        client.put_object("lesion-images", "tenant-a/1.png", io.BytesIO(b"\x89PNG fake"), 9, content_type="image/png")
        assert client.get_object("lesion-images", "tenant-a/1.png").read() == b"\x89PNG fake"
        presigned = client.presigned_get_object("lesion-images", "tenant-a/1.png")
        with urllib.request.urlopen(presigned, timeout=5) as response:
            assert response.read() == b"\x89PNG fake"
        with pytest.raises(urllib.error.HTTPError) as anonymous:
            urllib.request.urlopen(f"http://{endpoints.s3_endpoint}/lesion-images/tenant-a/1.png", timeout=5)
        assert anonymous.value.code == 403
        assert (tmp_path / "logs" / "postgres.log").stat().st_size > 0
        assert (tmp_path / "logs" / "s3.log").stat().st_size > 0
    finally:
        stack.stop()

    assert not any(port_open(port) for port in ports)
    assert not any(process_group_alive(pid) for pid in leaders)
    assert children_using(tmp_path) == []
    stack.stop()  # a second stop is harmless


def test_restart_on_same_data_dir_keeps_data_and_credentials(tmp_path: Path) -> None:
    with EmbeddedStack(tmp_path, redis_persistent=True) as stack:
        first = stack.endpoints
        with psycopg.connect(libpq_url(first)) as conn:
            conn.execute("CREATE TABLE tenant (name text)")
            conn.execute("INSERT INTO tenant VALUES ('clinic-a')")
        redis.Redis.from_url(first.broker_url).set("kept", "yes")
        client = s3_client(first)
        client.make_bucket("reports")
        client.put_object("reports", "r1.pdf", io.BytesIO(b"%PDF-1.7"), 8)

    with EmbeddedStack(tmp_path, redis_persistent=True) as stack:
        again = stack.endpoints
        assert (again.s3_access_key, again.s3_secret_key) == (first.s3_access_key, first.s3_secret_key)
        with psycopg.connect(libpq_url(again)) as conn:
            assert conn.execute("SELECT name FROM tenant").fetchall() == [("clinic-a",)]
        assert redis.Redis.from_url(again.broker_url).get("kept") == b"yes"
        assert s3_client(again).get_object("reports", "r1.pdf").read() == b"%PDF-1.7"


def test_services_do_not_outlive_a_killed_parent(tmp_path: Path) -> None:
    script = (
        "import json, sys, time\n"
        "from pathlib import Path\n"
        "from shared.stack import EmbeddedStack\n"
        "stack = EmbeddedStack(Path(sys.argv[1]))\n"
        "stack.start()\n"
        "print(json.dumps([stack.postgres.pid, stack.redis.pid, stack.s3.pid]), flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        leaders = json.loads(parent.stdout.readline())
        ports = every_port_used(tmp_path)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(process_group_alive(pid) for pid in leaders):
            time.sleep(0.1)
        assert not any(process_group_alive(pid) for pid in leaders)
        assert not any(port_open(port) for port in ports)
    finally:
        parent.kill()
        parent.stdout.close()

    # An immediate shutdown is recoverable: the same data dir starts again.
    with EmbeddedStack(tmp_path, redis=False, s3=False) as stack:
        with psycopg.connect(libpq_url(stack.endpoints)) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_second_server_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    running = start_redis(tmp_path)
    try:
        with pytest.raises(DataDirInUseError, match="redis is already running"):
            start_redis(tmp_path)
        assert redis.Redis.from_url(running.url).ping()
    finally:
        running.stop()


def test_a_service_that_cannot_start_is_named_with_its_log(tmp_path: Path) -> None:
    start_postgres(tmp_path).stop()
    with (tmp_path / "postgres" / "postgresql.auto.conf").open("a") as conf:
        conf.write("no_such_setting = 1\n")

    with pytest.raises(ServiceStartError) as failure:
        EmbeddedStack(tmp_path).start()

    message = str(failure.value)
    assert message.startswith("postgres failed to start")
    assert str(tmp_path / "logs" / "postgres.log") in message
    assert "no_such_setting" in message
    assert children_using(tmp_path) == []
