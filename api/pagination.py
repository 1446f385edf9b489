"""Keyset pagination, newest first, over (created_at, id): stable under concurrent inserts."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Select, tuple_
from sqlalchemy.orm import Session

from api.problems import BadRequest
from shared.tables import Analysis, Batch


def encode_cursor(created_at: datetime, ident: uuid.UUID) -> str:
    raw = f"{created_at.isoformat()}|{ident}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created, ident = base64.urlsafe_b64decode(padded).decode().split("|")
        return datetime.fromisoformat(created), uuid.UUID(ident)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the cursor is not valid; use the next_cursor of a previous page") from None


def newest_first(
    session: Session, query: Select[Any], model: type[Analysis | Batch], *, limit: int, cursor: str | None
) -> tuple[list[Any], str | None]:
    """One page of ``query`` (which selects ``model``) and the cursor of the next page."""
    if cursor:
        created, ident = decode_cursor(cursor)
        query = query.where(tuple_(model.created_at, model.id) < tuple_(created, ident))
    rows = list(session.execute(query.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)).scalars())
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    return rows[:limit], encode_cursor(last.created_at, last.id)


# Issue 22: the audit trail pages by its chain's seq, newest first (one chain per tenant).
def encode_seq_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"seq|{seq}".encode()).decode().rstrip("=")


def decode_seq_cursor(cursor: str) -> int:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        kind, seq = base64.urlsafe_b64decode(padded).decode().split("|")
        if kind != "seq":
            raise ValueError(kind)
        return int(seq)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the cursor is not valid; use the next_cursor of a previous page") from None
