"""model registry: the models table and analyses.reprocessed_from

See docs/MODELS.md.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28 14:00:00
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'models',
        sa.Column('id', sa.UUID(), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('version', sa.String(length=100), nullable=False),
        sa.Column('sha256', sa.String(length=64), nullable=False),
        sa.Column('object_key', sa.String(length=300), nullable=False),
        sa.Column('card', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column('metrics', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column('threshold', sa.Float(), nullable=True),
        sa.Column('temperature', sa.Float(), nullable=True),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.Column('activated_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('id', name='pk_models'),
        sa.UniqueConstraint('kind', 'version', name='uq_models_kind_version'),
        sa.UniqueConstraint('kind', 'sha256', name='uq_models_kind_sha256'),
    )
    op.create_index('uq_models_active_kind', 'models', ['kind'], unique=True,
                    postgresql_where=sa.text("status = 'active'"))
    op.add_column('analyses', sa.Column('reprocessed_from', sa.UUID(), nullable=True))
    op.create_foreign_key('fk_analyses_reprocessed_from_analyses', 'analyses', 'analyses',
                          ['reprocessed_from'], ['id'], ondelete='SET NULL')
    op.create_index('ix_analyses_reprocessed_from', 'analyses', ['reprocessed_from'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_analyses_reprocessed_from', table_name='analyses')
    op.drop_constraint('fk_analyses_reprocessed_from_analyses', 'analyses', type_='foreignkey')
    op.drop_column('analyses', 'reprocessed_from')
    op.drop_index('uq_models_active_kind', table_name='models')
    op.drop_table('models')
