"""Running claimed analyses through the pipeline and recording their outcomes.

Plain functions: the Celery task calls ``run_analysis``, and so do the tests.
"""

from __future__ import annotations

import logging
import uuid

from shared import analyses as lifecycle
from shared.analyses import Claim
from shared.context import AppContext
from shared.db import session_scope
from shared.models import AnalysisStatus
from shared.storage import ARTIFACTS, IMAGES, artifact_key
from worker.reporting.scribe import build_scribe_note

log = logging.getLogger(__name__)


def run_analysis(context: AppContext, pipeline, analysis_id: uuid.UUID) -> int:
    """Claim this job (and the most urgent others, up to the GPU batch size), run them as
    one batch, and record each outcome. Returns how many jobs this call finished."""
    with session_scope(context.session_factory) as session:
        claims = lifecycle.claim_batch(session, analysis_id, context.settings.gpu_batch_size)
    if not claims:
        return 0
    try:
        return _process(context, pipeline, claims)
    except Exception as exc:
        release(context, claims, exc)
        raise


def _process(context: AppContext, pipeline, claims: list[Claim]) -> int:
    from worker.pipeline.pipeline import Finding, LesionInput, Rejection

    images = [context.store.get(IMAGES, claim.image_key) for claim in claims]
    items = [
        LesionInput(image=data, age=c.age, sex=c.sex, site=c.site, pixel_spacing_mm=c.pixel_spacing_mm)
        for c, data in zip(claims, images)
    ]

    def on_stage(stage: str) -> None:
        with session_scope(context.session_factory) as session:
            lifecycle.set_stage(session, claims, stage)

    outcomes = pipeline.run(items, on_stage=on_stage)
    provenance = pipeline.registry.provenance()
    finished = 0
    for claim, outcome in zip(claims, outcomes):
        if isinstance(outcome, Finding):
            finished += _record_finding(context, claim, outcome, provenance)
        elif isinstance(outcome, Rejection):
            finished += _record(
                context,
                claim,
                status=AnalysisStatus.rejected,
                model=provenance,
                rejection={"code": outcome.code, "detail": outcome.detail, "scores": outcome.scores},
            )
        else:
            finished += _record(
                context,
                claim,
                status=AnalysisStatus.failed,
                model=provenance,
                error={"code": outcome.code, "detail": outcome.detail},
            )
    return finished


def _record_finding(context: AppContext, claim: Claim, finding, provenance: dict) -> int:
    mask_key = artifact_key(claim.tenant_id, claim.analysis_id, "mask.png")
    overlay_key = artifact_key(claim.tenant_id, claim.analysis_id, "overlay.png")
    context.store.put(ARTIFACTS, mask_key, finding.mask_png, "image/png")
    context.store.put(ARTIFACTS, overlay_key, finding.overlay_png, "image/png")
    result = dict(finding.result)
    result["scribe_note"] = build_scribe_note(
        {
            "id": str(claim.analysis_id),
            "external_id": claim.external_id,
            "status": AnalysisStatus.succeeded.value,
            "inputs": {
                "age": claim.age,
                "sex": claim.sex,
                "site": claim.site,
                "pixel_spacing_mm": claim.pixel_spacing_mm,
            },
            "result": result,
            "rejection": None,
            "error": None,
            "model": provenance,
        }
    )
    return _record(
        context,
        claim,
        status=AnalysisStatus.succeeded,
        model=provenance,
        result=result,
        mask_key=mask_key,
        overlay_key=overlay_key,
    )


def _record(context: AppContext, claim: Claim, **outcome) -> int:
    with session_scope(context.session_factory) as session:
        recorded = lifecycle.finish(session, context.celery, context.settings, claim, **outcome)
    if not recorded:
        log.info("analysis %s attempt %s was fenced off; outcome dropped", claim.analysis_id, claim.attempt)
    return int(recorded)


def release(context: AppContext, claims: list[Claim], exc: Exception) -> None:
    """After a system error, put claimed jobs back in the queue, or fail them for good
    once they have used up their attempts (no poison loops)."""
    with session_scope(context.session_factory) as session:
        for claim in claims:
            lifecycle.release_claim(
                session,
                context.celery,
                context.settings,
                claim,
                reason=f"{type(exc).__name__}: {exc}"[:300],
            )
