"""The AI Scribe note: a rule-based, auditable clinical note built from one analysis record.

No generative model: every sentence is a template filled with the record's own values, so
the same record always gives the same note and each claim can be traced to a field. The one
exception is an optional caption from a local vision-language model, which is labelled as the
model's and never feeds the findings or the PLAN.
"""

from __future__ import annotations

from shared import clinical
from shared.schemas.analyses import AnalysisRecord, AnalysisResult, ModelCaption
from worker.reporting import wording


def build_scribe_note(record: AnalysisRecord, caption: ModelCaption | None = None) -> str:
    lines: list[str] = []
    banner = wording.banner(record)
    if banner:
        lines += [banner, ""]
    lines.append("DERMASENTINEL AI SCRIBE NOTE (rule-based, automated)")
    lines.append(f"Analysis {record.id}; external reference {record.external_id or 'none'}")
    lines.append(f"Inputs: {wording.inputs_text(record.inputs)}")
    lines.append("")

    if record.status == "succeeded" and record.result is not None:
        lines += _succeeded_sections(record, record.result)
    elif record.status == "rejected":
        lines += _rejected_sections(record)
    else:
        lines += _failed_sections(record)

    if caption is not None:  # issue 15: from a local vision-language model, labelled as its
        lines += ["", f"MODEL CAPTION ({caption.label}; {caption.model}): {caption.text}"]
    lines.append("")
    lines.append("Provenance: " + "; ".join(wording.model_provenance(record)) + ".")
    lines.append("Disclaimer: " + clinical.DISCLAIMER)
    return "\n".join(lines)


def _succeeded_sections(record: AnalysisRecord, result: AnalysisResult) -> list[str]:
    findings = ["FINDINGS"]
    findings.append(
        f"- Lesion segmentation: lesion covers {wording.fmt_percent(result.segmentation.coverage)} of the image."
    )
    for _, label, score in wording.concept_scores(result.concepts):
        findings.append(f"- {label}: {score:.2f} ({clinical.concept_grade(score)}).")
    findings.append(f"- Diameter: {wording.diameter_text(result.concepts)}.")
    findings.append(f"- {wording.equity_text(result.equity)}")
    findings.append(
        f"- Image sharpness (blur score): {result.quality.blur_score:.1f}; passed the quality gate."
    )

    prob, unc, band = result.probability, result.uncertainty, result.risk_band
    untrained = wording.is_untrained(record)
    assessment = ["", "ASSESSMENT"]
    if untrained:
        # Nothing below may read as reassurance (or alarm): it is the output of weights that are not trained.
        assessment.append(
            f"- The findings cannot be assessed: the model's weights are {wording.weights(record) or 'unknown'}, "
            "so its output below carries no clinical meaning."
        )
    output = "Model output (not clinically meaningful)" if untrained else "Model output"
    assessment.append(
        f"- {output}: {result.diagnosis}, malignancy probability {wording.fmt_prob(prob)} "
        f"± {wording.fmt_prob(unc)} (mean ± SD over {len(result.tta_probabilities)} test-time views)."
    )
    meaning = "; not clinically meaningful" if untrained else ""
    assessment.append(f"- Risk band: {band.upper()} (probability {wording.risk_band_range(record, band)}){meaning}.")
    if untrained:
        assessment.append("- Uncertainty: cannot be assessed from weights that are not trained.")
    else:
        assessment.append(f"- Uncertainty: {clinical.uncertainty_level(unc)}.")
    if result.equity.bias_warning:
        assessment.append("- Reliability reduced: skin tone bias warning applies.")

    headline, reasons = wording.disposition_lines(record, result)
    section = ["", "DISPOSITION", f"- {headline}."] + [f"- {line}" for line in reasons]

    plan = ["", "PLAN"]
    plan += [f"- {line}" for line in clinical.plan_for(result, record.model)]
    return findings + assessment + section + plan


def _rejected_sections(record: AnalysisRecord) -> list[str]:
    rejection = record.rejection
    code = rejection.code if rejection is not None else "unknown"
    detail = rejection.detail if rejection is not None else "none"
    return [
        "FINDINGS",
        f"- Image rejected by the quality gate ({code}): {clinical.rejection_reason(code)}",
        f"- Detail: {detail}",
        "",
        "ASSESSMENT",
        "- No lesion assessment was made; no risk estimate is available.",
        "",
        "PLAN",
        f"- {clinical.retake_advice(code)}",
    ]


def _failed_sections(record: AnalysisRecord) -> list[str]:
    """A failed analysis, and any other without findings (canceled, unfinished)."""
    error = record.error
    code = error.code if error is not None else "unknown"
    detail = error.detail if error is not None else "no detail"
    return [
        "FINDINGS",
        f"- Analysis failed with a system error ({code}): {detail}",
        "",
        "ASSESSMENT",
        "- No lesion assessment was made; no risk estimate is available.",
        "",
        "PLAN",
        f"- {clinical.FAILED_ADVICE}",
    ]
