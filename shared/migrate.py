"""Run Alembic migrations programmatically (wait for the database first)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

from shared.config import SettingMissing

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def wait_for_database(database_url: str, timeout: float = 60.0) -> None:
    engine = create_engine(database_url, pool_pre_ping=True)
    try:
        for attempt in Retrying(
            stop=stop_after_delay(timeout), wait=wait_fixed(0.5), retry=retry_if_exception_type(OperationalError),
            reraise=True,
        ):
            with attempt, engine.connect() as connection:
                connection.execute(text("SELECT 1"))
    finally:
        engine.dispose()


def upgrade(database_url: str, revision: str = "head", *, wait_seconds: float = 60.0) -> None:
    if not database_url:
        raise SettingMissing("DERMASENTINEL_DATABASE_URL is not set; run `dermasentinel up` or point it at Postgres")
    wait_for_database(database_url, timeout=wait_seconds)
    command.upgrade(alembic_config(database_url), revision)


@contextmanager
def scratch_database(server_url: str, prefix: str) -> Iterator[str]:
    """A new, migrated database on the server of ``server_url``, dropped afterwards
    (for the test suite and benchmarks, which must never touch a real database)."""
    url = make_url(server_url)
    name = f"{prefix}_{secrets.token_hex(4)}"
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        database_url = url.set(database=name).render_as_string(hide_password=False)
        upgrade(database_url)
        yield database_url
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
