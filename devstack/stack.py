"""The three backing services together, for `dermasentinel up` and the tests."""

import atexit
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from devstack.postgres import PostgresHandle, start_postgres
from devstack.redis import RedisHandle, start_redis
from devstack.s3 import S3Handle, start_s3
from devstack.supervisor import Supervised, Supervisor

# Supervisor layers: services stop last, after whatever the owner runs on top of them.
SERVICES_LAYER = 0
Handle = TypeVar("Handle", PostgresHandle, RedisHandle, S3Handle)


@dataclass(frozen=True)
class StackEndpoints:
    """Where the started services listen; a field is None when its service was not started.

    Fields holding a password are left out of repr so that logging the endpoints leaks nothing.
    """

    database_url: str | None = field(default=None, repr=False)
    broker_url: str | None = None
    s3_endpoint: str | None = None
    s3_access_key: str | None = None
    s3_secret_key: str | None = field(default=None, repr=False)
    s3_secure: bool = False

    @classmethod
    def from_settings(cls, settings: object) -> "StackEndpoints":
        """The services a settings object (shared.config.Settings or alike) already names; the
        empty ones are None, i.e. for the stack to start."""

        def text(name: str) -> str | None:
            value: Any = getattr(settings, name, None)
            if hasattr(value, "get_secret_value"):
                value = value.get_secret_value()
            return str(value) if value else None

        return cls(
            database_url=text("database_url"),
            broker_url=text("broker_url"),
            s3_endpoint=text("s3_endpoint"),
            s3_access_key=text("s3_access_key"),
            s3_secret_key=text("s3_secret_key"),
            s3_secure=bool(getattr(settings, "s3_secure", False)),
        )

    def settings_fields(self) -> dict[str, str | bool]:
        """These endpoints as shared.config.Settings fields (lower-case names), the unset ones left out."""
        return {name: value for name, value in vars(self).items() if value is not None}


class EmbeddedStack:
    """Postgres, Redis and S3 as child processes on free loopback ports, data under `data_dir`.

    Restarting on the same data_dir reuses the database cluster, the stored objects, the
    credentials and, when still free, the ports. The services are units of `supervisor`,
    which the owner may also give its own processes and call `check()` on to restart any
    that dies (on the same ports and data, so clients keep working).
    """

    def __init__(
        self,
        data_dir: Path,
        postgres: bool = True,
        redis: bool = True,
        s3: bool = True,
        *,
        given: StackEndpoints | None = None,
        redis_persistent: bool = False,
        supervisor: Supervisor | None = None,
    ):
        """`given`: services that already run elsewhere (their URLs); those are not started and
        `endpoints` names them instead, each service as a whole (URL and credentials)."""
        self.data_dir = Path(data_dir).resolve()
        self._given = given or StackEndpoints()
        self._wanted = {
            "postgres": postgres and not self._given.database_url,
            "redis": redis and not self._given.broker_url,
            "s3": s3 and not self._given.s3_endpoint,
        }
        self._redis_persistent = redis_persistent
        self.supervisor = supervisor or Supervisor()
        self._endpoints: StackEndpoints | None = None

    @property
    def postgres(self) -> PostgresHandle | None:
        return self._running("postgres", PostgresHandle)

    @property
    def redis(self) -> RedisHandle | None:
        return self._running("redis", RedisHandle)

    @property
    def s3(self) -> S3Handle | None:
        return self._running("s3", S3Handle)

    def _running(self, name: str, kind: type[Handle]) -> Handle | None:
        handle = self.supervisor.get(name)
        return handle if isinstance(handle, kind) else None

    @property
    def endpoints(self) -> StackEndpoints:
        if self._endpoints is None:
            raise RuntimeError("the stack is not running; call start() first")
        return self._endpoints

    def start(self) -> StackEndpoints:
        """Start the chosen services; returns once each one answers. Idempotent while running."""
        if self._endpoints is not None:
            return self._endpoints
        self.data_dir.mkdir(parents=True, exist_ok=True)
        atexit.register(self.stop)
        data_dir, persistent = self.data_dir, self._redis_persistent
        launchers: dict[str, tuple[Callable[[bool], Supervised], float]] = {
            "postgres": (lambda restart: start_postgres(data_dir, same_ports=restart), 15.0),
            "redis": (lambda restart: start_redis(data_dir, persistent=persistent, same_ports=restart), 10.0),
            # `weed` may take long to exit on SIGTERM; nothing is lost by killing it after a short grace.
            "s3": (lambda restart: start_s3(data_dir, same_ports=restart), 5.0),
        }
        try:
            for name, (launch, grace) in launchers.items():
                if self._wanted[name]:
                    self.supervisor.start(name, launch, layer=SERVICES_LAYER, stop_grace=grace)
        except BaseException:
            self.stop()
            raise
        postgres, redis, s3, given = self.postgres, self.redis, self.s3, self._given
        self._endpoints = StackEndpoints(
            database_url=given.database_url or (postgres.url if postgres else None),
            broker_url=given.broker_url or (redis.url if redis else None),
            s3_endpoint=given.s3_endpoint or (s3.endpoint if s3 else None),
            s3_access_key=given.s3_access_key if given.s3_endpoint else (s3.access_key if s3 else None),
            s3_secret_key=given.s3_secret_key if given.s3_endpoint else (s3.secret_key if s3 else None),
            s3_secure=given.s3_secure if given.s3_endpoint else (s3.secure if s3 else False),
        )
        return self._endpoints

    def stop(self) -> None:
        """Stop every supervised process (the owner's first, then the services) and wait until
        they are gone. Safe to call twice."""
        self._endpoints = None
        atexit.unregister(self.stop)
        self.supervisor.stop()

    def __enter__(self) -> "EmbeddedStack":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
