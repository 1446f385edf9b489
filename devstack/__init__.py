"""Run DermaSentinel on this machine without Docker: the one harness of `up`, tests and benchmarks.

- `Stack` (devstack.harness): Postgres, Redis and an S3 server from pip-installed binaries
  (embedded, each a child process on free loopback ports with its data under one folder,
  unless `given`), plus the app's processes: the API (uvicorn), Celery workers and beat.
- `start_api`, `start_worker`, `start_beat`, `child_env` (devstack.apps): one app process,
  returned as an `App` handle (`url`, `pid`, `log_path`, `stop()`, `kill()`).
- `UpProcess` (devstack.up): `dermasentinel up` itself as a child process.
- `Receiver` (devstack.receiver): a loopback HTTP server recording webhook POSTs.

    with Stack(Path("var/stack")) as stack:
        endpoints = stack.endpoints                   # database_url, broker_url, s3_*
        api = stack.api(child_env(settings))          # api.url
"""

from devstack._ports import free_port, is_port_free
from devstack._process import DataDirLock
from devstack.apps import App, child_env, start_api, start_app, start_beat, start_worker
from devstack.errors import DataDirInUseError, PortsTakenError, ServiceStartError, StackError
from devstack.harness import APP_LAYER, Stack
from devstack.postgres import PostgresHandle, start_postgres
from devstack.receiver import Receiver, Recorded, Reply
from devstack.redis import RedisHandle, start_redis
from devstack.s3 import S3Handle, start_s3
from devstack.stack import SERVICES_LAYER, EmbeddedStack, StackEndpoints
from devstack.supervisor import Backoff, Supervisor
from devstack.up import UpProcess

__all__ = [
    "APP_LAYER",
    "SERVICES_LAYER",
    "App",
    "Backoff",
    "DataDirInUseError",
    "DataDirLock",
    "EmbeddedStack",
    "PortsTakenError",
    "PostgresHandle",
    "Receiver",
    "Recorded",
    "RedisHandle",
    "Reply",
    "S3Handle",
    "ServiceStartError",
    "Stack",
    "StackEndpoints",
    "StackError",
    "Supervisor",
    "UpProcess",
    "child_env",
    "free_port",
    "is_port_free",
    "start_api",
    "start_app",
    "start_beat",
    "start_postgres",
    "start_redis",
    "start_s3",
    "start_worker",
]
