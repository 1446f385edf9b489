"""analysis questions: a clinician's questions about an analysis and the answers (issue 15)

See docs/CLINICIANS.md.

Revision ID: 0007
Revises: 0006
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'analysis_questions',
        sa.Column('id', sa.UUID(), nullable=False),
        sa.Column('analysis_id', sa.UUID(), nullable=False),
        sa.Column('tenant_id', sa.UUID(), nullable=False),
        sa.Column('question', sa.Text(), nullable=False),
        sa.Column('answer', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column('model_answer', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.ForeignKeyConstraint(
            ['analysis_id'], ['analyses.id'], name='fk_analysis_questions_analysis_id_analyses', ondelete='CASCADE'
        ),
        sa.ForeignKeyConstraint(
            ['tenant_id'], ['tenants.id'], name='fk_analysis_questions_tenant_id_tenants', ondelete='CASCADE'
        ),
        sa.PrimaryKeyConstraint('id', name='pk_analysis_questions'),
    )
    op.create_index(
        'ix_analysis_questions_analysis_created', 'analysis_questions', ['analysis_id', 'created_at'], unique=False
    )


def downgrade() -> None:
    op.drop_index('ix_analysis_questions_analysis_created', table_name='analysis_questions')
    op.drop_table('analysis_questions')
