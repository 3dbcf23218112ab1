"""The patient as every registry table's partition key (docs/scaling.md, "Partitions"):

- ``patient_id`` on the side tables (doc_entry, submission_set, folder, object_code, object_author,
  reference_id, association), NULL in the plain layout;
- on PostgreSQL with the setting ``registry_partitions`` = N > 0, the tables are rebuilt hash-partitioned
  into N partitions by patient (registry/partitions.py convert), the side tables' patient filled from
  their objects. A database already at this revision keeps its layout whatever the setting says:
  ``xds db partition`` converts it, and ``xds serve`` refuses to start on a layout it was not told of.
"""
from alembic import op
import sqlalchemy as sa

revision = "registry_0006"
down_revision = "registry_0005"
branch_labels = None
depends_on = None

SIDE_TABLES = ("doc_entry", "submission_set", "folder", "object_code", "object_author", "reference_id",
               "association")


def upgrade() -> None:
    insp = sa.inspect(op.get_bind())
    for table in SIDE_TABLES:
        # A database made by RegistryStore.create_schema and stamped at 0001 has the columns already.
        if "patient_id" not in {c["name"] for c in insp.get_columns(table)}:
            op.add_column(table, sa.Column("patient_id", sa.String(256), nullable=True))
    wanted = op.get_context().config.attributes.get("registry_partitions") or 0
    if wanted and op.get_bind().dialect.name == "postgresql":
        from registry import partitions

        partitions.convert(op.get_bind(), wanted)


def downgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "postgresql":
        from registry import partitions

        partitions.convert(conn, 0)
    for table in SIDE_TABLES:
        op.drop_column(table, "patient_id")   # SQLite 3.35+
