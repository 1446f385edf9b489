"""Issue 23: an analysis' patient and encounter references (FHIR reference or system|value)

Both nullable: analyses submitted before have none, and a client may give neither.

Revision ID: 0012
Revises: 0011
"""
import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('analyses', sa.Column('patient_reference', sa.String(length=512), nullable=True))
    op.add_column('analyses', sa.Column('encounter_reference', sa.String(length=512), nullable=True))


def downgrade() -> None:
    op.drop_column('analyses', 'encounter_reference')
    op.drop_column('analyses', 'patient_reference')
