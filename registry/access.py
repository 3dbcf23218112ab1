"""The patients' access states, kept by the registry: read for the access policy, changed through the
administration interface (registry/admin.py) and `xds access`.

An id the patient table does not know (or that was merged into another) has a state too, with
exists = False, so that the policy can refuse it (C-10) without a second lookup.
"""
from __future__ import annotations

import time
from typing import Iterable

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.engine import Connection

from xds.hl7 import patient_key
from xds.security.policy import AccessState, Grant
from . import schema as S
from .store import RegistryStore, chunks

P, PP, PAT = S.access_state, S.access_person, S.patient
AUTHORISED, BLOCKED, REPRESENTATIVE = S.ACCESS_AUTHORISED, S.ACCESS_BLOCKED, S.ACCESS_REPRESENTATIVE

# What the administration interface may set on the patient's row, with the column each sets.
FLAGS = {"closed": "closed", "minor": "minor", "object_break_glass": "object_break_glass",
         "object_centre_15": "object_centre_15"}


# One patient's whole state in one round trip (the Find* queries and GetAll ask for one): the patient
# row with its state row and person rows joined; built once, so only its parameter changes.
_ONE = (select(PAT.c.active, PAT.c.merged_into, P.c.closed, P.c.minor, P.c.treating_doctor,
               P.c.object_break_glass, P.c.object_centre_15, PP.c.person, PP.c.relation, PP.c.since, PP.c.until)
        .select_from(PAT.outerjoin(P, P.c.patient_id == PAT.c.patient_id)
                     .outerjoin(PP, PP.c.patient_id == PAT.c.patient_id))
        .where(PAT.c.patient_id == bindparam("pid")))


def _one(conn: Connection, patient: str) -> AccessState:
    rows = conn.execute(_ONE, {"pid": patient}).all()
    if not rows:
        return AccessState(patient=patient, exists=False)
    r = rows[0]
    # Without an acc_patient row its columns come back NULL, which _state reads as the defaults.
    return _state(patient, bool(r.active) and r.merged_into is None, r, [x for x in rows if x.person is not None])


def _state(patient: str, exists: bool, row, persons: list) -> AccessState:
    """row: the acc_patient columns (or None); persons: the acc_person rows."""
    def flag(name: str) -> bool:
        return bool(getattr(row, name)) if row is not None else False

    return AccessState(
        patient=patient, exists=exists, closed=flag("closed"), minor=flag("minor"),
        treating_doctor=row.treating_doctor if row is not None else None,
        authorised=tuple(Grant(r.person, r.since, r.until) for r in persons if r.relation == S.ACCESS_AUTHORISED),
        blocked=frozenset(r.person for r in persons if r.relation == S.ACCESS_BLOCKED),
        representatives=frozenset(r.person for r in persons if r.relation == S.ACCESS_REPRESENTATIVE),
        objects_break_glass=flag("object_break_glass"), objects_centre_15=flag("object_centre_15"))


def states(conn: Connection, patients: Iterable[str]) -> dict[str, AccessState]:
    """Keyed by the ids as asked; looked up by their identity (CX.1 + CX.4)."""
    asked = {p: patient_key(p) for p in patients if p}
    ids = sorted(set(asked.values()))
    if len(ids) == 1:
        one = _one(conn, ids[0])
        return {p: one for p in asked}
    known: dict[str, bool] = {}
    rows: dict[str, object] = {}
    people: dict[str, list] = {p: [] for p in ids}
    for part in chunks(ids):
        for r in conn.execute(select(PAT.c.patient_id, PAT.c.active, PAT.c.merged_into)
                              .where(PAT.c.patient_id.in_(part))):
            known[r.patient_id] = bool(r.active) and r.merged_into is None
        for r in conn.execute(select(P).where(P.c.patient_id.in_(part))):
            rows[r.patient_id] = r
        for r in conn.execute(select(PP).where(PP.c.patient_id.in_(part))):
            people[r.patient_id].append(r)
    found = {p: _state(p, known.get(p, False), rows.get(p), people[p]) for p in ids}
    return {p: found[k] for p, k in asked.items()}


class AccessStore:
    def __init__(self, store: RegistryStore):
        self.store = store

    def state(self, patient: str) -> AccessState:
        patient = patient_key(patient)
        with self.store.reading() as conn:
            return states(conn, [patient])[patient]

    def _row(self, conn: Connection, patient: str, now: int) -> None:
        if conn.execute(select(P.c.patient_id).where(P.c.patient_id == patient)).first() is None:
            conn.execute(P.insert().values(patient_id=patient, closed=False, minor=False, object_break_glass=False,
                                           object_centre_15=False, updated=now))

    def set_flag(self, patient: str, flag: str, value: bool) -> None:
        patient = patient_key(patient)
        now = int(time.time())
        with self.store.transaction() as conn:
            self._row(conn, patient, now)
            conn.execute(update(P).where(P.c.patient_id == patient).values({FLAGS[flag]: value, "updated": now}))

    def set_treating_doctor(self, patient: str, person: str | None) -> None:
        patient = patient_key(patient)
        now = int(time.time())
        with self.store.transaction() as conn:
            self._row(conn, patient, now)
            conn.execute(update(P).where(P.c.patient_id == patient).values(treating_doctor=person, updated=now))

    def add_person(self, patient: str, relation: str, person: str, since: int | None = None,
                   until: int | None = None) -> None:
        """Authorise, block or name a representative; blocking withdraws an authorisation and the reverse."""
        patient = patient_key(patient)
        now = int(time.time())
        with self.store.transaction() as conn:
            self._row(conn, patient, now)
            opposite = {S.ACCESS_AUTHORISED: S.ACCESS_BLOCKED, S.ACCESS_BLOCKED: S.ACCESS_AUTHORISED}.get(relation)
            drop = [relation] + ([opposite] if opposite else [])
            conn.execute(delete(PP).where(PP.c.patient_id == patient, PP.c.person == person,
                                          PP.c.relation.in_(drop)))
            conn.execute(PP.insert().values(patient_id=patient, person=person, relation=relation, since=since,
                                            until=until, updated=now))

    def represented_by(self, person: str) -> list[str]:
        """The patients whose legal representative this person is (the portal lists their records too)."""
        with self.store.reading() as conn:
            rows = conn.execute(select(PP.c.patient_id).where(PP.c.relation == REPRESENTATIVE,
                                                              PP.c.person == person)).all()
        return sorted({r[0] for r in rows})

    def remove_person(self, patient: str, relation: str, person: str) -> bool:
        patient = patient_key(patient)
        with self.store.transaction() as conn:
            gone = conn.execute(delete(PP).where(PP.c.patient_id == patient, PP.c.person == person,
                                                 PP.c.relation == relation)).rowcount
            if gone:
                conn.execute(update(P).where(P.c.patient_id == patient).values(updated=int(time.time())))
            return bool(gone)
