"""analyses.weights_status and analyses.shown_disposition: generated columns for batch counts

Batch progress, the triage summary and `batch.completed` count dispositions (issue 21). Read
from the stored JSON, that made progress read every succeeded row (0.9 ms -> 14.9 ms p50 for a
10,000-item batch); Postgres now keeps the weights status and the disposition every surface
shows in stored generated columns, and the batch index covers them, so the counts come from
the index alone. Adding a stored generated column rewrites the table once (under a lock).

Revision ID: 0010
Revises: 0009
"""
import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

# As in shared/tables.py when this was written (a migration keeps its own copy).
WEIGHTS_STATUS_SQL = "model ->> 'weights'"
SHOWN_DISPOSITION_SQL = (
    "CASE WHEN status = 'succeeded' THEN "
    "CASE WHEN (model ->> 'weights') IS DISTINCT FROM 'trained' THEN 'clinician_review' "
    "ELSE result ->> 'disposition' END END"
)


def upgrade() -> None:
    op.add_column('analyses', sa.Column('weights_status', sa.Text(),
                                        sa.Computed(WEIGHTS_STATUS_SQL, persisted=True), nullable=True))
    op.add_column('analyses', sa.Column('shown_disposition', sa.Text(),
                                        sa.Computed(SHOWN_DISPOSITION_SQL, persisted=True), nullable=True))
    op.create_index('ix_analyses_batch_tally', 'analyses',
                    ['batch_id', 'status', 'shown_disposition', 'weights_status'], unique=False)
    op.drop_index('ix_analyses_batch_status', table_name='analyses')


def downgrade() -> None:
    op.create_index('ix_analyses_batch_status', 'analyses', ['batch_id', 'status'], unique=False)
    op.drop_index('ix_analyses_batch_tally', table_name='analyses')
    op.drop_column('analyses', 'shown_disposition')
    op.drop_column('analyses', 'weights_status')
