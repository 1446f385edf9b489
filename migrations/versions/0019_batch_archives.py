"""batch_archives, batch_row_errors and analyses.batch_row

Issue 25 (README "Batches", docs/DECISIONS.md): a batch takes one archive (zip or tar of images
with manifest.csv, or NDJSON rows of upload ids) by presigned PUT; the ingest lane unpacks it
into items, each keyed by its row (unique per batch, so a retried unpack never makes a row's
item twice), and records each refused row for the batch's errors file.

Revision ID: 0019
Revises: 0018
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0019'
down_revision = '0018'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('analyses', sa.Column('batch_row', sa.Integer(), nullable=True))
    op.create_index('uq_analyses_batch_row', 'analyses', ['batch_id', 'batch_row'], unique=True,
                    postgresql_where=sa.text('batch_row IS NOT NULL'))
    op.create_table(
        'batch_archives',
        sa.Column('id', sa.UUID(), nullable=False),
        sa.Column('batch_id', sa.UUID(), nullable=False),
        sa.Column('tenant_id', sa.UUID(), nullable=False),
        sa.Column('format', sa.String(length=8), nullable=False),
        sa.Column('object_key', sa.String(length=300), nullable=False),
        sa.Column('url_expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('ingest_requested_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('next_row', sa.Integer(), server_default=sa.text('0'), nullable=False),
        sa.Column('items', sa.Integer(), server_default=sa.text('0'), nullable=False),
        sa.Column('refused', sa.Integer(), server_default=sa.text('0'), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['batch_id'], ['batches.id'], name=op.f('fk_batch_archives_batch_id_batches'),
                                ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_batch_archives_tenant_id_tenants'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_batch_archives')),
        sa.UniqueConstraint('batch_id', name=op.f('uq_batch_archives_batch_id')),
    )
    op.create_index('ix_batch_archives_ingest_pending', 'batch_archives', ['ingest_requested_at'], unique=False,
                    postgresql_where=sa.text('ingest_requested_at IS NOT NULL'))
    op.create_table(
        'batch_row_errors',
        sa.Column('batch_id', sa.UUID(), nullable=False),
        sa.Column('row', sa.Integer(), nullable=False),
        sa.Column('tenant_id', sa.UUID(), nullable=False),
        sa.Column('file', sa.String(length=300), nullable=True),
        sa.Column('code', sa.String(length=64), nullable=False),
        sa.Column('status', sa.Integer(), nullable=False),
        sa.Column('title', sa.String(length=200), nullable=False),
        sa.Column('detail', sa.Text(), nullable=False),
        sa.Column('errors', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.ForeignKeyConstraint(['batch_id'], ['batches.id'], name=op.f('fk_batch_row_errors_batch_id_batches'),
                                ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_batch_row_errors_tenant_id_tenants'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('batch_id', 'row', name=op.f('pk_batch_row_errors')),
    )


def downgrade() -> None:
    op.drop_table('batch_row_errors')
    op.drop_index('ix_batch_archives_ingest_pending', table_name='batch_archives')
    op.drop_table('batch_archives')
    op.drop_index('uq_analyses_batch_row', table_name='analyses')
    op.drop_column('analyses', 'batch_row')
