"""Bulk submission of direct uploads (``POST /v1/uploads/submit``): each item exactly as
``POST /v1/analyses {upload_id}`` would take it, all in one transaction.

Apart from ``api.services.uploads`` (handing out uploads, claiming one) and
``api.services.analyses`` (submitting one) because it uses both: neither imports the other's
caller, so the three form no cycle."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NoReturn

from sqlalchemy.orm import Session

from api.auth import TenantRef
from api.problems import Conflict, Problem
from api.services.analyses import submit_upload
from shared.context import AppContext
from shared.schemas import AnalysisInputs
from shared.storage import IMAGES, upload_key
from shared.tables import Analysis

# HEADs in flight at once for a bulk submission (the store client's pool holds 10 connections).
_HEAD_THREADS = 8


@dataclass
class BulkItem:
    """One entry of a bulk submission, parsed; ``problem`` when it was refused."""

    upload_id: uuid.UUID
    analysis: Analysis | None = None
    replayed: bool = False
    problem: Problem | None = None


def submit_many(
    context: AppContext,
    session: Session,
    tenant: TenantRef,
    items: list[tuple[uuid.UUID, AnalysisInputs, str | None, float | None]],
) -> list[BulkItem]:
    """Submit several direct uploads in one transaction, each exactly as ``POST /v1/analyses
    {upload_id}`` would (``api.services.analyses.submit_upload``: tenant, single use, expiry,
    size, idempotency, batch): an item refused (404, 409, 413) is reported with its problem
    and leaves the others alone. Items are (upload id, inputs,
    idempotency key, cancel_after seconds)."""
    # The object store's answers first, all at once (each key follows from tenant and id): the
    # HEADs overlap instead of taking turns inside the transaction. Checked as one at a time.
    keys = [upload_key(tenant.id, upload_id) for upload_id, *_ in items]
    with ThreadPoolExecutor(min(_HEAD_THREADS, len(keys) or 1)) as pool:
        known_sizes = dict(zip(keys, pool.map(lambda key: context.store.size(IMAGES, key), keys), strict=True))
    session.connection()  # begin: a rollback inside submit_upload shows as another transaction
    transaction = session.get_transaction()
    outcomes = []
    for upload_id, inputs, idempotency_key, cancel_after in items:
        # No savepoint per item: every refusal of submit_upload (idempotency mismatch, batch,
        # and each check of claim_for_analysis) is raised before that item writes anything,
        # so a refused item leaves nothing behind and the others' writes stand.
        try:
            submitted = submit_upload(
                context, session, tenant, upload_id, inputs, idempotency_key, cancel_after=cancel_after,
                known_sizes=known_sizes,
            )
        except Problem as problem:
            if session.get_transaction() is not transaction:
                _lost_race()
            outcomes.append(BulkItem(upload_id, problem=problem))
            continue
        if session.get_transaction() is not transaction:
            _lost_race()
        outcomes.append(BulkItem(upload_id, analysis=submitted.analysis, replayed=submitted.replayed))
    return outcomes


def _lost_race() -> NoReturn:
    # submit_upload lost an Idempotency-Key race to a concurrent request and rolled the whole
    # transaction back: nothing of this call is stored, and the whole call can be retried.
    raise Conflict(
        "another request used one of these idempotency keys at the same moment; "
        "nothing was submitted: retry the same request"
    )
