"""The access policy's data: who submitted each object and when (reg_object.origin_*, reveal_at), and
the patients' access states (acc_patient, acc_person)."""
from alembic import op
import sqlalchemy as sa

revision = "registry_0003"
down_revision = "registry_0002"
branch_labels = None
depends_on = None


ORIGIN = (("origin_org", sa.String(256)), ("origin_person", sa.String(256)), ("origin_time", sa.BigInteger),
          ("reveal_at", sa.BigInteger))


def upgrade() -> None:
    # A database made by RegistryStore.create_schema (metadata.create_all) and then stamped at 0001 has
    # these already, as the current schema defines them.
    insp = sa.inspect(op.get_bind())
    have = {c["name"] for c in insp.get_columns("reg_object")}
    missing = [(n, t) for n, t in ORIGIN if n not in have]
    if missing:
        with op.batch_alter_table("reg_object") as batch:
            for name, type_ in missing:
                batch.add_column(sa.Column(name, type_))
    if "acc_patient" in insp.get_table_names():
        return
    op.create_table(
        "acc_patient",
        sa.Column("patient_id", sa.String(256), primary_key=True),
        sa.Column("closed", sa.Boolean, nullable=False),
        sa.Column("minor", sa.Boolean, nullable=False),
        sa.Column("treating_doctor", sa.String(256)),
        sa.Column("object_break_glass", sa.Boolean, nullable=False),
        sa.Column("object_centre_15", sa.Boolean, nullable=False),
        sa.Column("updated", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "acc_person",
        sa.Column("patient_id", sa.String(256), nullable=False),
        sa.Column("person", sa.String(256), nullable=False),
        sa.Column("relation", sa.String(16), nullable=False),
        sa.Column("since", sa.BigInteger),
        sa.Column("until", sa.BigInteger),
        sa.Column("updated", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_acc_person_key", "acc_person", ["patient_id", "relation", "person"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_acc_person_key", "acc_person")
    op.drop_table("acc_person")
    op.drop_table("acc_patient")
    with op.batch_alter_table("reg_object") as batch:
        for name in ("reveal_at", "origin_time", "origin_person", "origin_org"):
            batch.drop_column(name)
