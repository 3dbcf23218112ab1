"""ITI-18 Registry Stored Query and ITI-51 Multi-Patient Stored Query.

`stored_query()` takes the query:AdhocQueryRequest element and returns the
query:AdhocQueryResponse element: Success with the objects (LeafClass) or their ids
(ObjectRef), possibly with warnings, or Failure with the RegistryErrorList. ITI-51's two
queries are FindDocuments and FindFolders over a list of patients (params.MPQ_QUERIES): the
same parser, the same statements, the same access policy for every patient they name.
"""
from __future__ import annotations

import logging

from lxml import etree

from xds import constants as C
from xds import ebrim
from xds import errors as E
from xds import spliced
from xds.db import retry_read
from xds.errors import XdsError, XdsException
from registry.config import RegistryConfig
from registry.splice import answer_part, association_part
from registry.store import RegistryStore
from .filters import Ctx, Found
from .params import MPQ_PATIENT_PARAMS, RETURN_LEAF_CLASS, QUERIES, QueryRequest, parse_params, read_request
from .queries import QUERY_FUNCTIONS

__all__ = ["stored_query", "query_answer", "QUERIES"]

log = logging.getLogger(__name__)


def stored_query(store: RegistryStore, request: etree._Element, config: RegistryConfig,
                 guard=None, transaction: str = "ITI-18") -> etree._Element:
    """The answer as one element tree (the in-process callers' form of query_answer)."""
    payload, parts = query_answer(store, request, config, guard, transaction)
    return spliced.materialise(payload, parts) if parts is not None else payload


def query_answer(store: RegistryStore, request: etree._Element, config: RegistryConfig,
                 guard=None, transaction: str = "ITI-18") -> tuple[etree._Element, list[bytes] | None]:
    """The AdhocQueryResponse, and for a LeafClass answer its objects serialised (xds/spliced.py: the
    payload's RegistryObjectList is then empty and they go into it when it is sent); else None.
    guard: the access policy of the request (registry/guard.py); None is the administrator.
    transaction: ITI-18, or ITI-51 (the Multi-Patient Stored Query action); each answers only its own queries."""
    warnings: list[XdsError] = []
    try:
        req = read_request(request)
        params = parse_params(req.query_id, req.slots, config.rules, transaction)
        warnings = params.warnings
        leaf = req.return_type == RETURN_LEAF_CLASS
        multi = req.query_id in MPQ_PATIENT_PARAMS

        def run() -> tuple[list[etree._Element], list[bytes] | None]:
            with store.reading() as conn:
                scope = None
                if guard is not None and multi:
                    # None: no patient list, which asks about every patient.
                    scope = guard.multi_patient_scope(conn, params.get(MPQ_PATIENT_PARAMS[req.query_id]), leaf)
                elif guard is not None:
                    named = params.get(PATIENT_PARAMS[req.query_id]) if req.query_id in PATIENT_PARAMS else None
                    scope = guard.query_scope(conn, named, lambda: patients_named(store, conn, params), leaf)
                ctx = Ctx(conn, store.is_postgres, params, leaf, config.max_query_results, scope,
                          config.rules.hidden_statuses, store.partitioned)
                found = QUERY_FUNCTIONS[req.query_id](ctx)
                if leaf:
                    # An ITI-51 answer holds several patients by design (XDSResultNotSinglePatient is ITI-18's).
                    _check_leaf_class(found, config, single_patient=not multi)
                    return [], _leaf_class(store, conn, found, req)
                return _object_refs(found, req), None

        # A query only reads: when the database dropped its connection (a restart), it is run again.
        objects, parts = retry_read(run, "stored query")
        return ebrim.adhoc_query_response(objects, warnings), parts
    except XdsException as exc:
        return ebrim.adhoc_query_response(errors=exc.errors + [w for w in warnings if w not in exc.errors]), None
    except Exception:
        # The consumer learns only that the registry failed; the details go to the log.
        log.exception("stored query failed")
        return ebrim.adhoc_query_response(
            errors=[XdsError(E.REGISTRY_ERROR, "internal error while running the stored query", "AdhocQuery")]), None


# The queries about one patient, and the parameter naming it.
PATIENT_PARAMS = {
    C.SQ_FIND_DOCUMENTS: "$XDSDocumentEntryPatientId",
    C.SQ_FIND_DOCUMENTS_BY_REFERENCE_ID: "$XDSDocumentEntryPatientId",
    C.SQ_FIND_SUBMISSION_SETS: "$XDSSubmissionSetPatientId",
    C.SQ_FIND_FOLDERS: "$XDSFolderPatientId",
    C.SQ_GET_ALL: "$patientId",
}
# The parameters of the by-id queries that name registry objects (entryUUID, uniqueId or logical id).
_ID_PARAMS = ("$XDSDocumentEntryEntryUUID", "$XDSDocumentEntryUniqueId", "$XDSDocumentEntryLogicalID",
              "$XDSFolderEntryUUID", "$XDSFolderUniqueId", "$XDSFolderLogicalID", "$XDSSubmissionSetEntryUUID",
              "$XDSSubmissionSetUniqueId", "$uuid")
_UUID_PARAMS = {"$XDSDocumentEntryEntryUUID", "$XDSFolderEntryUUID", "$XDSSubmissionSetEntryUUID", "$uuid"}


def patients_named(store: RegistryStore, conn, params) -> set[str]:
    """The patients of the objects a by-id query names. Whatever it reaches from them belongs to the same
    patients (the registry refuses associations across patients); anything else is seen by nobody."""
    ids: list[str] = []
    refs: list[str] = []
    for name in _ID_PARAMS:
        v = params.get(name)
        if v:
            (ids if name in _UUID_PARAMS else refs).extend(v if isinstance(v, list) else [v])
    if not store.partitioned:
        return store.patients_of(conn, ids + refs)
    # entryUUIDs through registry_key; uniqueIds and logical ids (whose versions an ITI-64 change may have
    # filed under another patient) by the objects themselves.
    return store.key_patients(conn, ids) | (store.patients_of(conn, refs) if refs else set())


def _check_leaf_class(found: Found, config: RegistryConfig, single_patient: bool = True) -> None:
    if found.count > config.max_query_results:
        raise XdsException(E.TOO_MANY_RESULTS,
                           f"the query selects more than {config.max_query_results} objects; narrow it or ask "
                           f"for ObjectRef", "AdhocQuery")
    if not single_patient:
        return
    patients = {pid for _, pid in found.objects if pid is not None}
    if len(patients) > 1:
        raise XdsException(E.RESULT_NOT_SINGLE_PATIENT,
                           f"the LeafClass answer would hold objects of {len(patients)} patients", "AdhocQuery")


def _leaf_class(store: RegistryStore, conn, found: Found, req: QueryRequest) -> list[bytes]:
    ids = [i for i, _ in found.objects]
    # DocumentEntries read with the query itself (they carry no lastUpdateTime), then the other objects.
    parts = {i: answer_part(r.xml, r.status, r.lid, r.version, home=req.home, ready=r.ready)
             for i, r in found.stored.items()}
    # None when only associations were found: their patients are then read from registry_key.
    patients = {p for _, p in found.objects} or None
    rows = store.object_rows(conn, [i for i in ids if i not in parts], patients)
    parts.update((i, answer_part(r.xml, r.status, r.lid, r.version, r.last_update_time, req.home, r.ready))
                 for i, r in rows.items())
    out = [parts[i] for i in ids if i in parts]
    assocs = dict(found.stored_associations)
    # An association belongs to its ends' patient (the registry refuses links across patients).
    assocs.update(store.association_rows(conn, [i for i in found.associations if i not in assocs], patients))
    out += [association_part(a, req.home) for a in (assocs[i] for i in found.associations if i in assocs)]
    return out


def _object_refs(found: Found, req: QueryRequest) -> list[etree._Element]:
    ids = list(dict.fromkeys([i for i, _ in found.objects] + found.associations))
    return [ebrim.object_ref(i, req.home) for i in ids]
