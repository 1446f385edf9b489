"""The AI Scribe note: a rule-based, auditable clinical note built from one analysis.

No generative model: every sentence is a template filled with the analysis' own values, so
the same analysis always gives the same note and each claim can be traced to a field.
"""

from __future__ import annotations

from worker.reporting import wording


def build_scribe_note(analysis: dict) -> str:
    lines: list[str] = []
    banner = wording.banner(analysis)
    if banner:
        lines += [banner, ""]
    lines.append("DERMASENTINEL AI SCRIBE NOTE (rule-based, automated)")
    lines.append(f"Analysis {analysis['id']}; external reference {analysis.get('external_id') or 'none'}")
    lines.append(f"Inputs: {wording.inputs_text(analysis.get('inputs') or {})}")
    lines.append("")

    status = analysis.get("status")
    if status == "succeeded" and analysis.get("result"):
        lines += _succeeded_sections(analysis)
    elif status == "rejected":
        lines += _rejected_sections(analysis)
    else:
        lines += _failed_sections(analysis)

    caption = analysis.get("model_caption")  # issue 15: {text, model, label} from a local vision-language model
    if caption:
        lines += ["", f"MODEL CAPTION ({caption['label']}; {caption['model']}): {caption['text']}"]
    lines.append("")
    lines.append("Provenance: " + "; ".join(wording.model_provenance(analysis)) + ".")
    lines.append("Disclaimer: " + wording.DISCLAIMER)
    return "\n".join(lines)


def _succeeded_sections(analysis: dict) -> list[str]:
    result = analysis["result"]
    concepts = result.get("concepts") or {}
    equity = result.get("equity") or {}
    findings = ["FINDINGS"]
    findings.append(
        f"- Lesion segmentation: lesion covers {wording.fmt_percent(result['segmentation']['coverage'])} of the image."
    )
    for key, label in wording.CONCEPT_LABELS.items():
        score = concepts[key]
        findings.append(f"- {label}: {score:.2f} ({wording.concept_grade(score)}).")
    findings.append(f"- Diameter: {wording.diameter_text(concepts)}.")
    if equity:
        findings.append(f"- {wording.equity_text(equity)}")
    blur = (result.get("quality") or {}).get("blur_score")
    if blur is not None:
        findings.append(f"- Image sharpness (blur score): {blur:.1f}; passed the quality gate.")

    prob = result["probability"]
    unc = result["uncertainty"]
    band = result["risk_band"]
    views = len(result.get("tta_probabilities") or [])
    assessment = ["", "ASSESSMENT"]
    assessment.append(
        f"- Model output: {result['diagnosis']}, malignancy probability {wording.fmt_prob(prob)} "
        f"± {wording.fmt_prob(unc)} (mean ± SD over {views} test-time views)."
    )
    assessment.append(
        f"- Risk band: {band.upper()} (probability {wording.risk_band_range(analysis, band)})."
    )
    assessment.append(f"- Uncertainty: {wording.uncertainty_level(unc)}.")
    if equity.get("bias_warning"):
        assessment.append("- Reliability reduced: skin tone bias warning applies.")

    plan = ["", "PLAN"]
    plan += [f"- {action}" for action in wording.recommended_actions(analysis)]
    return findings + assessment + plan


def _rejected_sections(analysis: dict) -> list[str]:
    rejection = analysis.get("rejection") or {}
    code = rejection.get("code", "unknown")
    return [
        "FINDINGS",
        f"- Image rejected by the quality gate ({code}): {wording.rejection_reason(code)}",
        f"- Detail: {rejection.get('detail', 'none')}",
        "",
        "ASSESSMENT",
        "- No lesion assessment was made; no risk estimate is available.",
        "",
        "PLAN",
        f"- {wording.rejection_action(code)}",
    ]


def _failed_sections(analysis: dict) -> list[str]:
    error = analysis.get("error") or {}
    return [
        "FINDINGS",
        f"- Analysis failed with a system error ({error.get('code', 'unknown')}): {error.get('detail', 'no detail')}",
        "",
        "ASSESSMENT",
        "- No lesion assessment was made; no risk estimate is available.",
        "",
        "PLAN",
        f"- {wording.FAILED_ACTION}",
    ]
