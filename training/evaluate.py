"""``dermasentinel evaluate``: a model judged on a labelled folder, overall and per skin tone.

Each image goes through the real pipeline (quality gate, Gate 1, Equity Engine, Gate 2 with
TTA, the model's calibration and operating threshold), so the numbers describe what the
service would answer. Metrics: AUC-ROC, sensitivity and specificity at the operating
threshold, balanced accuracy, ECE (with a reliability diagram), Dice/Jaccard when masks are
given; each with a percentile bootstrap 95% CI, overall and for every ITA skin group present
(with its count). Images a clinical gate rejects are listed and left out of the metrics.
The rule-out evidence (``rule_out``): sensitivity, specificity, PPV and NPV at the urgent-
referral operating point and at the rule-out threshold, with the same intervals, and the
share of cases each disposition got, overall and per skin group (``rule_out_table`` prints it).
Writes ``report.json``, ``predictions.csv``, ``reliability.png``, ``roc.png`` and a one-page
``report.html``. With ``predictions_only`` (a folder without labels, e.g. a challenge's test
set): ``predictions.csv`` and a ``report.json`` with the model and the rejections, no metrics.
The pipeline's outcomes are read as the service's own types (``Finding.result`` is an
``AnalysisResult``, the provenance a ``ModelInfo``), and the report is typed
(``EvaluationReport``) down to the file it is written to.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shared.clinical import MELANOMA_THRESHOLD, disposition
from shared.clinical.disposition import Disposition
from shared.monitoring import reference_from
from shared.schemas.evaluation import (  # the report's types (re-exported: they were defined here)
    AtThreshold,
    Block,
    DataSource,
    DispositionShare,
    DispositionShares,
    EvaluationReport,
    EvaluationSet,
    RejectedImage,
    RuleOutBlock,
    RuleOutEvidence,
    Score,
)
from shared.schemas.monitoring import Reference
from training import scores
from training.data import Sample, fingerprint, load_mask, read_labelled_csv

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from worker.pipeline.pipeline import Pipeline

GROUP_ORDER = ("very light", "light", "intermediate", "tan", "brown", "dark")
CLASSIFICATION_METRICS = ("auc", "sensitivity", "specificity", "balanced_accuracy", "ece")
SEGMENTATION_METRICS = ("dice", "jaccard")
RULE_OUT_METRICS = ("sensitivity", "specificity", "ppv", "npv")


@dataclass
class Prediction:
    name: str
    target: int | None  # None: an unlabelled image (predictions only)
    probability: float | None  # None: rejected by a gate
    skin_group: str | None = None
    ita_degrees: float | None = None
    dice: float | None = None
    jaccard: float | None = None
    rejection: str | None = None
    disposition: Disposition | None = None  # what the service answered (``result.disposition``)


Statistic = Callable[[np.ndarray, np.ndarray], float | None]


def _metric_functions(threshold: float) -> dict[str, Statistic]:
    return {
        "auc": lambda t, p: scores.auc(t, p),
        "sensitivity": lambda t, p: scores.sensitivity_specificity(t, p, threshold)[0],
        "specificity": lambda t, p: scores.sensitivity_specificity(t, p, threshold)[1],
        "balanced_accuracy": lambda t, p: scores.balanced_accuracy(t, p, threshold),
        "ece": lambda t, p: scores.expected_calibration_error(t, p)[0],
    }


def summarise(predictions: list[Prediction], threshold: float, resamples: int = 1000, seed: int = 0,
              rule_out_threshold: float | None = None, rule_out_sensitivity: float | None = None) -> EvaluationReport:
    """Every metric with its bootstrap CI, overall and per skin group (one row per group present),
    and the rule-out evidence at the model's two disposition thresholds (``rule_out_threshold``
    None: the clinical default, as the service applies it)."""
    scored = [p for p in predictions if p.probability is not None]
    groups = _groups(scored)
    targets = np.array([p.target for p in scored])
    probabilities = np.array([p.probability for p in scored])
    return EvaluationReport(
        threshold=threshold,
        images=len(predictions),
        evaluated=len(scored),
        rejected=_rejected(predictions),
        overall=_block(scored, threshold, resamples, seed),
        per_skin_group=[
            _block([p for p in scored if p.skin_group == group], threshold, resamples, seed).model_copy(
                update={"skin_group": group}
            )
            for group in groups
        ],
        reliability=scores.expected_calibration_error(targets, probabilities)[1] if scored else [],
        rule_out=rule_out_evidence(scored, threshold, rule_out_threshold, rule_out_sensitivity, resamples, seed),
    )


def reference_of(predictions: list[Prediction]) -> Reference | None:
    """The model's reference for monitoring (issue 24): the quantiles of the probabilities it
    gave, the skin groups of the scored images and the codes of the rejected ones; None when no
    image was scored."""
    scored = [p for p in predictions if p.probability is not None]
    if not scored:
        return None
    return reference_from(
        [p.probability for p in scored if p.probability is not None], source="evaluation",
        skin_groups=[p.skin_group for p in scored], rejections=[p.rejection for p in predictions if p.rejection],
        images=len(predictions),
    )


def _groups(scored: list[Prediction]) -> list[str]:
    """The skin groups present, lightest first."""
    return sorted({p.skin_group for p in scored if p.skin_group},
                  key=lambda g: GROUP_ORDER.index(g) if g in GROUP_ORDER else len(GROUP_ORDER))


def rule_out_evidence(scored: list[Prediction], threshold: float, rule_out_threshold: float | None = None,
                      rule_out_sensitivity: float | None = None, resamples: int = 1000,
                      seed: int = 0) -> RuleOutEvidence:
    """Sensitivity, specificity, PPV and NPV at the urgent-referral operating point (above the
    high-risk threshold of the model's operating ``threshold``) and at the rule-out threshold
    (below it is ruled out), each with its bootstrap 95% interval, and the disposition shares:
    overall and per skin group."""
    urgent = disposition.urgent_threshold(threshold)
    rule_out = disposition.rule_out_threshold(rule_out_threshold)

    def block(members: list[Prediction]) -> RuleOutBlock:
        targets = np.array([p.target for p in members], dtype=int)
        probabilities = np.array([p.probability for p in members], dtype=float)
        return RuleOutBlock(
            count=len(members),
            positives=int(targets.sum()),
            urgent=_at_threshold(targets, probabilities, urgent, False, resamples, seed),
            rule_out=_at_threshold(targets, probabilities, rule_out, True, resamples, seed),
            dispositions=_shares(members),
        )

    return RuleOutEvidence(
        urgent_threshold=urgent,
        rule_out_threshold=rule_out,
        rule_out_sensitivity=rule_out_sensitivity if rule_out_threshold is not None else None,
        overall=block(scored),
        per_skin_group=[
            block([p for p in scored if p.skin_group == group]).model_copy(update={"skin_group": group})
            for group in _groups(scored)
        ],
    )


def _at_threshold(targets: np.ndarray, probabilities: np.ndarray, threshold: float, rule_out: bool,
                  resamples: int, seed: int) -> AtThreshold:
    def rate(name: str) -> Statistic:
        return lambda t, p: getattr(scores.confusion_at(t, p, threshold, positive_at_threshold=rule_out), name)

    found = {}
    for name in RULE_OUT_METRICS:
        statistic = rate(name)
        value = statistic(targets, probabilities) if len(targets) else None
        # The same seed for every rate: each interval comes from the same resampled sets.
        found[name] = Score(value=value, ci95=scores.bootstrap_ci(statistic, (targets, probabilities), resamples, seed))
    return AtThreshold(threshold=threshold, **found)


def _shares(members: list[Prediction]) -> DispositionShares:
    counts = {name: sum(p.disposition == name for p in members) for name in disposition.DISPOSITIONS}

    def share(name: Disposition) -> DispositionShare:
        return DispositionShare(count=counts[name], share=counts[name] / len(members) if members else None)

    return DispositionShares(
        urgent_referral=share(disposition.URGENT_REFERRAL),
        clinician_review=share(disposition.CLINICIAN_REVIEW),
        routine=share(disposition.ROUTINE),
        routine_melanomas=sum(p.disposition == disposition.ROUTINE and p.target == 1 for p in members),
    )


def _rejected(predictions: list[Prediction]) -> list[RejectedImage]:
    return [RejectedImage(image_name=p.name, reason=p.rejection) for p in predictions if p.probability is None]


def _block(members: list[Prediction], threshold: float, resamples: int, seed: int) -> Block:
    targets = np.array([p.target for p in members], dtype=int)
    probabilities = np.array([p.probability for p in members], dtype=float)
    found: dict[str, Score] = {}
    for name, function in _metric_functions(threshold).items() if members else ():
        value = function(targets, probabilities)
        found[name] = Score(value=value, ci95=scores.bootstrap_ci(function, (targets, probabilities), resamples, seed))
    masked = [p for p in members if p.dice is not None]
    for name in SEGMENTATION_METRICS if masked else ():
        values = np.array([getattr(p, name) for p in masked])
        interval = scores.bootstrap_ci(lambda v: float(v.mean()), (values,), resamples, seed)
        found[name] = Score(value=float(values.mean()), ci95=interval, count=len(masked))
    return Block(count=len(members), positives=int(targets.sum()), metrics=found)


# --------------------------------------------------------------------------- running the model


def predict(pipeline: Pipeline, samples: list[Sample], progress: bool = True) -> list[Prediction]:
    """Run each image through the pipeline (one at a time: bounded memory); an unlabelled
    sample keeps ``target`` None (``evaluate_folder`` decides whether labels are needed)."""
    from tqdm import tqdm

    from worker.pipeline.pipeline import Finding, LesionInput

    predictions = []
    for sample in tqdm(samples, desc="evaluate", disable=not progress, unit="image"):
        target = sample.target
        outcome = pipeline.run([LesionInput(
            image=sample.image.read_bytes(), age=sample.age, sex=sample.sex, site=sample.site,
        )])[0]
        if not isinstance(outcome, Finding):
            predictions.append(Prediction(sample.name, target, None, rejection=outcome.code))
            continue
        result = outcome.result
        prediction = Prediction(
            sample.name, target, result.probability,
            skin_group=result.equity.skin_group, ita_degrees=result.equity.ita_degrees,
            disposition=result.disposition,
        )
        if sample.mask is not None:
            prediction.dice, prediction.jaccard = scores.dice_jaccard(load_mask(sample.mask) > 0.5,
                                                                      _mask_at(outcome.mask_png, sample.mask))
        predictions.append(prediction)
    return predictions


def _mask_at(mask_png: bytes, truth_path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(truth_path) as truth:
        size = truth.size
    with Image.open(io.BytesIO(mask_png)) as mask:
        return np.asarray(mask.convert("L").resize(size, Image.Resampling.NEAREST)) > 127


def evaluation_set(samples: list[Sample], csv_path: Path, name: str | None = None) -> EvaluationSet:
    """The identity of an evaluation set: sha256 over every image's name and content and the
    labels CSV (as training's data fingerprint, without masks), and its name (default: the
    CSV's file name without its suffix). Acceptance files name the set by it (issue 24)."""
    unmasked = [replace(sample, mask=None) for sample in samples]
    return EvaluationSet(name=name or csv_path.stem, sha256=fingerprint(unmasked, [csv_path]), images=len(samples))


def evaluate_folder(pipeline: Pipeline, images: Path, csv_path: Path, out_dir: Path, masks: Path | None = None,
                    resamples: int = 1000, seed: int = 0, progress: bool = True,
                    predictions_only: bool = False, set_name: str | None = None) -> EvaluationReport:
    """Score every image of the folder with ``pipeline`` and write the outputs to ``out_dir``;
    the metrics use the model's own operating threshold, as the service's diagnosis does.
    ``set_name`` names the evaluation set in the report (its sha256 is computed here)."""
    without_labels = "; --predictions-only runs the model without labels"
    samples = read_labelled_csv(csv_path, images, masks, need_target=not predictions_only, hint=without_labels)
    if not predictions_only and any(s.target is None for s in samples):
        raise ValueError(f"{csv_path}: every row needs a target (0 or 1) to be evaluated{without_labels}")
    identity = evaluation_set(samples, csv_path, set_name)
    predictions = predict(pipeline, samples, progress)
    provenance = pipeline.registry.provenance()
    operating_point = provenance.operating_point
    threshold = operating_point.threshold if operating_point is not None else MELANOMA_THRESHOLD
    rule_out = operating_point.rule_out_threshold if operating_point is not None else None
    rule_out_sensitivity = operating_point.rule_out_sensitivity if operating_point is not None else None
    if predictions_only:
        report = EvaluationReport(
            predictions_only=True,
            threshold=threshold,
            images=len(predictions),
            evaluated=sum(p.probability is not None for p in predictions),
            rejected=_rejected(predictions),
        )
    else:
        report = summarise(predictions, threshold, resamples, seed, rule_out, rule_out_sensitivity)
    report = report.model_copy(update={
        "operating_point": operating_point,
        "model": provenance,
        "data": DataSource(images=str(images), labels=str(csv_path), masks=str(masks) if masks else None),
        "evaluation_set": identity,
        "reference": reference_of(predictions),
    })
    write_outputs(report, predictions, Path(out_dir))
    return report


# ------------------------------------------------------------------------------------- outputs


def write_outputs(report: EvaluationReport, predictions: list[Prediction], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report.as_json(), indent=2))
    with (out_dir / "predictions.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        columns = ["image_name", "target", "probability", "skin_group", "ita_degrees", "dice", "jaccard", "rejection",
                   "disposition"]
        writer.writerow(columns)
        for p in predictions:
            writer.writerow([p.name, p.target, p.probability, p.skin_group, p.ita_degrees, p.dice, p.jaccard,
                             p.rejection, p.disposition])
    if report.overall is None:  # predictions only: no metrics to draw
        return
    scored = [p for p in predictions if p.probability is not None]
    ece = report.overall.metrics.get("ece")
    reliability = _reliability_png(report.reliability, ece.value if ece is not None else None)
    roc = _roc_png(np.array([p.target for p in scored]), np.array([p.probability for p in scored]), report.threshold)
    (out_dir / "reliability.png").write_bytes(reliability)
    (out_dir / "roc.png").write_bytes(roc)
    (out_dir / "report.html").write_text(_html(report, reliability, roc))


def _figure() -> tuple[Figure, Axes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(4, 4), dpi=100)


def _png(fig: Figure) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _reliability_png(bins: list[dict[str, Any]], ece: float | None) -> bytes:
    fig, ax = _figure()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    filled = [b for b in bins if b["count"]]
    ax.bar([(b["from"] + b["to"]) / 2 for b in filled], [b["observed_rate"] for b in filled],
           width=0.09, alpha=0.7, label="observed melanoma rate")
    ax.plot([b["mean_probability"] for b in filled], [b["observed_rate"] for b in filled], "o-", color="black")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted probability", ylabel="observed rate",
           title=f"Reliability (ECE {ece:.3f})" if ece is not None else "Reliability")
    ax.legend(loc="upper left", fontsize=7)
    return _png(fig)


def _roc_png(targets: np.ndarray, probabilities: np.ndarray, threshold: float) -> bytes:
    from sklearn.metrics import roc_curve

    fig, ax = _figure()
    if len(np.unique(targets)) == 2:
        fpr, tpr, _ = roc_curve(targets, probabilities)
        ax.plot(fpr, tpr, label="ROC")
        sensitivity, specificity = scores.sensitivity_specificity(targets, probabilities, threshold)
        assert sensitivity is not None and specificity is not None  # both classes are present
        ax.plot([1 - specificity], [sensitivity], "o", color="red", label=f"threshold {threshold:.3f}")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="1 - specificity", ylabel="sensitivity", title="ROC")
    ax.legend(loc="lower right", fontsize=7)
    return _png(fig)


def _fmt(metric: Score | None) -> str:
    if metric is None or metric.value is None:
        return "n/a"
    low, high = metric.ci95
    ci = f" ({low:.3f}–{high:.3f})" if low is not None and high is not None else ""
    return f"{metric.value:.3f}{ci}"


def rule_out_table(evidence: RuleOutEvidence, weights: str | None = None) -> list[str]:
    """The rule-out evidence as ``dermasentinel evaluate`` prints it: one table per threshold
    (sensitivity, specificity, PPV, NPV with their 95% intervals), then the disposition shares;
    a row for every case and one per skin group present."""
    rows = [("all", evidence.overall)] + [(str(b.skin_group), b) for b in evidence.per_skin_group]
    chosen = (f"chosen for sensitivity {evidence.rule_out_sensitivity:g} on validation"
              if evidence.rule_out_sensitivity is not None else "the default: the model has no calibrated one")
    lines = ["rule-out evidence (95% bootstrap intervals in brackets)"]
    if weights is not None and weights != disposition.TRAINED:
        lines.append(f"weights {weights}: every case is clinician_review; the figures are not clinical evidence")
    thresholds: list[tuple[str, Callable[[RuleOutBlock], AtThreshold]]] = [
        (f"urgent referral: p > {evidence.urgent_threshold:.3f} (the high-risk operating point)",
         lambda block: block.urgent),
        (f"rule-out: p < {evidence.rule_out_threshold:.3f} ({chosen})", lambda block: block.rule_out),
    ]
    for title, at in thresholds:
        lines += [title, _line("group", "n", "pos", [f"{m:<22}" for m in RULE_OUT_METRICS])]
        for label, block in rows:
            scored = at(block)
            cells = [_fmt(scored.sensitivity), _fmt(scored.specificity), _fmt(scored.ppv), _fmt(scored.npv)]
            lines.append(_line(label, block.count, block.positives, [f"{c:<22}" for c in cells]))
    lines += ["dispositions (share of cases)",
              _line("group", "n", "pos", [f"{'urgent_referral':>16}", f"{'clinician_review':>18}", f"{'routine':>9}",
                                          f"{'melanomas routine':>19}"])]
    for label, block in rows:
        shares = block.dispositions
        lines.append(_line(label, block.count, block.positives, [
            f"{_share(shares.urgent_referral):>16}", f"{_share(shares.clinician_review):>18}",
            f"{_share(shares.routine):>9}", f"{shares.routine_melanomas:>19}",
        ]))
    return lines


def _line(label: str, count: object, positives: object, cells: list[str]) -> str:
    return f"  {label:<13}{count!s:>6}{positives!s:>6}  " + "".join(cells).rstrip()


def _share(share: DispositionShare) -> str:
    return "n/a" if share.share is None else f"{share.share:.0%}"


def _html(report: EvaluationReport, reliability: bytes, roc: bytes) -> str:
    model = report.model
    fusion = model.fusion if model is not None else None
    point = report.operating_point
    blocks = ([("all", report.overall)] if report.overall is not None else []) + [
        (str(block.skin_group), block) for block in report.per_skin_group
    ]
    measured = report.overall.metrics if report.overall is not None else {}
    names = list(CLASSIFICATION_METRICS) + [m for m in SEGMENTATION_METRICS if m in measured]
    header = "".join(f"<th>{html.escape(n)}</th>" for n in ["group", "count", "positives", *names])
    rows = []
    for label, block in blocks:
        cells = [label, str(block.count), str(block.positives)] + [_fmt(block.metrics.get(n)) for n in names]
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")

    def image(data: bytes, alt: str) -> str:
        return f'<img alt="{alt}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'

    def text(value: object) -> str:
        return html.escape(str(value))

    if point is not None and point.chosen_on == "validation":
        chosen = (f"threshold {point.threshold:.3f} chosen for sensitivity "
                  f"{point.target_sensitivity} on validation")
    else:
        chosen = f"threshold {report.threshold:.3f} (default; the model has no validated operating point)"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>DermaSentinel evaluation</title>
<style>body{{font-family:sans-serif;margin:1.5em;max-width:60em}}table{{border-collapse:collapse;font-size:.85em}}
td,th{{border:1px solid #bbb;padding:.25em .5em;text-align:right}}td:first-child{{text-align:left}}
.warn{{background:#fee;border:1px solid #c00;padding:.5em}}</style></head><body>
<h1>Model evaluation</h1>
<p class="warn">Research use only; DermaSentinel is not a certified medical device. These figures
describe this model on this data set only. Weights: <b>{text(model.weights if model else None)}</b>.</p>
<p>Fusion {text(fusion.version if fusion else None)} (sha256 {text(fusion.sha256 if fusion else None)[:12]}),
segmenter {text(model.segmenter if model else None)}, backend {text(model.backend if model else None)};
training data: {text((model.training_data if model else None) or 'not stated')}.<br>
{html.escape(chosen)}; {html.escape(_set_text(report))}{report.evaluated} of {report.images} images evaluated
({len(report.rejected)} rejected by a quality or lesion gate). 95% bootstrap intervals in brackets.</p>
<table><tr>{header}</tr>{''.join(rows)}</table>
<p>Skin groups from the Equity Engine's ITA of each image.</p>
{_rule_out_html(report)}
{image(roc, "ROC curve")} {image(reliability, "reliability diagram")}
</body></html>"""


def _set_text(report: EvaluationReport) -> str:
    found = report.evaluation_set
    return f"evaluation set {found.name} (sha256 {found.sha256[:12]}): " if found is not None else ""


def _rule_out_html(report: EvaluationReport) -> str:
    """The rule-out evidence, as the command prints it."""
    if report.rule_out is None:
        return ""
    text = "\n".join(rule_out_table(report.rule_out, report.model.weights if report.model else None))
    return f"<h2>Rule-out evidence</h2>\n<pre>{html.escape(text)}</pre>"
