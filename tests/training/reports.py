"""A deterministic evaluation report of a registered Fusion model, without running one (issue 24):
every ITA group separates melanoma well except ``weaker``, whose melanomas score lower."""

from __future__ import annotations

import random
import uuid

from shared.schemas.analyses import Checkpoint, ModelInfo
from shared.schemas.evaluation import EvaluationReport, EvaluationSet
from training.evaluate import Prediction, summarise

GROUPS = ("very light", "light", "intermediate", "tan", "brown")


def synthetic_report(model_id: uuid.UUID | str, model_sha256: str, set_sha256: str, *, set_name: str = "holdout",
                     weaker: str = "brown", images: int = 200) -> EvaluationReport:
    rng = random.Random(0)
    predictions = []
    for i in range(images):
        target = int(i % 3 == 0)
        group = GROUPS[i % len(GROUPS)]
        shift = -0.2 if group == weaker and target else 0.0
        probability = min(1.0, max(0.0, (0.7 if target else 0.3) + rng.gauss(0, 0.15) + shift))
        predictions.append(Prediction(f"ISIC_{i:07d}", target, probability, skin_group=group, ita_degrees=20.0,
                                      disposition="clinician_review"))
    report = summarise(predictions, 0.5, resamples=100, rule_out_threshold=0.3, rule_out_sensitivity=0.95)
    return report.model_copy(update={
        "model": ModelInfo(segmenter="classical", weights="synthetic",
                           fusion=Checkpoint(name="fusion", version="v1", sha256=model_sha256,
                                             registry_id=str(model_id))),
        "evaluation_set": EvaluationSet(name=set_name, sha256=set_sha256, images=images),
    })
