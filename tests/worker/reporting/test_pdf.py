import io
import re

import pytest
from pypdf import PdfReader

from worker.reporting.pdf import render_report

WATERMARK = "UNTRAINED MODEL — NOT FOR CLINICAL USE"


def pdf_pages(data: bytes) -> list[str]:
    assert data.startswith(b"%PDF-")
    return [page.extract_text() for page in PdfReader(io.BytesIO(data)).pages]


def flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def test_trained_report_shows_key_values_and_no_watermark(high_risk_trained, lesion_images):
    image, overlay = lesion_images
    pages = pdf_pages(render_report(high_risk_trained, image, overlay))
    text = flat(" ".join(pages))
    assert "malignancy probability 0.91 ± 0.04" in text
    assert "Risk band: HIGH" in text
    assert "(light)" in text
    assert high_risk_trained["id"] in text
    assert "CLINIC-A-000187" in text
    assert "2025-03-14T09:26:53Z" in text
    assert high_risk_trained["model"]["scalpel"]["sha256"] in text
    assert high_risk_trained["model"]["fusion"]["sha256"] in text
    assert "scalpel-unet-r34" in text and "1.2.0" in text
    assert "Asymmetry" in text and "0.81 marked" in text
    assert "Refer urgently to dermatology" in text
    assert "UNTRAINED" not in text
    for page in pages:
        assert "not a certified medical device" in flat(page)


def test_untrained_report_has_watermark_on_every_page(low_risk_untrained, lesion_images):
    image, overlay = lesion_images
    pages = pdf_pages(render_report(low_risk_untrained, image, overlay))
    assert len(pages) >= 2
    for page in pages:
        assert WATERMARK in flat(page)
        assert "not a certified medical device" in flat(page)
    assert "Risk band: LOW" in flat(pages[0])


def test_bias_warning_is_in_the_equity_note(bias_warning_dark, lesion_images):
    image, overlay = lesion_images
    text = flat(" ".join(pdf_pages(render_report(bias_warning_dark, image, overlay))))
    assert "Skin tone by ITA: -41.7° (dark). BIAS WARNING" in text
    assert "Risk band: MEDIUM" in text


def test_identical_input_gives_identical_bytes(high_risk_trained, lesion_images):
    image, overlay = lesion_images
    assert render_report(high_risk_trained, image, overlay) == render_report(high_risk_trained, image, overlay)


def test_report_without_images_still_renders(high_risk_trained):
    text = flat(" ".join(pdf_pages(render_report(high_risk_trained, None, None))))
    assert "(not available)" in text
    assert "Risk band: HIGH" in text


@pytest.mark.parametrize(
    ("code", "advice"),
    [
        ("blurry", "Retake the image in focus"),
        ("no_lesion", "lesion centred in the frame"),
        ("unreadable_image", "as a JPEG or PNG file"),
    ],
)
def test_rejected_report_says_why_and_what_to_do(rejected_blurry, code, advice):
    rejected_blurry["rejection"] = {"code": code, "detail": f"gate said {code}"}
    pages = pdf_pages(render_report(rejected_blurry, b"not an image", None))
    text = flat(" ".join(pages))
    assert len(pages) == 1
    assert f"IMAGE REJECTED — {code}" in text
    assert f"gate said {code}" in text
    assert advice in text
    assert "Risk band" not in text
    assert "not a certified medical device" in text


def test_failed_report_is_a_short_system_error_report(failed_analysis):
    pages = pdf_pages(render_report(failed_analysis, None, None))
    text = flat(" ".join(pages))
    assert len(pages) == 1
    assert "SYSTEM ERROR" in text
    assert "storage_unavailable" in text
    assert "not a problem with the image" in text
    assert failed_analysis["id"] in text


def test_untrained_rejected_report_still_carries_the_watermark(rejected_blurry):
    rejected_blurry["model"] = {**rejected_blurry["model"], "weights": "untrained"}
    assert WATERMARK in flat(pdf_pages(render_report(rejected_blurry, None, None))[0])
