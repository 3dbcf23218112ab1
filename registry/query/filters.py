"""SQL building blocks shared by the stored queries (SQLAlchemy Core over registry.schema).

Part of the registry's storage layer, with registry.store and registry.query.queries: the SQL
here runs on a connection the store opened (Ctx.conn).

Filters are written so that the patient (or id) predicate drives the plan through an index,
and the optional filters are checked per candidate row: codes and authors live in side tables
and are tested with correlated EXISTS probes on their (object_id, ...) indexes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

from sqlalchemy import and_, exists, or_, select, union_all
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from xds import constants as C
from registry import partitions, schema as S
from registry.partitions import same_patient
from ..store import chunks
from .params import ASSOCIATION_STATUS, Params
from .scope import Scope

O = S.registry_object
D = S.doc_entry
A = S.association
OC = S.object_code
AU = S.object_author
REF = S.reference_id
SSET = S.submission_set
FOL = S.folder

@dataclass
class Ctx:
    conn: Connection
    is_postgres: bool
    params: Params
    leaf_class: bool = False
    # A LeafClass answer above this many objects is refused; queries may stop early past it.
    max_results: int | None = None
    # What the access policy lets the caller see (registry/query/scope.py); None: everything.
    scope: "Scope | None" = None
    # Statuses the profile keeps out of every answer (the DMP's Deleted), whoever asks.
    hidden_statuses: tuple[str, ...] = ()
    # The registry's tables are partitioned by patient (registry/partitions.py): side tables are then
    # joined on the patient too, which keeps each join in the object's partition.
    partitioned: bool = False

    def __post_init__(self):
        if self.scope is None:
            self.scope = Scope(None, 0)
        self.scope.partitioned = self.partitioned
        if self.hidden_statuses:
            self.scope.hidden_statuses = self.hidden_statuses

    @property
    def level(self) -> int:
        return self.params.metadata_level


# What a LeafClass answer needs of a DocumentEntry and of an Association besides what the query selects
# them by: read with them (de_select, associations_in_seq_order), which spares the answer a second round
# trip per table (registry.query._leaf_class takes them from Found.stored and Found.stored_associations).
DE_ANSWER = (O.c.status, O.c.lid, O.c.version, O.c.xml, O.c.ready)
ASSOCIATION_ANSWER = (A.c.status, A.c.ss_status, A.c.xml)


def _with_answer(row) -> bool:
    """The row was read with its answer's columns (plain (id, patient_id) tuples were not)."""
    return "xml" in getattr(row, "_fields", ())


@dataclass
class Found:
    """What a query selected: registry objects with their patient, then associations, in answer order."""

    objects: list[tuple[str, str | None]] = field(default_factory=list)
    associations: list[str] = field(default_factory=list)
    # Rows already holding (status, lid, version, xml, ready) of DocumentEntries, by id.
    stored: dict = field(default_factory=dict)
    # Rows already holding (type, source, target, status, ss_status, xml) of associations, by id.
    stored_associations: dict = field(default_factory=dict)

    def add_objects(self, rows: Iterable) -> None:
        """(id, patient_id) rows, or de_select's with the answer's columns, which are then kept too."""
        seen = {i for i, _ in self.objects}
        for r in rows:
            if r[0] not in seen:
                seen.add(r[0])
                self.objects.append((r[0], r[1]))
                if _with_answer(r):
                    self.stored[r[0]] = r

    def add_associations(self, ids: Iterable[str]) -> None:
        seen = set(self.associations)
        for i in ids:
            if i not in seen:
                seen.add(i)
                self.associations.append(i)

    def add_association_rows(self, rows: Iterable) -> None:
        """Rows of associations_in_seq_order (or any with id first), keeping those read with their answer."""
        rows = list(rows)
        self.add_associations(r.id for r in rows)
        for r in rows:
            if _with_answer(r):
                self.stored_associations.setdefault(r.id, r)

    @property
    def count(self) -> int:
        return len(self.objects) + len(self.associations)


# --- visibility by $MetadataLevel --------------------------------------------------------------
# ITI-18 (Metadata Update): at level 1 the registry hides versions that are not the latest,
# Offline DocumentEntries, Deprecated Folders and Deprecated Associations; level 2 hides nothing.

_newer = O.alias("newer")


def latest_version(o=O, pin=()) -> ColumnElement:
    """pin: Scope.pin of the newer versions' table, which pin_ids made to cover every patient they are under."""
    return ~exists(select(_newer.c.id).where(_newer.c.lid == o.c.lid, _newer.c.version > o.c.version, *pin))


def needs_latest_check(statuses: Sequence[str] | None) -> bool:
    # ITI-57 deprecates every superseded version, so an Approved-only filter already keeps
    # latest versions alone; the extra probe is paid only when other statuses are asked for.
    return statuses is None or any(s != C.STATUS_APPROVED for s in statuses)


def de_visible(ctx: Ctx, statuses: Sequence[str] | None = None, o=O, d=D) -> list[ColumnElement]:
    if ctx.level != 1:
        return []
    out = [or_(d.c.availability.is_(None), d.c.availability != C.AVAILABILITY_OFFLINE)]
    if needs_latest_check(statuses):
        out.append(latest_version(o, ctx.scope.pin(_newer)))
    return out


def fd_visible(ctx: Ctx, statuses: Sequence[str] | None = None, o=O) -> list[ColumnElement]:
    if ctx.level != 1:
        return []
    out = [o.c.status != C.STATUS_DEPRECATED]
    if needs_latest_check(statuses):
        out.append(latest_version(o, ctx.scope.pin(_newer)))
    return out


def association_statuses(params: Params) -> list[str] | None:
    """Association statuses to keep; None keeps all."""
    given = params.get(ASSOCIATION_STATUS)
    if params.metadata_level == 1:
        return [s for s in (given or [C.STATUS_APPROVED]) if s == C.STATUS_APPROVED]
    return given


def assoc_status_filter(params: Params, a=A) -> list[ColumnElement]:
    statuses = association_statuses(params)
    return [] if statuses is None else [a.c.status.in_(statuses)]


# --- value filters -----------------------------------------------------------------------------

def time_range(col, lo: str | None, hi: str | None) -> list[ColumnElement]:
    # Strings compare as the toolkit and the profile expect: From inclusive, To exclusive, and a
    # shorter value orders before every longer value that it prefixes. NULL never matches.
    out = []
    if lo is not None:
        out.append(col >= lo)
    if hi is not None:
        out.append(col < hi)
    return out


def owner(ctx: Ctx, o=O):
    """The patient column that side-table rows of o's objects are matched on (Ctx.partitioned), or None."""
    return o.c.patient_id if ctx.partitioned else None


def pin_ids(ctx: Ctx, ids: Sequence[str]) -> None:
    """Partitioned: pin the query to the patients of these entryUUIDs (registry_key: one probe each), so that
    its statements read their partitions instead of probing every partition of every table. Ids the registry
    does not hold have no patient: a query about nothing but them reads nothing."""
    # With the patients of the objects' other versions, which the latest-version check reads.
    _pin_to(ctx, lambda: partitions.key_patients(ctx.conn, ids, versions=True))


def pin_uids(ctx: Ctx, unique_ids: Sequence[str]) -> None:
    """pin_ids for uniqueIds (registry_uid)."""
    _pin_to(ctx, lambda: partitions.uid_patients(ctx.conn, unique_ids))


def pin_lids(ctx: Ctx, lids: Sequence[str]) -> None:
    """pin_ids for logical ids: every patient one of their versions is filed under."""
    _pin_to(ctx, lambda: partitions.lid_patients(ctx.conn, lids))


def pin_patients(ctx: Ctx, patients: Iterable[str]) -> None:
    _pin_to(ctx, lambda: patients)


def _pin_to(ctx: Ctx, find) -> None:
    # The first pin of a query holds: what it reaches later belongs to the same patients.
    if ctx.partitioned and ctx.scope.patients is None:
        ctx.scope.patients = sorted(find())


def has_code(obj_id_col, scheme: str, codes: Sequence[str], patient_col=None) -> ColumnElement:
    return exists(select(OC.c.object_id).where(OC.c.object_id == obj_id_col, OC.c.scheme == scheme,
                                               OC.c.code.in_(list(codes)), *same_patient(OC, patient_col)))


def code_groups(obj_id_col, scheme: str, groups: Sequence[Sequence[str]] | None,
                patient_col=None) -> list[ColumnElement]:
    """AND across Slots, OR inside one Slot."""
    return [has_code(obj_id_col, scheme, g, patient_col) for g in (groups or [])]


def like_value(is_postgres: bool, pattern: str) -> str:
    """The author pattern as the backend's case-sensitive matcher expects it.

    SQL LIKE semantics (`%` any string, `_` one character) on both backends: PostgreSQL's LIKE
    with backslash as escape character (a literal backslash is doubled); SQLite's LIKE ignores
    ASCII case, so there the pattern is rewritten for GLOB, whose specials are bracketed."""
    if is_postgres:
        return pattern.replace("\\", "\\\\")
    out = []
    for ch in pattern:
        if ch == "%":
            out.append("*")
        elif ch == "_":
            out.append("?")
        elif ch in "*?[":
            out.append(f"[{ch}]")
        else:
            out.append(ch)
    return "".join(out)


def like_clause(is_postgres: bool, col, value) -> ColumnElement:
    """`value` is a like_value() result or a bind parameter that will carry one."""
    if is_postgres:
        return col.like(value, escape="\\")
    return col.op("GLOB")(value)


def like_pattern(ctx: Ctx, col, pattern: str) -> ColumnElement:
    return like_clause(ctx.is_postgres, col, like_value(ctx.is_postgres, pattern))


def author_matches(ctx: Ctx, obj_id_col, patterns: Sequence[str], o=O) -> ColumnElement:
    return exists(select(AU.c.object_id).where(AU.c.object_id == obj_id_col, *same_patient(AU, owner(ctx, o)),
                                               or_(*[like_pattern(ctx, AU.c.person, p) for p in patterns])))


def entry_type_filter(ctx: Ctx, d=D) -> ColumnElement:
    # Without $XDSDocumentEntryType only stable entries are answered (ITI-18, On-Demand Documents).
    return d.c.entry_type.in_(ctx.params.get("$XDSDocumentEntryType") or [C.OBJECT_TYPE_STABLE])


def content_filters(ctx: Ctx, o=O, d=D) -> list[ColumnElement]:
    """formatCode / confidentialityCode / entry type, as GetAll and the *AndContents queries take them."""
    p = ctx.params
    out: list[ColumnElement] = []
    if p.has("$XDSDocumentEntryFormatCode"):
        out.append(d.c.format_code.in_(p.get("$XDSDocumentEntryFormatCode")))
    out += code_groups(o.c.id, C.DE_CONFIDENTIALITY_CODE, p.get("$XDSDocumentEntryConfidentialityCode"),
                       owner(ctx, o))
    out.append(entry_type_filter(ctx, d))
    return out


def de_select(ctx: Ctx, *where: ColumnElement):
    """DocumentEntries matching where that the caller may see (ctx.scope): (id, patient_id), and for
    LeafClass the answer's columns (DE_ANSWER)."""
    return (select(O.c.id, O.c.patient_id, *(DE_ANSWER if ctx.leaf_class else ()))
            .select_from(O.join(D, and_(D.c.id == O.c.id, *same_patient(D, owner(ctx)))))
            .where(O.c.kind == S.KIND_DOCUMENT_ENTRY, *where, *ctx.scope.de()).order_by(O.c.seq))


def obj_select(ctx: Ctx, kind: str, *where: ColumnElement):
    """SubmissionSets or Folders matching where that the caller may see."""
    return select(O.c.id, O.c.patient_id).where(O.c.kind == kind, *where, *ctx.scope.objects()).order_by(O.c.seq)


def rows_in(ctx: Ctx, make_stmt, ids: Sequence[str]) -> list:
    """Run a statement built around an IN-list of ids, chunked."""
    out = []
    for part in chunks(list(dict.fromkeys(ids))):
        out += ctx.conn.execute(make_stmt(list(part))).all()
    return out


def associations_in_seq_order(ctx: Ctx, ids: Sequence[str], *where: ColumnElement,
                              stop_at: int | None = None) -> list:
    """Associations whose source or target is one of ids and that match where: (id, type, source, target,
    seq) rows in registration order, as a query answers them. (RegistryStore.associations_touching is
    the unfiltered lookup of the transactions' checks.)

    With stop_at, reading stops once stop_at associations are found: the caller only needs to know
    that the answer is too large, and then gets an incomplete list."""
    rows = {}
    columns = (A.c.id, A.c.type, A.c.source, A.c.target, A.c.seq) + (ASSOCIATION_ANSWER if ctx.leaf_class else ())
    for part in chunks(list(dict.fromkeys(ids))):
        part = list(part)
        # Two index-driven lookups rather than one OR, which some planners turn into a scan; without a
        # limit, in one statement (one round trip), each arm still planned on its own index.
        arms = [select(*columns).where(col.in_(part), *where, *ctx.scope.associations())
                for col in (A.c.source, A.c.target)]
        if stop_at is None:
            for r in ctx.conn.execute(union_all(*arms)):
                rows[r.id] = r
            continue
        for stmt in arms:
            # The second lookup may find again every association of the first, hence len(rows);
            # a lookup cut short by its limit always brings the count to stop_at.
            for r in ctx.conn.execute(stmt.limit(stop_at + len(rows))):
                rows[r.id] = r
            if len(rows) >= stop_at:
                return sorted(rows.values(), key=lambda r: r.seq)
    return sorted(rows.values(), key=lambda r: r.seq)

