"""Acceptance criteria: a change-control plan for activating a model (issue 24; docs/MODELS.md).

An acceptance file (YAML) names an evaluation set by its identity and declares the minimum
AUC, the minimum sensitivity at the rule-out threshold and how far below the overall figure
any ITA skin group may fall. ``dermasentinel models activate fusion VERSION --acceptance
FILE`` checks the candidate's stored ``evaluate`` report on that set against it (``check``)
and refuses a candidate that fails any criterion unless ``--override REASON`` is given; each
activation's check, failed criteria and override reason are kept on the registry row
(``models.governance``, ``record_activation``) and in the audit row of ``model.activate``.

The file's schema is ``AcceptanceCriteria`` (unknown fields are refused, so a misspelt
criterion is an error, never a criterion silently not checked)::

    schema: dermasentinel.acceptance/1        # optional
    description: Fusion change-control plan   # optional, shown in the card
    evaluation_set:
      name: isic2020-holdout
      sha256: "<64 hex digits>"               # printed by `dermasentinel evaluate`; quote it
    min_auc: 0.85
    min_sensitivity_at_rule_out: 0.95
    max_group_gap_points: 10                  # no ITA group more than 10 points below overall
    group_gap_metrics: [auc, sensitivity_at_rule_out]   # default: both
    min_group_count: 30                       # smaller groups are not judged (default 1)
    required_groups: [brown, dark]            # must be present with min_group_count images
    bound_on: estimate                        # or ci_lower: min_* compare the 95% CI's lower end

No torch, no database here: the registry row is read and written by the caller.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shared.clinical import SKIN_GROUPS
from shared.clock import iso, utcnow
from shared.schemas.evaluation import EvaluationReport, Score

ACCEPTANCE_SCHEMA = "dermasentinel.acceptance/1"
SkinGroupName = Literal["very light", "light", "intermediate", "tan", "brown", "dark"]
GroupMetric = Literal["auc", "sensitivity_at_rule_out"]
GROUP_METRICS: tuple[GroupMetric, ...] = ("auc", "sensitivity_at_rule_out")
METRIC_LABELS: dict[str, str] = {"auc": "AUC", "sensitivity_at_rule_out": "sensitivity at the rule-out threshold"}
# Criterion names, as printed and recorded.
EVALUATION_SET = "evaluation_set"
MIN_AUC = "min_auc"
MIN_SENSITIVITY = "min_sensitivity_at_rule_out"
MAX_GAP = "max_group_gap_points"
MIN_GROUP_COUNT = "min_group_count"
REQUIRED_GROUPS = "required_groups"


class AcceptanceFileError(ValueError):
    """A bad acceptance file: the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class EvaluationSetRef(_Strict):
    """The evaluation set an acceptance file is judged on: the ``evaluation_set`` of an
    ``evaluate`` report (its sha256 decides; the name is shown)."""

    name: str = Field(min_length=1, max_length=200)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="64 lower-case hex digits; quote it in YAML")


class AcceptanceCriteria(_Strict):
    """The acceptance file. Fractions are 0..1; the group gap is in percentage points."""

    schema_: Literal["dermasentinel.acceptance/1"] | None = Field(default=None, alias="schema")
    description: str | None = Field(default=None, max_length=2000)
    kind: Literal["fusion"] = "fusion"
    evaluation_set: EvaluationSetRef
    min_auc: float = Field(ge=0, le=1)
    min_sensitivity_at_rule_out: float = Field(ge=0, le=1)
    max_group_gap_points: float = Field(ge=0, le=100)
    group_gap_metrics: list[GroupMetric] = Field(default_factory=lambda: list(GROUP_METRICS), min_length=1)
    min_group_count: int = Field(default=1, ge=1)
    required_groups: list[SkinGroupName] = Field(default_factory=list)
    bound_on: Literal["estimate", "ci_lower"] = "estimate"

    @model_validator(mode="after")
    def _each_group_metric_once(self) -> AcceptanceCriteria:
        if len(set(self.group_gap_metrics)) != len(self.group_gap_metrics):
            raise ValueError("group_gap_metrics names a metric twice")
        return self


def parse_acceptance(text: str, source: str = "acceptance file") -> AcceptanceCriteria:
    """The criteria in ``text`` (YAML); an ``AcceptanceFileError`` names ``source`` and every
    field that is wrong."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise AcceptanceFileError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise AcceptanceFileError(
            f"{source}: an acceptance file is a YAML mapping (field: value), not {type(data).__name__}"
        )
    try:
        return AcceptanceCriteria.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_problem(error) for error in exc.errors())
        raise AcceptanceFileError(f"{source}: {problems}") from None


def _problem(error: Any) -> str:
    where = ".".join(str(part) for part in error["loc"]) or "(file)"
    message = error["msg"]
    if error["type"] == "string_type" and isinstance(error.get("input"), int | float):
        message += " (quote it in YAML: a value of digits only is read as a number)"
    return f"{where}: {message}"


def load_acceptance(path: Path) -> tuple[AcceptanceCriteria, str]:
    """The criteria of the file at ``path`` and the file's sha256 (recorded with each check)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise AcceptanceFileError(f"{path}: cannot read the acceptance file: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise AcceptanceFileError(f"{path}: not UTF-8 text") from None
    return parse_acceptance(text, str(path)), hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------ checking


class CriterionResult(BaseModel):
    """One criterion judged: what was measured and the bound it was held to."""

    criterion: str  # the acceptance file's field: min_auc, max_group_gap_points, …
    passed: bool
    message: str  # the sentence printed and shown in the card
    metric: str | None = None
    group: str | None = None  # an ITA skin group, for group criteria
    measured: float | None = None  # for a gap: percentage points below overall
    bound: float | None = None


class AcceptanceCheck(BaseModel):
    """A candidate's stored evaluation judged against an acceptance file."""

    passed: bool
    checked_at: str
    evaluation_set: EvaluationSetRef
    file: str | None = None  # as given on the command line or in ACCEPTANCE_FILE
    file_sha256: str | None = None
    description: str | None = None
    results: list[CriterionResult]

    @property
    def failed(self) -> list[CriterionResult]:
        return [result for result in self.results if not result.passed]


def check(criteria: AcceptanceCriteria, report: EvaluationReport | None, *, file: str | None = None,
          file_sha256: str | None = None) -> AcceptanceCheck:
    """Judge ``report`` (the candidate's stored evaluation on the criteria's evaluation set, or
    None when it has none) against ``criteria``. Every criterion is judged and listed."""
    results = list(_judge(criteria, report))
    return AcceptanceCheck(
        passed=all(result.passed for result in results), checked_at=iso(utcnow()),
        evaluation_set=criteria.evaluation_set, file=file, file_sha256=file_sha256,
        description=criteria.description, results=results,
    )


def _judge(criteria: AcceptanceCriteria, report: EvaluationReport | None) -> Iterator[CriterionResult]:
    wanted = criteria.evaluation_set
    if report is None or report.overall is None:
        yield CriterionResult(
            criterion=EVALUATION_SET, passed=False,
            message=f"{EVALUATION_SET}: no stored evaluation on evaluation set {wanted.name} "
                    f"(sha256 {wanted.sha256[:12]}…); run `dermasentinel evaluate --fusion-model VERSION` on it first",
        )
        return
    lower = criteria.bound_on == "ci_lower"
    overall = {
        "auc": report.overall.metrics.get("auc"),
        "sensitivity_at_rule_out": report.rule_out.overall.rule_out.sensitivity if report.rule_out else None,
    }
    bounds = ((MIN_AUC, "auc", criteria.min_auc),
              (MIN_SENSITIVITY, "sensitivity_at_rule_out", criteria.min_sensitivity_at_rule_out))
    for criterion, metric, bound in bounds:
        yield _at_least(criterion, metric, overall[metric], bound, lower)
    yield from _groups(criteria, report, overall)


def _at_least(criterion: str, metric: str, score: Score | None, bound: float, lower: bool) -> CriterionResult:
    label = f"overall {METRIC_LABELS[metric]}" + (" (95% CI lower end)" if lower else "")
    value = _value(score, lower)
    if value is None:
        return CriterionResult(criterion=criterion, metric=metric, passed=False, bound=bound,
                               message=f"{criterion}: {label} could not be measured on this set (one class?); "
                                       f"the bound is {bound:.3f}")
    passed = value >= bound
    relation = "is at least" if passed else "is below"
    return CriterionResult(criterion=criterion, metric=metric, passed=passed, measured=value, bound=bound,
                           message=f"{criterion}: {label} {value:.3f} {relation} {bound:.3f}")


def _value(score: Score | None, lower: bool = False) -> float | None:
    if score is None:
        return None
    return score.ci95[0] if lower else score.value


def _group_scores(report: EvaluationReport) -> dict[str, tuple[int, dict[str, Score | None]]]:
    """Each ITA group's image count and its two judged metrics."""
    rule_out = {block.skin_group: block.rule_out.sensitivity for block in (report.rule_out.per_skin_group
                                                                           if report.rule_out else [])}
    return {
        str(block.skin_group): (block.count, {"auc": block.metrics.get("auc"),
                                              "sensitivity_at_rule_out": rule_out.get(block.skin_group)})
        for block in report.per_skin_group
    }


def _groups(criteria: AcceptanceCriteria, report: EvaluationReport,
            overall: dict[str, Score | None]) -> Iterator[CriterionResult]:
    groups = _group_scores(report)
    required = set(criteria.required_groups)
    for missing in [g for g in SKIN_GROUPS if g in required and g not in groups]:
        yield CriterionResult(criterion=REQUIRED_GROUPS, group=missing, passed=False, measured=0,
                              bound=criteria.min_group_count,
                              message=f"{REQUIRED_GROUPS}: no image of the {missing} group was scored")
    limit = criteria.max_group_gap_points
    for group in [g for g in SKIN_GROUPS if g in groups] + sorted(set(groups) - set(SKIN_GROUPS)):
        count, measured = groups[group]
        needed = group in required
        if count < criteria.min_group_count:
            state = "fails" if needed else "not judged"
            yield CriterionResult(
                criterion=MIN_GROUP_COUNT, group=group, passed=not needed, measured=count,
                bound=criteria.min_group_count,
                message=f"{MIN_GROUP_COUNT}: the {group} group has {count} images, fewer than "
                        f"{criteria.min_group_count} ({state}{': a required group' if needed else ''})",
            )
            continue
        for metric in criteria.group_gap_metrics:
            whole, part = _value(overall[metric]), _value(measured[metric])
            label = METRIC_LABELS[metric]
            if whole is None or part is None:
                yield CriterionResult(
                    criterion=MAX_GAP, metric=metric, group=group, passed=not needed, bound=limit,
                    message=f"{MAX_GAP}: {group} {label} could not be measured (one class in the group?)"
                            + ("; a required group" if needed else "; not judged"),
                )
                continue
            gap = round((whole - part) * 100, 6)
            passed = gap <= limit
            where = f"{abs(gap):.1f} points {'below' if gap >= 0 else 'above'}"
            yield CriterionResult(
                criterion=MAX_GAP, metric=metric, group=group, passed=passed, measured=gap, bound=limit,
                message=f"{MAX_GAP}: {group} {label} {part:.3f} is {where} overall {whole:.3f} "
                        f"({'within' if passed else 'more than'} {limit:g})",
            )


# ----------------------------------------------------------------- what the registry row keeps


class Override(BaseModel):
    reason: str
    actor: str
    at: str


class ActivationRecord(BaseModel):
    """One activation of a model: who, when, what it replaced, the acceptance check (None: no
    criteria were checked) and the override that let a failing candidate through."""

    at: str
    actor: str
    retired: str | None = None  # the version it replaced
    acceptance: AcceptanceCheck | None = None
    override: Override | None = None


class Governance(BaseModel):
    """``models.governance``: every activation's record, oldest first."""

    model_config = ConfigDict(extra="allow")

    activations: list[ActivationRecord] = Field(default_factory=list)

    @classmethod
    def of(cls, value: dict[str, Any] | None) -> Governance:
        return cls.model_validate(value or {})

    @property
    def latest(self) -> ActivationRecord | None:
        return self.activations[-1] if self.activations else None


def activation_record(actor: str, acceptance: AcceptanceCheck | None, override_reason: str | None,
                      retired: str | None = None) -> ActivationRecord:
    now = iso(utcnow())
    override = Override(reason=override_reason, actor=actor, at=now) if override_reason else None
    return ActivationRecord(at=now, actor=actor, retired=retired, acceptance=acceptance, override=override)


def with_activation(governance: dict[str, Any] | None, record: ActivationRecord) -> dict[str, Any]:
    """The row's ``governance`` with ``record`` appended (a new dict, so the ORM sees the change)."""
    found = Governance.of(governance)
    found.activations.append(record)
    return found.model_dump(mode="json")


def audit_detail(acceptance: AcceptanceCheck | None, override_reason: str | None) -> dict[str, Any]:
    """What the audit row of an activation says about acceptance: ``not_checked``, ``passed`` or
    ``failed``, the evaluation set, each failed criterion with its measured value and bound,
    and the override reason."""
    if acceptance is None:
        return {"acceptance": "not_checked"}
    detail: dict[str, Any] = {
        "acceptance": "passed" if acceptance.passed else "failed",
        "evaluation_set": acceptance.evaluation_set.model_dump(),
        "acceptance_file_sha256": acceptance.file_sha256,
    }
    if acceptance.failed:
        detail["failed"] = [
            {key: value for key, value in (
                ("criterion", result.criterion), ("metric", result.metric), ("group", result.group),
                ("measured", None if result.measured is None else round(result.measured, 4)),
                ("bound", result.bound),
            ) if value is not None}
            for result in acceptance.failed
        ]
    if override_reason:
        detail["override_reason"] = override_reason
    return detail
