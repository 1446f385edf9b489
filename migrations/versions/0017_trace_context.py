"""analyses.traceparent and events.traceparent: the W3C trace context crosses the outbox

Issue 25 (docs/OBSERVABILITY.md "Traces"): the `traceparent` of the request that created a job
is kept on its row, and each event keeps the one of the span that recorded it, so a worker
that claims the job after a retry or a sweep, and every delivery of its events, continue the
same trace. 55 characters (version 00); NULL for rows written before, or without a trace.

Revision ID: 0017
Revises: 0016
"""
import sqlalchemy as sa
from alembic import op

revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('analyses', sa.Column('traceparent', sa.String(length=55), nullable=True))
    op.add_column('events', sa.Column('traceparent', sa.String(length=55), nullable=True))


def downgrade() -> None:
    op.drop_column('events', 'traceparent')
    op.drop_column('analyses', 'traceparent')
