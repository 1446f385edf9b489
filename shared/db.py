"""Engine and session factories, and the after-commit job hand-off.

Whoever opens a session commits it: the API request dependency or a task's scope.
Work that must follow a commit (enqueueing a Celery task) is registered with
``after_commit`` and runs only once the transaction is durable; a rollback drops it.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import bindparam, create_engine, event, func
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import TableValuedAlias
from sqlalchemy.types import TypeEngine

from shared.config import SettingMissing, Settings

_AFTER_COMMIT = "dermasentinel_after_commit"


class RowsParameter:
    """Many rows as one statement's parameters: an array per column, read back as a table by
    ``unnest``. A statement over it is compiled once and cached whatever the number of rows,
    where SQLAlchemy compiles a VALUES list or a multi-row INSERT again on every execution
    (issue 27: ~0.7 ms of a pass's outcomes). JSON goes in as text: cast it where it is used."""

    def __init__(self, name: str, **columns: TypeEngine[Any]) -> None:
        self.name = name
        self.columns = columns
        self.table: TableValuedAlias = func.unnest(*(
            bindparam(self._key(column), type_=ARRAY(kind)) for column, kind in columns.items()
        )).table_valued(*columns).render_derived(name=name)

    def __getitem__(self, column: str) -> ColumnElement[Any]:
        return self.table.c[column]

    def parameters(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
        return {self._key(column): [row[column] for row in rows] for column in self.columns}

    def _key(self, column: str) -> str:
        return f"{self.name}_{column}"


def make_engine(settings: Settings, **kwargs: Any) -> Engine:
    if not settings.database_url:
        raise SettingMissing(
            "DERMASENTINEL_DATABASE_URL is not set; run `dermasentinel up` or point it at Postgres"
        )
    options: dict[str, Any] = {
        "pool_pre_ping": True,
        "pool_size": settings.db_pool_size,
        "max_overflow": settings.db_max_overflow,
        # A caller that cannot get a connection soon gets an error it can map to 503; it
        # must never hold a thread for half a minute.
        "pool_timeout": settings.db_pool_timeout_seconds,
        # Error messages name the statement, never its values (patient fields, key hashes):
        # an exception's text may reach a log (issue 22).
        "hide_parameters": True,
    }
    if settings.database_url.startswith("postgresql"):
        options["connect_args"] = postgres_connect_args(settings)
    options.update(kwargs)
    engine = create_engine(settings.database_url, **options)
    if settings.database_url.startswith("postgresql"):
        event.listen(engine, "checkout", _name_connection)
    return engine


def _name_connection(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """Issue 26: a GPU pool process's connections carry its worker id (``gpu@host:pid``) as
    ``application_name``, so that the sweeper can end the open transaction of a pool process
    the kernel shows as stopped: its row locks would otherwise hold the job (and the sweeper
    waiting on them) until the server's idle-in-transaction timeout."""
    from shared.jobs import worker_identity

    identity = worker_identity()
    if identity is None or record.info.get("application_name") == identity:
        return
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("SELECT set_config('application_name', %s, false)", (identity[:63],))
    finally:
        cursor.close()
    dbapi_connection.commit()  # a session setting: kept only once its transaction commits
    record.info["application_name"] = identity


def postgres_connect_args(settings: Settings) -> dict:
    """libpq options: give up connecting after a few seconds, and let the server end runaway
    statements and transactions left idle (a crashed client must not hold locks forever)."""
    server = {
        "statement_timeout": settings.db_statement_timeout_ms,
        "idle_in_transaction_session_timeout": settings.db_idle_in_transaction_timeout_ms,
    }
    return {
        "connect_timeout": settings.db_connect_timeout_seconds,
        # TCP keepalives: a connection whose server host vanished (crash, network cut) is
        # noticed within about a minute instead of the kernel's two hours. A server that is
        # alive but frozen still ACKs, so that case is the API's request deadline's to answer.
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
        "options": " ".join(f"-c {name}={value}" for name, value in server.items()),
    }


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    factory = sessionmaker(bind=engine, expire_on_commit=False, autoflush=False)
    event.listen(factory, "after_commit", _run_after_commit)
    event.listen(factory, "after_soft_rollback", _drop_after_commit)
    return factory


def after_commit(session: Session, callback: Callable[[], None]) -> None:
    """Run ``callback`` once the session's current transaction commits; drop it on rollback.

    Inside a savepoint (``begin_nested``) the callback belongs to that savepoint: rolling the
    savepoint back drops it and nothing registered outside it.

    It runs in the context it was registered in (the request id and the job's ids that
    ``log_context`` bound): a transaction that writes several jobs' outcomes commits outside
    each job's block, and its wake-ups must still carry the job's own request id."""
    owner = session.get_nested_transaction() or session.get_transaction()
    registered = contextvars.copy_context()
    session.info.setdefault(_AFTER_COMMIT, []).append((owner, lambda: registered.run(callback)))


def _run_after_commit(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a savepoint was released; its hand-offs wait for the real commit
    from shared.jobs import run_hand_off  # the broker's code only where a hand-off runs

    for _owner, callback in session.info.pop(_AFTER_COMMIT, []):
        run_hand_off(callback)


def _drop_after_commit(session: Session, previous_transaction: SessionTransaction) -> None:
    if not previous_transaction.nested:
        session.info.pop(_AFTER_COMMIT, None)
        return
    # A savepoint rolled back: drop what was registered inside it (or inside savepoints
    # nested in it), keep the rest for the enclosing transaction's commit.
    def inside(owner: SessionTransaction | None) -> bool:
        while owner is not None:
            if owner is previous_transaction:
                return True
            owner = owner.parent
        return False

    kept = [(owner, cb) for owner, cb in session.info.get(_AFTER_COMMIT, []) if not inside(owner)]
    session.info[_AFTER_COMMIT] = kept


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A unit of work for tasks and commands: commit on success, roll back on error."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
