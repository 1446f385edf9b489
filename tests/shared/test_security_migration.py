"""Migration 0004 encrypts the plaintext webhook secrets already in the database."""

import uuid

import sqlalchemy as sa
from alembic import command

from shared.config import get_settings
from shared.migrate import alembic_config, scratch_database, upgrade
from shared.security import secret_box


def test_existing_plaintext_secrets_are_encrypted_and_the_plaintext_column_dropped(services):
    plaintext = "whsec_" + "QUJD" * 11
    with scratch_database(services["database_url"], "dsmig") as url:
        command.downgrade(alembic_config(url), "0003")
        engine = sa.create_engine(url)
        tenant_id, endpoint_id = uuid.uuid4(), uuid.uuid4()
        with engine.begin() as connection:
            connection.execute(sa.text("INSERT INTO tenants (id, name) VALUES (:id, 'legacy')"), {"id": tenant_id})
            connection.execute(
                sa.text("INSERT INTO webhook_endpoints (id, tenant_id, url, events, secret, enabled) "
                        "VALUES (:id, :tenant, 'https://ehr.example/hook', '[]', :secret, true)"),
                {"id": endpoint_id, "tenant": tenant_id, "secret": plaintext},
            )
        upgrade(url, "0004")
        with engine.connect() as connection:
            columns = {c["name"] for c in sa.inspect(connection).get_columns("webhook_endpoints")}
            token = connection.execute(sa.text("SELECT secret_encrypted FROM webhook_endpoints")).scalar_one()
        assert "secret" not in columns
        assert plaintext not in token and plaintext[6:] not in token
        assert secret_box(get_settings()).open(token) == plaintext

        command.downgrade(alembic_config(url), "0003")
        with engine.connect() as connection:
            restored = connection.execute(sa.text("SELECT secret FROM webhook_endpoints")).scalar_one()
        assert restored == plaintext
        engine.dispose()


def test_reencrypt_moves_every_secret_to_the_first_key(context, tenant_key):
    from cryptography.fernet import Fernet

    from shared.db import session_scope
    from shared.security import SecretBox, reencrypt_webhook_secrets
    from shared.tables import WebhookEndpoint

    old_key = Fernet.generate_key().decode()
    with session_scope(context.session_factory) as session:
        endpoint = WebhookEndpoint(tenant_id=tenant_key[0], url="https://ehr.example/h", events=[], enabled=True,
                                   secret_encrypted=SecretBox([old_key]).seal("whsec_current"),
                                   previous_secret_encrypted=SecretBox([old_key]).seal("whsec_previous"))
        session.add(endpoint)
    # The configured key stays first, so every other endpoint of the session stays readable.
    configured = context.settings.secret_keys
    with session_scope(context.session_factory) as session:
        assert reencrypt_webhook_secrets(session, SecretBox([*configured, old_key])) >= 1
    with context.session_factory() as session:
        stored = session.get(WebhookEndpoint, endpoint.id)
    without_old = SecretBox(configured)
    assert without_old.open(stored.secret_encrypted) == "whsec_current"
    assert without_old.open(stored.previous_secret_encrypted) == "whsec_previous"
