"""In-process tests of the API services: the functions the routes call, on the real test
Postgres (and Redis where a service uses it), with no HTTP in between. Each test gets its own
tenants, so tests never see each other's rows."""

from __future__ import annotations

import uuid
from contextlib import AbstractContextManager

import pytest
from sqlalchemy.orm import Session

from shared.context import AppContext
from shared.db import session_scope
from shared.tables import Tenant
from shared.tenants import issue_key


def _new_tenant(context: AppContext) -> tuple[Tenant, str]:
    with session_scope(context.session_factory) as session:
        return issue_key(session, f"svc-{uuid.uuid4().hex[:10]}")


@pytest.fixture
def tenant(context) -> Tenant:
    """A fresh tenant with one API key (detached: services read only its id)."""
    return _new_tenant(context)[0]


@pytest.fixture
def other_tenant(context) -> Tenant:
    return _new_tenant(context)[0]


@pytest.fixture
def unit(context):
    """``with unit() as session:`` one committed unit of work, as a request's session is."""

    def open_unit() -> AbstractContextManager[Session]:
        return session_scope(context.session_factory)

    return open_unit


@pytest.fixture
def with_settings(context):
    """A context like the suite's, with some settings changed (its own engine, closed after)."""
    made: list[AppContext] = []

    def build(**changes) -> AppContext:
        made.append(AppContext(context.settings.replace(**changes)))
        return made[-1]

    yield build
    for built in made:
        built.close()
