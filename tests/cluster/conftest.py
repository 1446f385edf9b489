"""One cluster for the suite: hosts as network namespaces, HAProxy in front of two API hosts
(benchmarks/cluster.py), CI-sized. Skips, saying why, where it cannot run (not root, no
`ip netns`, no iptables or haproxy: .ci/run installs both from Debian)."""

from __future__ import annotations

import pytest

from benchmarks.cluster import Cluster, table, unavailable

RESULTS = []


@pytest.fixture(scope="session")
def cluster(starts_services):
    reason = unavailable()
    if reason:
        pytest.skip(f"cluster suite skipped: {reason}")
    built = Cluster()
    try:
        built.start()
        yield built
    finally:
        built.stop()
        built.remove()


@pytest.fixture
def record():
    return RESULTS.append


def pytest_terminal_summary(terminalreporter):
    if RESULTS:
        terminalreporter.write_sep("-", "cluster: what each fault between hosts did (CI-sized)")
        terminalreporter.write_line(table(RESULTS))
