"""Synthetic input streams for the monitoring tests (issue 24): finished analyses written straight
to the real Postgres (no GPU pipeline), built with tests/factories.py.

A model version's reference is what its evaluation saw: probabilities from Beta(2, 6) on a
lighter skin mix. A **stable** stream draws from the same; a **shifted** one is what a clinic
with a darker population and a worse camera sends: a darker ITA mix, blurrier photos (lower
blur scores, more `blurry` rejections) and, through both, probabilities that sit higher.
Seeded: the same stream every run."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta

import numpy as np

from shared.clock import utcnow
from shared.db import session_scope
from shared.monitoring import record_reference, reference_from
from shared.schemas.monitoring import Reference
from shared.tables import Analysis, Feedback
from tests import factories

GROUPS = ("very light", "light", "intermediate", "tan", "brown", "dark")
ITA = {"very light": 62.0, "light": 48.0, "intermediate": 35.0, "tan": 20.0, "brown": 0.0, "dark": -40.0}
REFERENCE_MIX = (0.15, 0.30, 0.30, 0.15, 0.07, 0.03)
DARKER_MIX = (0.02, 0.05, 0.13, 0.20, 0.30, 0.30)
STABLE = (2.0, 6.0)  # Beta parameters of the probabilities
SHIFTED = (3.5, 4.0)


@dataclass(frozen=True)
class Item:
    status: str  # succeeded | rejected | failed
    probability: float | None = None
    skin_group: str | None = None
    blur_score: float = 250.0
    rejection: str | None = None
    sex: str = "female"
    site: str = "torso"
    age: int | None = 54


def new_version() -> str:
    return f"monitor-test-{uuid.uuid4().hex[:8]}"


def reference(seed: int = 1, count: int = 2000) -> Reference:
    rng = np.random.default_rng(seed)
    return reference_from(rng.beta(*STABLE, size=count), source="evaluation",
                          skin_groups=list(rng.choice(GROUPS, size=count, p=REFERENCE_MIX)),
                          rejections=["blurry"] * (count // 50), images=count + count // 50)


def stable_stream(seed: int, count: int) -> list[Item]:
    rng = np.random.default_rng(seed)
    return [
        Item("succeeded", float(p), str(g), blur_score=float(rng.uniform(180, 320)))
        for p, g in zip(rng.beta(*STABLE, size=count), rng.choice(GROUPS, size=count, p=REFERENCE_MIX), strict=True)
    ]


def shifted_stream(seed: int, count: int) -> list[Item]:
    """Darker skin, blurrier photos: 15% rejected as blurry, the rest scored higher."""
    rng = np.random.default_rng(seed)
    items = []
    for n in range(count):
        if n % 7 == 3:
            items.append(Item("rejected", rejection="blurry", blur_score=float(rng.uniform(20, 60))))
            continue
        group = str(rng.choice(GROUPS, p=DARKER_MIX))
        items.append(Item("succeeded", float(rng.beta(*SHIFTED)), group, blur_score=float(rng.uniform(70, 120))))
    return items


def record(context, version: str, ref: Reference) -> None:
    with session_scope(context.session_factory) as session:
        record_reference(session, version, ref, None)


def insert(context, tenant_id: uuid.UUID, version: str, items: list[Item], *, weights: str = "trained",
           minutes_ago: float = 30.0) -> list[uuid.UUID]:
    """The items as final analyses of ``version``, completed over the last ``minutes_ago``
    minutes in order (the last one newest)."""
    now = utcnow()
    ids = []
    model = factories.model(version=version, weights=weights,
                            fusion={"version": version}).model_dump(mode="json", exclude_unset=True)
    with session_scope(context.session_factory) as session:
        for n, item in enumerate(items):
            done = now - timedelta(minutes=minutes_ago) + timedelta(seconds=n * minutes_ago * 60 / max(len(items), 1))
            result = None
            if item.status == "succeeded":
                assert item.probability is not None and item.skin_group is not None
                result = factories.result(
                    probability=item.probability,
                    diagnosis="melanoma" if item.probability > 0.5 else "benign",
                    risk_band="high" if item.probability > 0.8 else "medium" if item.probability > 0.5 else "low",
                    equity={"ita_degrees": ITA[item.skin_group], "skin_group": item.skin_group,
                            "bias_warning": item.skin_group in ("brown", "dark")},
                    quality={"blur_score": item.blur_score},
                    disposition="clinician_review", disposition_reasons=["above_rule_out"],
                ).model_dump(mode="json", exclude={"uncertainty_level"})
            analysis = Analysis(
                tenant_id=tenant_id, status=item.status, priority="bulk", sex=item.sex, site=item.site, age=item.age,
                image_key=f"tenants/{tenant_id}/{uuid.uuid4()}.jpg", image_sha256="0" * 64,
                image_content_type="image/jpeg", image_width=300, image_height=300,
                result=result, probability=item.probability if result else None, model=model,
                rejection={"code": item.rejection, "detail": "d"} if item.status == "rejected" else None,
                error={"code": "internal", "detail": "d"} if item.status == "failed" else None,
                created_at=done - timedelta(seconds=2), updated_at=done, completed_at=done,
            )
            session.add(analysis)
            session.flush()
            ids.append(analysis.id)
    return ids


def confirm(context, tenant_id: uuid.UUID, analysis_id: uuid.UUID, *, final_diagnosis: str | None = None,
            histopathology: str | None = None) -> None:
    with session_scope(context.session_factory) as session:
        session.add(Feedback(analysis_id=analysis_id, tenant_id=tenant_id, agrees=False,
                             final_diagnosis=final_diagnosis, histopathology=histopathology))
