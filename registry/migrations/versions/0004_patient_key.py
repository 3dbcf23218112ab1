"""Patients are indexed by their key, CX.1 + CX.4 (xds.hl7.patient_key), no longer by the whole CX as
it was sent: a DMP INS fed bare and submitted with ``^NH^^date`` is one patient.

A data migration only. Rows whose ids differ only after CX.4 become one row: a patient stays
accepted if any of its spellings was, and the newest access state of a patient wins.
"""
from alembic import op
import sqlalchemy as sa

from xds.hl7 import patient_key

revision = "registry_0004"
down_revision = "registry_0003"
branch_labels = None
depends_on = None


def _key(value):
    return patient_key(value) if value else value


def upgrade() -> None:
    conn = op.get_bind()
    meta = sa.MetaData()
    obj = sa.Table("reg_object", meta, autoload_with=conn)
    patient = sa.Table("patient", meta, autoload_with=conn)
    state = sa.Table("acc_patient", meta, autoload_with=conn)
    person = sa.Table("acc_person", meta, autoload_with=conn)

    for (pid,) in conn.execute(sa.select(obj.c.patient_id).where(obj.c.patient_id.isnot(None)).distinct()).all():
        if _key(pid) != pid:
            conn.execute(sa.update(obj).where(obj.c.patient_id == pid).values(patient_id=_key(pid)))

    _merge_patients(conn, patient)
    _keep_newest(conn, state, ("patient_id",))
    _keep_newest(conn, person, ("patient_id", "relation", "person"))


def _merge_patients(conn, patient) -> None:
    groups: dict[str, list] = {}
    for row in conn.execute(sa.select(patient)).all():
        groups.setdefault(_key(row.patient_id), []).append(row)
    for key, rows in groups.items():
        if len(rows) == 1 and rows[0].patient_id == key and _key(rows[0].merged_into) == rows[0].merged_into:
            continue
        active = any(r.active for r in rows)
        merged = None if active else next((_key(r.merged_into) for r in rows if r.merged_into), None)
        conn.execute(sa.delete(patient).where(patient.c.patient_id.in_([r.patient_id for r in rows])))
        conn.execute(sa.insert(patient).values(patient_id=key, active=active, merged_into=merged))


def _keep_newest(conn, table, key_columns) -> None:
    groups: dict[tuple, list] = {}
    for row in conn.execute(sa.select(table)).all():
        m = row._mapping
        groups.setdefault(tuple(_key(m[c]) if c == "patient_id" else m[c] for c in key_columns), []).append(m)
    for key, rows in groups.items():
        if len(rows) == 1 and rows[0]["patient_id"] == key[0]:
            continue
        newest = dict(max(rows, key=lambda m: m["updated"] or 0))
        newest["patient_id"] = key[0]
        where = sa.or_(*[sa.and_(*[table.c[c] == m[c] for c in key_columns]) for m in rows])
        conn.execute(sa.delete(table).where(where))
        conn.execute(sa.insert(table).values(**newest))


def downgrade() -> None:
    # The spellings the keys replaced are gone; the keys are valid patient ids of the old schema.
    pass
