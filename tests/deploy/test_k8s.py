"""deploy/k8s renders, validates offline against the Kubernetes and KEDA schemas, and says
what the code does: real commands, the queue names the code uses, one beat, GPUs requested,
secrets from the Secret, pinned images."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from sqlalchemy import create_engine, text

from cli.main import ROLES
from shared.queues import Queue
from shared.tables import WebhookDelivery
from tests.deploy.images import image_problems
from tests.deploy.keda_schema import SCALERS, SCHEMAS
from tests.test_compose import _check_cli

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy" / "k8s" / "base"
K8S_VERSION = kubernetes_validate.latest_version()
SECRET_NAME = "dermasentinel-secrets"
SECRET_SETTINGS = {"DATABASE_URL", "BROKER_URL", "S3_ACCESS_KEY", "S3_SECRET_KEY", "SECRET_KEY"}
KEDA_KINDS = set(SCHEMAS)


def _kustomization(directory: Path = BASE) -> dict:
    return yaml.safe_load((directory / "kustomization.yaml").read_text())


def _load_resources(directory: Path = BASE) -> list[dict]:
    """Our own rendering of a plain kustomization (resources + namespace + images), for
    machines without kubectl; the test below checks it agrees with `kubectl kustomize`."""
    kustomization = _kustomization(directory)
    images = {i["name"]: i for i in kustomization.get("images", [])}
    documents = []
    for entry in kustomization["resources"]:
        for doc in yaml.safe_load_all((directory / entry).read_text()):
            if not doc:
                continue
            if kustomization.get("namespace") and doc["kind"] != "Namespace":
                doc["metadata"]["namespace"] = kustomization["namespace"]
            for label in kustomization.get("labels", []):  # metadata only (no includeSelectors)
                doc["metadata"].setdefault("labels", {}).update(label["pairs"])
            for container in _containers(doc):
                image = images.get(container["image"].split(":")[0])
                if image:
                    container["image"] = f"{image.get('newName', image['name'])}:{image['newTag']}"
            documents.append(doc)
    return documents


def _kubectl() -> str | None:
    kubectl = shutil.which("kubectl")
    if kubectl and subprocess.run([kubectl, "kustomize", "--help"], capture_output=True).returncode == 0:
        return kubectl
    return None


@pytest.fixture(scope="module")
def documents() -> list[dict]:
    kubectl = _kubectl()
    if kubectl:
        out = subprocess.run([kubectl, "kustomize", str(BASE)], capture_output=True, text=True, timeout=60, check=True)
        return [d for d in yaml.safe_load_all(out.stdout) if d]
    return _load_resources()


def _pod_spec(doc: dict) -> dict | None:
    if doc["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
        return doc["spec"]["template"]["spec"]
    return None


def _containers(doc: dict) -> list[dict]:
    spec = _pod_spec(doc)
    return [*spec.get("initContainers", []), *spec["containers"]] if spec else []


def _by(documents, kind) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in documents if d["kind"] == kind}


# --- structure --------------------------------------------------------------------------------


def test_kustomization_lists_exactly_the_manifests_in_the_folder():
    listed = _kustomization()["resources"]
    assert len(listed) == len(set(listed)), "a resource is listed twice"
    missing = [entry for entry in listed if not (BASE / entry).is_file()]
    assert missing == [], f"listed but absent: {missing}"
    on_disk = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert on_disk - set(listed) == set(), "manifests that kustomize would silently skip"


@pytest.mark.skipif(_kubectl() is None, reason="no kubectl to compare our rendering with")
def test_own_rendering_agrees_with_kubectl(documents):
    def key(doc):
        return doc["kind"], doc["metadata"]["name"]

    ours = {key(d): d for d in _load_resources()}
    theirs = {key(d): d for d in documents}
    assert set(ours) == set(theirs)
    for k, doc in theirs.items():
        assert doc == ours[k], k


def test_every_resource_is_namespaced_and_named_uniquely(documents):
    keys = [(d["kind"], d["metadata"]["name"]) for d in documents]
    assert len(keys) == len(set(keys)), keys
    for doc in documents:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "dermasentinel", doc["metadata"]


# --- schemas ----------------------------------------------------------------------------------


def test_every_builtin_manifest_validates_against_the_kubernetes_schema(documents):
    checked = 0
    for doc in documents:
        if doc["kind"] in KEDA_KINDS:
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        checked += 1
    assert checked >= 15


def test_every_keda_resource_validates_against_its_schema(documents):
    keda = [d for d in documents if d["kind"] in KEDA_KINDS]
    assert {d["kind"] for d in keda} == KEDA_KINDS
    for doc in keda:
        jsonschema.validate(doc, SCHEMAS[doc["kind"]])
        for trigger in doc["spec"].get("triggers", []):
            allowed, _, required = SCALERS[trigger["type"]]
            name, given = doc["metadata"]["name"], set(trigger["metadata"])
            assert given <= allowed, f"{name}: unknown metadata {given - allowed}"
            assert required <= given, f"{name}: missing {required - given}"
        behavior = doc["spec"].get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
        if behavior:  # the HPA KEDA creates gets it verbatim: check it as Kubernetes would
            hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "x"},
                   "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "x"}, "maxReplicas": 1,
                            "behavior": behavior}}
            kubernetes_validate.validate(hpa, K8S_VERSION, strict=True)


@pytest.mark.parametrize(
    "kind, break_it",
    [
        ("ScaledObject", lambda d: d["spec"].update(maxReplicas=3)),  # a typo: maxReplicaCount
        ("ScaledObject", lambda d: d["spec"]["triggers"][0].update(metadata={"listName": 5})),
        ("TriggerAuthentication", lambda d: d["spec"]["secretTargetRef"][0].pop("key")),
    ],
)
def test_keda_schema_catches_mistakes(documents, kind, break_it):
    doc = yaml.safe_load(yaml.safe_dump(next(d for d in documents if d["kind"] == kind)))
    break_it(doc)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, SCHEMAS[kind])


def test_kubernetes_schema_catches_mistakes(documents):
    deployment = yaml.safe_load(yaml.safe_dump(_by(documents, "Deployment")["dermasentinel-beat"]))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["periodSecond"] = 5
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


# --- what the manifests say about the app -----------------------------------------------------


def _role(deployment: dict) -> str:
    command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:2] == ["dermasentinel", "worker"], command
    return command[command.index("--role") + 1]


def test_every_container_runs_a_real_cli_command(documents):
    commands = {}
    for doc in documents:
        for container in _containers(doc):
            command = container["command"]
            assert command[0] == "dermasentinel", command
            _check_cli(command[1:])
            commands[doc["metadata"]["name"]] = command[1:2]
    assert commands["dermasentinel-migrate"] == ["migrate"]
    assert commands["dermasentinel-api"] == ["api"]
    assert commands["dermasentinel-beat"] == ["beat"]


def test_every_image_is_pinned(documents):
    images = [c["image"] for d in documents for c in _containers(d)]
    assert images
    assert [p for image in images for p in image_problems(image)] == []


def test_scaled_objects_watch_queues_their_workers_consume(documents):
    deployments = _by(documents, "Deployment")
    queues = {q.value for q in Queue}
    watched = {}
    for scaled in _by(documents, "ScaledObject").values():
        target = scaled["spec"]["scaleTargetRef"]["name"]
        assert target in deployments, f"ScaledObject targets missing Deployment {target}"
        consumed = ROLES[_role(deployments[target])][0].split(",")
        for trigger in scaled["spec"]["triggers"]:
            if trigger["type"] == "redis":
                name = trigger["metadata"]["listName"]
                assert name in queues, f"{name} is not a Queue the code uses ({sorted(queues)})"
                assert name in consumed, f"{target} scales on {name} but consumes {consumed}"
                watched.setdefault(name, []).append(scaled)
    assert {Queue.analyze_interactive.value, Queue.analyze_bulk.value, Queue.webhooks.value} <= set(watched)
    (bulk,) = watched[Queue.analyze_bulk.value]
    assert bulk["spec"]["minReplicaCount"] == 0, "bulk GPU capacity should scale to zero"
    for interactive in watched[Queue.analyze_interactive.value]:
        assert interactive["spec"]["minReplicaCount"] >= 1, "interactive work needs a warm GPU worker"


def test_one_scaler_per_deployment_and_keda_owns_replicas(documents):
    deployments = _by(documents, "Deployment")
    targets = [s["spec"]["scaleTargetRef"]["name"] for s in _by(documents, "ScaledObject").values()]
    targets += [h["spec"]["scaleTargetRef"]["name"] for h in _by(documents, "HorizontalPodAutoscaler").values()]
    assert len(targets) == len(set(targets)), "two autoscalers fight over one Deployment"
    for name in targets:
        assert "replicas" not in deployments[name]["spec"], f"{name}: a fixed replica count fights its autoscaler"


def test_gpu_workers_request_a_gpu_and_others_do_not(documents):
    for name, deployment in _by(documents, "Deployment").items():
        for container in _containers(deployment):
            resources = container.get("resources", {})
            gpus = {resources.get(part, {}).get("nvidia.com/gpu") for part in ("requests", "limits")}
            is_gpu = name.startswith("dermasentinel-worker") and _role(deployment) == "gpu"
            if is_gpu:
                assert gpus == {1}, f"{name} must request and limit one nvidia.com/gpu: {resources}"
                env = {e["name"]: e.get("value") for e in container["env"]}
                assert env.get("DERMASENTINEL_DEVICE") == "cuda"
            else:
                assert gpus == {None}, f"{name} holds a GPU"


def test_beat_is_exactly_one_and_never_two(documents):
    beat = _by(documents, "Deployment")["dermasentinel-beat"]
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"]["type"] == "Recreate"
    scalers = {"ScaledObject", "HorizontalPodAutoscaler"}
    autoscaled = {s["spec"]["scaleTargetRef"]["name"] for s in documents if s["kind"] in scalers}
    assert "dermasentinel-beat" not in autoscaled


def test_api_probes_and_service(documents):
    api = _by(documents, "Deployment")["dermasentinel-api"]
    (container,) = _containers(api)
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # Readiness checks the dependencies; a GPU outage is reported but keeps the API serving.
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz?optional=gpu_workers"
    service = _by(documents, "Service")["dermasentinel-api"]
    assert service["spec"]["selector"].items() <= api["spec"]["template"]["metadata"]["labels"].items()
    assert _by(documents, "HorizontalPodAutoscaler")["dermasentinel-api"]["spec"]["minReplicas"] >= 2


def test_the_api_is_scraped_on_its_metrics_port_which_the_service_does_not_expose(documents):
    # Issue 22: /metrics is not served on the public port by default.
    api = _by(documents, "Deployment")["dermasentinel-api"]
    (container,) = _containers(api)
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    command = container["command"]
    assert int(command[command.index("--metrics-port") + 1]) == ports["metrics"] != ports["http"]
    assert api["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(ports["metrics"])
    service = _by(documents, "Service")["dermasentinel-api"]
    assert [port["targetPort"] for port in service["spec"]["ports"]] == ["http"]


def test_workers_have_time_to_finish_their_jobs(documents):
    from shared.config import Settings

    settings = Settings(_env_file=None)
    for name, deployment in _by(documents, "Deployment").items():
        if not name.startswith("dermasentinel-worker"):
            continue
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        if _role(deployment) == "gpu":
            assert grace >= 300, f"{name}: {grace}s may cut a GPU pass short"
        if _role(deployment) == "io":
            assert grace >= 2 * settings.webhook_timeout_seconds, f"{name}: {grace}s may cut a delivery short"


def test_disruption_budgets_cover_api_and_workers(documents):
    deployments = _by(documents, "Deployment")
    covered = set()
    for pdb in _by(documents, "PodDisruptionBudget").values():
        selector = pdb["spec"]["selector"]["matchLabels"].items()
        matched = [n for n, d in deployments.items() if selector <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(matched) == 1, f"{pdb['metadata']['name']} selects {matched}"
        covered.update(matched)
    assert covered == set(deployments) - {"dermasentinel-beat"}


def test_secrets_come_from_the_secret_and_pods_are_locked_down(documents):
    for doc in documents:
        spec = _pod_spec(doc)
        if spec is None:
            continue
        name = doc["metadata"]["name"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["automountServiceAccountToken"] is False, name
        for container in _containers(doc):
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            env = {e["name"]: e for e in container.get("env", [])}
            for setting in SECRET_SETTINGS:
                entry = env.get(f"DERMASENTINEL_{setting}")
                assert entry and "value" not in entry, f"{name}: {setting} must come from the Secret"
                assert entry["valueFrom"]["secretKeyRef"]["name"] == SECRET_NAME, name
    config = _by(documents, "ConfigMap")["dermasentinel-config"]["data"]
    assert not {f"DERMASENTINEL_{s}" for s in SECRET_SETTINGS} & set(config), "a secret in the ConfigMap"
    assert config["DERMASENTINEL_ENVIRONMENT"] == "production"


def test_every_secret_key_used_is_documented_in_the_example(documents):
    example = (BASE / "secret.example.env").read_text()
    documented = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", example, re.MULTILINE))
    used = set()
    for doc in documents:
        for container in _containers(doc):
            for entry in container.get("env", []):
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    used.add(ref["key"])
        for target in doc.get("spec", {}).get("secretTargetRef", []) if doc["kind"] == "TriggerAuthentication" else []:
            assert target["name"] == SECRET_NAME
            used.add(target["key"])
    assert used and used == documented, f"used {sorted(used)}, documented {sorted(documented)}"


def test_config_map_keys_are_settings(documents):
    from shared.config import ENV_PREFIX, Settings

    fields = {name.upper() for name in Settings.model_fields}
    for key in _by(documents, "ConfigMap")["dermasentinel-config"]["data"]:
        assert key.startswith(ENV_PREFIX) and key[len(ENV_PREFIX):] in fields, key


# --- the due-deliveries query runs on the real schema -----------------------------------------


def _due_query(documents) -> str:
    (trigger,) = [t for s in _by(documents, "ScaledObject").values() for t in s["spec"]["triggers"]
                  if t["type"] == "postgresql"]
    return trigger["metadata"]["query"]


def test_due_delivery_query_names_real_columns(documents):
    query = _due_query(documents)
    assert WebhookDelivery.__tablename__ in query
    for column in re.findall(r"\b([a-z_]+)\s*(?:=|<=|>=|<|>|IS\b)", query):
        assert column in WebhookDelivery.__table__.columns, f"{column} is not a webhook_deliveries column"


def test_due_delivery_query_counts_due_and_leased_not_later_retries(documents, test_database_url):
    """Run KEDA's query on a migrated database: due and in-lease deliveries count, retries
    scheduled for later and finished deliveries do not."""
    import uuid

    engine = create_engine(test_database_url)
    rows = [  # (status, next_attempt_at relative to now, leased) -> counted?
        ("pending", "-1 minute", False, True),     # due, waiting for the dispatcher
        ("pending", "+2 minutes", True, True),     # woken (queued) or being sent: a lease
        ("pending", "+1 minute", False, False),    # a retry scheduled for later, however soon
        ("pending", "+1 hour", False, False),
        ("delivered", "-1 minute", False, False),
        ("failed", "-1 minute", False, False),
    ]
    try:
        with engine.connect() as conn:
            transaction = conn.begin()
            try:
                # Rows without parents: skip the foreign-key triggers in this transaction only.
                conn.execute(text("SET LOCAL session_replication_role = replica"))
                before = conn.execute(text(_due_query(documents))).scalar_one()
                for status, offset, leased, _ in rows:
                    conn.execute(
                        text("INSERT INTO webhook_deliveries (id, tenant_id, endpoint_id, event_id, status, "
                             "attempt_count, next_attempt_at, leased_at, created_at) VALUES (:id, :t, :e, :ev, :s, "
                             "0, now() + CAST(:offset AS interval), CASE WHEN :leased THEN now() END, now())"),
                        {"id": uuid.uuid4(), "t": uuid.uuid4(), "e": uuid.uuid4(), "ev": f"evt_{uuid.uuid4().hex}",
                         "s": status, "offset": offset, "leased": leased},
                    )
                after = conn.execute(text(_due_query(documents))).scalar_one()
            finally:
                transaction.rollback()
    finally:
        engine.dispose()
    assert after - before == sum(counted for *_, counted in rows)


def test_replica_targets_are_sane(documents):
    for scaled in _by(documents, "ScaledObject").values():
        spec = scaled["spec"]
        assert spec.get("minReplicaCount", 0) <= spec["maxReplicaCount"], scaled["metadata"]["name"]
        for trigger in spec["triggers"]:
            target = trigger["metadata"].get("listLength") or trigger["metadata"].get("targetQueryValue")
            assert target and float(target) > 0 and math.isfinite(float(target)), trigger


def test_pod_settings_are_accepted_in_production(documents):
    """ConfigMap plus Secret (example values of the right shape) is a configuration the app
    accepts in production, for every container's environment."""
    from shared.config import ENV_PREFIX, Settings

    secret = {
        "DERMASENTINEL_DATABASE_URL": "postgresql://ds:pw@postgres:5432/ds",
        "DERMASENTINEL_BROKER_URL": "redis://:pw@redis:6379/0",
        "DERMASENTINEL_S3_ACCESS_KEY": "app-key",
        "DERMASENTINEL_S3_SECRET_KEY": "app-secret-value",
        "DERMASENTINEL_SECRET_KEY": "bXktdGVzdC1mZXJuZXQta2V5LTMyLWJ5dGVzLWxvbmc=",
    }
    config = _by(documents, "ConfigMap")["dermasentinel-config"]["data"]
    for doc in documents:
        for container in _containers(doc):
            env = dict(config)
            for entry in container.get("env", []):
                value = entry["value"] if "value" in entry else secret[entry["valueFrom"]["secretKeyRef"]["key"]]
                env[entry["name"]] = value
            Settings(_env_file=None, **{k[len(ENV_PREFIX):].lower(): v for k, v in env.items()
                                        if k.startswith(ENV_PREFIX)})


# --- issue 25: images per role, checkpoints from the registry, alert rules ---------------------


def test_gpu_pods_run_the_cuda_image_and_every_other_pod_the_slim_one(documents):
    for doc in documents:
        for container in _containers(doc):
            gpu = "nvidia.com/gpu" in container.get("resources", {}).get("limits", {})
            repository = container["image"].rsplit(":", 1)[0].rsplit("/", 1)[-1]
            assert repository == ("dermasentinel-cuda" if gpu else "dermasentinel"), (doc["metadata"]["name"], gpu)


def test_gpu_pods_fetch_checkpoints_from_the_registry_not_a_shared_volume(documents):
    """ReadOnlyMany volumes are what EBS, PD and Azure Disk cannot give; the registry already
    keeps every checkpoint in S3 (shared/model_registry.py), and workers cache them in DATA_DIR."""
    assert not [d for d in documents if d["kind"] == "PersistentVolumeClaim"]
    gpu_pods = [d for d in _by(documents, "Deployment").values()
                if d["spec"]["template"]["spec"]["containers"][0]["command"][1] == "worker" and _role(d) == "gpu"]
    assert len(gpu_pods) == 2
    for doc in gpu_pods:
        spec = _pod_spec(doc)
        assert not [v for v in spec["volumes"] if "persistentVolumeClaim" in v], doc["metadata"]["name"]
        (container,) = spec["containers"]
        env = {e["name"] for e in container["env"]}
        # The registry's S3 keys reach the worker; no MODEL_DIR points at a mount.
        assert {"DERMASENTINEL_S3_ACCESS_KEY", "DERMASENTINEL_S3_SECRET_KEY"} <= env
        assert "DERMASENTINEL_MODEL_DIR" not in env
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        data = {v["name"]: v for v in spec["volumes"]}[mounts["/var/lib/dermasentinel"]]
        # DATA_DIR/models holds the cached checkpoints: room for a model set and a switch.
        assert _quantity(data["emptyDir"]["sizeLimit"]) >= 2 * 2**30


def _quantity(text: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    for unit, factor in units.items():
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    return float(text)


def test_the_prometheus_rule_is_the_alert_file():
    monitoring = ROOT / "deploy" / "k8s" / "monitoring"
    assert _kustomization(monitoring)["resources"] == ["prometheusrule.yaml"]
    (rule,) = [d for d in yaml.safe_load_all((monitoring / "prometheusrule.yaml").read_text()) if d]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["kind"] == "PrometheusRule"
    alerts = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"], "regenerate deploy/k8s/monitoring/prometheusrule.yaml"
