"""Run Postgres, Redis and an S3 server from pip-installed binaries, without Docker.

Each service is a child process on free loopback ports with its data under one folder:

    with EmbeddedStack(Path("var/stack")) as stack:
        settings = stack.endpoints.database_url, stack.endpoints.broker_url, ...
"""

from devstack.errors import DataDirInUseError, PortsTakenError, ServiceStartError, StackError
from devstack.postgres import PostgresHandle, start_postgres
from devstack.redis import RedisHandle, start_redis
from devstack.s3 import S3Handle, start_s3
from devstack.stack import SERVICES_LAYER, EmbeddedStack, StackEndpoints
from devstack.supervisor import Backoff, Program, Supervisor, start_program

__all__ = [
    "SERVICES_LAYER",
    "Backoff",
    "DataDirInUseError",
    "EmbeddedStack",
    "PortsTakenError",
    "PostgresHandle",
    "Program",
    "RedisHandle",
    "S3Handle",
    "ServiceStartError",
    "StackEndpoints",
    "StackError",
    "Supervisor",
    "start_postgres",
    "start_program",
    "start_redis",
    "start_s3",
]
