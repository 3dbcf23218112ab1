"""The registry tables as registry/schema.py first defined them (and metadata.create_all made them).

Written out in full rather than taken from the schema module, which will keep changing while
this revision must keep creating the same thing.
"""
from alembic import op
import sqlalchemy as sa

revision = "registry_0001"
down_revision = None
branch_labels = None
depends_on = None

ID = sa.String(64)
CODE = sa.String(300)
DTM = sa.String(14)


def _owned_by_reg_object() -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(["id"], ["reg_object.id"], ondelete="CASCADE")


def upgrade() -> None:
    # The schema attaches reg_seq to the seq columns as a client-side default, so create_all made
    # the sequence wherever the dialect has sequences (PostgreSQL here) and no server default.
    if op.get_bind().dialect.supports_sequences:
        op.execute(sa.schema.CreateSequence(sa.Sequence("reg_seq")))

    op.create_table(
        "reg_object",
        sa.Column("id", ID, primary_key=True),
        sa.Column("lid", ID, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(2), nullable=False),
        sa.Column("status", sa.String(64), nullable=False),
        sa.Column("patient_id", sa.String(256)),
        sa.Column("unique_id", sa.String(300)),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("xml", sa.Text, nullable=False),
    )
    op.create_index("ix_reg_object_patient", "reg_object", ["patient_id", "kind", "status"])
    op.create_index("ix_reg_object_unique", "reg_object", ["unique_id"])
    op.create_index("ix_reg_object_lid", "reg_object", ["lid", "version"])

    op.create_table(
        "doc_entry",
        sa.Column("id", ID, primary_key=True),
        sa.Column("entry_type", sa.String(64), nullable=False),
        sa.Column("class_code", CODE),
        sa.Column("type_code", CODE),
        sa.Column("format_code", CODE),
        sa.Column("practice_setting_code", CODE),
        sa.Column("hcft_code", CODE),
        sa.Column("creation_time", DTM),
        sa.Column("service_start_time", DTM),
        sa.Column("service_stop_time", DTM),
        sa.Column("hash", sa.String(64)),
        sa.Column("size", sa.BigInteger),
        sa.Column("repository_unique_id", sa.String(64)),
        sa.Column("mime_type", sa.String(128)),
        sa.Column("availability", sa.String(64)),
        _owned_by_reg_object(),
    )

    op.create_table(
        "submission_set",
        sa.Column("id", ID, primary_key=True),
        sa.Column("submission_time", DTM),
        sa.Column("source_id", sa.String(64)),
        sa.Column("content_type_code", CODE),
        _owned_by_reg_object(),
    )

    op.create_table(
        "folder",
        sa.Column("id", ID, primary_key=True),
        sa.Column("last_update_time", DTM, nullable=False),
        _owned_by_reg_object(),
    )

    op.create_table(
        "object_code",
        sa.Column("object_id", ID, nullable=False),
        sa.Column("scheme", sa.String(64), nullable=False),
        sa.Column("code", CODE, nullable=False),
        sa.ForeignKeyConstraint(["object_id"], ["reg_object.id"], ondelete="CASCADE"),
    )
    op.create_index("ix_object_code_object", "object_code", ["object_id", "scheme"])
    op.create_index("ix_object_code_code", "object_code", ["scheme", "code"])

    op.create_table(
        "object_author",
        sa.Column("object_id", ID, nullable=False),
        sa.Column("person", sa.String(512), nullable=False),
        sa.ForeignKeyConstraint(["object_id"], ["reg_object.id"], ondelete="CASCADE"),
    )
    op.create_index("ix_object_author_object", "object_author", ["object_id"])

    op.create_table(
        "reference_id",
        sa.Column("object_id", ID, nullable=False),
        sa.Column("value", sa.String(512), nullable=False),
        sa.ForeignKeyConstraint(["object_id"], ["reg_object.id"], ondelete="CASCADE"),
    )
    op.create_index("ix_reference_id_value", "reference_id", ["value"])
    op.create_index("ix_reference_id_object", "reference_id", ["object_id"])

    op.create_table(
        "association",
        sa.Column("id", ID, primary_key=True),
        sa.Column("type", sa.String(128), nullable=False),
        sa.Column("source", ID, nullable=False),
        sa.Column("target", ID, nullable=False),
        sa.Column("status", sa.String(64), nullable=False),
        sa.Column("ss_status", sa.String(16)),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("xml", sa.Text, nullable=False),
    )
    op.create_index("ix_association_source", "association", ["source", "type"])
    op.create_index("ix_association_target", "association", ["target", "type"])

    op.create_table(
        "patient",
        sa.Column("patient_id", sa.String(256), primary_key=True),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("merged_into", sa.String(256)),
    )

    op.create_table(
        "repository_directory",
        sa.Column("repository_unique_id", sa.String(64), primary_key=True),
        sa.Column("retrieve_url", sa.String(1024), nullable=False),
        sa.Column("cert_subject", sa.String(1024)),
    )
    op.create_index("ix_repository_directory_subject", "repository_directory", ["cert_subject"])

    op.create_table(
        "reg_counter",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    # Tables that reference reg_object go before it.
    for table in ("reg_counter", "repository_directory", "patient", "association", "reference_id",
                  "object_author", "object_code", "folder", "submission_set", "doc_entry", "reg_object"):
        op.drop_table(table)
    if op.get_bind().dialect.supports_sequences:
        op.execute(sa.schema.DropSequence(sa.Sequence("reg_seq")))
