"""ITI-62 Delete Document Set (Remove Metadata): remove registry objects named by ObjectRef.

The request is checked on its own first; every rule that needs the registry's state then runs
inside the one transaction that deletes, so a rejected request changes nothing and a
concurrent removal of the same objects waits for this one to finish.
"""
from __future__ import annotations

import logging

from lxml import etree

from xds import constants as C
from xds import errors as E
from xds.constants import last_segment
from xds.errors import ErrorList, XdsException
from xds.security import policy as P
from . import schema as S
from .checks import now_dtm
from .guard import RegistryGuard, admin_guard
from .store import AssociationRow, ObjectRow, RegistryStore

log = logging.getLogger(__name__)

REQUEST_TAG = C.q(C.NS_LCM, "RemoveObjectsRequest")
_OBJECT_REF_LIST = C.q(C.NS_RIM, "ObjectRefList")
_OBJECT_REF = C.q(C.NS_RIM, "ObjectRef")
_REQUEST_SLOTS = C.q(C.NS_RS, "RequestSlotList")
_DELETE_ALL = "urn:oasis:names:tc:ebxml-regrep:DeletionScopeType:DeleteAll"


def delete_document_set(store: RegistryStore, request: etree._Element, guard: RegistryGuard | None = None) -> None:
    """Remove every object the RemoveObjectsRequest names, or none; raises XdsException on failure.
    guard: the access policy of the request; None is the administrator."""
    ids = read_object_refs(request)
    guard = guard or admin_guard()
    with store.transaction() as conn:
        _Removal(guard.hiding(store, conn, ids), conn, ids, guard).run()


def read_object_refs(request: etree._Element) -> list[str]:
    """The ObjectRef ids, in request order and without repeats, once the request's shape is right."""
    if request.tag != REQUEST_TAG:
        raise XdsException(E.REGISTRY_ERROR, f"expected lcm:RemoveObjectsRequest, got "
                           f"{etree.QName(request).localname}", "Body")
    # The toolkit answers a malformed ITI-62 request with XDSRegistryError; so do we.
    problems = ErrorList(E.REGISTRY_ERROR)
    scope = request.get("deletionScope")
    if scope is not None and scope != _DELETE_ALL:
        problems.add(f"deletionScope {scope} is not allowed: ITI-62 removes whole objects (DeleteAll)",
                     "RemoveObjectsRequest")
    lists = []
    for child in request:
        if not isinstance(child.tag, str):
            continue  # comments and processing instructions
        name = etree.QName(child).localname
        if child.tag == _OBJECT_REF_LIST:
            lists.append(child)
        elif name == "AdhocQuery":
            problems.add("a RemoveObjectsRequest for ITI-62 names its objects by ObjectRef only; "
                         "it must not hold an AdhocQuery", "AdhocQuery")
        elif child.tag == _REQUEST_SLOTS:
            if any(isinstance(s.tag, str) for s in child):
                problems.add("ITI-62 defines no request slots; the RequestSlotList must be empty",
                             "RequestSlotList")
        else:
            problems.add(f"a RemoveObjectsRequest holds an ObjectRefList only; {name} is not allowed there "
                         f"(registry objects are never sent to be removed, only referenced)", name)
    ids: list[str] = []
    for lst in lists:
        for n, ref in enumerate((r for r in lst if isinstance(r.tag, str)), 1):
            if ref.tag != _OBJECT_REF:
                problems.add(f"ObjectRefList holds a {etree.QName(ref).localname}; only ObjectRef is allowed",
                             ref.get("id") or f"ObjectRefList[{n}]")
                continue
            ident = (ref.get("id") or "").strip()
            if not ident:
                problems.add(f"ObjectRef #{n} has no id", f"ObjectRef[{n}]")
                continue
            if ref.get("home"):
                # home names the community answering a cross-community query; a local removal has no use for it.
                problems.add(f"ObjectRef {ident} carries home {ref.get('home')}; ITI-62 removes objects of "
                             f"this registry only and takes no home attribute", ident)
            ids.append(ident)
    if not ids and not problems.has_errors:
        problems.add("the RemoveObjectsRequest names no object: its ObjectRefList must hold at least one "
                     "ObjectRef", "ObjectRefList")
    problems.raise_if_errors()
    return list(dict.fromkeys(ids))


class _Removal:
    def __init__(self, store: RegistryStore, conn, ids: list[str], guard: RegistryGuard):
        self.store, self.conn, self.ids, self.guard = store, conn, ids, guard
        self.removing = set(ids)
        self.errors = ErrorList(E.REGISTRY_ERROR)

    def run(self) -> None:
        objs, assocs = self.store.lock_for_removal(self.conn, self.ids)
        for i in self.ids:
            if i not in objs and i not in assocs:
                self.errors.add(f"ObjectRef {i} names no DocumentEntry, SubmissionSet, Folder or Association "
                                f"in the registry", i, E.UNRESOLVED_REFERENCE)
        self.errors.raise_if_errors()
        # An association is removed by whoever may remove the object it starts from.
        self.guard.check_change(self.conn, set(objs) | {a.source for a in assocs.values()}, P.DELETE)

        ends = {end for a in assocs.values() for end in (a.source, a.target)} - self.removing
        # One lookup answers both questions: who still points at what we remove, and at what we keep.
        touching = self.store.associations_touching(self.conn, self.removing | ends)
        staying = [a for a in touching if a.id not in self.removing]
        self._references_exist(objs, assocs, staying)
        self._unreferenced(assocs, ends, staying)
        self.errors.raise_if_errors()

        self.store.remove(self.conn, objs.keys(), assocs.keys())
        emptied = self._folders_losing_members(objs, assocs)
        if emptied:
            self.store.touch_folders(self.conn, emptied, now_dtm())
        log.info("ITI-62 removed %d registry objects and %d associations", len(objs), len(assocs))

    def _references_exist(self, objs: dict[str, ObjectRow], assocs: dict[str, AssociationRow],
                          staying: list[AssociationRow]) -> None:
        holding: dict[str, list[AssociationRow]] = {}
        for a in staying:
            for end in {a.source, a.target} & self.removing:
                holding.setdefault(end, []).append(a)
        for i in self.ids:
            holders = holding.get(i)
            if not holders:
                continue
            what = _describe(i, objs, assocs)
            listed = ", ".join(f"{last_segment(a.type)} {a.id}" for a in holders[:5])
            more = f" and {len(holders) - 5} more" if len(holders) > 5 else ""
            self.errors.add(f"cannot remove {what}: Association {listed}{more} still point at it and "
                            f"would be left dangling; remove them in the same request", i, E.REFERENCES_EXIST)

    def _unreferenced(self, assocs: dict[str, AssociationRow], ends: set[str],
                      staying: list[AssociationRow]) -> None:
        still_linked = {end for a in staying for end in (a.source, a.target)}
        orphans = ends - still_linked
        if not orphans:
            return
        kinds = self.store.objects(self.conn, orphans)
        kept_assocs = self.store.associations(self.conn, orphans - set(kinds))
        for i in sorted(orphans):
            by = [a.id for a in assocs.values() if i in (a.source, a.target)]
            what = _describe(i, kinds, kept_assocs)
            self.errors.add(f"removing Association {', '.join(by)} would leave {what} with no association "
                            f"referencing it; remove it in the same request or keep an association to it",
                            i, E.UNREFERENCED_OBJECT)

    def _folders_losing_members(self, objs: dict[str, ObjectRow], assocs: dict[str, AssociationRow]) -> set[str]:
        """Folders that stay but lose a member: their lastUpdateTime records the change of contents."""
        sources = {a.source for a in assocs.values()
                   if a.type == C.ASSOC_HAS_MEMBER and a.source not in self.removing}
        if not sources:
            return set()
        return {i for i, row in self.store.objects(self.conn, sources).items() if row.kind == S.KIND_FOLDER}


def _describe(ident: str, objs: dict[str, ObjectRow], assocs: dict[str, AssociationRow]) -> str:
    if ident in objs:
        row = objs[ident]
        uid = f" (uniqueId {row.unique_id})" if row.unique_id else ""
        return f"{S.KIND_NAMES.get(row.kind, 'object')} {ident}{uid}"
    if ident in assocs:
        a = assocs[ident]
        return f"{last_segment(a.type)} Association {ident} ({a.source} -> {a.target})"
    return f"object {ident}"
