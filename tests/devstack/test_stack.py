"""The embedded stack starts real Postgres, Redis and S3 servers and leaves nothing behind."""

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import psycopg
import pytest
import redis
from minio import Minio

from devstack import (
    Backoff,
    DataDirInUseError,
    EmbeddedStack,
    ServiceStartError,
    StackEndpoints,
    Supervisor,
    start_postgres,
    start_redis,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def stack_dir(starts_services):
    # Not under pytest's tmp_path: a concurrent pytest run resets its root to 0700, which
    # locks the Postgres account (when run as root) out of its data directory.
    folder = Path(tempfile.mkdtemp(prefix="dermasentinel-test-stack-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)



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


def test_each_service_works_and_stop_leaves_nothing_running(stack_dir: Path) -> None:
    stack = EmbeddedStack(stack_dir)
    endpoints = stack.start()
    leaders = [stack.postgres.pid, stack.redis.pid, stack.s3.pid]
    ports = every_port_used(stack_dir)
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
        assert (stack_dir / "logs" / "postgres.log").stat().st_size > 0
        assert (stack_dir / "logs" / "s3.log").stat().st_size > 0
    finally:
        stack.stop()

    assert not any(port_open(port) for port in ports)
    assert not any(process_group_alive(pid) for pid in leaders)
    assert children_using(stack_dir) == []
    stack.stop()  # a second stop is harmless


def test_restart_on_same_data_dir_keeps_data_and_credentials(stack_dir: Path) -> None:
    with EmbeddedStack(stack_dir, redis_persistent=True) as stack:
        first = stack.endpoints
        with psycopg.connect(libpq_url(first)) as conn:
            conn.execute("CREATE TABLE tenant (name text)")
            conn.execute("INSERT INTO tenant VALUES ('clinic-a')")
        redis.Redis.from_url(first.broker_url).set("kept", "yes")
        client = s3_client(first)
        client.make_bucket("reports")
        client.put_object("reports", "r1.pdf", io.BytesIO(b"%PDF-1.7"), 8)

    with EmbeddedStack(stack_dir, redis_persistent=True) as stack:
        again = stack.endpoints
        assert (again.s3_access_key, again.s3_secret_key) == (first.s3_access_key, first.s3_secret_key)
        with psycopg.connect(libpq_url(again)) as conn:
            assert conn.execute("SELECT name FROM tenant").fetchall() == [("clinic-a",)]
        assert redis.Redis.from_url(again.broker_url).get("kept") == b"yes"
        assert s3_client(again).get_object("reports", "r1.pdf").read() == b"%PDF-1.7"


def test_services_do_not_outlive_a_killed_parent(stack_dir: Path) -> None:
    script = (
        "import json, sys, time\n"
        "from pathlib import Path\n"
        "from devstack import EmbeddedStack\n"
        "stack = EmbeddedStack(Path(sys.argv[1]))\n"
        "stack.start()\n"
        "print(json.dumps([stack.postgres.pid, stack.redis.pid, stack.s3.pid]), flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(stack_dir)], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        leaders = json.loads(parent.stdout.readline())
        ports = every_port_used(stack_dir)
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
    with EmbeddedStack(stack_dir, redis=False, s3=False) as stack, psycopg.connect(libpq_url(stack.endpoints)) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_second_server_on_the_same_data_dir_is_refused(stack_dir: Path) -> None:
    running = start_redis(stack_dir)
    try:
        with pytest.raises(DataDirInUseError, match="redis is already running"):
            start_redis(stack_dir)
        assert redis.Redis.from_url(running.url).ping()
    finally:
        running.stop()


def test_a_service_that_cannot_start_is_named_with_its_log(stack_dir: Path) -> None:
    start_postgres(stack_dir).stop()
    with (stack_dir / "postgres" / "postgresql.auto.conf").open("a") as conf:
        conf.write("no_such_setting = 1\n")

    with pytest.raises(ServiceStartError) as failure:
        EmbeddedStack(stack_dir).start()

    message = str(failure.value)
    assert message.startswith("postgres failed to start")
    assert str(stack_dir / "logs" / "postgres.log") in message
    assert "no_such_setting" in message
    assert children_using(stack_dir) == []


def supervise_until(supervisor: Supervisor, condition, said: list[str], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"the supervisor did not get there in time: {said}"
        supervisor.check()
        time.sleep(0.05)


def test_a_killed_service_comes_back_on_its_port_with_its_data(stack_dir: Path) -> None:
    said: list[str] = []
    supervisor = Supervisor(announce=said.append, backoff=Backoff(first=0.1))
    with EmbeddedStack(stack_dir, redis_persistent=True, supervisor=supervisor) as stack:
        endpoints = stack.endpoints
        with psycopg.connect(libpq_url(endpoints)) as conn:
            conn.execute("CREATE TABLE analysis (risk_band text)")
            conn.execute("INSERT INTO analysis VALUES ('medium')")
        broker = redis.Redis.from_url(endpoints.broker_url)
        broker.set("wake-up", "analysis:7")
        broker.execute_command("BGREWRITEAOF")  # on disk now, not within the next fsync second
        time.sleep(0.5)
        client = s3_client(endpoints)
        client.make_bucket("lesion-images")
        client.put_object("lesion-images", "a.png", io.BytesIO(b"\x89PNG"), 4)

        for name in ("postgres", "redis", "s3"):
            killed = supervisor.get(name)
            os.kill(killed.pid, 9)
            supervise_until(
                supervisor,
                lambda name=name, killed=killed: supervisor.get(name) is not None
                and supervisor.get(name).pid != killed.pid,
                said,
            )
            assert supervisor.get(name).port == killed.port
            assert not process_group_alive(killed.pid)
        assert said[0] == "postgres exited (killed by SIGKILL); restarting in 0.1s"
        assert [line.split(" (")[0] for line in said] == [
            "postgres exited", "postgres restarted", "redis exited", "redis restarted", "s3 exited", "s3 restarted"
        ]

        # The same endpoints as before serve the same data.
        assert stack.endpoints == endpoints
        with psycopg.connect(libpq_url(endpoints)) as conn:
            assert conn.execute("SELECT risk_band FROM analysis").fetchall() == [("medium",)]
        assert broker.get("wake-up") == b"analysis:7"
        assert client.get_object("lesion-images", "a.png").read() == b"\x89PNG"
    assert children_using(stack_dir) == []


def test_a_restart_waits_for_its_old_port_instead_of_moving(stack_dir: Path) -> None:
    said: list[str] = []
    supervisor = Supervisor(announce=said.append, backoff=Backoff(first=0.1, cap=0.2))
    with EmbeddedStack(stack_dir, postgres=False, s3=False, supervisor=supervisor) as stack:
        killed = stack.redis
        os.kill(killed.pid, 9)
        with socket.socket() as squatter:
            supervise_until(supervisor, lambda: stack.redis is None, said)
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind(("127.0.0.1", killed.port))
            squatter.listen()
            supervise_until(supervisor, lambda: any("did not restart" in line for line in said), said)
            assert stack.redis is None
        supervise_until(supervisor, lambda: stack.redis is not None, said)
        assert stack.redis.port == killed.port
        assert redis.Redis.from_url(stack.endpoints.broker_url).ping()
    assert any(f"previous ports are not free yet: [{killed.port}]" in line for line in said)
