"""Post-commit hand-offs (Celery wake-ups) survive a rolled-back savepoint, and only then."""

import pytest
from sqlalchemy import create_engine, text

from shared.db import after_commit, make_session_factory


@pytest.fixture()
def factory(test_database_url):
    engine = create_engine(test_database_url)
    yield make_session_factory(engine)
    engine.dispose()


def test_savepoint_rollback_drops_only_what_it_registered(factory):
    ran: list[str] = []
    session = factory()
    after_commit(session, lambda: ran.append("outer"))
    savepoint = session.begin_nested()
    after_commit(session, lambda: ran.append("inside savepoint"))
    savepoint.rollback()
    session.execute(text("select 1"))
    session.commit()
    session.close()
    assert ran == ["outer"]


def test_released_savepoint_runs_with_the_outer_commit(factory):
    ran: list[str] = []
    session = factory()
    after_commit(session, lambda: ran.append("outer"))
    with session.begin_nested():
        after_commit(session, lambda: ran.append("inside savepoint"))
    assert ran == []
    session.commit()
    session.close()
    assert ran == ["outer", "inside savepoint"]


def test_rollback_drops_everything(factory):
    ran: list[str] = []
    session = factory()
    after_commit(session, lambda: ran.append("outer"))
    session.execute(text("select 1"))
    session.rollback()
    session.commit()
    session.close()
    assert ran == []
