"""Diagnosis and risk band from the mean melanoma probability: the rules of shared.clinical.

Kept as the pipeline's entry point so that its callers need not know where the rules live.
"""

from shared.clinical import HIGH_RISK_THRESHOLD, MELANOMA_THRESHOLD, diagnosis, risk_band

__all__ = ["HIGH_RISK_THRESHOLD", "MELANOMA_THRESHOLD", "diagnosis", "risk_band"]
