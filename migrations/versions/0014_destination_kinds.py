"""webhook_endpoints.kind and .config: the outbox delivers to more than signed webhooks

Issue 23: FHIR Subscriptions (rest-hook), EHR write-back (SMART Backend Services) and DICOMweb
STOW-RS travel through the same outbox, retry schedule, SSRF guard and delivery log as the
webhooks; an endpoint's `kind` says which, its `config` what that kind needs. Existing rows
are webhooks.

Revision ID: 0014
Revises: 0013
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('webhook_endpoints', sa.Column('kind', sa.String(length=32), server_default=sa.text("'webhook'"),
                                                 nullable=False))
    op.add_column('webhook_endpoints', sa.Column('config', postgresql.JSONB(astext_type=sa.Text()),
                                                 server_default=sa.text("'{}'::jsonb"), nullable=False))


def downgrade() -> None:
    op.drop_column('webhook_endpoints', 'config')
    op.drop_column('webhook_endpoints', 'kind')
