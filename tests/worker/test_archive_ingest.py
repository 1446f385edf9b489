"""A crash in the middle of unpacking a batch's archive neither duplicates nor loses an item
(issue 25): the unpack is called directly, on a database of its own (the session's live ingest
worker would otherwise race it), with wake-ups sent where no worker reads."""

from __future__ import annotations

import io
import uuid
import zipfile

import pytest
from sqlalchemy import select

from shared import lifecycle
from shared.clock import utcnow
from shared.db import session_scope
from shared.storage import IMAGES, archive_key
from shared.tables import Analysis, ArchiveState, Batch, BatchArchive, BatchRowError
from shared.tenants import issue_key
from worker import archive_ingest
from worker.pipeline.synthetic import encode_jpeg, make_lesion

ROWS = 7


@pytest.fixture(scope="module")
def quiet(settings, context):
    from shared.context import AppContext
    from shared.migrate import scratch_database

    base = settings.broker_url.rsplit("/", 1)[0]
    with scratch_database(settings.database_url, "dsarchive") as url:
        ctx = AppContext(settings.model_copy(update={"broker_url": f"{base}/15", "database_url": url}))
        yield ctx
        ctx.close()


def sealed_batch_with_archive(ctx, members: dict[str, bytes]) -> tuple[uuid.UUID, uuid.UUID]:
    with session_scope(ctx.session_factory) as session:
        tenant, _ = issue_key(session, f"archive-{uuid.uuid4().hex[:10]}")
        batch = Batch(tenant_id=tenant.id, name="crash", sealed_at=utcnow())
        session.add(batch)
        session.flush()
        archive = BatchArchive(batch_id=batch.id, tenant_id=tenant.id, format="zip", url_expires_at=utcnow(),
                               object_key=archive_key(tenant.id, batch.id, uuid.uuid4()),
                               state=ArchiveState.unpacking.value, ingest_requested_at=utcnow())
        session.add(archive)
        session.flush()
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as archive_file:
            for name, data in members.items():
                archive_file.writestr(name, data)
        ctx.store.put(IMAGES, archive.object_key, out.getvalue(), "application/zip")
        return batch.id, archive.id


def test_a_crash_mid_unpack_neither_duplicates_nor_loses_items(quiet, monkeypatch):
    names = [f"IMG_{n}.jpg" for n in range(1, ROWS + 1)]
    members = {"manifest.csv": ("filename\n" + "\n".join(names[:-1]) + "\nnot-there.jpg\n").encode()}
    members.update({name: encode_jpeg(make_lesion(seed=n, size=(40, 40)).image) for n, name in enumerate(names)})
    batch_id, archive_id = sealed_batch_with_archive(quiet, members)
    with session_scope(quiet.session_factory) as session:
        first_try = lifecycle.archive_job(session, archive_id)
    assert first_try is not None

    monkeypatch.setattr(archive_ingest, "CHUNK_ROWS", 3)
    settle = lifecycle.settle_rows
    calls = []

    def crash_on_second_chunk(*args, **kwargs):
        calls.append(1)
        settled = settle(*args, **kwargs)
        if len(calls) == 2:
            raise RuntimeError("worker killed")  # before the commit: the chunk is lost with it
        return settled

    monkeypatch.setattr(lifecycle, "settle_rows", crash_on_second_chunk)
    with pytest.raises(RuntimeError):
        archive_ingest.ingest_archive(quiet, archive_id)
    monkeypatch.setattr(lifecycle, "settle_rows", settle)

    # A stale try (it read next_row 0) cannot settle rows another try already settled.
    assert archive_ingest._settle(quiet, first_try, 3, []) is False

    assert archive_ingest.ingest_archive(quiet, archive_id) == "done"
    assert archive_ingest.ingest_archive(quiet, archive_id) is None  # once done, a repeat does nothing
    with session_scope(quiet.session_factory) as session:
        rows = sorted(session.execute(select(Analysis.batch_row).where(Analysis.batch_id == batch_id)).scalars())
        refused = list(session.execute(select(BatchRowError.row).where(BatchRowError.batch_id == batch_id))
                       .scalars())
        archive = session.get(BatchArchive, archive_id)
        assert archive is not None
        assert (archive.state, archive.next_row, archive.items, archive.refused) == ("done", ROWS, ROWS - 1, 1)
        key = archive.object_key
    assert rows == list(range(1, ROWS))
    assert refused == [ROWS]
    assert not quiet.store.exists(IMAGES, key)  # the archive as PUT is gone once unpacked


def test_a_batch_with_an_archive_being_unpacked_does_not_complete(quiet):
    batch_id, archive_id = sealed_batch_with_archive(quiet, {"manifest.csv": b"filename\n"})
    with session_scope(quiet.session_factory) as session:
        assert not lifecycle.complete_batch_if_done(session, None, quiet.settings, batch_id)
    assert archive_ingest.ingest_archive(quiet, archive_id) == "done"
    with session_scope(quiet.session_factory) as session:
        batch = session.get(Batch, batch_id)
        assert batch is not None and batch.completed_at is not None


def test_a_stale_job_after_a_cancel_writes_nothing(quiet):
    batch_id, archive_id = sealed_batch_with_archive(
        quiet, {"manifest.csv": b"filename\nIMG_1.jpg\n", "IMG_1.jpg": encode_jpeg(make_lesion(seed=1).image)})
    with session_scope(quiet.session_factory) as session:
        job = lifecycle.archive_job(session, archive_id)
        batch = session.get(Batch, batch_id)
        lifecycle.cancel_batch(session, None, quiet.settings, batch)
    assert job is not None
    assert archive_ingest.ingest_archive(quiet, archive_id) is None
    assert archive_ingest._settle(quiet, job, 1, []) is False
    with session_scope(quiet.session_factory) as session:
        assert session.get(BatchArchive, archive_id).state == "stopped"
        assert session.execute(select(Analysis.id).where(Analysis.batch_id == batch_id)).first() is None


def test_rows_not_read_by_the_batch_deadline_are_listed_not_lost(quiet):
    batch_id, archive_id = sealed_batch_with_archive(
        quiet, {"manifest.csv": b"filename\nIMG_1.jpg\n", "IMG_1.jpg": encode_jpeg(make_lesion(seed=1).image)})
    with session_scope(quiet.session_factory) as session:
        session.get(Batch, batch_id).deadline_at = utcnow()
    assert archive_ingest.ingest_archive(quiet, archive_id) == "stopped"
    with session_scope(quiet.session_factory) as session:
        refused = session.execute(select(BatchRowError).where(BatchRowError.batch_id == batch_id)).scalar_one()
        assert (refused.row, refused.code) == (lifecycle.ARCHIVE_ROW, "batch_expired")
        assert session.get(Batch, batch_id).completed_at is not None
