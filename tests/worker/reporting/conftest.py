"""Synthetic analyses and images for the reporting tests (no real patients, no real images)."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

SCALPEL_SHA = "a3f1c2d4e5b60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9"
FUSION_SHA = "0b1c2d3e4f5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f"

LINKS = {
    "report": "https://api.example.test/v1/analyses/1b4e28ba-2fa1-11d2-883f-0016d3cca427/report.pdf",
    "image": "https://s3.example.test/images/1b4e28ba.jpg?X-Amz-Signature=abc",
    "overlay": "https://s3.example.test/overlays/1b4e28ba.png?X-Amz-Signature=def",
    "self": "https://api.example.test/v1/analyses/1b4e28ba-2fa1-11d2-883f-0016d3cca427",
}


def synthetic_lesion(size: int = 384, skin=(224, 182, 160), seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Skin-coloured field with noise and an irregular dark-brown blob: (RGB uint8, lesion mask)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    field = np.empty((size, size, 3), dtype=np.float32)
    field[:] = skin
    field += rng.normal(0, 6, field.shape)
    angle = np.arctan2(yy - size / 2, xx - size / 2)
    radius = np.hypot(yy - size / 2, xx - size / 2)
    edge = size * (0.22 + 0.04 * np.sin(3 * angle) + 0.02 * np.cos(7 * angle))
    lesion = radius < edge
    shade = np.clip(radius / edge, 0, 1)[..., None]
    brown = np.array([70, 40, 28], dtype=np.float32) * (0.6 + 0.6 * shade)
    field[lesion] = brown[lesion]
    return np.clip(field, 0, 255).astype(np.uint8), lesion


def jpeg_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def overlay_png_bytes(rgb: np.ndarray, lesion: np.ndarray) -> bytes:
    """The photograph with the lesion tinted and its outline drawn in green, as PNG."""
    picture = Image.fromarray(rgb).convert("RGBA")
    tint = np.zeros((*lesion.shape, 4), dtype=np.uint8)
    tint[lesion] = (0, 200, 255, 70)
    ys, xs = np.nonzero(lesion)
    layer = Image.fromarray(tint, "RGBA")
    ImageDraw.Draw(layer).rectangle((xs.min(), ys.min(), xs.max(), ys.max()), outline=(0, 230, 0, 255), width=3)
    composite = Image.alpha_composite(picture, layer).convert("RGB")
    buf = io.BytesIO()
    composite.save(buf, format="PNG")
    return buf.getvalue()


TRAINED_MODEL = {
    "segmenter": "unet",
    "weights": "trained",
    "scalpel": {"name": "scalpel-unet-r34", "version": "1.2.0", "sha256": SCALPEL_SHA},
    "fusion": {"name": "fusion-effnet-b3", "version": "2.0.1", "sha256": FUSION_SHA, "seed": 42},
}
UNTRAINED_MODEL = {
    "segmenter": "classical",
    "weights": "untrained",
    "scalpel": None,
    "fusion": {"name": "fusion-effnet-b3", "version": "2.0.1", "sha256": None, "seed": 1234},
}

HIGH_RISK_TRAINED = {
    "id": "1b4e28ba-2fa1-11d2-883f-0016d3cca427",
    "external_id": "CLINIC-A-000187",
    "status": "succeeded",
    "created_at": "2025-03-14T09:26:53Z",
    "completed_at": "2025-03-14T09:26:55.120Z",
    "inputs": {"age": 63, "sex": "male", "site": "torso", "pixel_spacing_mm": 0.018},
    "result": {
        "diagnosis": "melanoma",
        "probability": 0.9132,
        "uncertainty": 0.0417,
        "tta_probabilities": [0.95, 0.93, 0.88, 0.86, 0.9461],
        "risk_band": "high",
        "segmentation": {"coverage": 0.1842},
        "concepts": {"asymmetry": 0.81, "border": 0.66, "color": 0.58, "diameter_px": 412.0, "diameter_mm": 7.416},
        "equity": {"ita_degrees": 38.6, "skin_group": "light", "bias_warning": False},
        "quality": {"blur_score": 182.4},
    },
    "rejection": None,
    "error": None,
    "model": TRAINED_MODEL,
}

LOW_RISK_UNTRAINED = {
    "id": "6fa459ea-ee8a-3ca4-894e-db77e160355e",
    "external_id": None,
    "status": "succeeded",
    "created_at": "2025-03-15T14:02:11+00:00",
    "completed_at": "2025-03-15T14:02:12+00:00",
    "inputs": {"age": None, "sex": "unknown", "site": "lower extremity", "pixel_spacing_mm": None},
    "result": {
        "diagnosis": "benign",
        "probability": 0.1204,
        "uncertainty": 0.0315,
        "tta_probabilities": [0.10, 0.12, 0.17, 0.09, 0.122],
        "risk_band": "low",
        "segmentation": {"coverage": 0.0711},
        "concepts": {"asymmetry": 0.12, "border": 0.31, "color": 0.22, "diameter_px": 151.0, "diameter_mm": None},
        "equity": {"ita_degrees": 22.3, "skin_group": "intermediate", "bias_warning": False},
        "quality": {"blur_score": 95.0},
    },
    "rejection": None,
    "error": None,
    "model": UNTRAINED_MODEL,
}

BIAS_WARNING_DARK = {
    "id": "886313e1-3b8a-5372-9b90-0c9aee199e5d",
    "external_id": "EHR-77-4411",
    "status": "succeeded",
    "created_at": "2025-03-16T11:00:00Z",
    "completed_at": "2025-03-16T11:00:03Z",
    "inputs": {"age": 41, "sex": "female", "site": "palms/soles", "pixel_spacing_mm": 0.02},
    "result": {
        "diagnosis": "melanoma",
        "probability": 0.6121,
        "uncertainty": 0.1733,
        "tta_probabilities": [0.41, 0.88, 0.52, 0.79, 0.4555],
        "risk_band": "medium",
        "segmentation": {"coverage": 0.1225},
        "concepts": {"asymmetry": 0.47, "border": 0.52, "color": 0.77, "diameter_px": 260.0, "diameter_mm": 5.2},
        "equity": {"ita_degrees": -41.7, "skin_group": "dark", "bias_warning": True},
        "quality": {"blur_score": 140.2},
    },
    "rejection": None,
    "error": None,
    "model": TRAINED_MODEL,
}

REJECTED_BLURRY = {
    "id": "9c5b94b1-35ad-49bb-b118-8e8fc24abf80",
    "external_id": "CLINIC-A-000188",
    "status": "rejected",
    "created_at": "2025-03-14T10:00:00Z",
    "completed_at": "2025-03-14T10:00:01Z",
    "inputs": {"age": 50, "sex": "female", "site": "head/neck", "pixel_spacing_mm": None},
    "result": None,
    "rejection": {"code": "blurry", "detail": "blur score 12.3 is below the minimum 40.0"},
    "error": None,
    "model": TRAINED_MODEL,
}

FAILED = {
    "id": "3d813cbb-47fb-32ba-91df-831e1593ac29",
    "external_id": None,
    "status": "failed",
    "created_at": "2025-03-14T11:00:00Z",
    "completed_at": "2025-03-14T11:05:00Z",
    "inputs": {"age": 30, "sex": "male", "site": "torso", "pixel_spacing_mm": None},
    "result": None,
    "rejection": None,
    "error": {"code": "storage_unavailable", "detail": "object store did not answer after 5 attempts"},
    "model": TRAINED_MODEL,
}


@pytest.fixture
def high_risk_trained() -> dict:
    return copy.deepcopy(HIGH_RISK_TRAINED)


@pytest.fixture
def low_risk_untrained() -> dict:
    return copy.deepcopy(LOW_RISK_UNTRAINED)


@pytest.fixture
def bias_warning_dark() -> dict:
    return copy.deepcopy(BIAS_WARNING_DARK)


@pytest.fixture
def rejected_blurry() -> dict:
    return copy.deepcopy(REJECTED_BLURRY)


@pytest.fixture
def failed_analysis() -> dict:
    return copy.deepcopy(FAILED)


@pytest.fixture(scope="session")
def lesion_images() -> tuple[bytes, bytes]:
    rgb, lesion = synthetic_lesion()
    return jpeg_bytes(rgb), overlay_png_bytes(rgb, lesion)


@pytest.fixture
def links() -> dict:
    return dict(LINKS)
