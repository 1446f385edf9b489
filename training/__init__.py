"""Training, calibration and evaluation of the Scalpel and Fusion models (docs/MODELS.md).

Nothing here downloads data or weights: encoders start from random weights
(``encoder_weights=None`` / ``pretrained=False``) and data comes from local folders.
"""
