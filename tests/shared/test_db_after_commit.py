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


def test_a_hand_off_runs_with_the_request_id_bound_when_it_was_registered(factory):
    """Issue 27 (round 5): a pass writes several jobs in one transaction and commits outside
    each job's ``log_context``; each job's wake-up still carries its own request id."""
    from shared.logs import current_request_id, log_context

    seen: list[str | None] = []
    session = factory()
    for request_id in ("req-a", None, "req-c"):
        with log_context(request_id=request_id):
            after_commit(session, lambda: seen.append(current_request_id()))
    session.execute(text("select 1"))
    session.commit()
    session.close()
    assert seen == ["req-a", None, "req-c"]
