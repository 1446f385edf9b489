"""``dermasentinel train fusion`` and ``train scalpel``: the original project's protocol.

Patient-grouped StratifiedGroupKFold split ("Iron Curtain"), albumentations augmentations,
AdamW with a cosine schedule, early stopping on validation AUC (Fusion) or Dice (Scalpel),
class-imbalance weighting for Fusion, Dice + BCE for the U-Net, fixed and recorded seeds,
mixed precision on CUDA, a progress bar with live metrics, and a resumable state after every
epoch. Fusion is then calibrated on the validation fold: temperature scaling, the threshold
that reaches the target sensitivity, and the rule-out threshold (the highest that reaches the
rule-out sensitivity: below it a result with no review reason is ``routine``). Output:
``best_<kind>.pth`` in the original format with its model card embedded and beside it
(``best_<kind>.card.json``).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from shared.clinical.disposition import DEFAULT_RULE_OUT_SENSITIVITY
from shared.monitoring import reference_from
from training import checkpoints, scores
from training.data import (
    DataError,
    LesionDataset,
    Sample,
    describe_dataset,
    fingerprint,
    patient_split,
    read_labelled_csv,
    read_segmentation_folder,
)
from worker.pipeline.networks import FUSION_NAME, SCALPEL_NAME, FusionNet, build_scalpel

log = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]  # what LesionDataset yields, collated
Step = Callable[[nn.Module, Batch, torch.device], tuple[torch.Tensor, torch.Tensor]]  # (loss, outputs)
Validate = Callable[[nn.Module, DataLoader, torch.device], dict[str, Any]]  # keys with "_": not scores


@dataclass
class TrainConfig:
    out_dir: Path
    image_size: int = 512
    epochs: int = 20
    batch_size: int = 16
    learning_rate: float = 3e-4
    weight_decay: float = 1e-2
    folds: int = 5
    fold: int = 0
    seed: int = 42
    patience: int = 4  # epochs without a better validation score before stopping
    device: str = "auto"
    amp: bool = True  # CUDA only
    workers: int = 0
    threads: int | None = None  # torch CPU threads (1 is fastest on a busy shared CPU); None: torch's default
    target_sensitivity: float = 0.95
    rule_out_sensitivity: float = DEFAULT_RULE_OUT_SENSITIVITY  # at least target_sensitivity
    resume: bool = False
    version: str | None = None
    data_description: str | None = None
    progress: bool = True

    def hyperparameters(self) -> dict:
        kept = asdict(self)
        for key in ("out_dir", "resume", "progress", "version", "data_description", "workers", "threads"):
            kept.pop(key)
        return kept


@dataclass
class TrainResult:
    checkpoint: Path
    card_path: Path
    card: dict
    history: list[dict] = field(default_factory=list)
    images_per_second: list[float] = field(default_factory=list)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def resolve_training_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


# ------------------------------------------------------------------------------------- Fusion


def train_fusion(images: Path, csv_path: Path, config: TrainConfig) -> TrainResult:
    if config.rule_out_sensitivity < config.target_sensitivity:
        raise ValueError(
            f"rule_out_sensitivity {config.rule_out_sensitivity:g} is below target_sensitivity "
            f"{config.target_sensitivity:g}: the rule-out threshold must catch at least the melanomas the "
            "operating threshold catches"
        )
    samples = read_labelled_csv(csv_path, images)
    unlabelled = [s.name for s in samples if s.target is None]
    if unlabelled:
        raise DataError(f"{csv_path}: {len(unlabelled)} of {len(samples)} rows have no target "
                        f"(first: {unlabelled[0]}); Fusion trains on labelled rows only")
    dataset_info = describe_dataset(csv_path.parent) or describe_dataset(images.parent)
    train_idx, val_idx = patient_split(samples, config.folds, config.fold, config.seed)
    train_samples = [samples[i] for i in train_idx]
    val_samples = [samples[i] for i in val_idx]
    if len({s.target for s in val_samples}) < 2:
        raise ValueError("the validation fold holds one class only; use more data or fewer --folds")
    positives = sum(s.target == 1 for s in train_samples)
    negatives = len(train_samples) - positives
    # Class imbalance (melanoma is ~2% of ISIC 2020): weight positives by the negative/positive ratio.
    pos_weight = negatives / max(positives, 1)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([pos_weight]))

    def step(model: nn.Module, batch: Batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(batch["image"].to(device), batch["metadata"].to(device))[:, 0]
        return loss_fn.to(device)(logits.float(), batch["target"].to(device)), logits

    def validate(model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, Any]:
        logits, targets, losses = _predict_logits(model, loader, device, loss_fn)
        probabilities = 1 / (1 + np.exp(-logits))
        return {"loss": float(np.mean(losses)), "auc": scores.auc(targets, probabilities),
                "_logits": logits, "_targets": targets}

    result = _fit(
        kind="fusion", model=FusionNet, name=FUSION_NAME, config=config,
        train_set=LesionDataset(train_samples, config.image_size, train=True, seed=config.seed),
        val_set=LesionDataset(val_samples, config.image_size, train=False),
        step=step, validate=validate, monitor="auc",
        data=_data_section(samples, train_samples, val_samples, [csv_path], dataset_info, config),
        extra_hyperparameters={"pos_weight": pos_weight, "loss": "BCEWithLogits(pos_weight)"},
        calibrate=lambda validation: _calibration(validation, config.target_sensitivity, config.rule_out_sensitivity),
    )
    return result


def _calibration(validation: dict[str, Any], target_sensitivity: float,
                 rule_out_sensitivity: float = DEFAULT_RULE_OUT_SENSITIVITY) -> dict[str, Any]:
    """The card's ``calibration``: temperature scaling, the threshold for the target sensitivity
    and the rule-out threshold for the rule-out sensitivity, all fitted on the validation fold's
    logits. The rule-out threshold is the highest whose sensitivity (a probability not below it
    is not ruled out) reaches the target; ``shared.clinical.disposition`` reads it from the
    model's operating point."""
    logits, targets = validation["_logits"], validation["_targets"]
    temperature = scores.fit_temperature(logits, targets)
    calibrated = 1 / (1 + np.exp(-logits / temperature))
    threshold = scores.threshold_for_sensitivity(targets, calibrated, target_sensitivity)
    sensitivity, specificity = scores.sensitivity_specificity(targets, calibrated, threshold)
    rule_out = scores.threshold_for_sensitivity(targets, calibrated, rule_out_sensitivity)
    at_rule_out = scores.confusion_at(targets, calibrated, rule_out, positive_at_threshold=True)
    ece_before, _ = scores.expected_calibration_error(targets, 1 / (1 + np.exp(-logits)))
    ece_after, _ = scores.expected_calibration_error(targets, calibrated)
    return {
        "method": "temperature scaling on the validation fold; threshold and rule-out threshold for their target "
                  "sensitivities",
        "chosen_on": "validation",
        "temperature": temperature,
        "threshold": threshold,
        "target_sensitivity": target_sensitivity,
        "sensitivity": sensitivity,
        "specificity": specificity,
        "rule_out_threshold": rule_out,
        "rule_out_sensitivity": rule_out_sensitivity,
        "rule_out_sensitivity_reached": at_rule_out.sensitivity,
        "rule_out_specificity": at_rule_out.specificity,
        "rule_out_npv": at_rule_out.npv,
        "ece_before": ece_before,
        "ece_after": ece_after,
        "views": "single view (no TTA); the pipeline averages calibrated TTA views",
        # Issue 24: monitoring's reference until `evaluate --record-reference` records the
        # pipeline's own (docs/MONITORING.md): the calibrated validation probabilities' quantiles.
        "reference": reference_from(calibrated, source="validation").as_json(),
    }


def _predict_logits(
    model: nn.Module, loader: DataLoader, device: torch.device, loss_fn: nn.Module | None = None
) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Fusion's logits, the targets and (with ``loss_fn``) each batch's loss, in loader order."""
    model.eval()
    logits, targets, losses = [], [], []
    with torch.inference_mode():
        for batch in loader:
            out = model(batch["image"].to(device), batch["metadata"].to(device))[:, 0].float()
            if loss_fn is not None:
                losses.append(float(loss_fn.to(device)(out, batch["target"].to(device))))
            logits.append(out.cpu().numpy())
            targets.append(batch["target"].numpy())
    return np.concatenate(logits).astype(float), np.concatenate(targets).astype(int), losses


# ------------------------------------------------------------------------------------ Scalpel


def dice_bce_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice (1 - Dice over each image, averaged)."""
    bce = nn.functional.binary_cross_entropy_with_logits(logits, masks)
    probabilities = torch.sigmoid(logits)
    intersection = (probabilities * masks).sum(dim=(1, 2, 3))
    total = probabilities.sum(dim=(1, 2, 3)) + masks.sum(dim=(1, 2, 3))
    dice = (2 * intersection + 1.0) / (total + 1.0)
    return bce + (1 - dice).mean()


def train_scalpel(images: Path, masks: Path, config: TrainConfig) -> TrainResult:
    samples = read_segmentation_folder(images, masks)
    dataset_info = describe_dataset(images.parent)
    train_idx, val_idx = patient_split(samples, config.folds, config.fold, config.seed)
    train_samples = [samples[i] for i in train_idx]
    val_samples = [samples[i] for i in val_idx]

    def step(model: nn.Module, batch: Batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(batch["image"].to(device)).float()
        return dice_bce_loss(logits, batch["mask"].to(device)), logits

    def validate(model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, Any]:
        model.eval()
        dices, jaccards, losses = [], [], []
        with torch.inference_mode():
            for batch in loader:
                logits = model(batch["image"].to(device)).float()
                masks = batch["mask"].to(device)
                losses.append(float(dice_bce_loss(logits, masks)))
                predicted = (torch.sigmoid(logits) > 0.5).cpu().numpy()
                for truth, guess in zip(masks.cpu().numpy() > 0.5, predicted, strict=True):
                    dice, jaccard = scores.dice_jaccard(truth, guess)
                    dices.append(dice)
                    jaccards.append(jaccard)
        return {"loss": float(np.mean(losses)), "dice": float(np.mean(dices)), "jaccard": float(np.mean(jaccards))}

    return _fit(
        kind="scalpel", model=build_scalpel, name=SCALPEL_NAME, config=config,
        train_set=LesionDataset(train_samples, config.image_size, train=True, with_masks=True, seed=config.seed),
        val_set=LesionDataset(val_samples, config.image_size, train=False, with_masks=True),
        step=step, validate=validate, monitor="dice",
        data=_data_section(samples, train_samples, val_samples, [], dataset_info, config),
        extra_hyperparameters={"loss": "BCE + soft Dice"},
        calibrate=None,
    )


# ------------------------------------------------------------------------------------- common


def _data_section(samples: list[Sample], train: list[Sample], val: list[Sample], extra: list[Path],
                  dataset_info: dict, config: TrainConfig) -> dict:
    synthetic = bool(dataset_info.get("synthetic"))
    description = config.data_description or dataset_info.get("description") or "unnamed local data set"
    train_patients = {s.patient_id for s in train}
    val_patients = {s.patient_id for s in val}
    assert not train_patients & val_patients, "a patient on both sides of the split"
    return {
        "training_data": {
            "description": description,
            "synthetic": synthetic,
            "fingerprint": fingerprint(samples, extra),
            "images": len(samples),
            "patients": len({s.patient_id for s in samples}),
            "positives": sum(1 for s in samples if s.target == 1) if samples[0].target is not None else None,
        },
        "split": {
            "method": "StratifiedGroupKFold by patient_id, stratified by target",
            "folds": config.folds,
            "fold": config.fold,
            "seed": config.seed,
            "train_images": len(train),
            "validation_images": len(val),
            "train_patients": sorted(train_patients),
            "validation_patients": sorted(val_patients),
        },
    }


def _fit(*, kind: str, model: Callable[[], nn.Module], name: str, config: TrainConfig, train_set: LesionDataset,
         val_set: LesionDataset, step: Step, validate: Validate, monitor: str, data: dict[str, Any],
         extra_hyperparameters: dict[str, Any],
         calibrate: Callable[[dict[str, Any]], dict[str, Any]] | None) -> TrainResult:
    """The loop both networks share: train, validate each epoch, keep the best by ``monitor``,
    stop early, save a resumable state, then write the released checkpoint and its card."""
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_training_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    generator = seed_everything(config.seed)
    model = model().to(device)  # built after seeding: the same seed gives the same initial weights
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, config.epochs))
    amp = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    train_loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True,
                              drop_last=len(train_set) > config.batch_size,
                              num_workers=config.workers, generator=generator, pin_memory=device.type == "cuda")
    val_loader = DataLoader(val_set, batch_size=config.batch_size, shuffle=False, num_workers=config.workers)
    checkpoint_path = out_dir / f"best_{kind}.pth"
    version = config.version or f"{kind}-{checkpoints.utc_stamp().replace(':', '').replace('-', '')}"

    history: list[dict] = []
    best, stale, start_epoch = None, 0, 0
    throughput: list[float] = []
    if config.resume and (state := checkpoints.load_state(out_dir)) is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        history, best, stale = state["history"], state["best"], state["stale"]
        start_epoch, version = state["epoch"] + 1, state["version"]
        torch.set_rng_state(state["torch_rng"])
        generator.set_state(state["loader_rng"])
        log.info("resuming %s training at epoch %d", kind, start_epoch + 1)

    for epoch in range(start_epoch, config.epochs):
        model.train()
        started, seen, losses = time.perf_counter(), 0, []
        bar = tqdm(train_loader, desc=f"{kind} epoch {epoch + 1}/{config.epochs}", disable=not config.progress,
                   leave=False, unit="batch")
        for batch in bar:
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=amp):
                loss, _ = step(model, batch, device)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            losses.append(float(loss.detach()))
            seen += len(batch["image"])
            bar.set_postfix(loss=f"{np.mean(losses):.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        train_seconds = time.perf_counter() - started
        scheduler.step()
        measured = validate(model, val_loader, device)
        images_per_second = seen / train_seconds
        record = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "images_per_second": images_per_second,
                  **{f"val_{k}": (float(v) if v is not None else None)
                     for k, v in measured.items() if not k.startswith("_")}}
        history.append(record)
        throughput.append(images_per_second)
        value = measured[monitor]
        improved = value is not None and (best is None or value > best)
        message = (f"{kind} epoch {epoch + 1}/{config.epochs}: train loss {record['train_loss']:.4f}, "
                   f"val loss {record['val_loss']:.4f}, val {monitor} "
                   f"{'n/a' if value is None else f'{value:.4f}'}, {record['images_per_second']:.1f} images/s")
        if config.progress:
            tqdm.write(message + (" (best)" if improved else ""))
        log.info(message)
        if improved:
            best, stale = float(value), 0
            checkpoints.save_release(model, checkpoint_path, version=version, epoch=epoch + 1, card=None)
        else:
            stale += 1
        checkpoints.save_state(out_dir, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "epoch": epoch, "history": history, "best": best, "stale": stale,
            "version": version, "torch_rng": torch.get_rng_state(), "loader_rng": generator.get_state(),
        })
        if stale >= config.patience:
            log.info("%s: no better validation %s for %d epochs; stopping early", kind, monitor, stale)
            break

    if not checkpoint_path.is_file():
        raise RuntimeError(f"no epoch produced a validation {monitor}; nothing was saved")
    # The released weights are the best epoch's: reload them for calibration and the card.
    payload = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    model.load_state_dict(payload["model_state_dict"])
    model.to(device)
    best_epoch = payload["epoch"]
    final_scores = validate(model, val_loader, device)
    card = {
        "schema": checkpoints.CARD_SCHEMA,
        "kind": kind,
        "name": name,
        "version": version,
        "created_at": checkpoints.utc_stamp(),
        "code_version": checkpoints.code_version(),
        "environment": checkpoints.environment(),
        **data,
        "hyperparameters": {**config.hyperparameters(), **extra_hyperparameters,
                            "optimizer": "AdamW", "schedule": "cosine", "early_stopping": f"validation {monitor}",
                            "augmentations": "flips, rot90, affine, brightness/contrast (albumentations)",
                            "pretrained": False, "device": device.type, "amp": amp},
        "metrics": {
            "best_epoch": best_epoch,
            "epochs_run": len(history),
            "validation": {k: v for k, v in final_scores.items() if not k.startswith("_")},
        },
        "history": history,
    }
    if calibrate is not None:
        card["calibration"] = calibrate(final_scores)
    checkpoints.save_release(model, checkpoint_path, version=version, epoch=best_epoch, card=card)
    card_path = checkpoints.write_card(card, checkpoint_path)
    return TrainResult(checkpoint_path, card_path, card, history, throughput)
