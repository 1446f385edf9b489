"""/v1/batches: bulk screening. Parse input, call the service, shape the answer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse

from api import live
from api.auth import AuthenticatedTenant
from api.deps import CapacityDep, ContextDep, SessionDep, authorized, parse_id
from api.problems import NotFound, problems
from api.services import batches as service
from api.services import progress, triage
from shared import clinical, lifecycle
from shared.clock import iso
from shared.context import AppContext
from shared.schemas import (
    BatchCanceled,
    BatchIn,
    BatchLinks,
    BatchOut,
    BatchPage,
    BatchResults,
    BatchSummary,
    StatusCounts,
)
from shared.schemas.progress import BatchProgressEvent
from shared.scopes import Scope
from shared.tables import Batch

router = APIRouter(prefix="/v1/batches", tags=["batches"])

# Who may call each operation, and what its audit row says (api.deps.authorized; issue 22).
CreateBatch = Annotated[AuthenticatedTenant, authorized(Scope.batches_write, "batch.create", "batch")]
ListBatches = Annotated[AuthenticatedTenant, authorized(Scope.analyses_read, "batch.list", "batch")]
GetBatch = Annotated[AuthenticatedTenant, authorized(Scope.analyses_read, "batch.read", "batch", "batch_id")]
SealBatch = Annotated[AuthenticatedTenant, authorized(Scope.batches_write, "batch.seal", "batch", "batch_id")]
CancelBatch = Annotated[AuthenticatedTenant, authorized(Scope.batches_write, "batch.cancel", "batch", "batch_id")]
FollowBatch = Annotated[AuthenticatedTenant, authorized(Scope.analyses_read, "batch.events", "batch", "batch_id")]
ReadBatchResults = Annotated[AuthenticatedTenant, authorized(Scope.analyses_read, "batch.results", "batch", "batch_id")]


def _links(context: AppContext, batch: Batch) -> BatchLinks:
    base = f"{lifecycle.api_base(context.settings)}/v1/batches/{batch.id}"
    return BatchLinks(self=base, seal=f"{base}/seal", cancel=f"{base}/cancel", results=f"{base}/results?order=risk")


def summary(context: AppContext, batch: Batch, counts: dict[str, int]) -> BatchSummary:
    return BatchSummary(
        id=batch.id,
        name=batch.name,
        external_id=batch.external_id,
        state=lifecycle.batch_state(batch, counts.get("canceled", 0)),
        created_at=iso(batch.created_at),
        sealed_at=iso(batch.sealed_at),
        completed_at=iso(batch.completed_at),
        deadline_at=iso(batch.deadline_at),
        canceled_at=iso(batch.canceled_at),
        counts=StatusCounts(**counts),
        total=sum(counts.values()),
        links=_links(context, batch),
    )


def view(context: AppContext, batch: Batch, progress: service.Progress) -> BatchOut:
    return BatchOut(
        **lifecycle.fields_for(BatchOut, summary(context, batch, progress.counts)),
        dispositions=progress.dispositions,
        done=progress.done,
        percent_done=progress.percent_done,
        throughput_per_minute=progress.throughput_per_minute,
        eta_seconds=progress.eta_seconds,
        eta_at=iso(progress.eta_at),
    )


@router.post(
    "",
    status_code=201,
    summary="Create a batch for bulk screening",
    description="An `open` batch: submit items with `batch_id`, then seal it. `cancel_after` (90s, 5m, 1h30m or "
    "seconds) sets a deadline for every item: unfinished ones then end `canceled` (`expired`).",
    response_model=BatchOut,
    response_model_exclude_unset=True,
)
def create_batch(body: BatchIn, context: ContextDep, tenant: CreateBatch, session: SessionDep) -> BatchOut:
    batch = service.create(session, tenant, body, context.settings.max_cancel_after_seconds)
    return view(context, batch, service.progress(session, batch))


@router.get(
    "",
    summary="List batches, newest first",
    description="The tenant's batches with counts per status, newest first, cursor-paginated; `name` filters.",
    response_model=BatchPage,
    response_model_exclude_unset=True,
    responses=problems((400, "The cursor is not one this API issued")),
)
def list_batches(
    context: ContextDep,
    tenant: ListBatches,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
    name: Annotated[str | None, Query(max_length=200)] = None,
) -> BatchPage:
    rows, next_cursor = service.list_page(session, tenant, limit=limit, cursor=cursor, name=name)
    counts = service.counts_for(session, [b.id for b in rows])
    return BatchPage(data=[summary(context, b, counts[b.id]) for b in rows], next_cursor=next_cursor)


@router.get(
    "/{batch_id}",
    summary="Progress: counts per status, percent done, throughput and ETA",
    description=(
        "`state`: open (takes items), sealed (closed, items still running), or how it ended once sealed and "
        "every item is final (`batch.completed` was emitted): completed, canceled (by `…/cancel`) or expired "
        "(its `cancel_after` deadline canceled unfinished items). `dispositions`: succeeded results per "
        "disposition (`urgent_referral`, `clinician_review`, `routine`; weights that are not `trained` "
        "always give `clinician_review`). `throughput_per_minute`: items "
        "finished per minute over the last 5 minutes (or since the batch was created, when "
        "younger); null while nothing finished in that window. `eta_seconds` / `eta_at`: the "
        "queued and processing items at that rate. Counted in one pass over the batch's own rows, "
        "never a scan of other batches."
    ),
    response_model=BatchOut,
    response_model_exclude_unset=True,
    responses=problems(404),
)
def get_batch(batch_id: str, context: ContextDep, tenant: GetBatch, session: SessionDep) -> BatchOut:
    batch = service.get(session, tenant, parse_id(batch_id, "batch"))
    return view(context, batch, service.progress(session, batch))


@router.get(
    "/{batch_id}/events",
    summary="Live progress: counts, state and ETA as Server-Sent Events",
    description=live.BATCH_DESCRIPTION,
    response_class=Response,
    responses={
        200: {
            "description": "`text/event-stream`: `event: progress` events (`data`: the batch's progress as JSON, "
            "with `final`), each with its `id`; heartbeat comments; ends after the batch ended",
            "content": {live.MEDIA_TYPE: {"schema": live.BATCH_STREAM_SCHEMA}},
        },
        204: {"description": "`Last-Event-ID` was the batch's final progress: nothing follows (an EventSource stops)"},
        **problems(404),
    },
)
async def follow_batch(
    request: Request,
    batch_id: str,
    tenant: FollowBatch,
    context: ContextDep,
    capacity: CapacityDep,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID", max_length=64,
            description="The `id` of the last event received: nothing is sent until the progress differs from it",
        ),
    ] = None,
) -> Response:
    ident = parse_id(batch_id, "batch")
    found = await live.read(capacity, context, tenant, progress.batch_progress, ident)
    if found is None:
        raise NotFound(f"no batch with id {batch_id}")

    def shape(batch: Batch, counted: service.Progress) -> BatchProgressEvent:
        return BatchProgressEvent(
            **lifecycle.fields_for(BatchProgressEvent, view(context, batch, counted)),
            final=batch.completed_at is not None,
        )

    if last_event_id is not None:
        now = shape(*found)
        if now.final and live.batch_fingerprint(now) == last_event_id:
            return Response(status_code=204)
    events = live.batch_events(request.app.state.progress_feed, context, capacity, tenant, ident, last_event_id, shape)
    return live.response(events, context.settings)


@router.post(
    "/{batch_id}/seal",
    summary="Close the batch for new items (idempotent)",
    description="A sealed batch refuses new items (409, problem type …/batch_sealed) and completes, with one "
    "`batch.completed` event, once every item is final.",
    response_model=BatchOut,
    response_model_exclude_unset=True,
    responses=problems(
        404,
        (409, "The batch's archive (`POST …/archive`) was not PUT yet: PUT it, then seal"),
        (413, "The batch's archive is larger than `ARCHIVE_MAX_MB`"),
    ),
)
def seal_batch(batch_id: str, context: ContextDep, tenant: SealBatch, session: SessionDep) -> BatchOut:
    batch = service.seal(context, session, tenant, parse_id(batch_id, "batch"))
    return view(context, batch, service.progress(session, batch))


@router.post(
    "/{batch_id}/cancel",
    summary="Cancel every unfinished item and close the batch (idempotent)",
    description=(
        "Queued and processing items end `canceled` with `cancel_reason` `batch_canceled`, each with "
        "one `analysis.canceled` event; the batch is sealed and ends `canceled` (`batch.completed`). "
        "`canceled_now` is how many items this call canceled: a repeat changes nothing and emits nothing."
    ),
    response_model=BatchCanceled,
    response_model_exclude_unset=True,
    responses=problems(404),
)
def cancel_batch(batch_id: str, context: ContextDep, tenant: CancelBatch, session: SessionDep) -> BatchCanceled:
    batch, canceled_now = service.cancel(context, session, tenant, parse_id(batch_id, "batch"))
    progress = view(context, batch, service.progress(session, batch))
    return BatchCanceled(**lifecycle.fields_for(BatchCanceled, progress), canceled_now=canceled_now)


RESULTS_DESCRIPTION = f"""Every item of the batch, streamed. `order=risk`: grouped by `disposition` first
(`urgent_referral`, `clinician_review`, `routine`, then items without one); within a group,
succeeded results by melanoma probability, highest first; then rejected images (with
`rejection_code`, the gate's `rejection_detail` and `retake_advice`), failed ones (`error_code`),
canceled ones, and last any still queued or processing. `order=submitted`: in submission order.

Every succeeded item carries its `disposition` (what should happen next) and
`disposition_reasons` (`;`-separated codes), as `result.disposition` gives them: weights that
are not `trained` always give `clinician_review`; results stored before dispositions existed have none.

Review rule: {triage.REVIEW_RULE}. `review_reason` lists the codes, `;`-separated.

Every item carries `weights` (`trained`, `synthetic` or `untrained`): results from weights that are
not `trained` are flagged `weights_not_trained` for review, and the summary's `weights_warning` says
the ranking is not meaningful.

`format=json`: `{{"batch": …progress…, "items": […], "summary": {{counts, needs_review, retake
(rejections per code), review_rule, equity, weights (results per weights status),
weights_warning, dispositions (results per disposition)}}}}`; `items=false` leaves the items out.
`equity` has one entry per skin group
(succeeded items): `items`, `high_risk` (risk band high, p > {clinical.HIGH_RISK_THRESHOLD:g} with the default
operating point), `high_risk_share`, `suspicious` (diagnosis melanoma: p > the model's threshold,
{clinical.MELANOMA_THRESHOLD:g} by default) and its share, `needs_review`, `bias_warning`.
`format=csv`: a header row and one row per item, columns
`{", ".join(triage.CSV_COLUMNS)}`; empty cells for what does not apply.

`format=isic`: the same items as ISIC challenge-style CSV, columns
`{", ".join(triage.ISIC_COLUMNS)}`: `image_name` is the item's `external_id` when it is a plain
file name (letters, digits, `._-`, not starting with a dot), else its analysis id; `target` the
melanoma probability (empty without a result); `age_approx`
to 5 years and `anatom_site_general_challenge` as ISIC names them (empty when unknown). Read
`weights` first: anything but `trained` is not clinically meaningful. Research use only, not a
certified medical device."""


@router.get(
    "/{batch_id}/results",
    summary="Triage list: highest risk first, review flags, retakes, equity summary",
    description=RESULTS_DESCRIPTION,
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The triage list, as JSON or CSV (`format`)",
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/BatchResults"}},
                "text/csv": {"schema": {"type": "string"}, "description": "`format=csv` or `format=isic`"},
            },
            "model": BatchResults,
        },
        **problems(404),
    },
)
def batch_results(
    batch_id: str,
    context: ContextDep,
    tenant: ReadBatchResults,
    session: SessionDep,
    order: Literal["risk", "submitted"] = "risk",
    format: Annotated[
        Literal["json", "csv", "isic"], Query(description="`json`, the triage `csv`, or ISIC-style CSV (`isic`)")
    ] = "json",
    items: bool = True,
) -> StreamingResponse:
    batch = service.get(session, tenant, parse_id(batch_id, "batch"))
    header = view(context, batch, service.progress(session, batch))
    rows = triage.iter_triage(context.session_factory, batch.id, order)
    if format in ("csv", "isic"):
        name = "isic" if format == "isic" else "triage"
        return StreamingResponse(
            triage.triage_csv(rows, isic=format == "isic"),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}-{batch.id}.csv"'},
        )
    return StreamingResponse(_json_stream(header, rows, items), media_type="application/json")


def _json_stream(
    header: BatchOut, rows: Iterator[triage.TriageRow], include_items: bool, flush_every: int = 500
) -> Iterator[str]:
    """``BatchResults`` as JSON text chunks, written as the rows stream (never held whole)."""
    tally = triage.TriageSummary()
    parts = ['{"batch": ' + json.dumps(header.model_dump(mode="json")) + ', "items": [']
    for rank, row in enumerate(rows, start=1):
        item = row.as_item(rank)
        tally.add(row, item)
        if include_items:
            parts.append(("" if rank == 1 else ", ") + json.dumps(item.model_dump(mode="json")))
        if len(parts) >= flush_every:
            yield "".join(parts)
            parts.clear()
    parts.append('], "summary": ' + json.dumps(tally.out().model_dump(mode="json")) + "}")
    yield "".join(parts)
