"""The three backing services together, for `dermasentinel up` and the tests."""

import atexit
from dataclasses import dataclass, field
from pathlib import Path

from shared.stack.postgres import PostgresHandle, start_postgres
from shared.stack.redis import RedisHandle, start_redis
from shared.stack.s3 import S3Handle, start_s3


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


class EmbeddedStack:
    """Postgres, Redis and S3 as child processes on free loopback ports, data under `data_dir`.

    Restarting on the same data_dir reuses the database cluster, the stored objects, the
    credentials and, when still free, the ports.
    """

    def __init__(
        self,
        data_dir: Path,
        postgres: bool = True,
        redis: bool = True,
        s3: bool = True,
        *,
        redis_persistent: bool = False,
    ):
        self.data_dir = Path(data_dir).resolve()
        self._wanted = {"postgres": postgres, "redis": redis, "s3": s3}
        self._redis_persistent = redis_persistent
        self.postgres: PostgresHandle | None = None
        self.redis: RedisHandle | None = None
        self.s3: S3Handle | None = None
        self._endpoints: StackEndpoints | None = None

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
        try:
            if self._wanted["postgres"]:
                self.postgres = start_postgres(self.data_dir)
            if self._wanted["redis"]:
                self.redis = start_redis(self.data_dir, persistent=self._redis_persistent)
            if self._wanted["s3"]:
                self.s3 = start_s3(self.data_dir)
        except BaseException:
            self.stop()
            raise
        self._endpoints = StackEndpoints(
            database_url=self.postgres.url if self.postgres else None,
            broker_url=self.redis.url if self.redis else None,
            s3_endpoint=self.s3.endpoint if self.s3 else None,
            s3_access_key=self.s3.access_key if self.s3 else None,
            s3_secret_key=self.s3.secret_key if self.s3 else None,
            s3_secure=self.s3.secure if self.s3 else False,
        )
        return self._endpoints

    def stop(self) -> None:
        """Stop every started service and wait until its processes are gone. Safe to call twice."""
        self._endpoints = None
        atexit.unregister(self.stop)
        errors: list[BaseException] = []
        for name in ("s3", "redis", "postgres"):
            handle = getattr(self, name)
            if handle is None:
                continue
            setattr(self, name, None)
            try:
                handle.stop()
            except Exception as error:  # keep stopping the others; report the first failure below
                errors.append(error)
        if errors:
            raise errors[0]

    def __enter__(self) -> "EmbeddedStack":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
