"""``dermasentinel evaluate``: a model judged on a labelled folder, overall and per skin tone.

Each image goes through the real pipeline (quality gate, Gate 1, Equity Engine, Gate 2 with
TTA, the model's calibration and operating threshold), so the numbers describe what the
service would answer. Metrics: AUC-ROC, sensitivity and specificity at the operating
threshold, balanced accuracy, ECE (with a reliability diagram), Dice/Jaccard when masks are
given; each with a percentile bootstrap 95% CI, overall and for every ITA skin group present
(with its count). Images a clinical gate rejects are listed and left out of the metrics.
Writes ``report.json``, ``predictions.csv``, ``reliability.png``, ``roc.png`` and a one-page
``report.html``. With ``predictions_only`` (a folder without labels, e.g. a challenge's test
set): ``predictions.csv`` and a ``report.json`` with the model and the rejections, no metrics.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training import scores as metrics
from training.data import Sample, load_mask, read_labelled_csv

GROUP_ORDER = ("very light", "light", "intermediate", "tan", "brown", "dark")
CLASSIFICATION_METRICS = ("auc", "sensitivity", "specificity", "balanced_accuracy", "ece")
SEGMENTATION_METRICS = ("dice", "jaccard")


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


def _metric_functions(threshold: float) -> dict[str, Callable]:
    return {
        "auc": lambda t, p: metrics.auc(t, p),
        "sensitivity": lambda t, p: metrics.sensitivity_specificity(t, p, threshold)[0],
        "specificity": lambda t, p: metrics.sensitivity_specificity(t, p, threshold)[1],
        "balanced_accuracy": lambda t, p: metrics.balanced_accuracy(t, p, threshold),
        "ece": lambda t, p: metrics.expected_calibration_error(t, p)[0],
    }


def summarise(predictions: list[Prediction], threshold: float, resamples: int = 1000, seed: int = 0) -> dict:
    """Every metric with its bootstrap CI, overall and per skin group (one row per group present)."""
    scored = [p for p in predictions if p.probability is not None]
    per_skin_group: list[dict] = []
    report: dict = {
        "threshold": threshold,
        "images": len(predictions),
        "evaluated": len(scored),
        "rejected": [{"image_name": p.name, "reason": p.rejection} for p in predictions if p.probability is None],
        "overall": _block(scored, threshold, resamples, seed),
        "per_skin_group": per_skin_group,
    }
    groups = sorted({p.skin_group for p in scored if p.skin_group},
                    key=lambda g: GROUP_ORDER.index(g) if g in GROUP_ORDER else len(GROUP_ORDER))
    for group in groups:
        members = [p for p in scored if p.skin_group == group]
        per_skin_group.append({"skin_group": group, **_block(members, threshold, resamples, seed)})
    targets = np.array([p.target for p in scored])
    probabilities = np.array([p.probability for p in scored])
    report["reliability"] = metrics.expected_calibration_error(targets, probabilities)[1] if scored else []
    return report


def _block(members: list[Prediction], threshold: float, resamples: int, seed: int) -> dict:
    targets = np.array([p.target for p in members], dtype=int)
    probabilities = np.array([p.probability for p in members], dtype=float)
    scores: dict[str, dict] = {}
    block = {"count": len(members), "positives": int(targets.sum()), "metrics": scores}
    if not members:
        return block
    for name, function in _metric_functions(threshold).items():
        value = function(targets, probabilities)
        low, high = metrics.bootstrap_ci(function, (targets, probabilities), resamples, seed)
        scores[name] = {"value": value, "ci95": [low, high]}
    masked = [p for p in members if p.dice is not None]
    for name in SEGMENTATION_METRICS if masked else ():
        values = np.array([getattr(p, name) for p in masked])
        low, high = metrics.bootstrap_ci(lambda v: float(v.mean()), (values,), resamples, seed)
        scores[name] = {"value": float(values.mean()), "ci95": [low, high], "count": len(masked)}
    return block


# --------------------------------------------------------------------------- running the model


def predict(pipeline, samples: list[Sample], progress: bool = True) -> list[Prediction]:
    """Run each image through the pipeline (one at a time: bounded memory); an unlabelled
    sample keeps ``target`` None (``evaluate_folder`` decides whether labels are needed)."""
    from tqdm import tqdm

    from worker.pipeline.pipeline import Finding, LesionInput

    predictions = []
    for sample in tqdm(samples, desc="evaluate", disable=not progress, unit="image"):
        target = sample.target
        outcome = pipeline.run([LesionInput(
            image=sample.image.read_bytes(), age=int(sample.age) if sample.age is not None else None,
            sex=sample.sex, site=sample.site,
        )])[0]
        if not isinstance(outcome, Finding):
            predictions.append(Prediction(sample.name, target, None, rejection=outcome.code))
            continue
        result = outcome.result
        prediction = Prediction(
            sample.name, target, float(result["probability"]),
            skin_group=result["equity"]["skin_group"], ita_degrees=float(result["equity"]["ita_degrees"]),
        )
        if sample.mask is not None:
            prediction.dice, prediction.jaccard = metrics.dice_jaccard(load_mask(sample.mask) > 0.5,
                                                                       _mask_at(outcome.mask_png, sample.mask))
        predictions.append(prediction)
    return predictions


def _mask_at(mask_png: bytes, truth_path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(truth_path) as truth:
        size = truth.size
    with Image.open(io.BytesIO(mask_png)) as mask:
        return np.asarray(mask.convert("L").resize(size, Image.Resampling.NEAREST)) > 127


def evaluate_folder(pipeline, images: Path, csv_path: Path, out_dir: Path, masks: Path | None = None,
                    resamples: int = 1000, seed: int = 0, progress: bool = True,
                    predictions_only: bool = False) -> dict:
    without_labels = "; --predictions-only runs the model without labels"
    samples = read_labelled_csv(csv_path, images, masks, need_target=not predictions_only, hint=without_labels)
    if not predictions_only and any(s.target is None for s in samples):
        raise ValueError(f"{csv_path}: every row needs a target (0 or 1) to be evaluated{without_labels}")
    predictions = predict(pipeline, samples, progress)
    provenance = pipeline.registry.provenance()
    operating_point = provenance.get("operating_point") or {}
    threshold = float(operating_point.get("threshold", 0.5))
    if predictions_only:
        report = {
            "predictions_only": True,
            "threshold": threshold,
            "images": len(predictions),
            "evaluated": sum(p.probability is not None for p in predictions),
            "rejected": [{"image_name": p.name, "reason": p.rejection} for p in predictions if p.probability is None],
        }
    else:
        report = summarise(predictions, threshold, resamples, seed)
    report["operating_point"] = operating_point
    report["model"] = provenance
    report["data"] = {"images": str(images), "labels": str(csv_path), "masks": str(masks) if masks else None}
    write_outputs(report, predictions, Path(out_dir))
    return report


# ------------------------------------------------------------------------------------- outputs


def write_outputs(report: dict, predictions: list[Prediction], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    with (out_dir / "predictions.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        columns = ["image_name", "target", "probability", "skin_group", "ita_degrees", "dice", "jaccard", "rejection"]
        writer.writerow(columns)
        for p in predictions:
            writer.writerow([p.name, p.target, p.probability, p.skin_group, p.ita_degrees, p.dice, p.jaccard,
                             p.rejection])
    if report.get("predictions_only"):
        return
    scored = [p for p in predictions if p.probability is not None]
    reliability = _reliability_png(report["reliability"], report["overall"]["metrics"].get("ece", {}).get("value"))
    roc = _roc_png(np.array([p.target for p in scored]), np.array([p.probability for p in scored]), report["threshold"])
    (out_dir / "reliability.png").write_bytes(reliability)
    (out_dir / "roc.png").write_bytes(roc)
    (out_dir / "report.html").write_text(_html(report, reliability, roc))


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, plt.subplots(figsize=(4, 4), dpi=100)


def _png(plt, fig) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _reliability_png(bins: list[dict], ece: float | None) -> bytes:
    plt, (fig, ax) = _figure()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    filled = [b for b in bins if b["count"]]
    ax.bar([(b["from"] + b["to"]) / 2 for b in filled], [b["observed_rate"] for b in filled],
           width=0.09, alpha=0.7, label="observed melanoma rate")
    ax.plot([b["mean_probability"] for b in filled], [b["observed_rate"] for b in filled], "o-", color="black")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted probability", ylabel="observed rate",
           title=f"Reliability (ECE {ece:.3f})" if ece is not None else "Reliability")
    ax.legend(loc="upper left", fontsize=7)
    return _png(plt, fig)


def _roc_png(targets: np.ndarray, probabilities: np.ndarray, threshold: float) -> bytes:
    from sklearn.metrics import roc_curve

    plt, (fig, ax) = _figure()
    if len(np.unique(targets)) == 2:
        fpr, tpr, _ = roc_curve(targets, probabilities)
        ax.plot(fpr, tpr, label="ROC")
        sensitivity, specificity = metrics.sensitivity_specificity(targets, probabilities, threshold)
        assert sensitivity is not None and specificity is not None  # both classes are present
        ax.plot([1 - specificity], [sensitivity], "o", color="red", label=f"threshold {threshold:.3f}")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="1 - specificity", ylabel="sensitivity", title="ROC")
    ax.legend(loc="lower right", fontsize=7)
    return _png(plt, fig)


def _fmt(metric: dict | None) -> str:
    if not metric or metric.get("value") is None:
        return "n/a"
    low, high = metric.get("ci95") or (None, None)
    ci = f" ({low:.3f}–{high:.3f})" if low is not None and high is not None else ""
    return f"{metric['value']:.3f}{ci}"


def _html(report: dict, reliability: bytes, roc: bytes) -> str:
    model = report.get("model") or {}
    fusion = model.get("fusion") or {}
    point = report.get("operating_point") or {}
    names = list(CLASSIFICATION_METRICS) + [m for m in SEGMENTATION_METRICS if m in report["overall"]["metrics"]]
    header = "".join(f"<th>{html.escape(n)}</th>" for n in ["group", "count", "positives", *names])
    rows = []
    for label, block in [("all", report["overall"])] + [(r["skin_group"], r) for r in report["per_skin_group"]]:
        cells = [label, str(block["count"]), str(block["positives"])] + [_fmt(block["metrics"].get(n)) for n in names]
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")

    def image(data: bytes, alt: str) -> str:
        return f'<img alt="{alt}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'

    if point.get("chosen_on") == "validation":
        chosen = (f"threshold {point.get('threshold', report['threshold']):.3f} chosen for sensitivity "
                  f"{point.get('target_sensitivity')} on validation")
    else:
        chosen = f"threshold {report['threshold']:.3f} (default; the model has no validated operating point)"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>DermaSentinel evaluation</title>
<style>body{{font-family:sans-serif;margin:1.5em;max-width:60em}}table{{border-collapse:collapse;font-size:.85em}}
td,th{{border:1px solid #bbb;padding:.25em .5em;text-align:right}}td:first-child{{text-align:left}}
.warn{{background:#fee;border:1px solid #c00;padding:.5em}}</style></head><body>
<h1>Model evaluation</h1>
<p class="warn">Research use only; DermaSentinel is not a certified medical device. These figures
describe this model on this data set only. Weights: <b>{html.escape(str(model.get('weights')))}</b>.</p>
<p>Fusion {html.escape(str(fusion.get('version')))} (sha256 {html.escape(str(fusion.get('sha256'))[:12])}),
segmenter {html.escape(str(model.get('segmenter')))}, backend {html.escape(str(model.get('backend')))};
training data: {html.escape(str(model.get('training_data') or 'not stated'))}.<br>
{html.escape(chosen)}; {report['evaluated']} of {report['images']} images evaluated
({len(report['rejected'])} rejected by a quality or lesion gate). 95% bootstrap intervals in brackets.</p>
<table><tr>{header}</tr>{''.join(rows)}</table>
<p>Skin groups from the Equity Engine's ITA of each image.</p>
{image(roc, "ROC curve")} {image(reliability, "reliability diagram")}
</body></html>"""
