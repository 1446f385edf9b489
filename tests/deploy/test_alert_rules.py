"""deploy/prometheus/alerts.yml (issue 24): a Prometheus rule file that parses, whose every rule
is complete, and whose every series is one the code exports (shared/metrics.py)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

import api.middleware  # noqa: F401  (registers the API's HTTP series)
import shared.metrics  # noqa: F401  (registers every series of the workers)

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yml"
SERIES = re.compile(r"\bdermasentinel_[a-z0-9_]+\b")
DURATION = re.compile(r"^\d+[smhdwy]$")


# Families collected at scrape time, not in the registry: the API's BacklogCollector, and the
# GPU workers' NvmlCollector (where a GPU is), with their labels.
SCRAPE_TIME = {
    "dermasentinel_queue_depth": {"queue"},
    "dermasentinel_jobs": {"state", "priority"},
    "dermasentinel_oldest_queued_job_age_seconds": {"priority"},
    "dermasentinel_backlog_source_up": {"source"},
    "dermasentinel_endpoints_failing": set(),
    "dermasentinel_endpoint_failing_seconds": set(),
    "dermasentinel_gpu_utilization_ratio": {"gpu"},
    "dermasentinel_gpu_memory_used_bytes": {"gpu"},
    "dermasentinel_gpu_memory_total_bytes": {"gpu"},
}


def _labels() -> dict[str, set[str]]:
    """Every series the code exports, with the labels it carries."""
    labels: dict[str, set[str]] = {name: set(names) for name, names in SCRAPE_TIME.items()}
    for collector in list(REGISTRY._collector_to_names):
        names = set(getattr(collector, "_labelnames", ()))
        for family in collector.collect():
            series = {family.name}
            if family.type == "counter":  # a labelled counter has no sample until counted
                series.add(family.name + "_total")
            if family.type == "histogram":  # nor a labelled histogram
                series.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
            series.update(sample.name for sample in family.samples)
            for name in series:
                labels[name] = names | ({"le"} if name.endswith("_bucket") else set())
    return labels


def _exported() -> set[str]:
    return set(_labels())


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


MATCHERS = re.compile(r"\b(dermasentinel_[a-z0-9_]+)\{([^}]*)\}")


def test_every_label_a_rule_matches_is_one_the_series_has():
    """What promtool cannot know: a matcher on a label the series lacks selects nothing, forever."""
    labels = _labels()
    for rule in _rules():
        for series, matchers in MATCHERS.findall(rule["expr"]):
            used = {m.split("=")[0].rstrip("!~").strip() for m in matchers.split(",") if m.strip()}
            assert used <= labels[series], f"{rule['alert']}: {series} has no label {used - labels[series]}"


def test_the_expressions_are_well_formed():
    """A promtool-style syntax check of what can go wrong by hand: balanced brackets, known
    functions, range selectors with a duration, thresholds compared to numbers."""
    functions = {"max", "min", "sum", "rate", "increase", "histogram_quantile", "by", "and", "or", "unless", "count"}
    for rule in _rules():
        expr = rule["expr"]
        for opening, closing in ("()", "{}", "[]"):
            assert expr.count(opening) == expr.count(closing), (rule["alert"], opening)
        for duration in re.findall(r"\[([^\]]*)\]", expr):
            assert DURATION.match(duration), (rule["alert"], duration)
        words = set(re.findall(r"\b([a-z_]+)\s*\(", expr))
        assert words <= functions, (rule["alert"], words - functions)
        assert re.search(r"(==|>=|<=|>|<)\s*[\d.]+", expr), f"{rule['alert']} compares to no threshold"


def test_the_operations_alerts_of_issue_25_are_there():
    alerts = {rule["alert"]: rule["expr"] for rule in _rules()}
    wanted = {
        "backlog age": "dermasentinel_oldest_queued_job_age_seconds",
        "failure rate": "dermasentinel_analyses_finished_total",
        "endpoint failing": "dermasentinel_endpoint_failing_seconds",
        "drift": "dermasentinel_drift_detected",
        "time to result": "dermasentinel_time_to_result_seconds_bucket",
        "GPU memory": "dermasentinel_gpu_memory_used_bytes",
    }
    for what, series in wanted.items():
        assert any(series in expr for expr in alerts.values()), f"no alert on {what} ({series})"


def test_the_drift_check_task_named_by_a_rule_exists():
    from shared.queues import TaskName

    tasks = {match for rule in _rules() for match in re.findall(r'task="([^"]+)"', rule["expr"])}
    assert tasks <= {task.value for task in TaskName}
