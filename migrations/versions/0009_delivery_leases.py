"""webhook delivery leases: webhook_deliveries.leased_at

When the delivery's current wake-up was sent, or its current attempt claimed; NULL while it
waits for `next_attempt_at`. `dispatch_due` re-wakes a delivery leased over
`RESEND_AFTER_SECONDS` ago when the `webhooks` lane is empty (its wake-up, or the worker
sending it, is gone) instead of waiting out the 2-minute lease. See docs/FAULTS.md.

Revision ID: 0009
Revises: 0008
"""
import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('webhook_deliveries', sa.Column('leased_at', sa.DateTime(timezone=True), nullable=True))
    op.create_index('ix_webhook_deliveries_leased', 'webhook_deliveries', ['leased_at'], unique=False,
                    postgresql_where=sa.text("status = 'pending' AND leased_at IS NOT NULL"))


def downgrade() -> None:
    op.drop_index('ix_webhook_deliveries_leased', table_name='webhook_deliveries')
    op.drop_column('webhook_deliveries', 'leased_at')
