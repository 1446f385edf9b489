"""Finished analyses written straight to the real Postgres and S3, for tests of what the API
and the web app show (questions, worklist, feedback). The pipeline's own end-to-end tests run
the worker; these need chosen probabilities (a risk order) and must not wait for it."""

from __future__ import annotations

import uuid
from datetime import timedelta

from shared.clinical.disposition import SAFETY_NETTING
from shared.clock import utcnow
from shared.db import session_scope
from shared.schemas import AnalysisResult, ModelInfo
from shared.storage import ARTIFACTS, IMAGES, artifact_key, image_key
from shared.tables import Analysis, Batch
from tests import factories
from worker.pipeline import overlay
from worker.pipeline.synthetic import encode_jpeg, make_lesion

SCRIBE_NOTE = (
    "UNTRAINED MODEL — output is not clinically meaningful\n\nDERMASENTINEL AI SCRIBE NOTE (rule-based, automated)\n\n"
    "FINDINGS\n- seeded for a test\n\nPLAN\n- UNTRAINED MODEL: do not act on this output.\n"
    "- Seeded plan line for the test.\n\nProvenance: seeded."
)


# The reasons a seeded disposition records unless a test names them.
REASONS = {
    "urgent_referral": ["high_probability"],
    "clinician_review": ["missing_metadata", "above_rule_out"],
    "routine": ["below_rule_out"],
}


def result_for(
    probability: float,
    *,
    uncertainty: float = 0.03,
    skin_group: str = "light",
    ita: float = 35.0,
    disposition: str | None = None,
    reasons: list[str] | None = None,
) -> dict:
    """A result (tests/factories.py) with this probability, as the worker stores it. With a
    ``disposition`` it records that disposition (with ``reasons``, else typical ones, and the
    safety netting for ``routine``), as the pipeline does; without one, none (a result stored
    before dispositions existed). Choose dispositions the rules could give: nothing from
    untrained weights is ever ``routine`` or ``urgent_referral`` (the API shows such a result
    as ``clinician_review`` whatever was stored)."""
    decided = {}
    if disposition is not None:
        decided = {
            "disposition": disposition,
            "disposition_reasons": reasons if reasons is not None else REASONS[disposition],
            "safety_netting": SAFETY_NETTING if disposition == "routine" else None,
        }
    return factories.result(
        diagnosis="melanoma" if probability > 0.5 else "benign",
        probability=probability,
        uncertainty=uncertainty,
        tta_probabilities=[probability] * 5,
        risk_band="high" if probability > 0.8 else "medium" if probability > 0.5 else "low",
        segmentation={"coverage": 0.21},
        concepts={"asymmetry": 0.42, "border": 0.61, "color": 0.33, "diameter_px": 120.0, "diameter_mm": None},
        equity={"ita_degrees": ita, "skin_group": skin_group, "bias_warning": skin_group in ("brown", "dark")},
        quality={"blur_score": 250.0},
        scribe_note=SCRIBE_NOTE,
        **decided,
    ).model_dump(mode="json", exclude={"uncertainty_level", "notice"})


def model_for(weights: str) -> dict:
    """The provenance of a seeded result, as the worker stores it."""
    return ModelInfo(weights=weights, segmenter="classical", backend="torch-cpu").model_dump(
        mode="json", exclude_unset=True
    )


def seed_batch(context, tenant_id: uuid.UUID, name: str = "clinic backlog") -> uuid.UUID:
    with session_scope(context.session_factory) as session:
        batch = Batch(tenant_id=tenant_id, name=name, created_at=utcnow())
        session.add(batch)
        session.flush()
        return batch.id


def seed_analysis(
    context,
    tenant_id: uuid.UUID,
    *,
    status: str = "succeeded",
    result: dict | None = None,
    weights: str | None = "untrained",
    batch_id: uuid.UUID | None = None,
    external_id: str | None = None,
    rejection: dict | None = None,
    seed: int = 5,
) -> uuid.UUID:
    """One final analysis with a real photo, mask and overlay in S3 (as the worker writes them);
    ``weights=None``: no provenance was stored with it."""
    analysis_id = uuid.uuid4()
    lesion = make_lesion(seed=seed, size=(240, 320), radius_frac=0.22, irregularity=0.5)
    photo = encode_jpeg(lesion.image)
    key = image_key(tenant_id, analysis_id, "jpg")
    context.store.put(IMAGES, key, photo, "image/jpeg")
    mask_key = overlay_key = None
    if status == "succeeded":
        mask_key = artifact_key(tenant_id, analysis_id, "mask.png")
        overlay_key = artifact_key(tenant_id, analysis_id, "overlay.jpg")
        context.store.put(ARTIFACTS, mask_key, overlay.mask_png(lesion.mask), "image/png")
        context.store.put(ARTIFACTS, overlay_key, overlay.overlay_jpeg(lesion.image, lesion.mask), "image/jpeg")
    stored = result if status == "succeeded" else None
    now = utcnow()
    with session_scope(context.session_factory) as session:
        session.add(
            Analysis(
                id=analysis_id,
                tenant_id=tenant_id,
                batch_id=batch_id,
                external_id=external_id,
                status=status,
                image_key=key,
                image_sha256="0" * 64,
                image_content_type="image/jpeg",
                image_width=320,
                image_height=240,
                mask_key=mask_key,
                overlay_key=overlay_key,
                result=stored,
                probability=AnalysisResult.model_validate(stored).probability if stored else None,
                rejection=rejection,
                model=model_for(weights) if weights is not None else None,
                created_at=now - timedelta(seconds=30),
                started_at=now - timedelta(seconds=20),
                completed_at=now,
                updated_at=now,
            )
        )
    return analysis_id


def seed_queued(context, tenant_id: uuid.UUID, batch_id: uuid.UUID | None = None) -> uuid.UUID:
    """A queued analysis no worker of the session will claim (``not_before`` an hour away), for
    tests that make its state changes themselves (issue 25, live progress). No image is stored."""
    analysis_id = uuid.uuid4()
    now = utcnow()
    with session_scope(context.session_factory) as session:
        session.add(Analysis(
            id=analysis_id, tenant_id=tenant_id, batch_id=batch_id, status="queued", priority="bulk",
            image_key=image_key(tenant_id, analysis_id, "jpg"), image_sha256="0" * 64,
            image_content_type="image/jpeg", image_width=320, image_height=240,
            not_before=now + timedelta(hours=1), created_at=now, updated_at=now,
        ))
    return analysis_id
