"""Every object is tenant-owned: one lookup that answers 404 for anyone else's id."""

from __future__ import annotations

import uuid
from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.auth import TenantRef
from api.problems import NotFound
from shared.tables import Base

Model = TypeVar("Model", bound=Base)


def get_owned(
    session: Session, model: type[Model], ident: uuid.UUID, tenant: TenantRef, what: str, *, for_update: bool = False
) -> Model:
    columns = model.__table__.c  # every tenant-owned table has `id` and `tenant_id`
    query = select(model).where(columns.id == ident, columns.tenant_id == tenant.id)
    if for_update:
        query = query.with_for_update()
    found = session.execute(query).scalar_one_or_none()
    if found is None:
        raise NotFound(f"no {what} with id {ident}")
    return found
