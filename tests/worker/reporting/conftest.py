"""Synthetic images and links for the reporting tests (no real patients, no real images); the
records themselves come from tests/factories.py."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from worker.reporting.fhir import BundleLinks

LINKS = BundleLinks(
    report="https://api.example.test/v1/analyses/1b4e28ba-2fa1-11d2-883f-0016d3cca427/report.pdf",
    image="https://s3.example.test/images/1b4e28ba.jpg?X-Amz-Signature=abc",
    overlay="https://s3.example.test/overlays/1b4e28ba.png?X-Amz-Signature=def",
)


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


@pytest.fixture(scope="session")
def lesion_images() -> tuple[bytes, bytes]:
    rgb, lesion = synthetic_lesion()
    return jpeg_bytes(rgb), overlay_png_bytes(rgb, lesion)


@pytest.fixture
def links() -> BundleLinks:
    return LINKS
