"""How the client commands print what the API answered: one place for the text a user reads,
written from the API's answers as the SDK types them (``AnalysisOut``, ``TriageSummaryOut``)."""

from __future__ import annotations

from typing import Any

from dermasentinel_client.models import AnalysisOut, DispositionCounts, TriageSummaryOut
from rich.table import Table

# What `submit` prints of an analysis, in this order (the scribe note follows as plain text).
PRINTED = ("id", "status", "external_id", "result", "rejection", "error", "model", "links")


def printable(analysis: AnalysisOut) -> dict[str, Any]:
    """The analysis as `submit` prints it: the fields in ``PRINTED`` as the API sent them, the
    scribe note left out of the result."""
    sent = analysis.model_dump(mode="json", exclude_unset=True, exclude={"result": {"scribe_note"}})
    return {name: sent[name] for name in PRINTED}


def model_version(analysis: AnalysisOut) -> str:
    """"fusion <version> (<weights>)", as the result records it; "none" when no model ran."""
    model = analysis.model
    if model is None:
        return "none"
    fusion = (model.fusion.version if model.fusion is not None else None) or "built-in"
    return f"fusion {fusion} ({model.weights})"


def disposition(analysis: AnalysisOut) -> str:
    """"<disposition> (<reason>, ...)" as the API sent it, e.g. "clinician_review
    (weights_not_trained, missing_metadata)"; "none" without a result, "not recorded" for a
    result stored before dispositions existed."""
    result = analysis.result
    if result is None:
        return "none"
    if result.disposition is None:
        return "not recorded"
    reasons = ", ".join(result.disposition_reasons)
    return f"{result.disposition} ({reasons})" if reasons else result.disposition


def demo_summary(analysis: AnalysisOut) -> list[str]:
    """What `up --demo` prints of a succeeded analysis: the result, its disposition and its
    provenance on one line, the untrained notice and the safety netting when there are, then the
    scribe note after a blank line."""
    result, model = analysis.result, analysis.model
    if result is None or model is None:
        raise ValueError(f"analysis {analysis.id} is {analysis.status}: it has no result to show")
    lines = [
        f"demo: {result.diagnosis} p={result.probability:.3f}±{result.uncertainty:.3f} "
        f"risk={result.risk_band} coverage={result.segmentation.coverage:.3f} "
        f"ITA={result.equity.ita_degrees:.1f}° ({result.equity.skin_group}) "
        f"segmenter={model.segmenter} weights={model.weights} disposition={disposition(analysis)}"
    ]
    if result.notice:
        lines.append(f"demo: {result.notice}")
    if result.safety_netting:
        lines.append(f"demo: safety netting: {result.safety_netting}")
    if result.scribe_note:
        lines.append("\n" + result.scribe_note)
    return lines


def demo_problem(analysis: AnalysisOut) -> str:
    """Why the demo analysis did not succeed: its rejection or error as the API sent it."""
    problem = analysis.rejection or analysis.error
    return f"demo: {problem.model_dump(exclude_unset=True) if problem is not None else None}"


def equity_table(summary: TriageSummaryOut) -> Table:
    """The batch's succeeded items per skin group, with each group's share of high risk."""
    title = "Equity summary (succeeded items per skin group)"
    if summary.weights_warning:
        title += " — weights not trained: the risk columns are not clinically meaningful"
    table = Table(title=title)
    for column in ("skin group", "items", "high risk", "share high risk", "suspicious (medium+high)", "needs review"):
        table.add_column(column, justify="right" if column != "skin group" else "left")
    for group in summary.equity:
        table.add_row(
            group.skin_group + (" (bias warning)" if group.bias_warning else ""),
            str(group.items),
            str(group.high_risk),
            f"{group.high_risk_share:.0%}",
            f"{group.suspicious_share:.0%}",
            str(group.needs_review),
        )
    return table


def disposition_counts(counts: DispositionCounts, separator: str = ", ") -> str:
    """Succeeded results per disposition, most urgent first: "urgent_referral 2, clinician_review 5, routine 3"."""
    return separator.join(
        f"{name} {count}"
        for name, count in (("urgent_referral", counts.urgent_referral), ("clinician_review", counts.clinician_review),
                            ("routine", counts.routine))
    )


def triage_summary(summary: TriageSummaryOut, out: str) -> str:
    """The line that follows a written triage list: how many results, reviews, retakes, failures."""
    counts = summary.counts
    weights = ", ".join(f"{status} {n}" for status, n in summary.weights.items())
    return (
        f"triage list: {out} — {counts.succeeded} results ("
        + (f"weights: {weights}; " if weights else "")
        + f"{summary.needs_review} flagged for review), {counts.rejected} to retake, {counts.failed} failed"
    )
