"""Patient and encounter references as clients give them (issue 23): one parser for the API's
form and JSON fields, direct uploads' submit items, CLI manifests and the FHIR bundle.

A reference is one of three spellings:

- a relative FHIR reference ``Patient/123`` (``Encounter/…`` for an encounter): the type the
  field expects, then a FHIR id (``[A-Za-z0-9\\-\\.]{1,64}``), optionally ``/_history/<id>``;
- an absolute reference ``https://ehr.example.org/fhir/Patient/123``: an http(s) URL whose
  path ends in the same ``Type/id`` (so the receiving EHR can resolve it);
- a business identifier ``system|value``: ``system`` an absolute URI (``urn:oid:…``,
  ``https://hospital.example.org/mrn``), ``value`` non-empty; the FHIR token syntax.

No whitespace at either end, no control characters anywhere, no whitespace in a URL or a
system; at most ``MAX_LENGTH`` characters; ``reference_pattern`` says all of it as one regular
expression (the OpenAPI ``pattern``). What is refused raises ``InvalidReference`` (a
``ValueError``) with a message that says which spellings are accepted and never quotes the
refused text (it may identify a patient, and clients may log the problems they get). Nothing
here imports a FHIR library: ``FhirReference.as_fhir()`` is the plain JSON of a FHIR
``Reference``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

ReferenceType = Literal["Patient", "Encounter"]
MAX_LENGTH = 512
FHIR_ID = r"[A-Za-z0-9\-\.]{1,64}"
_CONTROL_CHARS = r"\x00-\x1f\x7f-\x9f\u2028\u2029"


def reference_pattern(expected: ReferenceType) -> str:
    """Every accepted spelling as one regular expression (the OpenAPI document's ``pattern``;
    ``parse_reference`` accepts exactly what it matches, and says why when it does not)."""
    tail = rf"{expected}/{FHIR_ID}(/_history/{FHIR_ID})?"
    absolute = rf"https?://[A-Za-z0-9\-\.]+(:[0-9]{{1,5}})?(/[^\s?#|{_CONTROL_CHARS}]*)?/{tail}"
    edge = rf"[^\s|{_CONTROL_CHARS}]"
    identifier = rf"[A-Za-z][A-Za-z0-9+\.\-]*:{edge}+\|{edge}([^|{_CONTROL_CHARS}]*{edge})?"
    return rf"^({tail}|{absolute}|{identifier})$"


_PATTERNS = {kind: re.compile(reference_pattern(kind)) for kind in ("Patient", "Encounter")}
_RELATIVE = re.compile(rf"^(?P<type>[A-Z][A-Za-z]{{1,63}})/(?P<id>{FHIR_ID})(?:/_history/(?P<version>{FHIR_ID}))?$")
# The tail of an absolute RESTful reference: .../Type/id[/_history/version]
_ABSOLUTE_TAIL = re.compile(
    rf"/(?P<type>[A-Z][A-Za-z]{{1,63}})/(?P<id>{FHIR_ID})(?:/_history/(?P<version>{FHIR_ID}))?$"
)
# RFC 3986 scheme, then at least one character of the rest (urn:oid:1.2.3, https://host/path).
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:\S+$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class InvalidReference(ValueError):
    """A reference in none of the accepted spellings; the message says what is accepted."""


@dataclass(frozen=True)
class FhirReference:
    """A parsed reference: ``kind`` says which spelling it was given in."""

    kind: Literal["relative", "absolute", "identifier"]
    resource_type: ReferenceType
    text: str  # as given (and stored): the relative or absolute reference, or system|value
    system: str | None = None
    value: str | None = None

    def as_fhir(self) -> dict[str, Any]:
        """A FHIR Reference: ``reference`` for a literal reference, ``identifier`` for a
        business identifier (a logical reference), each with its ``type``."""
        if self.kind == "identifier":
            return {"type": self.resource_type, "identifier": {"system": self.system, "value": self.value}}
        return {"reference": self.text, "type": self.resource_type}


def _spellings(expected: ReferenceType) -> str:
    return (
        f"give a FHIR reference ({expected}/<id>, the id 1-64 letters, digits, '-' or '.'), an absolute "
        f"http(s) URL ending in {expected}/<id>, or an identifier as system|value (system a URI such as "
        "urn:oid:1.2.3 or https://hospital.example.org/mrn)"
    )


def parse_reference(raw: str, expected: ReferenceType) -> FhirReference:
    """``raw`` as a reference to a resource of type ``expected``; InvalidReference otherwise."""
    if not isinstance(raw, str):
        raise InvalidReference(f"must be text; {_spellings(expected)}")
    text = raw
    if not text:
        raise InvalidReference(f"is empty; {_spellings(expected)}")
    if len(text) > MAX_LENGTH:
        raise InvalidReference(f"is longer than {MAX_LENGTH} characters")
    if _CONTROL.search(text):
        raise InvalidReference("holds a control character (a line break, tab or similar)")
    if text != text.strip():
        raise InvalidReference("starts or ends with whitespace")
    if "|" in text:
        parsed = _identifier(text, expected)
    elif "://" in text:
        parsed = _absolute(text, expected)
    else:
        match = _RELATIVE.match(text)
        if match is None:
            raise InvalidReference(f"is not a reference; {_spellings(expected)}")
        _check_type(match.group("type"), expected)
        parsed = FhirReference("relative", expected, text)
    # The documented pattern has the last word: nothing outside it is accepted (an absolute
    # URL's host is letters, digits, '-' and '.', with an optional port).
    if not _PATTERNS[expected].fullmatch(text):
        raise InvalidReference(f"is not a reference; {_spellings(expected)}")
    return parsed


def _identifier(text: str, expected: ReferenceType) -> FhirReference:
    system, _, value = text.partition("|")
    if "|" in value:
        raise InvalidReference("an identifier is system|value with one '|'")
    if not system:
        raise InvalidReference(f"an identifier needs its system before the '|'; {_spellings(expected)}")
    if not _URI.match(system):
        raise InvalidReference(
            "the identifier's system (before the '|') is not a URI, such as urn:oid:1.2.3 or "
            "https://hospital.example.org/mrn"
        )
    if not value.strip():
        raise InvalidReference("an identifier needs a value after the '|'")
    if value != value.strip():
        raise InvalidReference("the identifier's value starts or ends with whitespace")
    return FhirReference("identifier", expected, text, system=system, value=value)


def _absolute(text: str, expected: ReferenceType) -> FhirReference:
    try:
        parts = urlsplit(text)
    except ValueError:
        raise InvalidReference(f"is not an http(s) URL; {_spellings(expected)}") from None
    if parts.scheme not in ("http", "https") or not parts.netloc or any(c.isspace() for c in text):
        raise InvalidReference(f"is not an http(s) URL without spaces; {_spellings(expected)}")
    if parts.query or parts.fragment:
        raise InvalidReference("an absolute reference has no query or fragment")
    match = _ABSOLUTE_TAIL.search(parts.path)
    if match is None:
        raise InvalidReference(f"an absolute reference ends in {expected}/<id> (a FHIR server's RESTful URL)")
    _check_type(match.group("type"), expected)
    return FhirReference("absolute", expected, text)


def _check_type(found: str, expected: ReferenceType) -> None:
    if found != expected:
        raise InvalidReference(f"refers to a {found}; this field takes a {expected} reference")


def patient_reference(raw: str) -> str:
    """``raw`` if it is a valid patient reference (a pydantic validator)."""
    parse_reference(raw, "Patient")
    return raw


def encounter_reference(raw: str) -> str:
    """``raw`` if it is a valid encounter reference (a pydantic validator)."""
    parse_reference(raw, "Encounter")
    return raw
