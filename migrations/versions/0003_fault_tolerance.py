"""fault tolerance: columns the sweeper and transient-error backoff need

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 12:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('analyses', sa.Column('transient_retries', sa.Integer(), server_default=sa.text('0'), nullable=False))
    op.add_column('analyses', sa.Column('not_before', sa.DateTime(timezone=True), nullable=True))
    op.add_column('analyses', sa.Column('claimed_by', sa.String(length=200), nullable=True))
    op.add_column('analyses', sa.Column('report_requested_at', sa.DateTime(timezone=True), nullable=True))
    op.create_index('ix_analyses_retry_due', 'analyses', ['not_before'], unique=False,
                    postgresql_where=sa.text("status = 'queued' AND not_before IS NOT NULL"))
    op.create_index('ix_analyses_report_pending', 'analyses', ['report_requested_at'], unique=False,
                    postgresql_where=sa.text('report_requested_at IS NOT NULL'))


def downgrade() -> None:
    op.drop_index('ix_analyses_report_pending', table_name='analyses')
    op.drop_index('ix_analyses_retry_due', table_name='analyses')
    op.drop_column('analyses', 'report_requested_at')
    op.drop_column('analyses', 'claimed_by')
    op.drop_column('analyses', 'not_before')
    op.drop_column('analyses', 'transient_retries')
