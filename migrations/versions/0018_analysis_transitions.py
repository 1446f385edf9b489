"""analysis_transitions: every state change of an analysis, for live progress (issue 25)

`GET /v1/analyses/{id}/events` and `GET /v1/batches/{id}/events` (Server-Sent Events) replay
an analysis' state changes in order and resume after the last one a client saw. A trigger on
`analyses` appends one row per change of `status` or `stage`, in the transaction that made it,
whoever writes the row (API, workers, sweeper, a migration, a test): nothing can change state
without its row, and a rolled-back change leaves none. Per analysis, ids grow in commit order
(the row lock on the analysis orders its updates), so an id is a resume point. No PHI: ids,
status, stage and time. Rows go with their analysis (erasure, retention, tenant deletion).

Analyses still active when this runs get one row for their current state, so a stream opened
on them starts from it; final ones without rows are shown by the stream from their own row.

Revision ID: 0018
Revises: 0017
"""
import sqlalchemy as sa
from alembic import op

revision = '0018'
down_revision = '0017'
branch_labels = None
depends_on = None

RECORD_TRANSITIONS = """
CREATE FUNCTION record_analysis_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO analysis_transitions (analysis_id, batch_id, status, stage)
    VALUES (NEW.id, NEW.batch_id, NEW.status, NEW.stage);
    RETURN NULL;
END
$$;
CREATE TRIGGER analyses_transition_insert AFTER INSERT ON analyses
    FOR EACH ROW EXECUTE FUNCTION record_analysis_transition();
CREATE TRIGGER analyses_transition_update AFTER UPDATE OF status, stage ON analyses
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.stage IS DISTINCT FROM NEW.stage)
    EXECUTE FUNCTION record_analysis_transition();
INSERT INTO analysis_transitions (analysis_id, batch_id, status, stage)
    SELECT id, batch_id, status, stage FROM analyses WHERE status IN ('queued', 'processing') ORDER BY created_at;
"""


def upgrade() -> None:
    op.create_table(
        'analysis_transitions',
        sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column('analysis_id', sa.UUID(), nullable=False),
        sa.Column('batch_id', sa.UUID(), nullable=True),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('stage', sa.String(length=32), nullable=True),
        sa.Column('at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.ForeignKeyConstraint(['analysis_id'], ['analyses.id'],
                                name=op.f('fk_analysis_transitions_analysis_id_analyses'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_analysis_transitions')),
    )
    op.create_index('ix_analysis_transitions_analysis', 'analysis_transitions', ['analysis_id', 'id'])
    op.create_index('ix_analysis_transitions_batch', 'analysis_transitions', ['batch_id', 'id'],
                    postgresql_where=sa.text('batch_id IS NOT NULL'))
    op.execute(RECORD_TRANSITIONS)


def downgrade() -> None:
    op.execute(
        "DROP TRIGGER analyses_transition_update ON analyses; DROP TRIGGER analyses_transition_insert ON analyses; "
        "DROP FUNCTION record_analysis_transition()"
    )
    op.drop_index('ix_analysis_transitions_batch', table_name='analysis_transitions')
    op.drop_index('ix_analysis_transitions_analysis', table_name='analysis_transitions')
    op.drop_table('analysis_transitions')
