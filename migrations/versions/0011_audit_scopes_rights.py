"""Issue 22: the audit trail (append-only, hash-chained per tenant), scoped API keys, and
disabled tenants

`audit_events` and `audit_checkpoints` are append-only in the database, whoever writes: a
trigger refuses UPDATE and TRUNCATE on both, DELETE on checkpoints, and DELETE of any audit row
that no checkpoint covers (pruning writes the checkpoint first: shared/audit.py). Existing API
keys get every scope, as the admin keys they were.

Revision ID: 0011
Revises: 0010
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

# As in shared/scopes.py when this was written (a migration keeps its own copy).
ALL_SCOPES_SQL = ("ARRAY['analyses:write', 'analyses:read', 'batches:write', 'feedback:write', "
                  "'webhooks:manage', 'keys:manage', 'audit:read', 'models:read']::text[]")

APPEND_ONLY = """
CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND TG_TABLE_NAME = 'audit_events' THEN
        IF EXISTS (SELECT 1 FROM audit_checkpoints c
                   WHERE c.tenant_id = OLD.tenant_id AND c.through_seq >= OLD.seq) THEN
            RETURN OLD;  -- pruning, after its signed checkpoint was written
        END IF;
    END IF;
    RAISE EXCEPTION 'the audit trail is append-only: % on % is refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
"""


def upgrade() -> None:
    op.add_column('tenants', sa.Column('disabled_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('api_keys', sa.Column('scopes', postgresql.ARRAY(sa.Text()),
                                        server_default=sa.text(ALL_SCOPES_SQL), nullable=False))
    op.create_table(
        'audit_events',
        sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column('tenant_id', sa.UUID(), nullable=False),
        sa.Column('seq', sa.BigInteger(), nullable=False),
        sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('actor', sa.String(length=200), nullable=False),
        sa.Column('action', sa.String(length=64), nullable=False),
        sa.Column('resource_type', sa.String(length=64), nullable=False),
        sa.Column('resource_id', sa.String(length=200), nullable=True),
        sa.Column('outcome', sa.String(length=32), nullable=False),
        sa.Column('status_code', sa.Integer(), nullable=True),
        sa.Column('request_id', sa.String(length=100), nullable=True),
        sa.Column('client_address', sa.String(length=100), nullable=True),
        sa.Column('user_agent', sa.String(length=300), nullable=True),
        sa.Column('detail', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column('prev_hash', sa.String(length=64), nullable=False),
        sa.Column('hash', sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_events')),
        sa.UniqueConstraint('tenant_id', 'seq', name='uq_audit_events_tenant_seq'),
    )
    op.create_index('ix_audit_events_tenant_time', 'audit_events', ['tenant_id', 'occurred_at'], unique=False)
    op.create_table(
        'audit_checkpoints',
        sa.Column('tenant_id', sa.UUID(), nullable=False),
        sa.Column('through_seq', sa.BigInteger(), nullable=False),
        sa.Column('through_hash', sa.String(length=64), nullable=False),
        sa.Column('pruned_before', sa.DateTime(timezone=True), nullable=False),
        sa.Column('rows_pruned', sa.BigInteger(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.Column('signature', sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint('tenant_id', 'through_seq', name=op.f('pk_audit_checkpoints')),
    )
    op.execute(APPEND_ONLY)


def downgrade() -> None:
    op.execute("DROP TABLE audit_checkpoints; DROP TABLE audit_events; DROP FUNCTION audit_append_only()")
    op.drop_column('api_keys', 'scopes')
    op.drop_column('tenants', 'disabled_at')
