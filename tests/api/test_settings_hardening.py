"""Production settings refuse what would expose PHI: http links and an allow list open to all."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.config import Settings

PRODUCTION = dict(
    _env_file=None,
    environment="production",
    database_url="postgresql://db/ds",
    broker_url="redis://redis:6379/0",
    s3_endpoint="s3.example.org",
    s3_access_key="AKIAREALKEY",
    s3_secret_key="a-real-secret-key",
    secret_key="x4Zc8Yq0bK4n2b7kqvE6vP3w1J0hQm5tY8uR9sA2dLc=",
    public_url="https://derma.example.org",
)


def test_production_with_https_and_named_hosts_is_accepted():
    assert Settings(**PRODUCTION, webhook_allow_cidrs="10.1.2.0/24").public_url.startswith("https")


@pytest.mark.parametrize(
    "update, words",
    [
        ({"public_url": "http://derma.example.org"}, "PUBLIC_URL"),
        ({"api_url": "http://derma.example.org"}, "API_URL"),
        ({"webhook_allow_cidrs": "10.0.0.0/8,0.0.0.0/0"}, "0.0.0.0/0"),
        ({"webhook_allow_cidrs": "::/0"}, "::/0"),
    ],
)
def test_production_refuses_http_links_and_open_allow_lists(update, words):
    with pytest.raises(ValidationError, match=words.replace(".", r"\.")):
        Settings(**{**PRODUCTION, **update})


def test_development_allows_http_and_presigned_links_are_short_by_default():
    settings = Settings(_env_file=None, public_url="http://localhost:8000", webhook_allow_cidrs="0.0.0.0/0")
    assert settings.presign_ttl_seconds == 120
