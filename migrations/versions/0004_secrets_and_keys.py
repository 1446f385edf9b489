"""secrets at rest and API key management

Webhook signing secrets move from a plaintext column to Fernet ciphertext under
DERMASENTINEL_SECRET_KEY (the first key when several are set). Existing rows are encrypted
here, with the key the migrating process is configured with; outside production that is
the development key when none is set (production settings refuse to load without one).
Downgrade decrypts them back. See docs/SECRETS_AND_WEBHOOKS.md.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 12:10:00
"""
import sqlalchemy as sa
from alembic import op

from shared.config import get_settings
from shared.security import secret_box

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

endpoints = sa.table(
    'webhook_endpoints',
    sa.column('id', sa.Uuid),
    sa.column('secret', sa.String),
    sa.column('secret_encrypted', sa.Text),
)


def upgrade() -> None:
    op.add_column('api_keys', sa.Column('last_used_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('webhook_endpoints', sa.Column('secret_encrypted', sa.Text(), nullable=True))
    op.add_column('webhook_endpoints', sa.Column('previous_secret_encrypted', sa.Text(), nullable=True))
    op.add_column(
        'webhook_endpoints', sa.Column('previous_secret_expires_at', sa.DateTime(timezone=True), nullable=True)
    )
    op.alter_column('webhook_attempts', 'latency_ms', existing_type=sa.Float(), nullable=True)
    # Bodies logged before deliveries to internal targets went blind may hold internal
    # responses; which rows those are is not recorded, so every old excerpt goes.
    op.execute('UPDATE webhook_attempts SET response_excerpt = NULL WHERE response_excerpt IS NOT NULL')

    connection = op.get_bind()
    rows = connection.execute(sa.select(endpoints.c.id, endpoints.c.secret)).all()
    if rows:
        box = secret_box(get_settings())
        for endpoint_id, secret in rows:
            connection.execute(
                endpoints.update().where(endpoints.c.id == endpoint_id).values(secret_encrypted=box.seal(secret))
            )
    op.alter_column('webhook_endpoints', 'secret_encrypted', existing_type=sa.Text(), nullable=False)
    op.drop_column('webhook_endpoints', 'secret')


def downgrade() -> None:
    op.add_column('webhook_endpoints', sa.Column('secret', sa.String(length=128), nullable=True))
    connection = op.get_bind()
    rows = connection.execute(sa.select(endpoints.c.id, endpoints.c.secret_encrypted)).all()
    if rows:
        box = secret_box(get_settings())
        for endpoint_id, token in rows:
            connection.execute(
                endpoints.update().where(endpoints.c.id == endpoint_id).values(secret=box.open(token))
            )
    op.alter_column('webhook_endpoints', 'secret', existing_type=sa.String(length=128), nullable=False)
    op.drop_column('webhook_endpoints', 'previous_secret_expires_at')
    op.drop_column('webhook_endpoints', 'previous_secret_encrypted')
    op.drop_column('webhook_endpoints', 'secret_encrypted')
    op.execute('UPDATE webhook_attempts SET latency_ms = 0 WHERE latency_ms IS NULL')
    op.alter_column('webhook_attempts', 'latency_ms', existing_type=sa.Float(), nullable=False)
    op.drop_column('api_keys', 'last_used_at')
