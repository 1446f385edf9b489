"""deploy/prometheus/alerts.yml (issue 24): a Prometheus rule file that parses, whose every rule
is complete, and whose every series is one the code exports (shared/metrics.py)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

import shared.metrics  # noqa: F401  (registers every series of the workers)

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yml"
SERIES = re.compile(r"\bdermasentinel_[a-z0-9_]+\b")
DURATION = re.compile(r"^\d+[smhdwy]$")


def _exported() -> set[str]:
    names = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        if family.type == "counter":  # a labelled counter has no sample until counted
            names.add(family.name + "_total")
        names.update(sample.name for sample in family.samples)
    # Families collected at scrape time by the API's BacklogCollector are not in the registry.
    names.update(("dermasentinel_queue_depth", "dermasentinel_jobs", "dermasentinel_oldest_queued_job_age_seconds",
                  "dermasentinel_backlog_source_up"))
    return names


def _rules() -> list[dict]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_the_rule_file_parses_and_every_rule_is_complete():
    document = yaml.safe_load(RULES.read_text())
    assert set(document) == {"groups"}
    names = [group["name"] for group in document["groups"]]
    assert len(names) == len(set(names))
    alerts = [rule["alert"] for rule in _rules()]
    assert len(alerts) == len(set(alerts)) >= 5
    for rule in _rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["expr"].strip() and rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        if "for" in rule:
            assert DURATION.match(rule["for"]), rule["alert"]


def test_every_series_a_rule_names_is_exported():
    exported = _exported()
    named = {name for rule in _rules() for name in SERIES.findall(rule["expr"])}
    assert named, "the rules name no series"
    assert named <= exported, f"not exported: {sorted(named - exported)}"
    # The monitoring series of issue 24 are all alerted on.
    assert {"dermasentinel_drift_detected", "dermasentinel_safety_mode", "dermasentinel_drift_psi",
            "dermasentinel_monitor_rejection_rate", "dermasentinel_monitor_failure_rate"} <= named


def test_the_drift_check_task_named_by_a_rule_exists():
    from shared.queues import TaskName

    tasks = {match for rule in _rules() for match in re.findall(r'task="([^"]+)"', rule["expr"])}
    assert tasks <= {task.value for task in TaskName}
