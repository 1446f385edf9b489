"""models.evaluations and models.governance: stored evaluations, acceptance checks, overrides

Issue 24: `dermasentinel evaluate --fusion-model VERSION` stores its report against the
registered model, keyed by the evaluation set's sha256 (`evaluations`); `models activate
--acceptance FILE [--override REASON]` records each activation's acceptance check, the
criteria that failed and the override reason (`governance`). The model card
(`GET /v1/models/{id}/card`) is built from the row, its training card and these.

Revision ID: 0015
Revises: 0014
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0015'
# The brief named '0011'; this branch already holds 0014 (issue 23, merged), which revises
# 0011, so 0015 follows it to keep one head. Relink at merge if the chain differs.
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('models', sa.Column('evaluations', postgresql.JSONB(astext_type=sa.Text()),
                                      server_default=sa.text("'{}'::jsonb"), nullable=False))
    op.add_column('models', sa.Column('governance', postgresql.JSONB(astext_type=sa.Text()),
                                      server_default=sa.text("'{}'::jsonb"), nullable=False))


def downgrade() -> None:
    op.drop_column('models', 'governance')
    op.drop_column('models', 'evaluations')
