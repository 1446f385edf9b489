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


# Settings are parsed once, when Settings is built: the code reads typed values, and a bad
# value stops the process at start-up with the variable's name instead of failing a send later.


def test_list_settings_from_the_environment_arrive_parsed(monkeypatch):
    monkeypatch.setenv("DERMASENTINEL_WEBHOOK_RETRY_SCHEDULE", "5, 300,1800 ")
    monkeypatch.setenv("DERMASENTINEL_WEBHOOK_ALLOW_CIDRS", "10.0.0.0/8, [fd00::/8]:443")
    monkeypatch.setenv("DERMASENTINEL_WEBHOOK_TEST_RATE", "3 per hour")
    settings = Settings(_env_file=None)
    assert settings.webhook_retry_schedule == (5, 300, 1800)
    assert [(str(rule.network), rule.port) for rule in settings.webhook_allow_cidrs] == [
        ("10.0.0.0/8", None), ("fd00::/8", 443),
    ]
    assert (settings.webhook_test_rate.amount, settings.webhook_test_rate.get_expiry()) == (3, 3600)


def test_defaults_need_no_parsing_and_an_empty_schedule_means_one_attempt():
    settings = Settings(_env_file=None)
    assert settings.webhook_retry_schedule[:2] == (5, 300) and settings.webhook_allow_cidrs == ()
    assert Settings(_env_file=None, webhook_retry_schedule="").webhook_retry_schedule == ()


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("WEBHOOK_RETRY_SCHEDULE", "5,,300", "WEBHOOK_RETRY_SCHEDULE entry ''"),
        ("WEBHOOK_RETRY_SCHEDULE", "5m", "not a whole number of seconds"),
        ("WEBHOOK_ALLOW_CIDRS", "10.0.0.0/8,intranet", "WEBHOOK_ALLOW_CIDRS entry 'intranet'"),
        ("WEBHOOK_TEST_RATE", "often", "not a rate like '10/minute'"),
    ],
)
def test_a_malformed_setting_fails_at_start_up_naming_it(monkeypatch, name, value, message):
    monkeypatch.setenv(f"DERMASENTINEL_{name}", value)
    with pytest.raises(ValidationError, match=message):
        Settings(_env_file=None)


def test_child_processes_get_the_same_values_back(monkeypatch):
    tenant = "3f2c4e1a-0000-4000-8000-000000000001"
    settings = Settings(
        _env_file=None,
        webhook_retry_schedule="1,2,3",
        webhook_allow_cidrs=f"127.0.0.0/8, 10.1.2.3:8443, [fd00::/8]:443, {tenant}@10.9.0.0/16:443",
        webhook_test_rate="7/minute",
    )
    env = settings.as_env()
    assert env["DERMASENTINEL_WEBHOOK_RETRY_SCHEDULE"] == "1,2,3"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    child = Settings(_env_file=None)
    assert child.webhook_retry_schedule == settings.webhook_retry_schedule
    assert child.webhook_allow_cidrs == settings.webhook_allow_cidrs
    assert child.webhook_test_rate == settings.webhook_test_rate


def test_replace_parses_what_model_copy_would_leave_as_text():
    settings = Settings(_env_file=None).replace(webhook_retry_schedule="1,1", api_keys_per_tenant=3)
    assert settings.webhook_retry_schedule == (1, 1) and settings.api_keys_per_tenant == 3
    with pytest.raises(ValidationError, match="multiple of 32"):
        settings.replace(seg_size=500)
