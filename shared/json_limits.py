"""How deep a JSON document nests, measured on its bytes before any parser sees it.

Python's ``json`` module parses nested arrays and objects by recursion: a body of a few
kilobytes nested a thousand levels deep raises ``RecursionError`` (not ``ValueError``), and
so does any recursive walk of what it returns. Every JSON parser of the API checks the depth
first (``MAX_JSON_DEPTH``, 64 levels; real documents here are 3–4 deep) and refuses deeper
input with a 4xx that says so (docs/API_HARDENING.md, issue 22).

The scan is a handful of C-level passes over the bytes, never a Python loop per character:
escaped backslashes and quotes are removed, strings are cut out at the remaining quotes,
everything but brackets is deleted, and the deepest prefix is read from a running sum
(numpy's, for documents with many brackets: 1 MiB of brackets in a few milliseconds). For
valid JSON the answer is exact; for invalid JSON it is exact up to the first error, which is
as far as a parser would recurse before failing.
"""

from __future__ import annotations

import json
import operator
from itertools import accumulate
from typing import Any

MAX_JSON_DEPTH = 64

# Every byte but the four brackets, for bytes.translate's delete argument.
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
# Opening brackets count 2, closing 0: the depth after i brackets is (sum of the first i) - i.
_WEIGHTS = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")
# As signed bytes: opening +1, closing -1 (0xff), for numpy's running sum.
_SIGNS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_FEW_BRACKETS = 4096  # below this the standard library's running sum is as fast as numpy's


class JsonTooDeep(ValueError):
    """The document nests deeper than allowed (a ``ValueError``, as a parse failure is)."""

    def __init__(self, depth: int, limit: int):
        super().__init__(f"is nested {depth} levels deep; at most {limit} levels are accepted")
        self.depth, self.limit = depth, limit


def json_depth(data: bytes | bytearray | str) -> int:
    """The deepest nesting of arrays and objects in ``data`` (0 for a scalar), ignoring
    brackets inside strings. Exact for valid JSON; for invalid JSON, exact up to the first
    error."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if b"[" not in raw and b"{" not in raw:
        return 0
    if b"\\" in raw:
        # Runs of backslashes pair up from the left, as JSON escapes do; a backslash left
        # before a quote then escapes it. Neither changes which quotes delimit strings.
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    if b'"' in raw:
        raw = b"".join(raw.split(b'"')[0::2])  # outside strings (an unclosed one is dropped)
    brackets = raw.translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    if len(brackets) <= _FEW_BRACKETS:
        depths = map(operator.sub, accumulate(brackets.translate(_WEIGHTS)), range(1, len(brackets) + 1))
        return max(0, max(depths))
    import numpy  # only for large documents: the API does not load it otherwise

    signs = numpy.frombuffer(brackets.translate(_SIGNS), dtype=numpy.int8)
    return max(0, int(numpy.cumsum(signs, dtype=numpy.int64).max()))


def check_depth(data: bytes | bytearray | str, limit: int = MAX_JSON_DEPTH) -> None:
    """Raise ``JsonTooDeep`` when ``data`` nests deeper than ``limit``."""
    # A document with no more brackets than the limit cannot nest deeper than it.
    if len(data) > limit and (depth := json_depth(data)) > limit:
        raise JsonTooDeep(depth, limit)


def loads(data: bytes | bytearray | str, limit: int = MAX_JSON_DEPTH, **kwargs: Any) -> Any:
    """``json.loads`` after ``check_depth``: a ``ValueError`` (``JsonTooDeep`` or
    ``json.JSONDecodeError``) for input it refuses, never a ``RecursionError``."""
    check_depth(data, limit)
    return json.loads(data, **kwargs)
