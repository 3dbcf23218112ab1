"""What the access policy lets one caller see, as SQL over the registry's tables.

The policy (xds/security/policy.py) decides a Visibility per patient; this module states the same
conditions as predicates, so that filtering happens in the query itself: limits, XDSTooManyResults and
ObjectRef answers count only what the caller may see. tests/test_policy_property.py checks that the SQL
and Visibility.admits agree on every case it generates, on SQLite and PostgreSQL.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Mapping

from sqlalchemy import and_, bindparam, exists, false, func, or_, select, true
from sqlalchemy.sql.elements import ColumnElement

from xds import constants as C
from xds.security.policy import INVISIBLE_PATIENT, INVISIBLE_RL, MASQUE_PS, Visibility
from registry import schema as S
from registry.partitions import pinned, same_patient

O, D, A, OC = S.registry_object, S.doc_entry, S.association, S.object_code


class Values:
    """Literal values, or named bind parameters (for the statements built once and reused; scope_values
    gives their values without building anything)."""

    def __init__(self, bind: bool = False):
        self.bind = bind

    def __call__(self, value, name: str, expanding: bool = False):
        return bindparam(name, expanding=expanding) if self.bind else value


def _own(vis: Visibility, o, v: Values) -> list[ColumnElement]:
    # IS NOT NULL keeps each term TRUE or FALSE: under NOT, a NULL comparison would make the masked entry
    # of an unknown submitter count as not hidden.
    out = []
    if vis.organisation is not None:
        out.append(and_(o.c.origin_org.isnot(None), o.c.origin_org == v(vis.organisation, "sc_org")))
    if vis.person is not None:
        out.append(and_(o.c.origin_person.isnot(None), o.c.origin_person == v(vis.person, "sc_person")))
    return out


def de_condition(vis: Visibility, now: int, o=O, d=D, v: Values | None = None,
                 partitioned: bool = False) -> ColumnElement:
    v = v or Values()
    if vis.everything:
        return true()
    if vis.nothing:
        return false()
    if vis.own_only:
        return _own_only(vis, o, v)
    hidden_codes = []
    if vis.hide_masked:
        own = _own(vis, o, v)
        hidden_codes.append(and_(OC.c.code == v(MASQUE_PS, "sc_masked"), *([~or_(*own)] if own else [])))
    if vis.hide_patient_invisible:
        hidden_codes.append(and_(OC.c.code == v(INVISIBLE_PATIENT, "sc_invisible_patient"),
                                 or_(o.c.reveal_at.is_(None), o.c.reveal_at > v(now, "sc_now"))))
    if vis.hide_rl_invisible:
        hidden_codes.append(OC.c.code == v(INVISIBLE_RL, "sc_invisible_rl"))
    out = []
    if hidden_codes:
        # One probe of the entry's confidentiality codes for every marker that hides it.
        out.append(~exists(select(OC.c.object_id).where(OC.c.object_id == o.c.id,
                                                         *same_patient(OC, o.c.patient_id if partitioned else None),
                                                         OC.c.scheme == v(C.DE_CONFIDENTIALITY_CODE, "sc_scheme"),
                                                         or_(*hidden_codes))))
    if vis.types is not None:
        out.append(and_(d.c.type_code.isnot(None), d.c.type_code.in_(v(sorted(vis.types), "sc_types", expanding=True)))
                   if vis.types else false())
    return and_(true(), *out)


_BOUND: dict[tuple, frozenset[str]] = {}


def scope_values(vis: Visibility, now: int) -> dict:
    """The values of de_condition's bind parameters (Values(bind=True)): which ones it binds is read from
    the expression itself, once per shape, so the two cannot drift apart."""
    key = shape(vis)
    names = _BOUND.get(key)
    if names is None:
        names = _BOUND[key] = frozenset(de_condition(vis, now, v=Values(bind=True)).compile().params)
    if not names:
        return {}
    every = {"sc_org": vis.organisation, "sc_person": vis.person, "sc_masked": MASQUE_PS,
             "sc_invisible_patient": INVISIBLE_PATIENT, "sc_now": now, "sc_invisible_rl": INVISIBLE_RL,
             "sc_scheme": C.DE_CONFIDENTIALITY_CODE, "sc_types": sorted(vis.types or ())}
    return {name: every[name] for name in names}


def object_condition(vis: Visibility, o=O, v: Values | None = None) -> ColumnElement:
    """SubmissionSets and Folders."""
    v = v or Values()
    if vis.nothing:
        return false()
    if vis.own_only:
        return _own_only(vis, o, v)
    return true()


def _own_only(vis: Visibility, o, v: Values) -> ColumnElement:
    if vis.organisation is None:
        return false()
    return and_(o.c.origin_org.isnot(None), o.c.origin_org == v(vis.organisation, "sc_org"))


def shape(vis: Visibility) -> tuple:
    """What decides the form of de_condition's statement (its key in a statement cache)."""
    return (vis.everything, vis.nothing, vis.own_only, vis.hide_masked, vis.hide_patient_invisible,
            vis.hide_rl_invisible, vis.types is None, bool(vis.types), vis.organisation is None, vis.person is None)


class Scope:
    """The visibility of every patient a query may touch; a patient not listed sees nothing (fail closed).
    None for by_patient: the caller sees everything, and the queries get no extra condition."""

    def __init__(self, by_patient: Mapping[str, Visibility] | None, now: int):
        self.by_patient = by_patient
        self.now = now
        # Objects in these statuses answer as absent to everyone, the administrator included (Ctx sets it).
        self.hidden_statuses: tuple[str, ...] = ()
        # The tables are partitioned by patient (Ctx sets it): code probes then name the patient too.
        self.partitioned = False
        # Partitioned: the patients a by-id query's objects belong to, once known (filters.pin_ids and its kin);
        # every statement of the query then names them, which keeps it in their partitions.
        self.patients: list[str] | None = None

    def pin(self, t) -> list[ColumnElement]:
        if not self.partitioned or self.patients is None:
            return []
        return pinned(t.c.patient_id, self.patients)

    def _same(self, x, a) -> list[ColumnElement]:
        # A registry object and its links belong to one patient (the registry refuses links across patients).
        return same_patient(x, a.c.patient_id if self.partitioned else None)

    def _not_hidden(self, o) -> list[ColumnElement]:
        return [o.c.status.notin_(self.hidden_statuses)] if self.hidden_statuses else []

    @property
    def everything(self) -> bool:
        return self.by_patient is None or (bool(self.by_patient) and all(
            v.everything for v in self.by_patient.values()))

    def single(self, patient: str) -> Visibility:
        """The visibility for a query about one patient (the Find* queries and GetAll)."""
        if self.by_patient is None:
            return Visibility(everything=True)
        return self.by_patient.get(patient) or Visibility(nothing=True)

    def _groups(self) -> list[tuple[list[str], Visibility]]:
        groups: dict[Visibility, list[str]] = defaultdict(list)
        for p, vis in (self.by_patient or {}).items():
            if not vis.nothing:
                groups[vis].append(p)
        return [(sorted(ps), vis) for vis, ps in groups.items()]

    def de(self, o=O, d=D) -> list[ColumnElement]:
        if self.everything:
            return self._not_hidden(o) + self.pin(o)
        return self._not_hidden(o) + self.pin(o) + [or_(false(), *[and_(o.c.patient_id.in_(ps), de_condition(vis, self.now, o, d, partitioned=self.partitioned))
                                                     for ps, vis in self._groups()])]

    def objects(self, o=O) -> list[ColumnElement]:
        if self.everything:
            return self._not_hidden(o) + self.pin(o)
        return self._not_hidden(o) + self.pin(o) + [or_(false(), *[and_(o.c.patient_id.in_(ps), object_condition(vis, o))
                                                     for ps, vis in self._groups()])]

    def visible(self, x, xd) -> ColumnElement:
        """Any registry object x (with its doc_entry row xd outer-joined)."""
        terms = []
        for ps, vis in self._groups():
            terms.append(and_(x.c.patient_id.in_(ps), or_(
                and_(x.c.kind == S.KIND_DOCUMENT_ENTRY, de_condition(vis, self.now, x, xd, partitioned=self.partitioned)),
                and_(x.c.kind != S.KIND_DOCUMENT_ENTRY, object_condition(vis, x)))))
        return or_(false(), *terms)

    def associations(self, a=A) -> list[ColumnElement]:
        """An association is seen only when neither end is hidden: a registry object the caller may not see,
        or an association with such an end (a SubmissionSet's HasMember of a Folder filing)."""
        out = self.pin(a)
        if self.hidden_statuses:
            # A link to a hidden object (a SubmissionSet's HasMember, a replacement) would tell it exists.
            x = O.alias("scope_hidden")
            out.append(~exists(select(x.c.id).where(x.c.id.in_([a.c.source, a.c.target]), *self._same(x, a),
                                                     x.c.status.in_(self.hidden_statuses))))
        if self.everything:
            return out
        inner = A.alias("scope_inner")
        return out + [~self._hidden_object_end(a), ~exists(select(inner.c.id).where(
            inner.c.id.in_([a.c.source, a.c.target]), *self._same(inner, a), self._hidden_object_end(inner)))]

    def _hidden_object_end(self, a) -> ColumnElement:
        x, xd = O.alias(), D.alias()
        # COALESCE: a comparison with a NULL column must count as not visible, never as unknown.
        return exists(select(x.c.id).select_from(x.outerjoin(xd, and_(xd.c.id == x.c.id, *self._same(xd, x))))
                      .where(x.c.id.in_([a.c.source, a.c.target]), *self._same(x, a),
                             ~func.coalesce(self.visible(x, xd), false())))
