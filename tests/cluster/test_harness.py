"""The harness's own parts that need no running cluster: HAProxy accepts the configuration it
is given, and `--cleanup` removes what a killed run left behind."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from benchmarks.cluster import ERROR_503, HAPROXY_CONFIG, PREFIX, ROOT, unavailable


def test_haproxy_accepts_the_configuration(tmp_path):
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed (.ci/run installs Debian's)")
    config = tmp_path / "haproxy.cfg"
    config.write_text(HAPROXY_CONFIG.format(
        bind="127.0.0.1:18080", socket=tmp_path / "haproxy.sock", error_503=ERROR_503,
        servers="  server api1 127.0.0.1:1 check\n  server api2 127.0.0.1:2 check",
    ))
    checked = subprocess.run(["haproxy", "-c", "-f", str(config)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr + checked.stdout


def test_cleanup_removes_what_a_killed_run_left(tmp_path):
    reason = unavailable()
    if reason:
        pytest.skip(f"cluster suite skipped: {reason}")
    # A prefix of its own: a plain --cleanup would also end a cluster running beside this test.
    prefix = f"{PREFIX}zz"
    namespace, link = f"{prefix}-gpu1", f"{prefix}gpu1"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    subprocess.run(["ip", "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", namespace], check=True)
    sleeper = subprocess.Popen(["ip", "netns", "exec", namespace, "sleep", "300"])
    try:
        done = subprocess.run([sys.executable, "-m", "benchmarks.cluster", "--cleanup", "--prefix", prefix], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert f"netns {namespace} (1 processes killed)" in done.stdout
        assert namespace not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert link not in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        assert sleeper.wait(10) == -9
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        subprocess.run(["ip", "link", "del", link], capture_output=True)
