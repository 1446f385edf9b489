"""Webhook secrets at rest: Fernet under SECRET_KEY, several keys during a key rotation."""

import pytest
from cryptography.fernet import Fernet
from pydantic import ValidationError

from shared.config import DEV_SECRET_KEY, Settings
from shared.security import SecretBox, SecretDecryptionError, secret_box
from shared.webhook_signing import generate_secret

PROD = dict(
    _env_file=None,
    environment="production",
    database_url="postgresql://u:p@db/ds",
    broker_url="redis://redis:6379/0",
    s3_endpoint="minio:9000",
    s3_access_key="AKIAREAL",
    s3_secret_key="a-real-secret",
)


def test_a_sealed_secret_holds_no_plaintext_and_opens_again():
    box = SecretBox([Fernet.generate_key().decode()])
    secret = generate_secret()
    token = box.seal(secret)
    assert secret not in token and secret.removeprefix("whsec_") not in token
    assert box.seal(secret) != token, "every encryption is randomised"
    assert box.open(token) == secret


def test_key_rotation_new_key_first_old_tokens_still_open_and_reseal_under_the_new_key():
    old_key, new_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    secret = generate_secret()
    old_token = SecretBox([old_key]).seal(secret)
    rotating = secret_box(Settings(_env_file=None, secret_key=f"{new_key}, {old_key}"))
    assert rotating.open(old_token) == secret
    resealed = rotating.reseal(old_token)
    assert SecretBox([new_key]).open(resealed) == secret
    with pytest.raises(SecretDecryptionError, match="SECRET_KEY"):
        SecretBox([new_key]).open(old_token)


def test_development_falls_back_to_the_development_key():
    assert Settings(_env_file=None).secret_keys == [DEV_SECRET_KEY]


def test_production_refuses_a_missing_or_development_secret_key():
    with pytest.raises(ValidationError, match="SECRET_KEY"):
        Settings(**PROD)
    with pytest.raises(ValidationError, match="SECRET_KEY"):
        Settings(**PROD, secret_key=f"{Fernet.generate_key().decode()},{DEV_SECRET_KEY}")
    key = Fernet.generate_key().decode()
    assert Settings(**PROD, secret_key=key).secret_keys == [key]


@pytest.mark.parametrize("bad", ["hunter2", "not-base64!!", Fernet.generate_key().decode() + ",short"])
def test_secret_keys_must_be_fernet_keys(bad):
    with pytest.raises(ValidationError, match="Fernet keys"):
        Settings(_env_file=None, secret_key=bad)
