"""model_rollouts and shadow_outputs: shadow and canary rollout of a candidate model

Issue 24 (docs/MODELS.md): a shadow or canary of a candidate (model_rollouts, at most one
open per kind and mode) and the shadow's outputs beside the active model's (shadow_outputs,
one per analysis and shadowed model; erased with the analysis).

Revision ID: 0020
Revises: 0019
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0020'
down_revision = '0019'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'model_rollouts',
        sa.Column('id', sa.UUID(), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('mode', sa.String(length=16), nullable=False),
        sa.Column('model_id', sa.UUID(), nullable=False),
        sa.Column('incumbent_id', sa.UUID(), nullable=True),
        sa.Column('fraction', sa.Float(), nullable=False),
        sa.Column('started_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.Column('started_by', sa.String(length=200), nullable=False),
        sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('ended_reason', sa.String(length=32), nullable=True),
        sa.Column('ended_by', sa.String(length=200), nullable=True),
        sa.Column('verdict', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.ForeignKeyConstraint(['model_id'], ['models.id'], name=op.f('fk_model_rollouts_model_id_models'),
                                ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['incumbent_id'], ['models.id'], name=op.f('fk_model_rollouts_incumbent_id_models'),
                                ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_model_rollouts')),
    )
    op.create_index('uq_model_rollouts_open', 'model_rollouts', ['kind', 'mode'], unique=True,
                    postgresql_where=sa.text('ended_at IS NULL'))
    op.create_table(
        'shadow_outputs',
        sa.Column('id', sa.UUID(), nullable=False),
        sa.Column('analysis_id', sa.UUID(), nullable=False),
        sa.Column('tenant_id', sa.UUID(), nullable=False),
        sa.Column('model_id', sa.UUID(), nullable=False),
        sa.Column('model_version', sa.String(length=100), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('probability', sa.Float(), nullable=True),
        sa.Column('disposition', sa.String(length=32), nullable=True),
        sa.Column('rejection', sa.String(length=32), nullable=True),
        sa.Column('active_version', sa.String(length=100), nullable=True),
        sa.Column('active_status', sa.String(length=16), nullable=False),
        sa.Column('active_probability', sa.Float(), nullable=True),
        sa.Column('active_disposition', sa.String(length=32), nullable=True),
        sa.Column('skin_group', sa.String(length=32), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.ForeignKeyConstraint(['analysis_id'], ['analyses.id'], name=op.f('fk_shadow_outputs_analysis_id_analyses'),
                                ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_shadow_outputs_tenant_id_tenants'),
                                ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['model_id'], ['models.id'], name=op.f('fk_shadow_outputs_model_id_models'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_shadow_outputs')),
        sa.UniqueConstraint('analysis_id', 'model_id', name='uq_shadow_outputs_analysis_model'),
    )
    op.create_index('ix_shadow_outputs_model', 'shadow_outputs', ['model_id', 'created_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_shadow_outputs_model', table_name='shadow_outputs')
    op.drop_table('shadow_outputs')
    op.drop_index('uq_model_rollouts_open', table_name='model_rollouts')
    op.drop_table('model_rollouts')
