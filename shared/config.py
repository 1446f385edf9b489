"""The one settings object. Nothing else in the project reads ``os.environ``.

Every variable carries the ``DERMASENTINEL_`` prefix. ``dermasentinel up`` writes the
settings of the stack it started to ``DATA_DIR/stack.env``; when that file exists it is
read as a lower-priority source, so client commands reach that stack without exports.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "DERMASENTINEL_"
DEV_S3_KEYS = {"minioadmin", "dermasentinel-dev"}


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
    presign_ttl_seconds: int = Field(default=600, ge=30, le=900)

    api_url: str = ""
    api_key: SecretStr = SecretStr("")
    public_url: str = ""

    model_dir: Path | None = None
    segmenter: Literal["auto", "unet", "classical"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    fusion_seed: int = 0
    seg_size: int = Field(default=512, ge=64, le=2048)
    cls_size: int = Field(default=512, ge=64, le=2048)
    tta_views: int = Field(default=5, ge=1, le=8)
    blur_threshold: float = 100.0
    min_coverage: float = 0.01
    max_upload_mb: int = Field(default=20, ge=1, le=200)
    max_image_pixels: int = 40_000_000
    gpu_batch_size: int = Field(default=8, ge=1, le=64)
    # Gate 2 images per forward pass, views included; unset: 64 on CUDA, one image's views
    # on CPU (measured: large CPU batches are slower per image and use ~2.5x the memory).
    max_forward_batch: int | None = Field(default=None, ge=1, le=512)

    max_attempts: int = Field(default=3, ge=1, le=20)
    stuck_after_seconds: int = Field(default=300, ge=5)
    sweep_interval_seconds: float = Field(default=30.0, gt=0)
    idempotency_ttl_hours: int = Field(default=48, ge=24)
    retention_days: int = Field(default=0, ge=0)

    webhook_retry_schedule: str = "5,300,1800,7200,18000,36000,36000,50400,72000,86400"
    webhook_allow_cidrs: str = ""
    webhook_timeout_seconds: float = 15.0
    webhook_disable_after_days: int = 5
    webhook_dispatch_interval_seconds: float = 5.0

    log_level: str = "INFO"

    @field_validator("database_url")
    @classmethod
    def _psycopg_driver(cls, value: str) -> str:
        # Operators paste plain libpq URLs; SQLAlchemy needs the driver named.
        if value.startswith("postgresql://") or value.startswith("postgres://"):
            return "postgresql+psycopg://" + value.split("://", 1)[1]
        return value

    @field_validator("seg_size", "cls_size")
    @classmethod
    def _multiple_of_32(cls, value: int) -> int:
        # The U-Net and EfficientNet downsample by 32; other sizes fail at the first image.
        if value % 32:
            raise ValueError(f"must be a multiple of 32 (e.g. {value - value % 32 or 32}), not {value}")
        return value

    @model_validator(mode="after")
    def _refuse_default_secrets(self) -> "Settings":
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
        return self

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024

    @property
    def stack_env_path(self) -> Path:
        return self.data_dir / "stack.env"

    def bucket(self, purpose: str) -> str:
        return f"{self.s3_bucket_prefix}-{purpose}"

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


def _stack_env_file() -> Path | None:
    settings = Settings()
    path = settings.stack_env_path
    return path if path.is_file() else None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the environment, falling back to ``DATA_DIR/stack.env`` when present."""
    stack_env = _stack_env_file()
    if stack_env is None:
        return Settings()
    return Settings(_env_file=stack_env)
