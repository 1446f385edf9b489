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
