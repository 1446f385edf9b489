"""direct uploads and deadlines: the uploads table, per-analysis and per-batch deadlines

See docs/UPLOADS_AND_EXPIRY.md.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 13:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'uploads',
        sa.Column('id', sa.UUID(), nullable=False),
        sa.Column('tenant_id', sa.UUID(), nullable=False),
        sa.Column('object_key', sa.String(length=300), nullable=False),
        sa.Column('content_type', sa.String(length=32), nullable=False),
        sa.Column('url_expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('usable_until', sa.DateTime(timezone=True), nullable=False),
        sa.Column('used_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('analysis_id', sa.UUID(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name='fk_uploads_tenant_id_tenants', ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name='pk_uploads'),
        sa.UniqueConstraint('analysis_id', name='uq_uploads_analysis_id'),
    )
    op.create_index('ix_uploads_usable_until', 'uploads', ['usable_until'], unique=False)

    op.add_column('batches', sa.Column('deadline_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('batches', sa.Column('canceled_at', sa.DateTime(timezone=True), nullable=True))

    op.add_column('analyses', sa.Column('deadline_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('analyses', sa.Column('cancel_reason', sa.String(length=32), nullable=True))
    op.add_column('analyses', sa.Column('upload_id', sa.UUID(), nullable=True))
    op.add_column('analyses', sa.Column('ingest_requested_at', sa.DateTime(timezone=True), nullable=True))
    op.create_index('ix_analyses_deadline', 'analyses', ['deadline_at'], unique=False,
                    postgresql_where=sa.text("status IN ('queued', 'processing') AND deadline_at IS NOT NULL"))
    op.create_index('ix_analyses_ingest_pending', 'analyses', ['ingest_requested_at'], unique=False,
                    postgresql_where=sa.text('ingest_requested_at IS NOT NULL'))


def downgrade() -> None:
    op.drop_index('ix_analyses_ingest_pending', table_name='analyses')
    op.drop_index('ix_analyses_deadline', table_name='analyses')
    op.drop_column('analyses', 'ingest_requested_at')
    op.drop_column('analyses', 'upload_id')
    op.drop_column('analyses', 'cancel_reason')
    op.drop_column('analyses', 'deadline_at')
    op.drop_column('batches', 'canceled_at')
    op.drop_column('batches', 'deadline_at')
    op.drop_index('ix_uploads_usable_until', table_name='uploads')
    op.drop_table('uploads')
