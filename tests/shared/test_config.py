import pytest
from pydantic import ValidationError

from shared.config import Settings

PROD = dict(
    _env_file=None,
    environment="production",
    database_url="postgresql://u:p@db/ds",
    broker_url="redis://redis:6379/0",
    s3_endpoint="minio:9000",
    s3_access_key="AKIAREAL",
    s3_secret_key="a-real-secret",
    secret_key="5HrhB6lMSyD6o2YcQ0B9mBq3t1qRrXkB1M0o7bqUeNw=",
)


def test_production_accepts_explicit_settings():
    settings = Settings(**PROD)
    assert settings.database_url.startswith("postgresql+psycopg://")


@pytest.mark.parametrize("missing", ["database_url", "broker_url", "s3_endpoint", "s3_access_key", "s3_secret_key"])
def test_production_refuses_missing_settings(missing):
    with pytest.raises(ValidationError, match=missing.upper()):
        Settings(**{**PROD, missing: ""})


def test_production_refuses_development_credentials():
    with pytest.raises(ValidationError, match="development S3 credentials"):
        Settings(**{**PROD, "s3_access_key": "minioadmin", "s3_secret_key": "minioadmin"})


def test_development_needs_nothing():
    assert Settings(_env_file=None).environment == "development"


def test_env_prefix_is_read(monkeypatch):
    monkeypatch.setenv("DERMASENTINEL_MAX_UPLOAD_MB", "7")
    monkeypatch.setenv("DERMASENTINEL_SEGMENTER", "classical")
    settings = Settings(_env_file=None)
    assert settings.max_upload_bytes == 7 * 1024 * 1024
    assert settings.segmenter == "classical"


def test_presigned_links_cannot_outlive_fifteen_minutes():
    with pytest.raises(ValidationError):
        Settings(_env_file=None, presign_ttl_seconds=3600)


def test_model_sizes_must_be_multiples_of_32():
    with pytest.raises(ValidationError, match="multiple of 32"):
        Settings(_env_file=None, seg_size=500)
    assert Settings(_env_file=None, cls_size=320).cls_size == 320
