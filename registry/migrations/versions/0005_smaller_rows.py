"""Smaller rows and answer-ready text for a national registry (docs/scaling.md):

- ``reg_object.ready``: the stored XML already holds the row's lid and versionName (registry/splice.py
  prepare), so a query answer sets only its status. Rows stored before are not ready (false) and are
  patched as they are answered.

- ``association.xml`` may be NULL: an association that says no more than its columns is stored as them
  (registry/bare_association.py). Rows stored before keep their XML, which queries still answer from.
- The index that finds an object's codes is on ``object_code.object_id`` alone, no longer on
  (object_id, scheme): an object has two or three code rows, whose scheme is checked on the rows, and a
  one-column index is deduplicated by PostgreSQL's B-tree.
"""
from alembic import op
import sqlalchemy as sa

revision = "registry_0005"
down_revision = "registry_0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A database made by RegistryStore.create_schema and stamped at 0001 has the current schema already.
    insp = sa.inspect(op.get_bind())
    if "ready" not in {c["name"] for c in insp.get_columns("reg_object")}:
        # ALTER TABLE ADD COLUMN, also on SQLite: a batch copy of reg_object would drop the old table, and
        # with foreign keys on that deletes every row that references it (ON DELETE CASCADE).
        op.add_column("reg_object", sa.Column("ready", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("association") as batch:
        batch.alter_column("xml", existing_type=sa.Text(), nullable=True)
    indexes = {i["name"]: i["column_names"] for i in insp.get_indexes("object_code")}
    if indexes.get("ix_object_code_object") != ["object_id"]:
        op.drop_index("ix_object_code_object", table_name="object_code")
        op.create_index("ix_object_code_object", "object_code", ["object_id"])


def downgrade() -> None:
    from registry.store import association_xml

    op.drop_index("ix_object_code_object", table_name="object_code")
    op.create_index("ix_object_code_object", "object_code", ["object_id", "scheme"])
    conn = op.get_bind()
    t = sa.Table("association", sa.MetaData(), autoload_with=conn)
    for row in conn.execute(sa.select(t).where(t.c.xml.is_(None))).all():
        conn.execute(sa.update(t).where(t.c.id == row.id).values(xml=association_xml(row)))
    with op.batch_alter_table("association") as batch:
        batch.alter_column("xml", existing_type=sa.Text(), nullable=False)
    op.drop_column("reg_object", "ready")   # SQLite 3.35+
