"""The fourteen ITI-18 stored queries, each as SQL over the registry's indexed columns.

Part of the registry's storage layer, with registry.store and registry.query.filters.

Every function takes the query context and returns the ids it selected (objects with their
patientId, then associations); rendering and the LeafClass checks happen in the caller.
"""
from __future__ import annotations

from typing import Callable, Sequence

from sqlalchemy import and_, bindparam, exists, or_, select
from sqlalchemy.sql.elements import ColumnElement

from xds import constants as C
from xds.security.policy import Visibility
from registry import schema as S
from . import scope as SC
from .filters import (
    A, ASSOCIATION_ANSWER, AU, D, DE_ANSWER, FOL, O, OC, REF, SSET, Ctx, Found, assoc_status_filter,
    associations_in_seq_order, author_matches, code_groups, content_filters, de_select, de_visible,
    entry_type_filter, fd_visible, latest_version, like_clause, like_value, needs_latest_check, obj_select,
    owner, pin_ids, pin_lids, pin_patients, pin_uids, rows_in, time_range,
)
from registry.partitions import same_patient

HM = C.ASSOC_HAS_MEMBER


# --- Find* -------------------------------------------------------------------------------------

def _cap(ctx: Ctx, found: Found | None = None) -> int | None:
    """The most rows a LeafClass query still has to read, or None when nothing bounds it.

    One row past the limit is enough to know the answer is refused, and a patient may have
    thousands of entries whose stored XML would otherwise be read only to be thrown away.
    Rows come in answer order, so an answer within the limit is read whole and unchanged."""
    if not ctx.leaf_class or ctx.max_results is None:
        return None
    return max(ctx.max_results + 1 - (found.count if found is not None else 0), 0)


def _capped(stmt, cap: int | None):
    return stmt if cap is None else stmt.limit(cap)


# FindDocuments is the hot query: its statement is built once per shape (which filters are
# present, how many AND groups, backend, level) with bind parameters, and reused; building the
# expression tree each time would cost more than running the query.
_DE_IN_LISTS = (
    ("$XDSDocumentEntryClassCode", "class_code"),
    ("$XDSDocumentEntryTypeCode", "type_code"),
    ("$XDSDocumentEntryPracticeSettingCode", "practice_setting_code"),
    ("$XDSDocumentEntryHealthcareFacilityTypeCode", "hcft_code"),
    ("$XDSDocumentEntryFormatCode", "format_code"),
)
_DE_TIMES = tuple((f"$XDSDocumentEntry{stem}{edge}", col, edge)
                  for stem, col in (("CreationTime", "creation_time"), ("ServiceStartTime", "service_start_time"),
                                    ("ServiceStopTime", "service_stop_time"))
                  for edge in ("From", "To"))
_DE_GROUPS = (
    ("$XDSDocumentEntryEventCodeList", "ev", C.DE_EVENT_CODE),
    ("$XDSDocumentEntryConfidentialityCode", "conf", C.DE_CONFIDENTIALITY_CODE),
)
_FIND_CACHE: dict[tuple, object] = {}
_FIND_CACHE_MAX = 1024


def _patient_mode(value) -> str:
    """How a Find* query names its patients: one (ITI-18), a list, or none at all (every patient; ITI-51)."""
    if value is None:
        return "all"
    return "list" if isinstance(value, list) else "one"


def patient_condition(column, value) -> list[ColumnElement]:
    mode = _patient_mode(value)
    if mode == "all":
        return []
    return [column == value] if mode == "one" else [column.in_(value)]


def _find_documents_shape(ctx: Ctx, patient_param: str, with_xml: bool) -> tuple[tuple, dict]:
    p = ctx.params
    statuses = p.get("$XDSDocumentEntryStatus")
    patients = p.get(patient_param)
    mode = _patient_mode(patients)
    values = {"statuses": statuses, "entry_types": p.get("$XDSDocumentEntryType") or [C.OBJECT_TYPE_STABLE]}
    if mode == "one":
        values["pid"] = patients
    elif mode == "list":
        values["pids"] = patients
    key: list = [ctx.is_postgres, ("patients", mode), ("partitioned", ctx.partitioned)]
    for name, col in _DE_IN_LISTS:
        if p.has(name):
            key.append(col)
            values[col] = p.get(name)
    for name, col, edge in _DE_TIMES:
        if p.has(name):
            key.append(name)
            values[name] = p.get(name)
    for name, tag, _scheme in _DE_GROUPS + (("$XDSDocumentEntryReferenceIdList", "ref", None),):
        groups = p.get(name) or []
        key.append(len(groups))
        for i, g in enumerate(groups):
            values[f"{tag}{i}"] = g
    authors = p.get("$XDSDocumentEntryAuthorPerson") or []
    key.append(len(authors))
    for i, a in enumerate(authors):
        values[f"au{i}"] = like_value(ctx.is_postgres, a)
    level1 = ctx.level == 1
    latest = level1 and needs_latest_check(statuses)
    cap = _cap(ctx)
    # The access policy's conditions, as bind parameters of the cached statement. Several patients may each
    # have their own: find_documents adds the scope's per-patient conditions to the statement instead.
    vis = ctx.scope.single(patients) if mode == "one" else Visibility(everything=True)
    key.append(SC.shape(vis))
    key += [level1, latest, with_xml, cap is not None]
    if level1:
        values["offline"] = C.AVAILABILITY_OFFLINE
    if cap is not None:
        values["row_cap"] = cap
    values.update(SC.scope_values(vis, ctx.scope.now))
    return tuple(key), values, vis


def _build_find_documents(key: tuple, vis, now: int):
    is_postgres, (_, mode), (_, partitioned) = key[0], key[1], key[2]
    pc = O.c.patient_id if partitioned else None
    present = set(k for k in key if isinstance(k, str))
    n_ev, n_conf, n_ref, n_au, _scope, level1, latest, with_xml, capped = key[-9:]
    where = [O.c.status.in_(bindparam("statuses", expanding=True)),
             D.c.entry_type.in_(bindparam("entry_types", expanding=True))]
    if mode == "one":
        where.insert(0, O.c.patient_id == bindparam("pid"))
    elif mode == "list":
        where.insert(0, O.c.patient_id.in_(bindparam("pids", expanding=True)))
    for _name, col in _DE_IN_LISTS:
        if col in present:
            where.append(D.c[col].in_(bindparam(col, expanding=True)))
    for name, col, edge in _DE_TIMES:
        if name in present:
            where.append(D.c[col] >= bindparam(name) if edge == "From" else D.c[col] < bindparam(name))
    for (_name, tag, scheme), n in zip(_DE_GROUPS, (n_ev, n_conf)):
        for i in range(n):
            where.append(exists(select(OC.c.object_id).where(
                OC.c.object_id == O.c.id, *same_patient(OC, pc), OC.c.scheme == scheme,
                OC.c.code.in_(bindparam(f"{tag}{i}", expanding=True)))))
    for i in range(n_ref):
        where.append(exists(select(REF.c.object_id).where(
            REF.c.object_id == O.c.id, *same_patient(REF, pc),
            REF.c.value.in_(bindparam(f"ref{i}", expanding=True)))))
    if n_au:
        where.append(exists(select(AU.c.object_id).where(AU.c.object_id == O.c.id, *same_patient(AU, pc), or_(
            *[like_clause(is_postgres, AU.c.person, bindparam(f"au{i}")) for i in range(n_au)]))))
    if level1:
        where.append(or_(D.c.availability.is_(None), D.c.availability != bindparam("offline")))
    if latest:
        where.append(latest_version())
    if not vis.everything:
        # Named bind parameters, whose values SC.scope_values gives each time.
        where.append(SC.de_condition(vis, now, v=SC.Values(bind=True), partitioned=partitioned))
    stmt = (select(O.c.id, O.c.patient_id).select_from(O.join(D, and_(D.c.id == O.c.id, *same_patient(D, pc))))
            .where(O.c.kind == S.KIND_DOCUMENT_ENTRY, *where).order_by(O.c.seq))
    if with_xml:
        stmt = stmt.add_columns(*DE_ANSWER)
    if capped:
        stmt = stmt.limit(bindparam("row_cap"))
    return stmt


def find_documents_select(ctx: Ctx, patient_param: str = "$XDSDocumentEntryPatientId", with_xml: bool = False):
    """The FindDocuments statement and its parameter values; with_xml adds what rendering needs."""
    key, values, vis = _find_documents_shape(ctx, patient_param, with_xml)
    stmt = _FIND_CACHE.get(key)
    if stmt is None:
        if len(_FIND_CACHE) >= _FIND_CACHE_MAX:
            _FIND_CACHE.clear()
        stmt = _FIND_CACHE[key] = _build_find_documents(key, vis, ctx.scope.now)
    if key[1][1] != "one" and not ctx.scope.everything:
        stmt = stmt.where(*ctx.scope.de())  # a new statement; the cached one is left as it is
    return stmt, values


def find_documents(ctx: Ctx, patient_param: str = "$XDSDocumentEntryPatientId") -> Found:
    found = Found()
    # For LeafClass the stored XML comes back with the ids, saving the second round trip.
    stmt, values = find_documents_select(ctx, patient_param, with_xml=ctx.leaf_class)
    rows = ctx.conn.execute(stmt, values).all()
    found.add_objects(rows)   # with the answer's columns for LeafClass: kept in found.stored
    return found


# FindDocumentsByReferenceId is FindDocuments with the reference-id groups, which the
# select above adds whenever the parameter is present.
find_documents_by_reference_id = find_documents


def find_submission_sets(ctx: Ctx) -> Found:
    p = ctx.params
    where = [O.c.patient_id == p.get("$XDSSubmissionSetPatientId"), O.c.status.in_(p.get("$XDSSubmissionSetStatus"))]
    if p.has("$XDSSubmissionSetSourceId"):
        where.append(SSET.c.source_id.in_(p.get("$XDSSubmissionSetSourceId")))
    if p.has("$XDSSubmissionSetContentType"):
        where.append(SSET.c.content_type_code.in_(p.get("$XDSSubmissionSetContentType")))
    where += time_range(SSET.c.submission_time, p.get("$XDSSubmissionSetSubmissionTimeFrom"),
                        p.get("$XDSSubmissionSetSubmissionTimeTo"))
    if p.has("$XDSSubmissionSetAuthorPerson"):
        where.append(author_matches(ctx, O.c.id, [p.get("$XDSSubmissionSetAuthorPerson")]))
    stmt = (select(O.c.id, O.c.patient_id).select_from(O.join(SSET, and_(SSET.c.id == O.c.id,
                                                                        *same_patient(SSET, owner(ctx)))))
            .where(O.c.kind == S.KIND_SUBMISSION_SET, *where, *ctx.scope.objects()).order_by(O.c.seq))
    found = Found()
    found.add_objects(ctx.conn.execute(_capped(stmt, _cap(ctx))))
    return found


def find_folders(ctx: Ctx) -> Found:
    """FindFolders, and ITI-51's FindFoldersForMultiplePatients (a list of patients, or none: every one)."""
    p = ctx.params
    statuses = p.get("$XDSFolderStatus")
    where = patient_condition(O.c.patient_id, p.get("$XDSFolderPatientId")) + [O.c.status.in_(statuses)]
    where += time_range(FOL.c.last_update_time, p.get("$XDSFolderLastUpdateTimeFrom"),
                        p.get("$XDSFolderLastUpdateTimeTo"))
    where += code_groups(O.c.id, C.FOLDER_CODE_LIST, p.get("$XDSFolderCodeList"), owner(ctx))
    where += fd_visible(ctx, statuses)
    stmt = (select(O.c.id, O.c.patient_id).select_from(O.join(FOL, and_(FOL.c.id == O.c.id,
                                                                       *same_patient(FOL, owner(ctx)))))
            .where(O.c.kind == S.KIND_FOLDER, *where, *ctx.scope.objects()).order_by(O.c.seq))
    found = Found()
    found.add_objects(ctx.conn.execute(_capped(stmt, _cap(ctx))))
    return found


def get_all(ctx: Ctx) -> Found:
    """Every SubmissionSet, DocumentEntry and Folder of the patient with the requested statuses,
    plus every association whose source or target is one of them."""
    p = ctx.params
    pid = p.get("$patientId")
    de_st, ss_st, fd_st = (p.get("$XDSDocumentEntryStatus"), p.get("$XDSSubmissionSetStatus"),
                           p.get("$XDSFolderStatus"))
    found = Found()
    pin_patients(ctx, [pid])   # for the associations, looked up by their ends
    selects = (obj_select(ctx, S.KIND_SUBMISSION_SET, O.c.patient_id == pid, O.c.status.in_(ss_st)),
               de_select(ctx, O.c.patient_id == pid, O.c.status.in_(de_st), *content_filters(ctx), *de_visible(ctx, de_st)),
               obj_select(ctx, S.KIND_FOLDER, O.c.patient_id == pid, O.c.status.in_(fd_st), *fd_visible(ctx, fd_st)))
    for stmt in selects:
        cap = _cap(ctx, found)
        if cap == 0:
            return found  # the caller refuses the answer; reading on would only add to it
        found.add_objects(ctx.conn.execute(_capped(stmt, cap)))
    cap = _cap(ctx, found)
    if cap == 0:
        return found
    ids = [i for i, _ in found.objects]
    found.add_association_rows(associations_in_seq_order(ctx, ids, *assoc_status_filter(ctx.params), stop_at=cap))
    return found


# --- Get* by id ----------------------------------------------------------------------------------

def _documents_by_id(ctx: Ctx, uuid_param: str, uid_param: str, lid_param: str | None = None,
                     extra=()) -> list:
    p = ctx.params
    if lid_param and p.has(lid_param):
        # A logical id asks for the history of an entry: every version, whatever the level.
        pin_lids(ctx, p.get(lid_param))
        rows = rows_in(ctx, lambda part: de_select(ctx, O.c.lid.in_(part), *extra), p.get(lid_param))
    elif p.has(uuid_param):
        pin_ids(ctx, _as_list(p.get(uuid_param)))
        visible = de_visible(ctx)
        rows = rows_in(ctx, lambda part: de_select(ctx, O.c.id.in_(part), *visible, *extra), _as_list(p.get(uuid_param)))
    else:
        pin_uids(ctx, _as_list(p.get(uid_param)))
        visible = de_visible(ctx)
        rows = rows_in(ctx, lambda part: de_select(ctx, O.c.unique_id.in_(part), *visible, *extra),
                       _as_list(p.get(uid_param)))
    return rows


def _folders_by_id(ctx: Ctx, uuid_param: str, uid_param: str, lid_param: str | None = None) -> list:
    p = ctx.params
    if lid_param and p.has(lid_param):
        pin_lids(ctx, p.get(lid_param))
        rows = rows_in(ctx, lambda part: obj_select(ctx, S.KIND_FOLDER, O.c.lid.in_(part)), p.get(lid_param))
    elif p.has(uuid_param):
        pin_ids(ctx, _as_list(p.get(uuid_param)))
        rows = rows_in(ctx, lambda part: obj_select(ctx, S.KIND_FOLDER, O.c.id.in_(part), *fd_visible(ctx)),
                       _as_list(p.get(uuid_param)))
    else:
        pin_uids(ctx, _as_list(p.get(uid_param)))
        rows = rows_in(ctx, lambda part: obj_select(ctx, S.KIND_FOLDER, O.c.unique_id.in_(part), *fd_visible(ctx)),
                       _as_list(p.get(uid_param)))
    return rows


def _as_list(v) -> list[str]:
    return v if isinstance(v, list) else [v]


def get_documents(ctx: Ctx) -> Found:
    found = Found()
    found.add_objects(_documents_by_id(ctx, "$XDSDocumentEntryEntryUUID", "$XDSDocumentEntryUniqueId",
                                       "$XDSDocumentEntryLogicalID"))
    return found


def get_folders(ctx: Ctx) -> Found:
    found = Found()
    found.add_objects(_folders_by_id(ctx, "$XDSFolderEntryUUID", "$XDSFolderUniqueId", "$XDSFolderLogicalID"))
    return found


def get_associations(ctx: Ctx) -> Found:
    found = Found()
    pin_ids(ctx, _as_list(ctx.params.get("$uuid")))
    found.add_association_rows(associations_in_seq_order(ctx, ctx.params.get("$uuid"),
                                                         *assoc_status_filter(ctx.params)))
    return found


def get_documents_and_associations(ctx: Ctx) -> Found:
    found = Found()
    found.add_objects(_documents_by_id(ctx, "$XDSDocumentEntryEntryUUID", "$XDSDocumentEntryUniqueId"))
    ids = [i for i, _ in found.objects]
    found.add_association_rows(associations_in_seq_order(ctx, ids, *assoc_status_filter(ctx.params)))
    return found


def get_submission_sets(ctx: Ctx) -> Found:
    """The SubmissionSets holding any of the given objects, with those HasMember associations."""
    pin_ids(ctx, _as_list(ctx.params.get("$uuid")))
    where = [A.c.type == HM, *assoc_status_filter(ctx.params), *ctx.scope.associations(), *ctx.scope.objects()]
    rows = rows_in(ctx, lambda part: (
        select(A.c.id, A.c.source, O.c.patient_id, A.c.seq, O.c.seq.label("ss_seq"))
        .select_from(A.join(O, O.c.id == A.c.source))
        .where(A.c.target.in_(part), O.c.kind == S.KIND_SUBMISSION_SET, *where)), ctx.params.get("$uuid"))
    found = Found()
    found.add_objects((r.source, r.patient_id) for r in sorted(rows, key=lambda r: r.ss_seq))
    found.add_associations(r.id for r in sorted(rows, key=lambda r: r.seq))
    return found


# --- composition queries ---------------------------------------------------------------------------

def _keep_closed(assocs: Sequence, objects: set[str]) -> list:
    """Drop associations whose source or target is not part of the answer; an association may
    point at another association (SS -> (Folder -> DE)), so repeat until nothing changes."""
    kept = list(assocs)
    while True:
        present = objects | {a.id for a in kept}
        nxt = [a for a in kept if a.source in present and a.target in present]
        if len(nxt) == len(kept):
            return kept
        kept = nxt


def get_submission_set_and_contents(ctx: Ctx) -> Found:
    p = ctx.params
    if p.has("$XDSSubmissionSetEntryUUID"):
        key = O.c.id == p.get("$XDSSubmissionSetEntryUUID")
        pin_ids(ctx, [p.get("$XDSSubmissionSetEntryUUID")])
    else:
        key = O.c.unique_id == p.get("$XDSSubmissionSetUniqueId")
        pin_uids(ctx, [p.get("$XDSSubmissionSetUniqueId")])
    found = Found()
    ss = ctx.conn.execute(obj_select(ctx, S.KIND_SUBMISSION_SET, key)).first()
    if ss is None:
        return found
    astatus = assoc_status_filter(p) + ctx.scope.associations()
    members = select(A.c.target).where(A.c.source == ss.id, A.c.type == HM, *astatus)
    member_assocs = ctx.conn.execute(select(A.c.id, A.c.type, A.c.source, A.c.target, A.c.seq)
                                     .where(A.c.source == ss.id, A.c.type == HM, *astatus)).all()
    docs = ctx.conn.execute(de_select(ctx, O.c.id.in_(members), *content_filters(ctx), *de_visible(ctx))).all()
    fols = ctx.conn.execute(obj_select(ctx, S.KIND_FOLDER, O.c.id.in_(members), *fd_visible(ctx))).all()
    # Associations that are themselves members (Folder -> DE links made by this submission).
    inner = ctx.conn.execute(select(A.c.id, A.c.type, A.c.source, A.c.target, A.c.seq)
                             .where(A.c.id.in_(members), *astatus)).all()
    # Folder -> DE links between the returned folders and documents, whoever submitted them.
    links = []
    if docs and fols:
        fol_ids = [f.id for f in fols]
        links = rows_in(ctx, lambda part: select(A.c.id, A.c.type, A.c.source, A.c.target, A.c.seq).where(
            A.c.source.in_(fol_ids), A.c.target.in_(part), A.c.type == HM, *astatus), [d.id for d in docs])
    found.add_objects([ss])
    found.add_objects(docs)
    found.add_objects(fols)
    objects = {ss.id} | {d.id for d in docs} | {f.id for f in fols}
    candidates = {a.id: a for a in list(member_assocs) + list(inner) + list(links)}
    kept = _keep_closed(sorted(candidates.values(), key=lambda a: a.seq), objects)
    found.add_association_rows(kept)
    return found


def get_folder_and_contents(ctx: Ctx) -> Found:
    p = ctx.params
    found = Found()
    fols = _folders_by_id(ctx, "$XDSFolderEntryUUID", "$XDSFolderUniqueId")
    if not fols:
        return found
    fol_ids = [f.id for f in fols]
    links = ctx.conn.execute(select(A.c.id, A.c.type, A.c.source, A.c.target, A.c.seq,
                                    *(ASSOCIATION_ANSWER if ctx.leaf_class else ()))
                             .where(A.c.source.in_(fol_ids), A.c.type == HM, *assoc_status_filter(p),
                                    *ctx.scope.associations()).order_by(A.c.seq)).all()
    docs = rows_in(ctx, lambda part: de_select(ctx, O.c.id.in_(part), *content_filters(ctx), *de_visible(ctx)),
                   [a.target for a in links])
    doc_ids = {d.id for d in docs}
    found.add_objects(fols)
    found.add_objects(docs)
    found.add_association_rows(a for a in links if a.target in doc_ids)
    return found


def get_folders_for_document(ctx: Ctx) -> Found:
    p = ctx.params
    found = Found()
    docs = _documents_by_id(ctx, "$XDSDocumentEntryEntryUUID", "$XDSDocumentEntryUniqueId")
    if not docs:
        return found
    holders = select(A.c.source).where(A.c.target.in_([d.id for d in docs]), A.c.type == HM,
                                       *assoc_status_filter(p), *ctx.scope.pin(A))
    found.add_objects(ctx.conn.execute(obj_select(ctx, S.KIND_FOLDER, O.c.id.in_(holders), *fd_visible(ctx))))
    return found


def get_related_documents(ctx: Ctx) -> Found:
    """The document and the documents linked to it by the requested association types, either
    way, with those associations; nothing at all when nothing is related."""
    p = ctx.params
    found = Found()
    focus = _documents_by_id(ctx, "$XDSDocumentEntryEntryUUID", "$XDSDocumentEntryUniqueId")
    if not focus:
        return found
    focus_ids = {f.id for f in focus}
    types = [t for t in p.get("$AssociationTypes") if t != HM]
    assocs = associations_in_seq_order(ctx, list(focus_ids), A.c.type.in_(types), *assoc_status_filter(p))
    other = {}
    for a in assocs:
        if a.source in focus_ids and a.target not in focus_ids:
            other[a.id] = a.target
        elif a.target in focus_ids and a.source not in focus_ids:
            other[a.id] = a.source
    if not other:
        return found
    related = rows_in(ctx, lambda part: de_select(ctx, O.c.id.in_(part), entry_type_filter(ctx), *de_visible(ctx)),
                      list(other.values()))
    related_ids = {r.id for r in related}
    kept = [a for a in assocs if other.get(a.id) in related_ids]
    if not kept:
        return found
    linked_focus = {a.source for a in kept} | {a.target for a in kept}
    found.add_objects(f for f in focus if f.id in linked_focus)
    found.add_objects(related)
    found.add_association_rows(kept)
    return found


QUERY_FUNCTIONS: dict[str, Callable[[Ctx], Found]] = {
    C.SQ_FIND_DOCUMENTS: find_documents,
    C.SQ_FIND_DOCUMENTS_BY_REFERENCE_ID: find_documents_by_reference_id,
    C.SQ_FIND_SUBMISSION_SETS: find_submission_sets,
    C.SQ_FIND_FOLDERS: find_folders,
    C.SQ_GET_ALL: get_all,
    C.SQ_GET_DOCUMENTS: get_documents,
    C.SQ_GET_FOLDERS: get_folders,
    C.SQ_GET_ASSOCIATIONS: get_associations,
    C.SQ_GET_DOCUMENTS_AND_ASSOCIATIONS: get_documents_and_associations,
    C.SQ_GET_SUBMISSION_SETS: get_submission_sets,
    C.SQ_GET_SUBMISSION_SET_AND_CONTENTS: get_submission_set_and_contents,
    C.SQ_GET_FOLDER_AND_CONTENTS: get_folder_and_contents,
    C.SQ_GET_FOLDERS_FOR_DOCUMENT: get_folders_for_document,
    C.SQ_GET_RELATED_DOCUMENTS: get_related_documents,
    # ITI-51: the same statements over a list of patients (or every patient).
    C.SQ_FIND_DOCUMENTS_FOR_MULTIPLE_PATIENTS: find_documents,
    C.SQ_FIND_FOLDERS_FOR_MULTIPLE_PATIENTS: find_folders,
}
