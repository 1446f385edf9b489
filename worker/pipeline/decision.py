"""Diagnosis and risk band from the mean melanoma probability (DESIGN.md thresholds)."""

MELANOMA_THRESHOLD = 0.5
HIGH_RISK_THRESHOLD = 0.8


def diagnosis(probability: float) -> str:
    return "melanoma" if probability > MELANOMA_THRESHOLD else "benign"


def risk_band(probability: float) -> str:
    if probability > HIGH_RISK_THRESHOLD:
        return "high"
    if probability > MELANOMA_THRESHOLD:
        return "medium"
    return "low"
