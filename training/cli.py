"""``dermasentinel train scalpel|fusion`` and ``dermasentinel evaluate``."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from shared.clinical import SYNTHETIC
from shared.clinical.disposition import DEFAULT_RULE_OUT_SENSITIVITY
from shared.config import get_settings

if TYPE_CHECKING:
    from shared.config import Settings
    from training.evaluate import EvaluationReport, Score
    from training.train import TrainConfig, TrainResult

_PATH = click.Path(exists=True, path_type=Path)
Command = TypeVar("Command", bound=Callable[..., Any])


def _common(func: Command) -> Command:
    """The options ``train fusion`` and ``train scalpel`` share."""
    options = [
        click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
                     help="folder for best_<kind>.pth, its model card and the resumable state"),
        click.option("--size", "image_size", type=click.IntRange(32, 2048), default=512, show_default=True,
                     help="network input size (multiple of 32; the pipeline's SEG_SIZE/CLS_SIZE)"),
        click.option("--epochs", type=click.IntRange(1), default=20, show_default=True),
        click.option("--batch-size", type=click.IntRange(1), default=16, show_default=True),
        click.option("--lr", "learning_rate", type=float, default=3e-4, show_default=True),
        click.option("--weight-decay", type=float, default=1e-2, show_default=True),
        click.option("--folds", type=click.IntRange(2), default=5, show_default=True),
        click.option("--fold", type=click.IntRange(0), default=0, show_default=True, help="which fold validates"),
        click.option("--seed", type=int, default=42, show_default=True),
        click.option("--patience", type=click.IntRange(1), default=4, show_default=True,
                     help="early stopping: epochs without a better validation score"),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N"),
        click.option("--no-amp", is_flag=True, help="full precision on CUDA too"),
        click.option("--workers", type=click.IntRange(0), default=0, show_default=True, help="data loader processes"),
        click.option("--resume", is_flag=True, help="continue after the last finished epoch in --out"),
        click.option("--version", help="version name recorded in the checkpoint and card"),
        click.option("--data-description", help="what the data is (default: dataset.json's description)"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _config(kwargs: dict[str, Any], **extra: Any) -> TrainConfig:
    from training.train import TrainConfig

    no_amp = kwargs.pop("no_amp")
    return TrainConfig(amp=not no_amp, **kwargs, **extra)


def _report(result: TrainResult) -> None:
    """What a finished training run made, its validation scores, and how to register it."""
    from shared.model_registry import ModelCard

    card = ModelCard.of(result.card)
    validation = (card.metrics or {})["validation"]
    click.echo(f"wrote {result.checkpoint} and {result.card_path}")
    click.echo("validation: " + ", ".join(f"{k} {v:.4f}" for k, v in validation.items() if isinstance(v, float)))
    if (c := card.calibration) is not None:
        click.echo(f"calibration: temperature {c.temperature:.3f}; threshold {c.threshold:.3f} chosen for "
                   f"sensitivity {c.target_sensitivity} on validation (sensitivity {c.sensitivity:.3f}, "
                   f"specificity {c.specificity:.3f})")
        if c.rule_out_threshold is not None:
            reached, npv = _number(c.rule_out_sensitivity_reached), _number(c.rule_out_npv)
            click.echo(f"rule-out: threshold {c.rule_out_threshold:.3f} chosen for sensitivity "
                       f"{c.rule_out_sensitivity} on validation (sensitivity {reached}, NPV {npv}); "
                       "below it, a result with no review reason is routine")
    if card.weights == SYNTHETIC:
        click.echo("trained on SYNTHETIC images: results will say weights 'synthetic' (not for clinical use)")
    click.echo(f"register it with: dermasentinel models import {result.checkpoint} --kind {card.kind}")


@click.group("train")
def train() -> None:
    """Train Scalpel (segmentation) or Fusion (classification) on local data; nothing is downloaded."""


@train.command("fusion")
@click.option("--images", type=_PATH, required=True, help="folder of <image_name>.jpg/.png")
@click.option("--csv", "csv_path", type=_PATH, required=True,
              help="ISIC 2020 columns: image_name, patient_id, sex, age_approx, anatom_site_general_challenge, target")
@click.option("--target-sensitivity", type=click.FloatRange(0.5, 1.0), default=0.95, show_default=True,
              help="the operating threshold is chosen on validation to reach this sensitivity")
@click.option("--rule-out-sensitivity", type=click.FloatRange(0.5, 1.0), default=DEFAULT_RULE_OUT_SENSITIVITY,
              show_default=True,
              help="the rule-out threshold (below it, a result with no review reason is routine) is chosen on "
              "validation to reach this sensitivity; at least --target-sensitivity")
@_common
def train_fusion_command(images: Path, csv_path: Path, target_sensitivity: float, rule_out_sensitivity: float,
                         **kwargs: Any) -> None:
    """EfficientNet-B3 + metadata Fusion, then temperature scaling, the operating threshold and the
    rule-out threshold."""
    from training.data import DataError
    from training.train import train_fusion

    if rule_out_sensitivity < target_sensitivity:
        raise click.UsageError(
            f"--rule-out-sensitivity {rule_out_sensitivity:g} is below --target-sensitivity {target_sensitivity:g}: "
            "the rule-out threshold must catch at least the melanomas the operating threshold catches"
        )
    try:
        config = _config(kwargs, target_sensitivity=target_sensitivity, rule_out_sensitivity=rule_out_sensitivity)
        result = train_fusion(images, csv_path, config)
    except (DataError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    _report(result)


@train.command("scalpel")
@click.option("--images", type=_PATH, required=True, help="folder of ISIC_x.jpg (ISIC 2018 Task 1 layout)")
@click.option("--masks", type=_PATH, required=True, help="folder of ISIC_x_segmentation.png")
@_common
def train_scalpel_command(images: Path, masks: Path, **kwargs: Any) -> None:
    """U-Net ResNet-34 Scalpel with Dice + BCE, early stopping on validation Dice."""
    from training.data import DataError
    from training.train import train_scalpel

    try:
        result = train_scalpel(images, masks, _config(kwargs))
    except (DataError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    _report(result)


@click.command("evaluate")
@click.option("--images", type=_PATH, required=True, help="folder of <image_name>.jpg/.png")
@click.option("--csv", "csv_path", type=_PATH, required=True,
              help="image_name, target (and ISIC 2020 metadata columns)")
@click.option("--masks", type=_PATH, help="folder of <image_name>_segmentation.png for Dice/Jaccard")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--fusion", "fusion_path", type=_PATH, help="Fusion checkpoint file (default: MODEL_DIR's)")
@click.option("--scalpel", "scalpel_path", type=_PATH, help="Scalpel checkpoint file (default: MODEL_DIR's)")
@click.option("--fusion-model", "fusion_ref", metavar="REF",
              help="a registered Fusion model instead of a file: `active`, a version, an id or a sha256 prefix")
@click.option("--scalpel-model", "scalpel_ref", metavar="REF",
              help="a registered Scalpel model instead of a file: `active`, a version, an id or a sha256 prefix")
@click.option("--size", type=click.IntRange(32, 2048), help="SEG_SIZE and CLS_SIZE (default: the settings')")
@click.option("--bootstrap", type=click.IntRange(100), default=1000, show_default=True, help="bootstrap resamples")
@click.option("--predictions-only", is_flag=True,
              help="no labels needed (e.g. a challenge test set): write predictions.csv, no metrics")
@click.option("--set-name", metavar="NAME",
              help="the evaluation set's name, as acceptance files give it (default: the CSV's file name)")
@click.option("--store/--no-store", default=True, show_default=True,
              help="store the report against the registered models evaluated (--fusion-model, --scalpel-model)")
@click.option("--record-reference/--no-record-reference", default=None,
              help="store the probabilities' distribution (and skin-group mix, rejections) in the database as the "
              "model version's monitoring reference (docs/MONITORING.md); default: on with --fusion-model")
def evaluate(images: Path, csv_path: Path, masks: Path | None, out_dir: Path, fusion_path: Path | None,
             scalpel_path: Path | None, fusion_ref: str | None, scalpel_ref: str | None, size: int | None,
             bootstrap: int, predictions_only: bool, set_name: str | None, store: bool,
             record_reference: bool | None) -> None:
    """Evaluate a model on a labelled folder: metrics with 95% CIs, per ITA skin group, and a report.

    The model is a checkpoint file (--fusion, --scalpel), a registered model (--fusion-model,
    --scalpel-model: the same weights and operating point the workers run), or MODEL_DIR's.
    A registered model gets the report stored against it (its model card shows it, and
    `models activate --acceptance` checks it), keyed by the evaluation set's sha256."""
    from shared.model_registry import ModelNotFound, NotStorable
    from training.data import DataError
    from training.evaluate import evaluate_folder
    from training.model_store import registered_source, store_evaluation
    from worker.pipeline.errors import ModelConfigError
    from worker.pipeline.model_set import ModelSet, ModelSource
    from worker.pipeline.pipeline import Pipeline, PipelineOptions

    for kind, path, ref in (("fusion", fusion_path, fusion_ref), ("scalpel", scalpel_path, scalpel_ref)):
        if path and ref:
            raise click.UsageError(f"give --{kind} (a file) or --{kind}-model (a registered model), not both")
    settings = get_settings()

    def source(kind: str, path: Path | None, ref: str | None) -> ModelSource | None:
        """The checkpoint file given, else the registered model named, else None (MODEL_DIR's)."""
        if path:
            return ModelSource(path)
        return registered_source(settings, kind, ref) if ref else None

    try:
        fusion = source("fusion", fusion_path, fusion_ref)
        scalpel = source("scalpel", scalpel_path, scalpel_ref)
        registry = ModelSet.load(
            settings.model_dir, device=settings.device, segmenter=settings.segmenter, seed=settings.fusion_seed,
            backend=settings.backend, scalpel_source=scalpel, fusion_source=fusion,
        )
        # The workers' options (the same gates, TTA views and engine settings), at --size if given.
        sizes = {"seg_size": size, "cls_size": size} if size else {}
        options = PipelineOptions.from_settings(settings, registry.device.type, **sizes)
        report = evaluate_folder(Pipeline(registry, options), images, csv_path, out_dir, masks, resamples=bootstrap,
                                 predictions_only=predictions_only, set_name=set_name)
    except (DataError, ModelConfigError, ModelNotFound, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    registered = tuple(kind for kind, ref in (("fusion", fusion_ref), ("scalpel", scalpel_ref)) if ref)
    stored: list[tuple[str, str]] = []
    if store and registered and report.overall is not None:
        try:
            stored = store_evaluation(settings, report, registered)
        except (ModelNotFound, NotStorable) as exc:
            raise click.ClickException(f"the report was written to {out_dir} but not stored: {exc}") from None
    weights = report.model.weights if report.model is not None else None
    if record_reference if record_reference is not None else fusion_ref is not None:
        _record_reference(settings, report)
    if report.overall is None:  # --predictions-only
        click.echo(f"{report.evaluated} of {report.images} images scored, {len(report.rejected)} rejected "
                   f"by a gate: {out_dir / 'predictions.csv'} (weights: {weights}; research use only)")
        return
    click.echo(json.dumps({name: score.value for name, score in report.overall.metrics.items()}, indent=2))
    for row in report.per_skin_group:
        click.echo(f"{row.skin_group:<13} n={row.count:<5} AUC {_value(row.metrics.get('auc'))}  "
                   f"sensitivity {_value(row.metrics.get('sensitivity'))}  "
                   f"specificity {_value(row.metrics.get('specificity'))}")
    if report.rule_out is not None:
        from training.evaluate import rule_out_table

        click.echo("")
        for line in rule_out_table(report.rule_out, weights):
            click.echo(line)
    if report.rejected:
        reasons = Counter(str(image.reason) for image in report.rejected)
        click.echo(f"{len(report.rejected)} of {report.images} images rejected by a gate and left out: "
                   + ", ".join(f"{reason} {count}" for reason, count in reasons.most_common()))
    click.echo(f"report: {out_dir / 'report.html'} (weights: {weights}; research use only)")
    if report.evaluation_set is not None:
        found = report.evaluation_set
        click.echo(f"evaluation set {found.name}: sha256 {found.sha256} ({found.images} images)")
    for kind, version in stored:
        click.echo(f"stored against {kind} {version}: its model card shows it, and acceptance files naming this set "
                   "check it at `models activate`")


def _record_reference(settings: Settings, report: EvaluationReport) -> None:
    """Issue 24: the evaluated model's reference, stored for monitoring."""
    from training.model_store import record_reference

    if report.reference is None or report.model is None:
        click.echo("no image was scored: no monitoring reference recorded", err=True)
        return
    try:
        version = record_reference(settings, report.model, report.reference)
    except Exception as exc:  # the evaluation itself is written: say what was not stored
        raise click.ClickException(f"the monitoring reference was not recorded: {exc}") from None
    click.echo(f"monitoring reference recorded for model {version} ({report.reference.count} scored images)")


def _value(metric: Score | None) -> str:
    return "n/a" if metric is None or metric.value is None else f"{metric.value:.3f}"


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
