"""per-request webhooks: webhook_endpoints.analysis_id (issue 15 API conveniences)

A `webhook_url` on POST /v1/analyses becomes a webhook endpoint row scoped to that one
analysis (deleted with it). The tenant-wide endpoints get a partial index of their own so the
fan-out, the list and the quota never read the per-request rows. See docs/API_CONTRACT.md.

Revision ID: 0008
Revises: 0007
"""
import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('webhook_endpoints', sa.Column('analysis_id', sa.UUID(), nullable=True))
    op.create_foreign_key(
        'fk_webhook_endpoints_analysis_id_analyses', 'webhook_endpoints', 'analyses',
        ['analysis_id'], ['id'], ondelete='CASCADE',
    )
    op.create_index('ix_webhook_endpoints_analysis_id', 'webhook_endpoints', ['analysis_id'], unique=True)
    op.create_index('ix_webhook_endpoints_tenant_shared', 'webhook_endpoints', ['tenant_id'], unique=False,
                    postgresql_where=sa.text('analysis_id IS NULL'))


def downgrade() -> None:
    op.execute('DELETE FROM webhook_endpoints WHERE analysis_id IS NOT NULL')
    op.drop_index('ix_webhook_endpoints_tenant_shared', table_name='webhook_endpoints')
    op.drop_index('ix_webhook_endpoints_analysis_id', table_name='webhook_endpoints')
    op.drop_constraint('fk_webhook_endpoints_analysis_id_analyses', 'webhook_endpoints', type_='foreignkey')
    op.drop_column('webhook_endpoints', 'analysis_id')
