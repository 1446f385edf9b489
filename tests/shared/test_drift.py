"""Issue 24 on the real Postgres: the drift check over synthetic streams written as analyses rows
(tests/drift_streams.py; no GPU pipeline). A shifted stream (darker skin, blurrier photos) crosses
the thresholds within its window, opens one episode and emits one ``model.drift_detected`` event
(a second check emits none); a stable one never does. With ``DRIFT_ACTION=review_all`` the tenant
is in safety mode until cleared; setting and clearing are audited. The tenant's view counts its
own results only, with confirmed outcomes."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select

from shared import drift, monitoring
from shared.clock import utcnow
from shared.context import AppContext
from shared.db import session_scope
from shared.metrics import DRIFT_DETECTED, DRIFT_PSI, SAFETY_MODE
from shared.schemas import ModelDriftEvent
from shared.tables import AuditEvent, DriftEpisode, Event, Tenant
from shared.tenants import issue_key
from tests import drift_streams as streams

N = 200  # results per stream: above DRIFT_MIN_RESULTS (100)


def _tenant(context) -> tuple[uuid.UUID, str]:
    with session_scope(context.session_factory) as session:
        tenant, _ = issue_key(session, f"drift-{uuid.uuid4().hex[:10]}")
        return tenant.id, tenant.name


@pytest.fixture
def tenant(context) -> tuple[uuid.UUID, str]:
    return _tenant(context)


@pytest.fixture
def version(context) -> str:
    name = streams.new_version()
    streams.record(context, name, streams.reference())
    return name


@pytest.fixture
def review_all(context):
    """A context whose DRIFT_ACTION is review_all (its own engine)."""
    made = AppContext(context.settings.replace(drift_action="review_all"))
    yield made
    made.close()


def _events(context, tenant_id: uuid.UUID) -> list[Event]:
    with context.session_factory() as session:
        return list(session.execute(
            select(Event).where(Event.tenant_id == tenant_id, Event.type == drift.DRIFT_EVENT)
        ).scalars())


def _episodes(context, tenant_id: uuid.UUID) -> list[DriftEpisode]:
    with context.session_factory() as session:
        return list(session.execute(
            select(DriftEpisode).where(DriftEpisode.tenant_id == tenant_id).order_by(DriftEpisode.opened_at)
        ).scalars())


def _audit(context, tenant_id: uuid.UUID, action: str) -> list[AuditEvent]:
    with context.session_factory() as session:
        return list(session.execute(
            select(AuditEvent).where(AuditEvent.tenant_id == tenant_id, AuditEvent.action == action)
            .order_by(AuditEvent.seq)
        ).scalars())


def test_a_stable_stream_never_drifts(context, tenant, version):
    tenant_id, name = tenant
    streams.insert(context, tenant_id, version, streams.stable_stream(seed=21, count=N))
    for _ in range(2):
        report = drift.check_drift(context, tenant_ids=[tenant_id])
        assert report.opened == [] and report.failed == 0 and report.checked >= 1
    assert _events(context, tenant_id) == [] and _episodes(context, tenant_id) == []
    with context.session_factory() as session:
        view = monitoring.model_monitoring(session, context.settings, tenant_id, version)
    assert view.probability.status == "ok" and view.drift.exceeded == []
    assert view.probability.psi < 0.1 and view.probability.ks < 0.1 and view.skin_groups.psi < 0.1
    assert view.probability.reference.source == "evaluation"
    # The gauges this process serves: measured, no drift.
    assert DRIFT_PSI.labels(name, version)._value.get() == pytest.approx(view.probability.psi)
    assert DRIFT_DETECTED.labels(name, version)._value.get() == 0.0


def test_a_shifted_stream_drifts_once_and_alerts(context, tenant, version):
    tenant_id, name = tenant
    streams.insert(context, tenant_id, version, streams.shifted_stream(seed=22, count=N))
    first = drift.check_drift(context, tenant_ids=[tenant_id])
    assert len(first.opened) == 1
    second = drift.check_drift(context, tenant_ids=[tenant_id])
    assert second.opened == [] and second.checked >= 1

    [episode] = _episodes(context, tenant_id)
    assert episode.id == first.opened[0] and episode.cleared_at is None and episode.action == "alert"
    [event] = _events(context, tenant_id)
    assert episode.event_id == event.id
    assert event.dedupe_key == f"model.drift_detected:{tenant_id}:{version}:{episode.id}"
    body = ModelDriftEvent.model_validate(event.payload)
    data = body.data
    assert data.model_version == version and data.episode_id == episode.id and data.weights == "trained"
    assert set(data.measures.exceeded) == {"psi", "ks", "skin_group_psi"}
    assert data.measures.psi > context.settings.drift_psi_threshold
    assert data.measures.ks > context.settings.drift_ks_threshold
    assert data.measures.results < N  # the blurry rejections are not scored
    assert data.action == "alert" and data.safety_mode is False
    assert data.links.monitoring.endswith("/v1/monitoring")

    [detected] = _audit(context, tenant_id, drift.DETECT)
    assert detected.actor == "system" and detected.resource_type == "model" and detected.resource_id == version
    assert detected.detail["episode"] == str(episode.id) and detected.detail["action"] == "alert"
    assert _audit(context, tenant_id, drift.SAFETY_SET) == []
    with context.session_factory() as session:
        assert monitoring.in_safety_mode(session, tenant_id) is False
        view = monitoring.model_monitoring(session, context.settings, tenant_id, version)
    assert view.probability.status == "drift" and view.drift.open_episode.id == episode.id
    assert view.rejections["blurry"].count == view.window.rejected > 0
    assert view.rejection_rate.value == pytest.approx(view.window.rejected / view.window.results)
    assert view.skin_groups.groups["dark"].count > view.skin_groups.groups.get("light").count
    assert DRIFT_DETECTED.labels(name, version)._value.get() == 1.0


def test_review_all_puts_the_tenant_in_safety_mode_until_cleared(context, review_all, tenant, version):
    tenant_id, name = tenant
    streams.insert(context, tenant_id, version, streams.shifted_stream(seed=23, count=N))
    report = drift.check_drift(review_all, tenant_ids=[tenant_id])
    assert len(report.opened) == 1
    [event] = _events(context, tenant_id)
    assert event.payload["data"]["safety_mode"] is True and event.payload["data"]["action"] == "review_all"
    [set_row] = _audit(context, tenant_id, drift.SAFETY_SET)
    assert set_row.actor == "system" and set_row.resource_type == "tenant" and set_row.resource_id == str(tenant_id)
    cache = drift.SafetyModeCache()
    assert cache.active(context.session_factory, tenant_id, ttl=0) is True
    with context.session_factory() as session:
        mode = monitoring.safety_mode(session, tenant_id)
    assert mode.active and mode.model_versions == [version]
    assert SAFETY_MODE.labels(name)._value.get() == 1.0

    with session_scope(context.session_factory) as session:
        cleared = drift.clear(session, actor="operator:tester", tenant_id=tenant_id)
    assert [(c.tenant_id, c.model_version, c.action) for c in cleared] == [(tenant_id, version, "review_all")]
    assert cache.active(context.session_factory, tenant_id, ttl=0) is False
    [clear_row] = _audit(context, tenant_id, drift.CLEAR)
    assert clear_row.actor == "operator:tester" and clear_row.resource_id == version
    [safety_clear] = _audit(context, tenant_id, drift.SAFETY_CLEAR)
    assert safety_clear.actor == "operator:tester" and safety_clear.resource_id == str(tenant_id)
    [episode] = _episodes(context, tenant_id)
    assert episode.cleared_at is not None and episode.cleared_by == "operator:tester"

    # Clearing starts a fresh window: the shifted results before it are not judged again.
    again = drift.check_drift(review_all, tenant_ids=[tenant_id])
    assert again.opened == [] and len(_events(context, tenant_id)) == 1
    with context.session_factory() as session:
        view = monitoring.model_monitoring(session, context.settings, tenant_id, version)
    assert view.window.results == 0 and view.drift.open_episode is None
    # A shifted stream after the clear is a new episode (its own event).
    streams.insert(context, tenant_id, version, streams.shifted_stream(seed=24, count=N), minutes_ago=-0.0001)
    assert len(drift.check_drift(review_all, tenant_ids=[tenant_id]).opened) == 1
    assert len(_events(context, tenant_id)) == 2
    assert SAFETY_MODE.labels(name)._value.get() == 1.0


def test_the_safety_mode_cache_reads_at_most_once_per_ttl(context, review_all, tenant, version):
    tenant_id, _ = tenant
    now = [100.0]
    cache = drift.SafetyModeCache(clock=lambda: now[0])
    assert cache.active(context.session_factory, tenant_id, ttl=5) is False
    streams.insert(context, tenant_id, version, streams.shifted_stream(seed=25, count=N))
    drift.check_drift(review_all, tenant_ids=[tenant_id])
    now[0] += 4.9
    assert cache.active(context.session_factory, tenant_id, ttl=5) is False  # cached
    now[0] += 0.2
    assert cache.active(context.session_factory, tenant_id, ttl=5) is True


def test_no_reference_means_no_drift_judged(context, tenant):
    tenant_id, _ = tenant
    unreferenced = streams.new_version()
    streams.insert(context, tenant_id, unreferenced, streams.shifted_stream(seed=26, count=N))
    assert drift.check_drift(context, tenant_ids=[tenant_id]).opened == []
    with context.session_factory() as session:
        view = monitoring.model_monitoring(session, context.settings, tenant_id, unreferenced)
    assert view.probability.status == "no_reference" and view.probability.psi is None
    assert view.probability.count > 0 and view.probability.reference is None


def test_the_tenant_view_counts_its_own_results_with_outcomes(context, tenant, version):
    tenant_id, _ = tenant
    other_id, _ = _tenant(context)
    items = streams.stable_stream(seed=27, count=40) + [streams.Item("failed")] * 2
    ids = streams.insert(context, tenant_id, version, items)
    streams.insert(context, other_id, version, streams.shifted_stream(seed=28, count=30))
    # Confirmed outcomes: two melanomas (one called, one missed), two benign (both called benign).
    probabilities = {i: item.probability for i, item in zip(ids, items, strict=True)}
    called = [i for i in ids if (probabilities[i] or 0) > 0.5][:1]
    benign_called = [i for i in ids if probabilities[i] is not None and probabilities[i] <= 0.5]
    assert called and len(benign_called) >= 3
    streams.confirm(context, tenant_id, called[0], histopathology="nodular melanoma")
    streams.confirm(context, tenant_id, benign_called[0], final_diagnosis="melanoma in situ")
    streams.confirm(context, tenant_id, benign_called[1], histopathology="compound naevus")
    streams.confirm(context, tenant_id, benign_called[2], final_diagnosis="melanoma",
                    histopathology="seborrhoeic keratosis, no evidence of melanoma")
    streams.confirm(context, tenant_id, benign_called[2], final_diagnosis="dermatofibroma")  # newest wins

    with context.session_factory() as session:
        mine = monitoring.tenant_monitoring(session, context.settings, tenant_id)
        theirs = monitoring.tenant_monitoring(session, context.settings, other_id)
    [model] = mine.models
    assert model.model_version == version and model.window.results == 42
    assert model.window.succeeded == 40 and model.window.failed == 2 and model.failure_rate.count == 2
    assert model.probability.status == "insufficient_data"  # 40 scored < DRIFT_MIN_RESULTS
    assert sum(share.count for share in model.dispositions.values()) == 40
    assert model.metadata.sex["female"].count == 42 and model.metadata.age_band["40-64"].count == 42
    overall = model.outcomes.overall
    assert (overall.confirmed, overall.melanomas) == (4, 2)
    assert (overall.sensitivity.count, overall.sensitivity.total) == (1, 2)
    assert (overall.specificity.count, overall.specificity.total) == (2, 2)
    assert overall.sensitivity.ci95 == monitoring.wilson(1, 2).ci95
    assert sum(block.confirmed for block in model.outcomes.per_skin_group) == 4
    assert not mine.safety_mode.active and mine.drift_action == "alert"
    # The other tenant sees its own 30 results of the same version, none of these.
    [their_model] = theirs.models
    assert their_model.window.results == 30 and their_model.outcomes.overall.confirmed == 0


def test_a_disabled_tenant_is_not_checked(context, tenant, version):
    tenant_id, _ = tenant
    streams.insert(context, tenant_id, version, streams.shifted_stream(seed=29, count=N))
    with session_scope(context.session_factory) as session:
        session.get(Tenant, tenant_id).disabled_at = utcnow()
    assert drift.check_drift(context, tenant_ids=[tenant_id]).checked == 0


def test_the_reference_is_evaluates_else_the_registered_cards(context):
    from shared.schemas import ModelInfo
    from shared.tables import ModelVersion
    from training.model_store import record_reference

    version = streams.new_version()
    validation = streams.reference(seed=5).model_copy(update={"source": "validation", "skin_groups": None})
    with session_scope(context.session_factory) as session:
        session.add(ModelVersion(kind="fusion", version=version, sha256=uuid.uuid4().hex * 2,
                                 object_key=f"models/fusion/{version}.pth",
                                 card={"calibration": {"threshold": 0.4, "reference": validation.as_json()}}))
    with context.session_factory() as session:
        assert monitoring.reference_for(session, version) == validation  # training's, from the card
    evaluated = streams.reference(seed=6)
    model = ModelInfo(segmenter="unet", weights="trained", version=version,
                      fusion={"name": "fusion", "version": version, "sha256": "ab" * 32})
    assert record_reference(context.settings, model, evaluated) == version
    with context.session_factory() as session:
        assert monitoring.reference_for(session, version) == evaluated  # evaluate's wins
        assert monitoring.reference_for(session, streams.new_version()) is None
    again = streams.reference(seed=7)
    record_reference(context.settings, model, again)  # a new evaluation replaces it
    with context.session_factory() as session:
        assert monitoring.reference_for(session, version) == again
