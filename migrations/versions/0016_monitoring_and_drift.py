"""model_references, drift_episodes and the monitoring index of analyses

Issue 24 (docs/MONITORING.md): monitoring compares each (tenant, model version)'s recent
probabilities with the distribution recorded when the model was evaluated (model_references,
keyed by the version results name); a drift detected opens an episode (drift_episodes, one
open per tenant and version) that an operator clears, and whose `review_all` action is the
tenant's safety mode. The window of a (tenant, version) is read backwards from
ix_analyses_monitor with a LIMIT.

Written beside issue 24's model-card work (migration 0015): it revises this branch's head
and is relinked after 0015 when the branches merge.

Revision ID: 0016
Revises: 0015
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'model_references',
        sa.Column('model_version', sa.String(length=100), nullable=False),
        sa.Column('fusion_sha256', sa.String(length=64), nullable=True),
        sa.Column('reference', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column('recorded_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.PrimaryKeyConstraint('model_version', name=op.f('pk_model_references')),
    )
    op.create_table(
        'drift_episodes',
        sa.Column('id', sa.UUID(), nullable=False),
        sa.Column('tenant_id', sa.UUID(), nullable=False),
        sa.Column('model_version', sa.String(length=100), nullable=False),
        sa.Column('opened_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.Column('action', sa.String(length=16), nullable=False),
        sa.Column('measures', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column('event_id', sa.String(length=64), nullable=True),
        sa.Column('cleared_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('cleared_by', sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_drift_episodes_tenant_id_tenants'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_drift_episodes')),
    )
    op.create_index('uq_drift_episodes_open', 'drift_episodes', ['tenant_id', 'model_version'], unique=True,
                    postgresql_where=sa.text('cleared_at IS NULL'))
    op.create_index('ix_analyses_monitor', 'analyses', ['tenant_id', sa.text("(model ->> 'version')"), 'completed_at'],
                    unique=False, postgresql_where=sa.text("status IN ('succeeded', 'rejected', 'failed')"))


def downgrade() -> None:
    op.drop_index('ix_analyses_monitor', table_name='analyses')
    op.drop_index('uq_drift_episodes_open', table_name='drift_episodes')
    op.drop_table('drift_episodes')
    op.drop_table('model_references')
