"""Every object is tenant-owned: one lookup that answers 404 for anyone else's id."""

from __future__ import annotations

import uuid
from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.problems import NotFound
from shared.models import Tenant

Model = TypeVar("Model")


def get_owned(
    session: Session, model: type[Model], ident: uuid.UUID, tenant: Tenant, what: str, *, for_update: bool = False
) -> Model:
    query = select(model).where(model.id == ident, model.tenant_id == tenant.id)
    if for_update:
        query = query.with_for_update()
    found = session.execute(query).scalar_one_or_none()
    if found is None:
        raise NotFound(f"no {what} with id {ident}")
    return found
