import io
import re

import pytest
from pypdf import PdfReader

from shared import clinical
from shared.clinical import disposition
from shared.schemas.analyses import AnalysisRecord
from tests.factories import (
    FUSION_SHA,
    SCALPEL_SHA,
    bias_warning_dark,
    failed,
    high_risk_trained,
    low_risk_untrained,
    record,
    rejected_blurry,
)
from worker.reporting.pdf import render_report

WATERMARK = "UNTRAINED MODEL — NOT FOR CLINICAL USE"


def pdf_pages(data: bytes) -> list[str]:
    assert data.startswith(b"%PDF-")
    return [page.extract_text() for page in PdfReader(io.BytesIO(data)).pages]


def flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def with_weights(analysis: AnalysisRecord, weights: str) -> AnalysisRecord:
    assert analysis.model is not None
    return analysis.model_copy(update={"model": analysis.model.model_copy(update={"weights": weights})})


def test_trained_report_shows_key_values_and_no_watermark(lesion_images):
    analysis = high_risk_trained()
    image, overlay = lesion_images
    pages = pdf_pages(render_report(analysis, image, overlay))
    text = flat(" ".join(pages))
    assert "malignancy probability 0.91 ± 0.04" in text
    assert "Risk band: HIGH" in text
    assert "(light)" in text
    assert str(analysis.id) in text
    assert "CLINIC-A-000187" in text
    assert "2025-03-14T09:26:53Z" in text
    assert SCALPEL_SHA in text
    assert FUSION_SHA in text
    assert "scalpel-unet-r34" in text and "1.2.0" in text
    assert "Asymmetry" in text and "0.81 marked" in text
    assert "Refer urgently to dermatology" in text
    first = flat(pages[0])
    box = "Disposition: Urgent referral Reason: the melanoma probability reaches the model's high-risk operating point."
    assert box in first
    assert first.index("Disposition: Urgent referral") < first.index("Risk band: HIGH"), "the box comes first"
    assert "UNTRAINED" not in text
    for page in pages:
        assert "not a certified medical device" in flat(page)


def test_untrained_report_has_watermark_on_every_page(lesion_images):
    image, overlay = lesion_images
    pages = pdf_pages(render_report(low_risk_untrained(), image, overlay))
    assert len(pages) >= 2
    for page in pages:
        assert WATERMARK in flat(page)
        assert "not a certified medical device" in flat(page)
    first = flat(pages[0])
    assert "Risk band: LOW" in first
    assert f"Disposition: Clinician review {clinical.NOT_ASSESSABLE}" in first
    assert "Reason: the model's weights are not trained on clinical images: nothing can be assessed." in first
    assert "uncertainty not assessable (weights not trained)" in first
    text = flat(" ".join(pages)).lower()
    for phrase in ("no concern", "no ai-flagged concern", "uncertainty low", "uncertainty: low", "low uncertainty",
                   "routine", "urgent"):
        assert phrase not in text, phrase


def test_bias_warning_is_in_the_equity_note(lesion_images):
    image, overlay = lesion_images
    text = flat(" ".join(pdf_pages(render_report(bias_warning_dark(), image, overlay))))
    assert "Skin tone by ITA: -41.7° (dark). BIAS WARNING" in text
    assert "Risk band: MEDIUM" in text


def test_identical_input_gives_identical_bytes(lesion_images):
    image, overlay = lesion_images
    assert render_report(high_risk_trained(), image, overlay) == render_report(high_risk_trained(), image, overlay)


def test_the_creation_date_is_when_the_analysis_finished():
    """Issue 25: reportlab's invariant mode dated every report 2000-01-01."""
    analysis = high_risk_trained()
    info = PdfReader(io.BytesIO(render_report(analysis, None, None))).metadata
    finished = analysis.completed_at
    assert finished is not None
    assert info.creation_date.isoformat().startswith(finished[:19])  # 2025-03-14T09:26:55
    assert info.modification_date == info.creation_date
    unfinished = analysis.model_copy(update={"completed_at": None})
    assert PdfReader(io.BytesIO(render_report(unfinished, None, None))).metadata.creation_date.isoformat().startswith(
        analysis.created_at[:19])


def test_report_without_images_still_renders():
    text = flat(" ".join(pdf_pages(render_report(high_risk_trained(), None, None))))
    assert "(not available)" in text
    assert "Risk band: HIGH" in text


@pytest.mark.parametrize(
    ("code", "advice"),
    [
        ("blurry", "Retake the photo in focus"),
        ("no_lesion", "lesion centred in the frame"),
        ("unreadable_image", "as a JPEG or PNG file"),
    ],
)
def test_rejected_report_says_why_and_what_to_do(code, advice):
    rejected = record(status="rejected", result=None, rejection={"code": code, "detail": f"gate said {code}"})
    pages = pdf_pages(render_report(rejected, b"not an image", None))
    text = flat(" ".join(pages))
    assert len(pages) == 1
    assert f"IMAGE REJECTED — {code}" in text
    assert f"gate said {code}" in text
    assert advice in text
    assert "Risk band" not in text
    assert "not a certified medical device" in text


def test_failed_report_is_a_short_system_error_report():
    failed_analysis = failed()
    pages = pdf_pages(render_report(failed_analysis, None, None))
    text = flat(" ".join(pages))
    assert len(pages) == 1
    assert "SYSTEM ERROR" in text
    assert "storage_unavailable" in text
    assert "not a problem with the photo" in text
    assert str(failed_analysis.id) in text


def test_untrained_rejected_report_still_carries_the_watermark():
    rejected = with_weights(rejected_blurry(), "untrained")
    assert WATERMARK in flat(pdf_pages(render_report(rejected, None, None))[0])


def _page_colours(data: bytes, page: int = 0) -> bytes:
    return PdfReader(io.BytesIO(data)).pages[page].get_contents().get_data()


def _fill(hex_colour: str) -> bytes:
    from reportlab.lib import colors
    from reportlab.lib.rl_accel import fp_str

    colour = colors.HexColor(hex_colour)
    return f"{fp_str(colour.red, colour.green, colour.blue)} rg".encode()


def test_untrained_band_is_grey_where_a_trained_one_is_green(lesion_images):
    image, overlay = lesion_images
    untrained_analysis = low_risk_untrained()
    trained = with_weights(untrained_analysis, "trained")
    green, pale_green = _fill("#2e7d32"), _fill("#e8f5e9")
    assert green in _page_colours(render_report(trained, image, overlay))
    assert pale_green in _page_colours(render_report(trained, image, overlay))
    untrained = _page_colours(render_report(untrained_analysis, image, overlay))
    assert green not in untrained and pale_green not in untrained
    assert _fill("#757575") in untrained
    text = flat(" ".join(pdf_pages(render_report(untrained_analysis, image, overlay))))
    assert "Model weights: untrained. UNTRAINED MODEL — output is not clinically meaningful" in text


def test_synthetic_weights_are_not_clinically_meaningful_either(lesion_images):
    image, overlay = lesion_images
    synthetic = record(model={"weights": "synthetic"})
    pages = pdf_pages(render_report(synthetic, image, overlay))
    for page in pages:
        assert "SYNTHETIC-DATA MODEL — NOT FOR CLINICAL USE" in flat(page)
    text = flat(" ".join(pages))
    assert "MODEL TRAINED ON SYNTHETIC IMAGES ONLY — output is not clinically meaningful" in text
    assert "Do not act on this output" in text
    assert _fill("#ffebee") in _page_colours(render_report(high_risk_trained(), image, overlay))
    assert _fill("#ffebee") not in _page_colours(render_report(synthetic, image, overlay))


def test_a_model_threshold_moves_the_printed_zones(lesion_images):
    image, overlay = lesion_images
    tuned = record(model={"threshold": 0.3})
    text = flat(" ".join(pdf_pages(render_report(tuned, image, overlay))))
    assert "Zones: low 0.30 or below, medium 0.30–0.80, high > 0.80; threshold 0.30 set with the model." in text


def test_the_report_says_how_the_operating_point_was_chosen(lesion_images):
    image, overlay = lesion_images
    point = {"threshold": 0.31, "temperature": 1.0, "target_sensitivity": 0.95, "chosen_on": "validation"}
    chosen = record(model={"threshold": 0.31, "operating_point": point,
                           "training_data": "ISIC 2020 training set, 5 folds grouped by patient"})
    text = flat(" ".join(pdf_pages(render_report(chosen, image, overlay))))
    assert "threshold 0.31 chosen for sensitivity 0.95 on validation" in text
    assert "ISIC 2020 training set, 5 folds grouped by patient" in text


def test_a_routine_report_boxes_the_safety_netting(lesion_images):
    image, overlay = lesion_images
    routine = record(result={"probability": 0.03, "uncertainty": 0.01, "diagnosis": "benign", "risk_band": "low",
                          "concepts": {"diameter_mm": 4.1}})
    data = render_report(routine, image, overlay)
    first = flat(pdf_pages(data)[0])
    assert "Disposition: Routine (safety-netting advice)" in first
    assert f"Safety netting: {disposition.SAFETY_NETTING}" in first
    assert _fill("#e8f5e9") in _page_colours(data)


def test_the_provenance_shows_both_operating_points(lesion_images):
    image, overlay = lesion_images
    default = flat(" ".join(pdf_pages(render_report(high_risk_trained(), image, overlay))))
    assert (
        "high-risk operating point 0.80 (referral above it); rule-out threshold 0.10 (default: the model has no "
        "calibrated rule-out threshold)"
    ) in default
    point = {"threshold": 0.86, "temperature": 1.0, "target_sensitivity": 0.95, "chosen_on": "validation",
             "rule_out_threshold": 0.04, "rule_out_sensitivity": 0.97}
    chosen = record(model={"threshold": 0.86, "operating_point": point})
    text = flat(" ".join(pdf_pages(render_report(chosen, image, overlay))))
    assert "high-risk operating point 0.86 (referral above it); rule-out threshold 0.04 chosen for sensitivity 0.97 " \
        "on validation" in text


def test_the_provenance_links_a_registered_models_card(lesion_images):
    """Issue 24: a model from the registry names its model card (the API path) in the provenance."""
    image, overlay = lesion_images
    registry_id = "6ab66933-1eca-462e-afae-8b797825cffb"
    registered = record(model={"fusion": {"registry_id": registry_id}})
    text = flat(" ".join(pdf_pages(render_report(registered, image, overlay))))
    assert f"Model card (classifier): /v1/models/{registry_id}/card" in text
    unregistered = flat(" ".join(pdf_pages(render_report(high_risk_trained(), image, overlay))))
    assert "Model card" not in unregistered


def test_a_large_photo_is_embedded_at_640_px_as_binary_jpeg():
    """Issue 27: the pictures are downscaled to 640 px on the long side (OpenCV area averaging,
    not Pillow's thumbnail) and the streams are binary, not ASCII85: the same pictures as
    before, a smaller file, a fraction of the CPU."""
    import numpy as np
    from PIL import Image

    from worker.pipeline.overlay import overlay_jpeg
    from worker.pipeline.synthetic import encode_jpeg, make_lesion

    lesion = make_lesion(seed=3, size=(768, 1024))
    photo = encode_jpeg(lesion.image)
    data = render_report(high_risk_trained(), photo, overlay_jpeg(lesion.image, lesion.mask))
    assert b"/ASCII85Decode" not in data
    embedded = [picture.image for page in PdfReader(io.BytesIO(data)).pages for picture in page.images]
    assert [picture.size for picture in embedded] == [(640, 480), (640, 480)]
    expected = Image.open(io.BytesIO(photo)).convert("RGB")
    expected.thumbnail((640, 640))
    differences = [np.abs(np.asarray(shown.convert("RGB"), dtype=np.float32) - np.asarray(expected, dtype=np.float32))
                   for shown in embedded]
    # Pillow's own thumbnail, as embedded before, differed from this reference by 1.8 (JPEG q88).
    assert min(d.mean() for d in differences) < 2.5, "one picture is the photo, downscaled"
