"""The one settings object. Nothing else in the project reads ``os.environ``.

Every variable carries the ``DERMASENTINEL_`` prefix. ``dermasentinel up`` writes the
settings of the stack it started to ``DATA_DIR/stack.env``, and where that is to the user
config (``user_config_path``); those files are read as lower-priority sources, so client
commands reach that stack without exports, from any folder (``settings_files``).
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import limits
from cryptography.fernet import Fernet
from limits import RateLimitItem
from pydantic import Field, InstanceOf, NonNegativeInt, SecretStr, field_serializer, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared import clinical
from shared.ssrf import AllowRule, parse_allow_cidrs

ENV_PREFIX = "DERMASENTINEL_"
DEV_S3_KEYS = {"minioadmin", "dermasentinel-dev"}


# Encrypts webhook secrets outside production only; production refuses it.
DEV_SECRET_KEY = "ZGVybWFzZW50aW5lbC1kZXZlbG9wbWVudC1rZXktMDE="


# Delay before each webhook retry, after an immediate first attempt: 5 s, 5 min, 30 min, 2 h,
# 5 h, 10 h, 10 h, 14 h, 20 h, 24 h -- 11 attempts over about 3.6 days.
DEFAULT_RETRY_SCHEDULE: tuple[int, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000, 50400, 72000, 86400)
DEFAULT_RETRY_SCHEDULE_SETTING = ",".join(str(s) for s in DEFAULT_RETRY_SCHEDULE)
_SECONDS = re.compile(r"[0-9]+")


def parse_retry_schedule(value: str) -> list[int]:
    """Parse `WEBHOOK_RETRY_SCHEDULE`: seconds to wait before each retry, comma-separated.

    An empty value means a single attempt and no retries.
    """
    if not value.strip():
        return []
    schedule: list[int] = []
    for item in value.split(","):
        item = item.strip()
        if not _SECONDS.fullmatch(item):
            raise ValueError(
                f"WEBHOOK_RETRY_SCHEDULE entry {item!r} is not a whole number of seconds; "
                f"write it like {DEFAULT_RETRY_SCHEDULE_SETTING!r}"
            )
        schedule.append(int(item))
    return schedule


def _split_keys(value: str) -> list[str]:
    return [key.strip() for key in value.split(",") if key.strip()]


class SettingMissing(RuntimeError):
    """A setting the operation needs is not set; the message names the variable and what to do
    (the CLI prints it as it is, one line)."""


def _default_data_dir() -> Path:
    return Path("./.dermasentinel")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    environment: Literal["development", "test", "production"] = "development"
    data_dir: Path = Field(default_factory=_default_data_dir)

    database_url: str = ""
    broker_url: str = ""
    s3_endpoint: str = ""
    s3_access_key: str = ""
    s3_secret_key: SecretStr = SecretStr("")
    s3_secure: bool = False
    s3_region: str = "us-east-1"
    # Host:port that browsers and EHRs use to fetch presigned links, when it differs from
    # the address the services use (e.g. "files.example.org" in front of minio:9000).
    s3_public_endpoint: str = ""
    s3_bucket_prefix: str = "dermasentinel"
    presign_ttl_seconds: int = Field(default=120, ge=30, le=900)

    api_url: str = ""
    api_key: SecretStr = SecretStr("")
    public_url: str = ""
    # Issue 23: who operates this service, named in every FHIR bundle's Provenance (an
    # Organization agent beside the model's Device); empty: no Organization is named.
    organization_name: str = Field(default="", max_length=200)

    model_dir: Path | None = None
    segmenter: Literal["auto", "unet", "classical"] = "auto"
    vqa_model_dir: Path | None = None  # issue 15: local BLIP VQA/captioning files only (docs/CLINICIANS.md)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    fusion_seed: int = 0
    seg_size: int = Field(default=512, ge=64, le=2048)
    cls_size: int = Field(default=512, ge=64, le=2048)
    tta_views: int = Field(default=5, ge=1, le=8)
    blur_threshold: float = clinical.BLUR_THRESHOLD
    min_coverage: float = clinical.MIN_COVERAGE
    # Images whose shorter side (as uploaded, upright) is below this are rejected `low_resolution`
    # before the networks run: a lesion in fewer pixels cannot be assessed.
    min_image_side: int = Field(default=clinical.MIN_IMAGE_SIDE, ge=1, le=4096)
    max_upload_mb: int = Field(default=20, ge=1, le=200)
    max_image_pixels: int = 40_000_000
    gpu_batch_size: int = Field(default=8, ge=1, le=64)
    # Gate 2 images per forward pass, views included; unset: 64 on CUDA, 1 on CPU (measured:
    # large CPU batches are no faster per image and cost memory; docs/ENGINE.md).
    max_forward_batch: int | None = Field(default=None, ge=1, le=512)

    # Inference engine (issue 9, docs/ENGINE.md). auto: torch on CUDA, OpenVINO on CPU.
    backend: Literal["auto", "torch", "openvino"] = "auto"
    autocast: Literal["off", "fp16", "bf16"] = "fp16"  # CUDA only; CPU always runs fp32
    # Issue 27: what the OpenVINO CPU networks compute in (docs/ENGINE.md "Precision"). auto: bf16
    # where the CPU computes bf16 natively (measured within |dp| p95 0.005 and 99.5% equal
    # dispositions of fp32), else fp32; int8: NNCF post-training quantization, opt-in, calibrated
    # on CALIBRATION_DIR's images (else synthetic lesions) and cached beside the fp32 IR. Every
    # result's model.precision records what ran.
    precision: Literal["auto", "fp32", "bf16", "int8"] = "auto"
    calibration_dir: Path | None = None  # int8 calibration images (an operator's own photos)
    gate1_memory_mb: int | None = Field(default=None, ge=8)  # Gate 1 activations per pass; unset: 2048 CUDA, 16 CPU
    batch_fill_ms: float | None = Field(default=None, ge=0, le=1000)  # unset: 5 on CUDA, 0 on CPU
    # JPEG DCT-scaled decode when the photo dwarfs every working size; on by default since the blur
    # score is measured at a fixed working size (issue 27), so it no longer changes the score's scale.
    decode_reduced: bool = True
    host_threads: int = Field(default=2, ge=1, le=32)  # fetch/decode and post-process/write pools
    # Issue 27: OpenVINO CPU: Fusion's views run side by side on this many single-request streams
    # (at most one per CPU) and a bulk pass steps this many images at a time; Scalpel spreads over
    # all the cores. 1: every pass spread over all the cores (docs/ENGINE.md "Streams").
    cpu_streams: int = Field(default=2, ge=1, le=64)
    # Issue 27, inference first on a busy host: a process started with NICE > 0 lowers its own CPU
    # priority by that much (os.setpriority) as it starts, so the analysis worker's networks get
    # the cores when the API, report/ingest (cpu) and IO workers and beat want them too. `up` and
    # the K8s manifests set 10 for those; the analysis (gpu) worker keeps 0. Lowering needs no
    # privilege (docs/ENGINE.md "Inference first").
    nice: int = Field(default=0, ge=0, le=19)
    # Issue 27: an analysis worker holds its jobs' report requests while its passes run, and sends
    # them once the passes pause, at the latest this many seconds after the first: on a host whose
    # report worker shares the cores with the networks, the PDFs are rendered after a burst instead
    # of delaying the next jobs' results. 0: sent with each pass (the K8s manifests, where reports
    # run in pods of their own). Never longer than half of RESEND_AFTER_SECONDS
    # (``report_hold_limit``), or the sweeper would take held requests for lost ones
    # (docs/ENGINE.md "Reports after the burst").
    report_hold_seconds: float = Field(default=20.0, ge=0)
    # GPU workers read the active model version at most this often (docs/MODELS.md).
    model_check_seconds: float = Field(default=5.0, ge=0)
    # Issue 24: the acceptance file `models activate` checks a candidate against when none is
    # given with --acceptance (docs/MODELS.md); unset: no criteria unless one is given.
    acceptance_file: Path | None = None

    max_attempts: int = Field(default=3, ge=1, le=20)
    stuck_after_seconds: int = Field(default=300, ge=5)
    sweep_interval_seconds: float = Field(default=30.0, gt=0)
    # Issue 26: the sweeper runs in a thread of the beat process (worker.maintenance.SweepLoop),
    # never queued behind ingest and report messages; false: beat sends it to the maintenance
    # queue as before (a CPU worker runs it).
    sweep_in_beat: bool = True
    idempotency_ttl_hours: int = Field(default=48, ge=24)
    retention_days: int = Field(default=0, ge=0)
    # Issue 22: audit rows older than this are pruned behind a signed checkpoint (docs/AUDIT.md);
    # independent of RETENTION_DAYS. 2190 days is six years; 0 keeps the trail forever.
    audit_retention_days: int = Field(default=2190, ge=0)

    # Issue 24: monitoring and drift (docs/MONITORING.md). The window of a (tenant, model
    # version) is its last MONITOR_WINDOW final results, none older than MONITOR_WINDOW_HOURS;
    # confirmed outcomes (feedback) count over MONITOR_OUTCOME_DAYS.
    monitor_window: int = Field(default=500, ge=10, le=100_000)
    monitor_window_hours: float = Field(default=720.0, gt=0)
    monitor_outcome_days: int = Field(default=365, ge=1)
    # Prometheus series per (tenant, version): at most this many pairs, the most recently active.
    monitor_max_series: int = Field(default=200, ge=1, le=10_000)
    # Drift: a window of at least DRIFT_MIN_RESULTS scored results whose probabilities' PSI or
    # KS statistic against the model's reference (or the skin-group mix's PSI) crosses its
    # threshold opens a drift episode: one `model.drift_detected` event, and with
    # DRIFT_ACTION=review_all the tenant's safety mode (every new result clinician_review,
    # reason `drift`) until `dermasentinel monitor clear`.
    drift_psi_threshold: float = Field(default=0.25, gt=0)
    drift_ks_threshold: float = Field(default=0.2, gt=0, le=1)
    drift_min_results: int = Field(default=100, ge=10)
    drift_action: Literal["alert", "review_all"] = "alert"
    drift_check_seconds: float = Field(default=300.0, gt=0)
    # Workers read a tenant's safety mode at most this often (per tenant, per process).
    safety_mode_cache_seconds: float = Field(default=5.0, ge=0, le=300)
    # Shadow and canary rollout (issue 24; docs/MODELS.md). A shadow runs only while the GPU
    # lane is not behind: behind is a pass that came full (a backlog), more than
    # SHADOW_MAX_QUEUED jobs waiting to be claimed, or a shadow run of this process still busy.
    shadow_max_queued: int = Field(default=0, ge=0, le=10_000)
    # A canary is judged (on each drift check, DRIFT_CHECK_SECONDS) once it and its incumbent
    # each have CANARY_MIN_RESULTS final results since it began (the newest CANARY_WINDOW of
    # each); it is rolled back when its failure rate exceeds the incumbent's by more than
    # CANARY_MAX_FAILURE_RATE_INCREASE, or the PSI of its rejection mix, or the PSI or KS
    # statistic of its probabilities against the incumbent's, crosses its bound.
    canary_min_results: int = Field(default=50, ge=5)
    canary_window: int = Field(default=1000, ge=10, le=100_000)
    canary_max_failure_rate_increase: float = Field(default=0.02, ge=0, le=1)
    canary_max_rejection_psi: float = Field(default=0.25, gt=0)
    canary_max_psi: float = Field(default=0.25, gt=0)
    canary_max_ks: float = Field(default=0.2, gt=0, le=1)

    # Parsed once, here: the environment spells them as text (comma-separated, "10/minute"),
    # the code reads typed values (docs/LAYOUT.md).
    webhook_retry_schedule: Annotated[tuple[NonNegativeInt, ...], NoDecode] = DEFAULT_RETRY_SCHEDULE
    webhook_allow_cidrs: Annotated[tuple[AllowRule, ...], NoDecode] = ()
    webhook_timeout_seconds: float = 10.0
    webhook_disable_after_days: int = 5
    webhook_dispatch_interval_seconds: float = 5.0

    # Fault tolerance: workers, sweeper, client timeouts (issue 11, docs/FAULTS.md).
    worker_start_timeout_seconds: float = Field(default=120.0, gt=0)  # pool process start, model load included
    transient_backoff_seconds: float = Field(default=2.0, gt=0)  # first wait after an infrastructure error
    transient_backoff_max_seconds: float = Field(default=30.0, gt=0)  # doubling stops here
    max_transient_retries: int = Field(default=500, ge=1)  # about 4 h of outage at the cap, then failed
    gpu_heartbeat_seconds: float = Field(default=5.0, gt=0)  # GPU pool processes report in to Redis
    # Issue 26: a worker main process whose heartbeat (shared.liveness) is older than this is hung:
    # `up` kills and restarts it (the Kubernetes probe runs `dermasentinel worker-alive --max-age`).
    worker_hung_seconds: float = Field(default=30.0, gt=0)
    resend_after_seconds: int = Field(default=30, ge=5)  # a lost wake-up (analysis, report) is re-sent
    s3_connect_timeout_seconds: float = Field(default=2.0, gt=0)
    s3_read_timeout_seconds: float = Field(default=5.0, gt=0)  # per socket read, not per object
    s3_retries: int = Field(default=1, ge=0, le=10)
    broker_connect_timeout_seconds: float = Field(default=2.0, gt=0)
    broker_socket_timeout_seconds: float = Field(default=2.0, gt=0)

    # Secrets, API keys and webhook fairness (docs/SECRETS_AND_WEBHOOKS.md).
    # Fernet keys, comma-separated: the first encrypts webhook secrets, all decrypt.
    secret_key: SecretStr = SecretStr("")
    webhook_connect_timeout_seconds: float = Field(default=3.0, gt=0, le=60)
    webhook_tenant_concurrency: int = Field(default=4, ge=1, le=256)
    webhook_test_rate: Annotated[InstanceOf[RateLimitItem], NoDecode] = limits.parse("10/minute")
    webhook_endpoints_per_tenant: int = Field(default=20, ge=1)
    webhook_secret_grace_hours: float = Field(default=24.0, ge=0, le=24 * 7)
    api_keys_per_tenant: int = Field(default=20, ge=1)

    # API under load, slow clients and hostile input (issue 10, docs/API_HARDENING.md).
    # Every process's engine: pool, connect timeout, and server-side timeouts (0 = off).
    db_pool_size: int = Field(default=5, ge=1, le=200)
    db_max_overflow: int = Field(default=10, ge=0, le=200)
    db_pool_timeout_seconds: float = Field(default=10.0, gt=0)
    db_connect_timeout_seconds: int = Field(default=5, ge=1, le=120)
    db_statement_timeout_ms: int = Field(default=0, ge=0)
    db_idle_in_transaction_timeout_ms: int = Field(default=600_000, ge=0)
    # The API process: requests holding a DB session at once (its pool is sized from this),
    # how long one may wait for a slot before 503, and its own server-side timeouts.
    api_db_concurrency: int = Field(default=16, ge=1, le=200)
    api_db_wait_seconds: float = Field(default=2.0, ge=0)
    # Issue 10 API fairness: requests (not uploads) past the edge at once per API process,
    # shared fairly between tenants; the rest wait their turn (up to api_db_wait_seconds, then 503).
    api_concurrency: int = Field(default=2, ge=1, le=1000)
    api_statement_timeout_ms: int = Field(default=15_000, ge=0)
    # Issue 11 API stalls: a request whose handler has not started its answer this long after
    # its body arrived gets 503 + Retry-After (api.middleware.RequestDeadline); 0 turns it off.
    request_deadline_seconds: float = Field(default=5.0, ge=0)
    api_idle_in_transaction_timeout_ms: int = Field(default=15_000, ge=0)
    api_threads: int = Field(default=64, ge=8, le=1024)
    api_max_json_bytes: int = Field(default=1024 * 1024, ge=1024)
    api_body_idle_timeout_seconds: float = Field(default=15.0, gt=0)
    api_body_read_timeout_seconds: float = Field(default=120.0, gt=0)
    api_decode_concurrency: int = Field(default=2, ge=1, le=64)
    api_decode_wait_seconds: float = Field(default=10.0, ge=0)
    max_decode_side: int = Field(default=4096, ge=512)  # JPEGs larger than this decode DCT-scaled
    auth_cache_seconds: float = Field(default=5.0, ge=0, le=60)  # revocation takes effect within this
    # Issue 25 live progress (GET /v1/analyses/{id}/events, /v1/batches/{id}/events; Server-Sent
    # Events): a heartbeat comment this often keeps proxies from closing a quiet stream; each API
    # process looks for changes to what its open streams follow this often, in one query for all
    # of them (api.live); a stream ends after SSE_MAX_STREAM_SECONDS and its client resumes with
    # Last-Event-ID (its key checked again).
    sse_heartbeat_seconds: float = Field(default=15.0, gt=0, le=300)
    sse_poll_seconds: float = Field(default=0.5, ge=0.05, le=30)
    sse_max_stream_seconds: float = Field(default=1800.0, ge=10)
    # Per tenant: requests ("50/second", several with ";"), uploads in flight at once, and
    # overrides by tenant id: {"<uuid>": {"requests": "200/second", "concurrent_uploads": 32}}.
    rate_limit: str = "50/second"
    concurrent_uploads: int = Field(default=8, ge=1, le=1000)
    rate_limits_per_tenant: str = ""  # JSON, read by api.ratelimit
    # Issue 22: API keys that turn out unknown, per client address, counted before a lookup
    # reaches the database ("5/second;60/minute"; over it: 429 before authentication).
    unknown_key_rate: str = "5/second;60/minute"
    # Issue 26: every request per client address, counted before authentication, shared by all API
    # replicas through Redis ("" turns it off). Generous: a clinic's whole site may share one
    # address (behind a proxy, set FORWARDED_ALLOW_IPS so the address is the client's).
    client_address_rate: str = "300/second"

    # Direct uploads and expiry (issue 13, docs/UPLOADS_AND_EXPIRY.md).
    upload_url_ttl_seconds: int = Field(default=300, ge=30, le=3600)  # presigned PUT lifetime
    upload_keep_hours: float = Field(default=24.0, gt=0)  # unused or rejected uploads are deleted after this
    max_cancel_after_seconds: int = Field(default=30 * 24 * 3600, ge=60)  # longest Cancel-After accepted
    # File-based batches (issue 25, README "Batches"): one archive per batch (zip or tar of images
    # with manifest.csv, or NDJSON rows of upload ids), PUT to a presigned URL and unpacked by the
    # ingest lane. Bounds: the archive's bytes (a zip or tar is copied to the worker's disk, never
    # held in memory), its rows, and each member (an image: MAX_UPLOAD_MB, as one upload).
    archive_max_mb: int = Field(default=2048, ge=1, le=102_400)
    archive_max_items: int = Field(default=10_000, ge=1, le=1_000_000)

    log_level: str = "INFO"
    # Observability (issue 13, docs/OBSERVABILITY.md): log lines as JSON, for a person, or
    # chosen by whether stdout is a terminal; the port a worker, or the API, serves its /metrics
    # on (None: not served; the API never serves them on its public port unless METRICS_TOKEN
    # is set, and then only to `Authorization: Bearer <token>`; issue 22).
    log_format: Literal["json", "console", "auto"] = "auto"
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    # Traces (issue 25) are configured by OpenTelemetry's own standard variables, not here:
    # OTEL_TRACES_EXPORTER (otlp | console; unset or none: off), OTEL_EXPORTER_OTLP_ENDPOINT,
    # OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER, OTEL_SDK_DISABLED (shared/tracing.py,
    # docs/OBSERVABILITY.md "Traces").
    metrics_token: SecretStr = SecretStr("")

    @field_validator("database_url")
    @classmethod
    def _psycopg_driver(cls, value: str) -> str:
        # Operators paste plain libpq URLs; SQLAlchemy needs the driver named.
        if value.startswith("postgresql://") or value.startswith("postgres://"):
            return "postgresql+psycopg://" + value.split("://", 1)[1]
        if value and not value.startswith("postgresql+"):
            raise ValueError("must be a PostgreSQL URL like postgresql://USER:PASSWORD@HOST:5432/DB")
        return value

    @field_validator("seg_size", "cls_size")
    @classmethod
    def _multiple_of_32(cls, value: int) -> int:
        # The U-Net and EfficientNet downsample by 32; other sizes fail at the first image.
        if value % 32:
            raise ValueError(f"must be a multiple of 32 (e.g. {value - value % 32 or 32}), not {value}")
        return value

    @property
    def report_hold_limit(self) -> float:
        """How long report requests are held (``REPORT_HOLD_SECONDS``), never more than half of
        ``RESEND_AFTER_SECONDS``: the sweeper re-sends requests older than that."""
        return min(self.report_hold_seconds, self.resend_after_seconds / 2)

    @model_validator(mode="after")
    def _refuse_open_transport(self) -> Settings:
        # Issue 10: links carrying PHI only over https, and no allow list that opens everything.
        if self.environment != "production":
            return self
        for name, url in (("PUBLIC_URL", self.public_url), ("API_URL", self.api_url)):
            if url.lower().startswith("http://"):
                raise ValueError(f"production refuses an http {ENV_PREFIX}{name}; serve it over https")
        for rule in self.webhook_allow_cidrs:
            if rule.network.prefixlen == 0:
                raise ValueError(
                    f"production refuses {str(rule)!r} in {ENV_PREFIX}WEBHOOK_ALLOW_CIDRS: "
                    "it lets webhooks reach every internal address; list the EHR hosts instead"
                )
        return self

    @model_validator(mode="after")
    def _refuse_default_secrets(self) -> Settings:
        if self.environment != "production":
            return self
        missing = [
            name
            for name, value in (
                ("DATABASE_URL", self.database_url),
                ("BROKER_URL", self.broker_url),
                ("S3_ENDPOINT", self.s3_endpoint),
                ("S3_ACCESS_KEY", self.s3_access_key),
                ("S3_SECRET_KEY", self.s3_secret_key.get_secret_value()),
            )
            if not value
        ]
        if missing:
            raise ValueError(
                "production needs these set explicitly: "
                + ", ".join(ENV_PREFIX + m for m in missing)
            )
        if self.s3_access_key in DEV_S3_KEYS or self.s3_secret_key.get_secret_value() in DEV_S3_KEYS:
            raise ValueError("production refuses the development S3 credentials; set real ones")
        if not self.secret_key.get_secret_value() or DEV_SECRET_KEY in self.secret_keys:
            raise ValueError(
                f"production needs {ENV_PREFIX}SECRET_KEY (Fernet keys, comma-separated; make one with "
                "`python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`)"
            )
        return self

    @field_validator("secret_key")
    @classmethod
    def _fernet_keys(cls, value: SecretStr) -> SecretStr:
        for key in _split_keys(value.get_secret_value()):
            try:
                Fernet(key)
            except ValueError:
                raise ValueError(
                    "SECRET_KEY entries must be Fernet keys (url-safe base64 of 32 bytes), comma-separated"
                ) from None
        return value

    @field_validator("webhook_test_rate", mode="before")
    @classmethod
    def _rate(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return limits.parse(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a rate like '10/minute' or '100 per hour'") from None

    @field_validator("webhook_retry_schedule", mode="before")
    @classmethod
    def _retry_schedule(cls, value: Any) -> Any:
        return tuple(parse_retry_schedule(value)) if isinstance(value, str) else value

    @field_validator("webhook_allow_cidrs", mode="before")
    @classmethod
    def _allow_cidrs(cls, value: Any) -> Any:
        return tuple(parse_allow_cidrs(value)) if isinstance(value, str) else value

    @field_serializer("webhook_retry_schedule", "webhook_allow_cidrs", "webhook_test_rate")
    def _as_setting_text(self, value: tuple[int, ...] | tuple[AllowRule, ...] | RateLimitItem) -> str:
        # The spelling the environment uses, so `as_env` hands child processes the same values.
        if isinstance(value, RateLimitItem):
            return str(value)
        return ",".join(str(item) for item in value)

    @property
    def secret_keys(self) -> list[str]:
        """Webhook-secret encryption keys, newest first; the development key when none is set."""
        return _split_keys(self.secret_key.get_secret_value()) or [DEV_SECRET_KEY]

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024

    @property
    def archive_max_bytes(self) -> int:
        return self.archive_max_mb * 1024 * 1024

    @property
    def stack_env_path(self) -> Path:
        return self.data_dir / "stack.env"

    def bucket(self, purpose: str) -> str:
        return f"{self.s3_bucket_prefix}-{purpose}"

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` parsed and checked like values from the environment
        (``model_copy(update=...)`` skips validation: a retry schedule given as text would stay text)."""
        return type(self)(**{**self.model_dump(), **changes}, _env_file=None)

    def as_env(self) -> dict[str, str]:
        """These settings as the DERMASENTINEL_* environment of a child process."""
        env = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            env[ENV_PREFIX + name.upper()] = str(value)
        return env


# Issue 25: where `up` records the stack it started, so client commands find it from any folder.
USER_CONFIG_NAME = "config.env"


def user_config_path() -> Path:
    """``$XDG_CONFIG_HOME/dermasentinel/config.env`` (``~/.config/dermasentinel/config.env``
    by default; the platform's user config folder elsewhere): the DATA_DIR and API_URL of the
    last stack ``dermasentinel up`` started. The API key stays in DATA_DIR/stack.env."""
    import platformdirs

    return platformdirs.user_config_path("dermasentinel", appauthor=False) / USER_CONFIG_NAME


def settings_files() -> tuple[Path, ...]:
    """The files behind the environment, lowest priority first (a variable set in the
    environment always wins): DATA_DIR/stack.env when DATA_DIR is set or this folder has
    one (``./.dermasentinel/stack.env``); else the user config ``up`` wrote and the
    stack.env of the DATA_DIR it names."""
    from_environment = Settings()
    local = from_environment.stack_env_path
    if "data_dir" in from_environment.model_fields_set or local.is_file():
        return (local,) if local.is_file() else ()
    user = user_config_path()
    if not user.is_file():
        return ()
    recorded = Settings(_env_file=user).stack_env_path
    return (user, recorded) if recorded.is_file() else (user,)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the environment, then the files of ``settings_files`` (the stack `up`
    started, found from any folder)."""
    files = settings_files()
    return Settings(_env_file=files) if files else Settings()
