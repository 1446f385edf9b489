"""A row of a batch's archive made into the inputs ``POST /v1/analyses`` takes, or refused
with the 422 that route would have given (issue 25).

A ``manifest.csv`` row is read as the CLI reads its manifests (``shared.manifests``: the same
columns and ISIC's names; age, sex and site through the one vocabulary, so ISIC's spellings
are accepted; an empty cell is "not given"; no ``external_id`` becomes the file's name made
safe); an NDJSON row is a JSON object as ``POST /v1/uploads/submit`` takes an item (numbers
must be JSON numbers). Either is then checked by ``AnalysisInputs``, the route's own model.
"""

from __future__ import annotations

import posixpath
import uuid
from typing import Any

from pydantic import ValidationError

from shared.archives import ManifestRow, RowRefused
from shared.clinical.vocabulary import VocabularyError, normalise_age, normalise_sex, normalise_site
from shared.manifests import external_id_from
from shared.schemas import AnalysisInputs

# Set by the batch, never by a row.
_BATCH_FIELDS = ("batch_id", "priority")
_NUMBER_FIELDS = ("age", "pixel_spacing_mm")


def field_refused(name: str, message: str) -> RowRefused:
    return RowRefused("unprocessable", 422, f"{name}: {message}", [{"field": name, "message": message}])


def _invalid(exc: ValidationError) -> RowRefused:
    """One entry per refused field, worded as the API's 422 (``api.forms.invalid_fields``)."""
    errors = [{"field": ".".join(str(p) for p in err["loc"]) or "row", "message": err["msg"]} for err in exc.errors()]
    return RowRefused("unprocessable", 422, "; ".join(f"{e['field']}: {e['message']}" for e in errors), errors)


def _validated(values: dict[str, Any], batch_id: uuid.UUID) -> AnalysisInputs:
    try:
        return AnalysisInputs.model_validate({**values, "batch_id": batch_id, "priority": "bulk"})
    except ValidationError as exc:
        raise _invalid(exc) from None


def csv_inputs(row: ManifestRow, batch_id: uuid.UUID) -> AnalysisInputs:
    """A ``manifest.csv`` row's inputs; ``RowRefused`` naming each field otherwise."""
    values = {name: value for name, value in row.values.items() if value not in ("", None)}
    try:
        values["age"] = normalise_age(values.get("age"))
    except VocabularyError as exc:
        raise field_refused("age", f"{exc} (leave it empty when unknown)") from None
    for name, normalise in (("sex", normalise_sex), ("site", normalise_site)):
        try:
            values[name] = normalise(values.get(name))
        except VocabularyError as exc:
            raise field_refused(name, str(exc)) from None
    if "external_id" not in values and row.file:
        stem = posixpath.splitext(posixpath.basename(row.file))[0]
        values["external_id"] = external_id_from(stem)
    return _validated(values, batch_id)


def ndjson_inputs(row: ManifestRow, batch_id: uuid.UUID) -> tuple[uuid.UUID, AnalysisInputs]:
    """An NDJSON row's upload id and inputs; ``RowRefused`` naming each field otherwise."""
    values = dict(row.values)
    raw_id = values.pop("upload_id", None)
    try:
        upload_id = uuid.UUID(raw_id) if isinstance(raw_id, str) else None
    except ValueError:
        upload_id = None
    if upload_id is None:
        raise field_refused("upload_id", "is required: the id of a direct upload (POST /v1/uploads)")
    for name in _BATCH_FIELDS:
        if name in values:
            raise field_refused(name, "is set by the batch; leave it out of the row")
    for name in _NUMBER_FIELDS:
        if isinstance(values.get(name), bool | str):
            raise field_refused(name, "must be a JSON number")
    values = {name: value for name, value in values.items() if value not in ("", None)}
    return upload_id, _validated(values, batch_id)
