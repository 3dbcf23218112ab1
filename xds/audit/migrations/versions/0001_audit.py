"""audit_record (the ATNA outbox), audit_access (the patients' access log), audit_notification."""
from alembic import op
import sqlalchemy as sa

revision = "audit_0001"
down_revision = None
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "audit_record",
        sa.Column("seq", _ID, primary_key=True, autoincrement=True),
        sa.Column("record_id", sa.String(36), nullable=False, unique=True),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event", sa.Text, nullable=False),
        sa.Column("delivered", sa.DateTime(timezone=True)),
        sa.Column("sent", sa.DateTime(timezone=True)),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("lease_until", sa.DateTime(timezone=True)),
        sa.Column("last_error", sa.String(300)),
    )
    op.create_index("ix_audit_record_pending", "audit_record", ["delivered", "sent", "seq"])
    op.create_table(
        "audit_access",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("record_id", sa.String(36), nullable=False),
        sa.Column("patient_key", sa.String(300), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("person", sa.String(256)),
        sa.Column("person_id", sa.String(256)),
        sa.Column("profession", sa.String(128)),
        sa.Column("organisation", sa.String(256)),
        sa.Column("organisation_id", sa.String(256)),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("transaction", sa.String(16), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("outcome", sa.String(8), nullable=False),
        sa.Column("document_uid", sa.String(128)),
        sa.Column("document_title", sa.String(256)),
        sa.Column("reveal_at", sa.BigInteger),
        sa.Column("secret", sa.Boolean, nullable=False),
    )
    op.create_index("ix_audit_access_patient", "audit_access", ["patient_key", "at"])
    op.create_table(
        "audit_notification",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("patient_key", sa.String(300), nullable=False),
        sa.Column("recipient", sa.String(16), nullable=False),
        sa.Column("recipient_id", sa.String(256)),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("person", sa.String(256)),
        sa.Column("organisation", sa.String(256)),
        sa.Column("document_title", sa.String(256)),
        sa.Column("delivered", sa.DateTime(timezone=True)),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("lease_until", sa.DateTime(timezone=True)),
        sa.Column("last_error", sa.String(300)),
    )
    op.create_index("ix_audit_notification_pending", "audit_notification", ["delivered", "id"])


def downgrade() -> None:
    op.drop_table("audit_notification")
    op.drop_table("audit_access")
    op.drop_index("ix_audit_record_pending", "audit_record")
    op.drop_table("audit_record")
