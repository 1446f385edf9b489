"""DICOM in: analyses.dicom_source (issue 23)

The identifiers of the DICOM instance an image came from (study, series and SOP instance UIDs,
SOP class, transfer syntax), so the DICOM Segmentation and Structured Report can reference it;
NULL for JPEG and PNG uploads. See docs/DICOM.md.

Down revision 0011: 0012 is being written beside this one; the chain is relinked when both land.

Revision ID: 0013
Revises: 0012
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('analyses', sa.Column('dicom_source', postgresql.JSONB(astext_type=sa.Text()), nullable=True))


def downgrade() -> None:
    op.drop_column('analyses', 'dicom_source')
