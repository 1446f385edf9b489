"""api.forms: the submission's fields read and refused before any work, each refusal a 422
that names the field (pure unit tests; the routes' end-to-end tests send them over HTTP)."""

from __future__ import annotations

import uuid

import pytest

from api import forms
from api.problems import Unprocessable
from shared.clinical.vocabulary import AGE_MAX


def _refused_field(call) -> str:
    with pytest.raises(Unprocessable) as refused:
        call()
    assert refused.value.errors
    return refused.value.errors[0]["field"]


def test_inputs_leave_empty_fields_out_and_name_each_refused_one():
    inputs = forms.parse_inputs({"age": "54", "sex": "female", "site": "", "external_id": None})
    assert (inputs.age, inputs.sex, inputs.site) == (54, "female", "unknown")
    assert _refused_field(lambda: forms.parse_inputs({"age": str(AGE_MAX + 1)})) == "age"
    assert _refused_field(lambda: forms.parse_inputs({"colour": "red"})) == "colour"


def test_the_deadline_comes_from_the_header_or_the_field_never_both():
    assert forms.cancel_after("90s", None, 3600) == 90.0
    assert forms.cancel_after(None, "5m", 3600) == 300.0
    assert forms.cancel_after(None, "", 3600) is None
    assert _refused_field(lambda: forms.cancel_after("90s", "5m", 3600)) == "cancel_after"
    assert _refused_field(lambda: forms.cancel_after("2h", None, 3600)) == "Cancel-After"
    assert _refused_field(lambda: forms.cancel_after(None, "soon", 3600)) == "cancel_after"


def test_an_upload_id_is_a_uuid():
    ident = uuid.uuid4()
    assert forms.upload_id(str(ident)) == ident
    assert _refused_field(lambda: forms.upload_id("upload-1")) == "upload_id"


def test_prefer_wait_is_a_hint_capped_at_a_minute():
    assert forms.preferred_wait("respond-async, wait=3600") == forms.MAX_PREFER_WAIT == 60
    assert forms.preferred_wait('wait="5"') == 5
    assert forms.preferred_wait("wait=abc") is None and forms.preferred_wait(None) is None


def test_the_documented_form_has_every_input_and_the_deadline():
    schema = forms.SUBMIT_SCHEMA["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert {"image", "upload_id", "age", "sex", "site", "webhook_url", "cancel_after"} <= set(schema)
    assert schema["age"]["maximum"] == AGE_MAX


def test_pixel_spacing_is_bounded_to_a_plausible_range():
    """Issue 25: 1e-320 mm per pixel was accepted."""
    assert forms.parse_inputs({"pixel_spacing_mm": "0.05"}).pixel_spacing_mm == 0.05
    assert forms.parse_inputs({"pixel_spacing_mm": "0.001"}).pixel_spacing_mm == 0.001
    assert forms.parse_inputs({"pixel_spacing_mm": "10"}).pixel_spacing_mm == 10.0
    for implausible in ("1e-320", "0", "0.0009", "10.5", "-1", "nan", "inf"):
        assert _refused_field(lambda v=implausible: forms.parse_inputs({"pixel_spacing_mm": v})) == "pixel_spacing_mm"


@pytest.mark.parametrize("external_id", ["../../etc/passwd", "a/b", "a\\b", "..\\x", "line\nbreak", "tab\there",
                                         "nul\x00", "-2+3", "", "x" * 201, "space here", "é"])
def test_an_external_id_holds_no_path_separator_or_control_character(external_id):
    """Issue 25: "../../etc/passwd" was accepted, and the ISIC export named images after it."""
    if external_id == "":
        assert forms.parse_inputs({"external_id": external_id}).external_id is None  # empty: not sent
        return
    assert _refused_field(lambda: forms.parse_inputs({"external_id": external_id})) == "external_id"


def test_bulk_submissions_check_the_same_bounds():
    from pydantic import ValidationError

    from api.routes.uploads import UploadSubmission

    ident = str(uuid.uuid4())
    assert UploadSubmission.model_validate({"upload_id": ident, "pixel_spacing_mm": 0.05}).pixel_spacing_mm == 0.05
    for fields in ({"pixel_spacing_mm": 1e-320}, {"pixel_spacing_mm": 11}, {"external_id": "../../etc/passwd"}):
        with pytest.raises(ValidationError) as refused:
            UploadSubmission.model_validate({"upload_id": ident, **fields})
        assert refused.value.errors()[0]["loc"] == tuple(fields)


def test_ordinary_external_ids_are_accepted():
    for external_id in ("ISIC_0000001", "visit-8812", "MRN:0042.3", "x" * 200, "..", "case_7"):
        assert forms.parse_inputs({"external_id": external_id}).external_id == external_id
