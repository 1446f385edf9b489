"""The JSON depth scanner every parser of the API runs first (issue 22): exact on valid JSON,
blind to brackets inside strings, fast on a megabyte of brackets, and the bodies that used to
raise RecursionError (a 500) are a 400 that says why. No service is started."""

from __future__ import annotations

import json
import random
import time

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from shared import json_limits
from shared.config import Settings
from shared.json_limits import MAX_JSON_DEPTH, JsonTooDeep, check_depth, json_depth

# The body: a NUL escape nested ~1,000 deep, sent with no API key.
NUL_BOMB = "[" * 1000 + '"\\u0000"' + "]" * 1000


def _depth(value: object) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(item) for item in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(item) for item in value.values()), default=0)
    return 0


@pytest.mark.parametrize(
    "text, depth",
    [
        ("1", 0), ('"x"', 0), ("null", 0), ("[]", 1), ("{}", 1), ('{"a": [1, {"b": []}]}', 4),
        ('"[[[{{{"', 0),  # brackets in a string
        ('["]", "[", {"}": "{"}]', 2),
        ('["\\"[[[", "\\\\"]', 1),  # an escaped quote does not end the string; an escaped backslash does not escape it
        ('["\\\\\\"[["]', 1),  # backslash pair, then an escaped quote
        ("[" * 64 + "]" * 64, 64), ("[" * 65 + "]" * 65, 65), (NUL_BOMB, 1000),
    ],
)
def test_depth_of_documents(text, depth):
    assert json_depth(text) == depth
    assert json_depth(text.encode()) == depth


def test_depth_agrees_with_the_parsed_document_on_random_json():
    rng = random.Random(22)
    tricky = ['"', "\\", "[", "]", "{", "}", "\\\\", '\\"', "\u0000", "é", "x"]

    def words() -> str:
        return "".join(rng.choice(tricky) for _ in range(rng.randint(0, 6)))

    def document(level: int, deepest: int) -> object:
        # One deep spine with a few shallow siblings: deep, yet small.
        if level >= deepest:
            return words()
        children: list[object] = [document(level + 1, deepest)] + [words() for _ in range(rng.randint(0, 2))]
        rng.shuffle(children)
        if rng.random() < 0.5:
            return children
        return {words() + str(i): child for i, child in enumerate(children)}

    for _ in range(2000):
        value = document(0, rng.randint(0, 80))
        text = json.dumps(value, ensure_ascii=rng.random() < 0.5)
        assert json_depth(text) == _depth(value), text


def test_invalid_json_is_measured_up_to_its_first_error():
    assert json_depth("[" * 500) == 500  # unclosed: a parser recurses 500 deep before failing
    assert json_depth('["unterminated [[[[') == 1
    assert json_depth('[[1, 2] "x"]]]]') == 2


def test_check_depth_refuses_only_past_the_limit():
    check_depth("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH)
    with pytest.raises(JsonTooDeep) as refused:
        check_depth(NUL_BOMB)
    assert str(refused.value) == "is nested 1000 levels deep; at most 64 levels are accepted"
    assert isinstance(refused.value, ValueError)  # callers that catch parse errors catch it too


@pytest.mark.parametrize("deep", [1000, 2040, 5000, 100_000])
def test_loads_never_raises_recursion_error(deep):
    with pytest.raises(ValueError):
        json_limits.loads("[" * deep + "]" * deep)
    with pytest.raises(ValueError):
        json_limits.loads('{"a":' * deep + "1" + "}" * deep)
    assert json_limits.loads('{"upload_id": "x", "events": [["a"]]}') == {"upload_id": "x", "events": [["a"]]}


def test_a_megabyte_of_brackets_is_scanned_in_milliseconds():
    wide = b"[" + b"[{},{}]," * 130_000 + b"[]]"
    deep = b"[" * (1 << 20)
    escaped = b'"' + b'\\"' * (1 << 19) + b'"'
    for body, expected in ((wide, 3), (deep, 1 << 20), (escaped, 0)):
        json_depth(body)  # numpy's first import is not what is measured
        started = time.perf_counter()
        assert json_depth(body) == expected
        assert time.perf_counter() - started < 0.25, len(body)


# --- at the edge: before routing and authentication -----------------------------------------


@pytest.fixture(scope="module")
def edge():
    """The app with no lifespan and no service: anything that got past the edge would fail."""
    return TestClient(create_app(Settings(_env_file=None)), raise_server_exceptions=False)


@pytest.mark.parametrize("content_type", ["application/json", "application/merge-patch+json", None])
def test_a_deep_json_body_without_a_key_is_400_before_the_route(edge, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    response = edge.post("/v1/batches", content=NUL_BOMB, headers=headers)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "nested 1000 levels deep" in response.json()["detail"]


def test_a_body_within_the_limit_goes_on_to_authentication():
    app = create_app(Settings(_env_file=None))
    app.state.context = None  # authentication refuses a missing key before it needs one
    shallow = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    response = TestClient(app).post("/v1/batches", content=shallow, headers={"Content-Type": "application/json"})
    assert response.status_code == 401


def test_a_nul_inside_a_deep_body_is_refused_for_its_depth_not_a_crash(edge):
    body = '{"name": ' + "[" * 70 + '"\\u0000"' + "]" * 70 + "}"
    response = edge.post("/v1/batches", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and "71 levels" in response.json()["detail"]
