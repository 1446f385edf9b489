"""index analyses by (batch_id, completed_at) for batch throughput and ETA

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 10:00:00
"""
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_analyses_batch_completed', 'analyses', ['batch_id', 'completed_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_analyses_batch_completed', table_name='analyses')
