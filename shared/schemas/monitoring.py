"""Monitoring (issue 24; docs/MONITORING.md): a model's reference distribution, what a window of
a (tenant, model version)'s results looks like against it, confirmed outcomes, drift episodes
and the tenant's safety mode. ``GET /v1/monitoring`` answers ``MonitoringOut``; the
``model.drift_detected`` event carries ``DriftMeasures``; `dermasentinel monitor` prints the
same types for every tenant."""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.schemas.common import ResponseModel, Timestamp, WeightsStatus

DriftAction = Literal["alert", "review_all"]
DriftMeasureName = Literal["psi", "ks", "skin_group_psi"]
ProbabilityStatus = Literal["ok", "drift", "insufficient_data", "no_reference"]
ReferenceSource = Literal["evaluation", "validation"]
# Quantile levels a reference records: 0, 1, ..., 100 percent.
REFERENCE_QUANTILES = 101


class Reference(BaseModel):
    """A model's output as recorded when it was judged: the quantiles of its probabilities
    (an equal-frequency histogram: 100 bins of 1% each), and, from `evaluate`, its skin-group
    mix and its rejections. Stored in ``model_references`` (evaluate) or a Fusion card's
    ``calibration.reference`` (training's validation fold)."""

    model_config = ConfigDict(extra="allow")

    source: ReferenceSource
    count: int = Field(ge=1, description="Scored images the quantiles come from")
    probability_quantiles: list[float] = Field(
        min_length=REFERENCE_QUANTILES, max_length=REFERENCE_QUANTILES,
        description="The 0th, 1st, …, 100th percentile of the probabilities (linear interpolation)",
    )
    skin_groups: dict[str, int] | None = Field(default=None, description="Scored images per ITA skin group")
    rejections: dict[str, int] | None = Field(default=None, description="Images a gate rejected, per code")
    images: int | None = Field(default=None, description="Every image judged, rejected ones included")
    recorded_at: Timestamp | None = None

    def as_json(self) -> dict:
        return self.model_dump(mode="json", exclude_none=True)


# ---------------------------------------------------------------- answers


class Proportion(ResponseModel):
    """``count`` of ``total``, with its Wilson score 95% interval (null when ``total`` is 0)."""

    value: float | None
    count: int
    total: int
    ci95: tuple[float, float] | None


class Share(ResponseModel):
    count: int
    share: float | None = Field(description="Of the set counted; null for an empty set")


class ReferenceInfo(ResponseModel):
    source: ReferenceSource = Field(description="`evaluation` (`dermasentinel evaluate`) or `validation` (training)")
    count: int
    recorded_at: Timestamp | None


class DriftThresholds(ResponseModel):
    psi: float = Field(description="`DRIFT_PSI_THRESHOLD`: for the probabilities and the skin-group mix")
    ks: float = Field(description="`DRIFT_KS_THRESHOLD`")
    min_results: int = Field(description="`DRIFT_MIN_RESULTS`: scored results a window needs before drift is judged")


class DriftMeasures(ResponseModel):
    """A window's drift measures against the model's reference, and which crossed."""

    results: int = Field(description="Scored (succeeded) results in the window")
    psi: float | None = Field(description="Population stability index of the probabilities over the reference's "
                              "deciles")
    ks: float | None = Field(description="Kolmogorov–Smirnov statistic of the probabilities against the reference")
    skin_group_psi: float | None = Field(description="PSI of the ITA skin-group mix against the reference's mix "
                                         "(null when the reference recorded none)")
    exceeded: list[DriftMeasureName] = Field(description="The measures above their threshold")
    thresholds: DriftThresholds


class ProbabilityDistribution(ResponseModel):
    count: int = Field(description="Scored results in the window")
    mean: float | None
    median: float | None
    reference: ReferenceInfo | None = Field(description="Null: no reference recorded for this version, no drift "
                                            "judged")
    psi: float | None
    ks: float | None
    status: ProbabilityStatus = Field(
        description="`drift` (a measure crosses its threshold), `ok`, `insufficient_data` (fewer scored results "
        "than `min_results`) or `no_reference`"
    )


class SkinGroupMix(ResponseModel):
    groups: dict[str, Share] = Field(description="Scored results per ITA skin group, lightest first")
    psi: float | None = Field(description="Against the reference's mix; null without one")


class MetadataMix(ResponseModel):
    sex: dict[str, Share]
    site: dict[str, Share]
    age_band: dict[str, Share] = Field(description="`under 18`, `18-39`, `40-64`, `65 and over`, `unknown`")


class WindowInfo(ResponseModel):
    results: int = Field(description="Final results (succeeded, rejected, failed) in the window")
    succeeded: int
    rejected: int
    failed: int
    since: Timestamp = Field(description="The window's oldest possible moment: `MONITOR_WINDOW_HOURS` ago, or the "
                             "last time an operator cleared this version's drift, whichever is later")
    first_completed_at: Timestamp | None
    last_completed_at: Timestamp | None


class OutcomeBlock(ResponseModel):
    """The model's diagnosis against confirmed outcomes (histopathology, else the final diagnosis)."""

    skin_group: str | None = Field(default=None, description="Set on a skin group's row only")
    confirmed: int
    melanomas: int
    sensitivity: Proportion = Field(description="Confirmed melanomas the model called melanoma")
    specificity: Proportion = Field(description="Confirmed benign lesions the model called benign")
    routine_melanomas: int = Field(description="Confirmed melanomas whose disposition was `routine`")


class Outcomes(ResponseModel):
    days: int = Field(description="`MONITOR_OUTCOME_DAYS`: analyses completed this long ago or less")
    overall: OutcomeBlock
    per_skin_group: list[OutcomeBlock]


class DriftEpisodeOut(ResponseModel):
    id: uuid.UUID
    model_version: str
    opened_at: Timestamp
    action: DriftAction
    measures: DriftMeasures
    cleared_at: Timestamp | None


class DriftState(ResponseModel):
    exceeded: list[DriftMeasureName] = Field(description="Measures of the current window above their threshold")
    open_episode: DriftEpisodeOut | None = Field(description="The drift detected and not yet cleared, if any")


class ModelMonitoring(ResponseModel):
    """One model version's window of this tenant's results."""

    model_version: str
    weights: WeightsStatus | None
    window: WindowInfo
    failure_rate: Proportion
    rejection_rate: Proportion
    rejections: dict[str, Proportion] = Field(description="Per rejection code, of the window's results")
    probability: ProbabilityDistribution
    skin_groups: SkinGroupMix
    metadata: MetadataMix
    dispositions: dict[str, Share] = Field(description="Succeeded results per disposition, as each result shows it")
    drift: DriftState
    outcomes: Outcomes


class MonitoringWindow(ResponseModel):
    results: int = Field(description="`MONITOR_WINDOW`: the newest final results per model version")
    hours: float = Field(description="`MONITOR_WINDOW_HOURS`: none older than this")
    outcome_days: int = Field(description="`MONITOR_OUTCOME_DAYS`")


class SafetyMode(ResponseModel):
    active: bool = Field(description="Every new result is `clinician_review` with the reason `drift` until an "
                         "operator clears it")
    since: Timestamp | None
    model_versions: list[str] = Field(description="The versions whose drift put the tenant in safety mode")


class MonitoringOut(ResponseModel):
    """The tenant's own monitoring: each model version with results in the window."""

    generated_at: Timestamp
    window: MonitoringWindow
    thresholds: DriftThresholds
    drift_action: DriftAction = Field(description="`DRIFT_ACTION`: what a drift detected does (`alert`: the event; "
                                      "`review_all`: the event and safety mode)")
    safety_mode: SafetyMode
    models: list[ModelMonitoring] = Field(description="Most recently active first")


class TenantMonitoring(MonitoringOut):
    """An operator's view of one tenant (`dermasentinel monitor --json`)."""

    tenant_id: uuid.UUID
    tenant: str


# ---------------------------------------------------------------- the event


class MonitoringLinks(ResponseModel):
    monitoring: str = Field(json_schema_extra={"format": "uri"})


class ModelDriftData(ResponseModel):
    episode_id: uuid.UUID = Field(description="One event per episode: the same drift is not reported again until an "
                                  "operator clears it")
    model_version: str
    weights: WeightsStatus | None
    detected_at: Timestamp
    action: DriftAction
    safety_mode: bool = Field(description="true with `review_all`: every new result of this tenant is "
                              "`clinician_review` with the reason `drift` until an operator clears it")
    measures: DriftMeasures
    links: MonitoringLinks
