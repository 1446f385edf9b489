"""The evaluation report ``dermasentinel evaluate`` writes (``report.json``) and the registry
stores against a registered model (issue 24; docs/MODELS.md): metrics with percentile
bootstrap 95% intervals, overall and per ITA skin group, the rule-out evidence, and the
identity of the evaluation set. Defined here, not in ``training/``, because the registry's
acceptance check and the model card (``shared.model_acceptance``, ``shared.model_cards``)
read stored reports; ``training.evaluate`` re-exports every name. Import from this module
(the names are generic: ``Score``, ``Block``), not from ``shared.schemas``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from shared.schemas.analyses import ModelInfo, OperatingPoint
from shared.schemas.monitoring import Reference


class EvaluationSet(BaseModel):
    """Which data a report describes: ``sha256`` over every image's name and content and the
    labels CSV (masks are not part of it), and a name an operator gave it (``--set-name``,
    default the CSV's file name without its suffix). Acceptance files name a set by both."""

    name: str
    sha256: str
    images: int  # rows of the labels CSV (scored or rejected)


class Score(BaseModel):
    """One metric with its percentile bootstrap 95% interval (None where undefined, e.g. AUC of one class)."""

    value: float | None
    ci95: tuple[float | None, float | None]
    count: int | None = None  # segmentation metrics only: the images that had a reference mask


class Block(BaseModel):
    """The metrics over one set of images: every scored image, or one skin group's."""

    skin_group: str | None = None  # set for a skin group's row only
    count: int
    positives: int
    metrics: dict[str, Score]


class AtThreshold(BaseModel):
    """The test one threshold makes, with each rate's percentile bootstrap 95% interval: at the
    urgent-referral operating point a probability above it is positive; at the rule-out threshold
    a probability below it is negative (ruled out)."""

    threshold: float
    sensitivity: Score
    specificity: Score
    ppv: Score
    npv: Score


class DispositionShare(BaseModel):
    count: int
    share: float | None  # of the set's scored cases; None for an empty set


class DispositionShares(BaseModel):
    """How many cases the service sent to each disposition (weights that are not trained send
    every case to ``clinician_review``)."""

    urgent_referral: DispositionShare
    clinician_review: DispositionShare
    routine: DispositionShare
    routine_melanomas: int  # melanomas the disposition would have sent home with safety netting


class RuleOutBlock(BaseModel):
    """The rule-out evidence over one set of images: every scored image, or one skin group's."""

    skin_group: str | None = None  # set for a skin group's row only
    count: int
    positives: int
    urgent: AtThreshold
    rule_out: AtThreshold
    dispositions: DispositionShares


class RuleOutEvidence(BaseModel):
    """Both thresholds of the disposition and what they do on this data set."""

    urgent_threshold: float  # the high-risk operating point: above it, urgent referral (trained weights)
    rule_out_threshold: float  # below it (and with no review reason), routine
    rule_out_sensitivity: float | None  # the target it was chosen for on validation; None: the default threshold
    overall: RuleOutBlock
    per_skin_group: list[RuleOutBlock] = Field(default_factory=list)


class RejectedImage(BaseModel):
    image_name: str
    reason: str | None


class DataSource(BaseModel):
    images: str
    labels: str
    masks: str | None


class EvaluationReport(BaseModel):
    """``report.json``. A field never set is left out of the file: ``predictions_only`` in a
    full report; the metrics (``overall``, ``per_skin_group``, ``reliability``) in a
    predictions-only one; the model and data in what ``summarise`` alone returns."""

    predictions_only: bool = False
    threshold: float
    images: int
    evaluated: int
    rejected: list[RejectedImage]
    overall: Block | None = None
    per_skin_group: list[Block] = Field(default_factory=list)
    reliability: list[dict[str, Any]] = Field(default_factory=list)  # ``scores.expected_calibration_error``'s bins
    rule_out: RuleOutEvidence | None = None
    operating_point: OperatingPoint | None = None
    model: ModelInfo | None = None
    data: DataSource | None = None
    evaluation_set: EvaluationSet | None = None  # issue 24: the set's identity
    # Issue 24 (docs/MONITORING.md): what monitoring compares a window of this model's results
    # with: the quantiles of its probabilities, its skin-group mix and its rejections.
    reference: Reference | None = None

    def as_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_unset=True)
