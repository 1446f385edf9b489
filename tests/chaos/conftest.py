"""One `dermasentinel up` for the chaos suite, CI-sized (see benchmarks/chaos.py)."""

from __future__ import annotations

import pytest

from benchmarks.chaos import StackUnderTest, table

RESULTS = []


@pytest.fixture(scope="session")
def chaos_stack(starts_services):
    stack = StackUnderTest()
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        stack.remove()


@pytest.fixture
def record():
    return RESULTS.append


def pytest_terminal_summary(terminalreporter):
    if RESULTS:
        terminalreporter.write_sep("-", "chaos: what each fault did (CI-sized)")
        terminalreporter.write_line(table(RESULTS))
