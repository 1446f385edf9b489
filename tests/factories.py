"""One factory for typed analysis records in tests (issue 20): every test that needs an
analysis record, a result or a model's provenance builds it here, as the same types the
pipeline produces and ``shared.lifecycle.analysis_record`` reads back.

``record(**changes)`` starts from a succeeded, trained, high-risk analysis; nested changes are
merged (``record(result={"probability": 0.2})`` changes only the probability). The presets
below are the named cases reports, FHIR, questions and exports are tested on. No real patient:
ids, values and references are made up.
"""

from __future__ import annotations

import copy
from typing import Any

from shared.clinical import BLUR_THRESHOLD, MIN_COVERAGE, disposition
from shared.schemas.analyses import AnalysisRecord, AnalysisResult, ModelInfo

SCALPEL_SHA = "a3f1c2d4e5b60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9"
FUSION_SHA = "0b1c2d3e4f5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f"

TRAINED_MODEL: dict[str, Any] = {
    "segmenter": "unet",
    "weights": "trained",
    "scalpel": {"name": "scalpel-unet-r34", "version": "1.2.0", "sha256": SCALPEL_SHA},
    "fusion": {"name": "fusion-effnet-b3", "version": "2.0.1", "sha256": FUSION_SHA, "seed": 42},
    "version": "2.0.1",
}
UNTRAINED_MODEL: dict[str, Any] = {
    "segmenter": "classical",
    "weights": "untrained",
    "scalpel": None,
    "fusion": {"name": "fusion-effnet-b3", "version": "untrained-seed-1234", "sha256": None, "seed": 1234},
    "version": "untrained-seed-1234",
}

HIGH_RISK_RESULT: dict[str, Any] = {
    "diagnosis": "melanoma",
    "probability": 0.9132,
    "uncertainty": 0.0417,
    "tta_probabilities": [0.95, 0.93, 0.88, 0.86, 0.9461],
    "risk_band": "high",
    "segmentation": {"coverage": 0.1842},
    "concepts": {"asymmetry": 0.81, "border": 0.66, "color": 0.58, "diameter_px": 412.0, "diameter_mm": 7.416},
    "equity": {"ita_degrees": 38.6, "skin_group": "light", "bias_warning": False},
    "quality": {"blur_score": 182.4},
}

_BASE: dict[str, Any] = {
    "id": "1b4e28ba-2fa1-11d2-883f-0016d3cca427",
    "external_id": "CLINIC-A-000187",
    "batch_id": None,
    "status": "succeeded",
    "stage": None,
    "priority": "interactive",
    "attempt": 1,
    "created_at": "2025-03-14T09:26:53Z",
    "started_at": "2025-03-14T09:26:54Z",
    "completed_at": "2025-03-14T09:26:55.120Z",
    "inputs": {"age": 63, "sex": "male", "site": "torso", "pixel_spacing_mm": 0.018,
               "patient_reference": "Patient/p-000187", "encounter_reference": "Encounter/visit-8812"},
    "image": {"content_type": "image/jpeg", "width": 1024, "height": 768, "sha256": None},
    "result": HIGH_RISK_RESULT,
    "rejection": None,
    "error": None,
    "model": TRAINED_MODEL,
    "weights": "trained",
    "deadline_at": None,
    "cancel_reason": None,
}


def _merge(base: Any, changes: Any) -> Any:
    if isinstance(base, dict) and isinstance(changes, dict):
        merged = dict(base)
        for key, value in changes.items():
            merged[key] = _merge(base.get(key), value) if key in base else copy.deepcopy(value)
        return merged
    return copy.deepcopy(changes)


def record_data(**changes: Any) -> dict[str, Any]:
    """The record as JSON-shaped data (what the API answers), with ``changes`` merged in. A
    result's disposition follows from its values by the clinical rules, as the pipeline's
    does, unless ``changes`` give one."""
    data = _merge(copy.deepcopy(_BASE), changes)
    if "weights" not in changes:
        data["weights"] = (data.get("model") or {}).get("weights")
    result_changes = changes.get("result")
    if data.get("result") and not (isinstance(result_changes, dict) and "disposition" in result_changes):
        data["result"].update(disposition_of(data))
    return data


def disposition_of(data: dict[str, Any]) -> dict[str, Any]:
    """``disposition``, ``disposition_reasons`` and ``safety_netting`` of a record given as data."""
    result, inputs, model_data = data["result"], data["inputs"], data.get("model") or {}
    operating_point = model_data.get("operating_point") or {}
    decision = disposition.decide(
        disposition.DispositionInputs(
            probability=result["probability"],
            uncertainty=result["uncertainty"],
            ita_degrees=result["equity"]["ita_degrees"],
            blur_score=result["quality"]["blur_score"],
            coverage=result["segmentation"]["coverage"],
            age=inputs["age"],
            sex=inputs["sex"],
            site=inputs["site"],
            weights=model_data.get("weights"),
            threshold=model_data.get("threshold"),
            rule_out_threshold=operating_point.get("rule_out_threshold"),
            diameter_mm=result["concepts"].get("diameter_mm"),
            blur_threshold=BLUR_THRESHOLD,
            min_coverage=MIN_COVERAGE,
        )
    )
    return {
        "disposition": decision.disposition,
        "disposition_reasons": decision.reasons,
        "safety_netting": decision.safety_netting,
    }


def record(**changes: Any) -> AnalysisRecord:
    """A typed analysis record: a succeeded, trained, high-risk analysis unless ``changes`` say otherwise."""
    return AnalysisRecord.model_validate(record_data(**changes))


def result(**changes: Any) -> AnalysisResult:
    return AnalysisResult.model_validate(_merge(copy.deepcopy(HIGH_RISK_RESULT), changes))


def model(**changes: Any) -> ModelInfo:
    return ModelInfo.model_validate(_merge(copy.deepcopy(TRAINED_MODEL), changes))


# ---------------------------------------------------------------- the named cases

def high_risk_trained() -> AnalysisRecord:
    return record()


def low_risk_untrained() -> AnalysisRecord:
    return record(
        id="6fa459ea-ee8a-3ca4-894e-db77e160355e",
        external_id=None,
        created_at="2025-03-15T14:02:11Z",
        completed_at="2025-03-15T14:02:12Z",
        inputs={"age": None, "sex": "unknown", "site": "lower extremity", "pixel_spacing_mm": None,
                "patient_reference": None, "encounter_reference": None},
        result={
            "diagnosis": "benign", "probability": 0.1204, "uncertainty": 0.0315,
            "tta_probabilities": [0.10, 0.12, 0.17, 0.09, 0.122], "risk_band": "low",
            "segmentation": {"coverage": 0.0711},
            "concepts": {"asymmetry": 0.12, "border": 0.31, "color": 0.22, "diameter_px": 151.0, "diameter_mm": None},
            "equity": {"ita_degrees": 22.3, "skin_group": "intermediate", "bias_warning": False},
            "quality": {"blur_score": 95.0},
        },
        model=UNTRAINED_MODEL,
    )


def bias_warning_dark() -> AnalysisRecord:
    return record(
        id="886313e1-3b8a-5372-9b90-0c9aee199e5d",
        external_id="EHR-77-4411",
        created_at="2025-03-16T11:00:00Z",
        completed_at="2025-03-16T11:00:03Z",
        inputs={"age": 41, "sex": "female", "site": "palms/soles", "pixel_spacing_mm": 0.02,
                "patient_reference": "urn:oid:1.2.36.146.595.217.0.1|EHR-77-4411", "encounter_reference": None},
        result={
            "diagnosis": "melanoma", "probability": 0.6121, "uncertainty": 0.1733,
            "tta_probabilities": [0.41, 0.88, 0.52, 0.79, 0.4555], "risk_band": "medium",
            "segmentation": {"coverage": 0.1225},
            "concepts": {"asymmetry": 0.47, "border": 0.52, "color": 0.77, "diameter_px": 260.0, "diameter_mm": 5.2},
            "equity": {"ita_degrees": -41.7, "skin_group": "dark", "bias_warning": True},
            "quality": {"blur_score": 140.2},
        },
    )


def _without_result(**changes: Any) -> AnalysisRecord:
    data = record_data(**changes)
    data["result"] = None
    return AnalysisRecord.model_validate(data)


def rejected_blurry() -> AnalysisRecord:
    return _without_result(
        id="9c5b94b1-35ad-49bb-b118-8e8fc24abf80",
        external_id="CLINIC-A-000188",
        status="rejected",
        created_at="2025-03-14T10:00:00Z",
        completed_at="2025-03-14T10:00:01Z",
        inputs={"age": 50, "sex": "female", "site": "head/neck", "pixel_spacing_mm": None},
        rejection={"code": "blurry", "detail": "blur score 12.3 is below the minimum 40.0"},
    )


def failed() -> AnalysisRecord:
    return _without_result(
        id="3d813cbb-47fb-32ba-91df-831e1593ac29",
        external_id=None,
        status="failed",
        created_at="2025-03-14T11:00:00Z",
        completed_at="2025-03-14T11:05:00Z",
        inputs={"age": 30, "sex": "male", "site": "torso", "pixel_spacing_mm": None},
        error={"code": "storage_unavailable", "detail": "object store did not answer after 5 attempts"},
    )
