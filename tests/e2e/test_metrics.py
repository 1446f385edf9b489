"""Every role's metrics, scraped from a running stack: an API and a gpu, cpu and io worker.

The stack is this module's own, on a broker database of its own, so the session's
all-queues worker never takes these jobs and every figure comes from the role that owns it.
One analysis (with its report and a webhook) and one direct upload go through it first.
"""

from __future__ import annotations

import json
import re
import uuid

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from devstack import Receiver, child_env, free_port, start_api, start_worker
from tests.conftest import ROOT, wait_for
from worker.pipeline.synthetic import encode_jpeg, make_lesion

STAGES = ("fetch", "decode", "gate1", "gate2", "artifacts", "write")


def _own_broker(url: str) -> str:
    base, _, db = url.rpartition("/")
    return f"{base}/{7 if db != '7' else 8}" if db.isdigit() else f"{url.rstrip('/')}/7"


@pytest.fixture(scope="module")
def own_database(settings, context):
    """A database of its own (built by the migrations): a GPU worker claims queued jobs from
    its database's lanes, not only the one its message names, so the session's workers (on
    the shared database) could finish this stack's jobs, and their metrics would not be here."""
    from shared.migrate import scratch_database

    with scratch_database(settings.database_url, "dsmetrics") as url:
        yield url


@pytest.fixture(scope="module")
def tenant_key(settings, own_database):
    """A tenant of the stack's own database."""
    from shared.context import AppContext
    from shared.db import session_scope
    from shared.tenants import issue_key

    own = AppContext(settings.model_copy(update={"database_url": own_database}))
    try:
        with session_scope(own.session_factory) as session:
            tenant, key = issue_key(session, f"metrics-{uuid.uuid4().hex[:10]}")
        return tenant.id, key
    finally:
        own.close()


@pytest.fixture(scope="module")
def stack(settings, own_database, tmp_path_factory):
    logs = tmp_path_factory.mktemp("metrics-stack")
    port = free_port()
    own = settings.model_copy(update={"broker_url": _own_broker(settings.broker_url), "database_url": own_database,
                                      "api_url": f"http://127.0.0.1:{port}", "log_format": "json"})
    started = []
    try:
        # Issue 22: the API's metrics are on a port of their own, never on its public port.
        started.append(api := start_api(child_env(own), logs / "api.log", port=port, metrics_port=free_port()))
        workers = {}
        for role in ("gpu", "cpu", "io"):
            workers[role] = start_worker(child_env(own), logs / f"worker-{role}.log", role=role, concurrency=1,
                                         metrics_port=free_port())
            started.append(workers[role])
        for process in workers.values():
            assert process.url is not None
            process.wait_http(process.url, timeout=120)
        wait_for(lambda: httpx.get(f"{api.url}/readyz", timeout=5).status_code == 200, 120,
                 message="the metrics stack to be ready")
        yield {"api": api.url, "api_metrics": api.metrics_url, "logs": logs,
               **{role: process.url for role, process in workers.items()}}
    finally:
        for process in reversed(started):
            process.stop()


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels) -> float | None:
    return samples.get((name, tuple(sorted((k, str(v)) for k, v in labels.items()))))


def samples_of(samples: dict, name: str) -> list[tuple[str, dict, float]]:
    return [(n, dict(labels), v) for (n, labels), v in samples.items() if n == name]


def json_lines(path) -> list[dict]:
    lines = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue
    return lines


def test_every_role_reports_its_series_after_an_analysis_report_webhook_and_upload(stack, tenant_key):
    receiver = Receiver()
    request_id = f"metrics-{uuid.uuid4().hex}"
    client = httpx.Client(base_url=stack["api"], headers={"Authorization": f"Bearer {tenant_key[1]}"}, timeout=60)
    try:
        hook = client.post("/v1/webhook-endpoints", json={"url": receiver.url, "description": "EHR"})
        assert hook.status_code == 201, hook.text
        image = encode_jpeg(make_lesion(seed=21, size=(240, 320), radius_frac=0.2).image)
        created = client.post(
            "/v1/analyses", files={"image": ("l.jpg", image, "image/jpeg")},
            data={"external_id": "ext-metrics-PHI", "age": "47", "site": "torso"},
            headers={"X-Request-ID": request_id},
        )
        assert created.status_code == 202, created.text
        assert created.headers["X-Request-ID"] == request_id
        analysis_id = created.json()["id"]
        wait_for(lambda: client.get(f"/v1/analyses/{analysis_id}/report.pdf").status_code == 200, 180,
                 message="the report")
        wait_for(lambda: receiver.of_type("analysis.report_ready"), 60, message="the report_ready webhook")

        upload = client.post("/v1/uploads", json={"content_type": "image/jpeg"}).json()
        assert httpx.put(upload["url"], content=image, headers=upload["headers"], timeout=30).status_code == 200
        direct = client.post("/v1/analyses", json={"upload_id": upload["id"]})
        assert direct.status_code == 202, direct.text
        wait_for(lambda: client.get(f"/v1/analyses/{direct.json()['id']}").json()["status"] == "succeeded", 180,
                 message="the direct upload's analysis")
    finally:
        client.close()
        receiver.close()

    assert httpx.get(f"{stack['api']}/metrics", timeout=10).status_code == 404  # not on the public port
    api = scrape(stack["api_metrics"])
    assert value(api, "dermasentinel_backlog_source_up", source="redis") == 1
    assert value(api, "dermasentinel_backlog_source_up", source="database") == 1
    for lane in ("analyze.interactive", "analyze.bulk", "reports", "webhooks", "ingest", "maintenance"):
        assert value(api, "dermasentinel_queue_depth", queue=lane) is not None, lane
    for priority in ("interactive", "bulk"):
        assert value(api, "dermasentinel_oldest_queued_job_age_seconds", priority=priority) is not None
        for state in ("queued", "processing"):
            assert value(api, "dermasentinel_jobs", state=state, priority=priority) is not None
    assert value(api, "dermasentinel_http_requests_total", method="POST", route="/v1/analyses", status="202") >= 2
    # Issue 25: receivers failing now (other tests' failing receivers may be counted too).
    assert value(api, "dermasentinel_endpoints_failing") is not None
    assert value(api, "dermasentinel_endpoint_failing_seconds") is not None

    gpu = scrape(stack["gpu"])
    for stage in STAGES:
        assert value(gpu, "dermasentinel_stage_seconds_count", stage=stage) >= 1, stage
    assert value(gpu, "dermasentinel_gpu_pass_jobs_count") >= 1
    assert value(gpu, "dermasentinel_gpu_pass_fill_ratio_count") >= 1
    assert value(gpu, "dermasentinel_images_processed_total") >= 2
    assert value(gpu, "dermasentinel_analyses_finished_total", status="succeeded") >= 2
    # Issue 25: what a user waits, by lane and the model version that answered.
    waited = [v for _, labels, v in samples_of(gpu, "dermasentinel_time_to_result_seconds_count")
              if labels.get("lane") == "interactive" and labels.get("status") == "succeeded"]
    assert sum(waited) >= 2
    queued = samples_of(gpu, "dermasentinel_queue_wait_seconds_count")
    assert queued and all(labels.get("model_version") for _, labels, _ in queued)
    assert value(gpu, "dermasentinel_tasks_total", task="dermasentinel.analysis.run", outcome="success") >= 1

    cpu = scrape(stack["cpu"])
    assert value(cpu, "dermasentinel_report_render_seconds_count") >= 1
    assert value(cpu, "dermasentinel_ingests_total", outcome="accepted") >= 1

    io = scrape(stack["io"])
    assert value(io, "dermasentinel_webhook_deliveries_total", outcome="delivered") >= 2
    assert value(io, "dermasentinel_webhook_delivery_seconds_count", outcome="delivered") >= 2

    # The dashboard queries only series that exist.
    dashboard = (ROOT / "deploy" / "grafana" / "dermasentinel.json").read_text()
    scraped = {name for samples in (api, gpu, cpu, io) for name, _ in samples}
    # (The GPU panels read NVML's series, served only where a GPU is: none on the test machines.)
    nvml_only = {"dermasentinel_gpu_utilization_ratio", "dermasentinel_gpu_memory_used_bytes",
                 "dermasentinel_gpu_memory_total_bytes"}
    for name in set(re.findall(r"dermasentinel_[a-z_]+", dashboard)) - {"dermasentinel_"} - nvml_only:
        assert name in scraped or f"{name}_total" in scraped, f"the dashboard queries {name}, which no role serves"

    # One request id from the API's answer to the gpu worker's task, the report and the webhook.
    for role in ("gpu", "cpu", "io"):
        lines = json_lines(stack["logs"] / f"worker-{role}.log")
        assert lines, f"the {role} worker wrote no JSON lines"
        ours = [line for line in lines if line.get("request_id") == request_id]
        assert ours, f"no {role} worker line carries the request id"
        assert all("external_id" not in line and "age" not in line for line in lines)
        assert not any("ext-metrics-PHI" in json.dumps(line) for line in lines)
    io_lines = json_lines(stack["logs"] / "worker-io.log")
    assert any(line.get("request_id") == request_id and line.get("delivery_id") for line in io_lines)


def test_the_backlog_scrape_answers_when_redis_and_postgres_do_not(tmp_path):
    from prometheus_client import CollectorRegistry, generate_latest

    from shared.config import Settings
    from shared.metrics import BacklogCollector

    # Nothing listens on these ports: each read fails fast, and the scrape still answers.
    nowhere = Settings(_env_file=None, data_dir=tmp_path,
                       database_url=f"postgresql+psycopg://nobody:x@127.0.0.1:{free_port()}/none",
                       broker_url=f"redis://127.0.0.1:{free_port()}/0")
    registry = CollectorRegistry(auto_describe=False)
    collector = BacklogCollector(nowhere)
    registry.register(collector)
    try:
        text = generate_latest(registry).decode()
    finally:
        collector.close()
    assert 'dermasentinel_backlog_source_up{source="redis"} 0.0' in text
    assert 'dermasentinel_backlog_source_up{source="database"} 0.0' in text
    assert "dermasentinel_queue_depth{" not in text


def test_processes_that_log_json_write_only_json(stack):
    """Issue 25: with LOG_FORMAT=json every line the API and each worker role write is one JSON
    object: no Celery banner, no warnings as plain text, no ANSI codes (uvicorn's
    `color_message`). Lines starting `=== ` are devstack's own start markers."""
    logs = sorted(stack["logs"].glob("*.log"))
    assert {path.name for path in logs} >= {"api.log", "worker-gpu.log", "worker-cpu.log", "worker-io.log"}
    for path in logs:
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if not line.strip() or line.startswith("=== "):
                continue
            try:
                record = json.loads(line)
            except ValueError:
                raise AssertionError(f"{path.name} line {number} is not JSON: {line[:200]!r}") from None
            assert isinstance(record, dict), f"{path.name} line {number}"
            assert "color_message" not in record and "\x1b[" not in line, f"{path.name} line {number}: {line[:200]}"
