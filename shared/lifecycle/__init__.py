"""The life of an analysis: every status change goes through this package.

``claims`` (claim, finish, release), ``cancel`` (requests, batches, deadlines), ``ingest``
(direct uploads), ``batches`` (progress, completion), ``sweeps`` (what the sweeper looks for),
``views`` (records, links, event payloads), ``archives`` (batch archives, issue 25), ``uploads``
(claiming a direct upload). Import the package as ``lifecycle``; its names are
re-exported here.
"""

from shared.lifecycle.archives import (  # noqa: F401
    ARCHIVE_ROW,
    ArchiveJob,
    RowItem,
    RowRefusal,
    StoredImage,
    archive_job,
    archive_of,
    enqueue_unpack,
    finish_unpack,
    item_id,
    missing_unpacks,
    request_unpack,
    settle_rows,
)
from shared.lifecycle.batches import (  # noqa: F401
    BatchTally,
    batch_state,
    batch_tally,
    complete_batch_if_done,
    stop_unpacking,
    unfinished_sealed_batches,
)
from shared.lifecycle.cancel import cancel, cancel_batch, expire_due  # noqa: F401
from shared.lifecycle.claims import (  # noqa: F401
    CLAIM_COLUMNS,
    FIRST_STAGE,
    Claim,
    FinalOutcome,
    claim_batch,
    claimable,
    finish,
    finish_many,
    lane_candidates,
    release_claim,
    requeue,
    set_stage,
    transient_delay,
)
from shared.lifecycle.ingest import (  # noqa: F401
    PendingIngest,
    abandoned_upload_key,
    enqueue_ingest,
    ingest_rejected,
    ingested,
    missing_ingests,
    pending_ingest,
    request_ingest,
)
from shared.lifecycle.outcomes import on_final  # noqa: F401
from shared.lifecycle.states import ACTIVE, CANCEL_BATCH, CANCEL_EXPIRED, CANCEL_REQUESTED  # noqa: F401
from shared.lifecycle.sweeps import (  # noqa: F401
    ask_again,
    due_retries,
    end_transactions_of,
    missing_reports,
    orphaned_claims,
    report_settled,
    stale_claims,
    waiting_since,
)
from shared.lifecycle.views import (  # noqa: F401
    analysis_record,
    analysis_summary,
    analysis_view,
    api_base,
    artifact_links,
    event_data,
    fields_for,
    image_stored,
    inputs_view,
    links,
    model_of,
    narrowed,
    read_model,
    read_result,
    result_of,
    shown_disposition,
    shown_result,
)
