"""ITI-42 Register Document Set-b: the registry's whole handling of one submission.

Stateless rules run first (xds.validation); the checks that need the registry's state run
inside the one database transaction that stores the submission, so that a failure leaves
nothing behind and concurrent submissions of the same uniqueIds are serialised.
"""
from __future__ import annotations

import datetime as _dt
import logging

from lxml import etree

from xds import constants as C
from xds import errors as E
from xds.ebrim import assign_uuids, nest_loose_classifications, new_uuid, parse_submission
from xds.errors import ErrorList, XdsError, XdsException
from xds.model import Association, DocumentEntry, Folder, RegistryObject, Submission, SubmissionSet
from xds.validation import validate_submission
from . import schema as S
from .config import RegistryConfig
from .store import AssociationRow, ObjectRow, RegistryStore

log = logging.getLogger(__name__)

_KIND_NAMES = {S.KIND_DOCUMENT_ENTRY: "DocumentEntry", S.KIND_SUBMISSION_SET: "SubmissionSet",
               S.KIND_FOLDER: "Folder"}


def now_dtm() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d%H%M%S")


def register(store: RegistryStore, request: etree._Element, config: RegistryConfig,
             mode: str = "register") -> list[XdsError]:
    """Register a SubmitObjectsRequest. Returns warnings; raises XdsException on failure."""
    sub, found = read_submission(request, config, mode, "ITI-42")
    if sub.object_refs:
        found.add("ObjectRef elements are not registered by ITI-42", sub.object_refs[0])
    found.raise_if_errors()
    warnings, submitted_uuids = prepare_for_storage(sub, config)
    with store.transaction() as conn:
        _Registration(store, conn, sub, config, submitted_uuids).run()
    return warnings + found.warnings


def read_submission(request: etree._Element, config: RegistryConfig, mode: str,
                    transaction: str) -> tuple[Submission, ErrorList]:
    """Parse a SubmitObjectsRequest and collect its stateless metadata problems without raising,
    so that the transaction can add its own before answering with all of them."""
    if request.tag != C.q(C.NS_LCM, "SubmitObjectsRequest"):
        raise XdsException(E.REGISTRY_ERROR, f"expected lcm:SubmitObjectsRequest, got {request.tag}", "Body")
    sub = parse_submission(request)
    found = ErrorList(E.REGISTRY_METADATA_ERROR)
    for el in sub.unknown_elements:
        found.add(f"rim:RegistryObjectList holds an element {etree.QName(el).localname} that {transaction} does "
                  f"not accept", el.get("id") or etree.QName(el).localname)
    found.items += validate_submission(sub, mode, config.profile).items
    return sub, found


def prepare_for_storage(sub: Submission, config: RegistryConfig) -> tuple[list[XdsError], list[str]]:
    """Drop the extra metadata this registry does not keep and give symbolic ids UUIDs.

    Returns the warnings, and the urn:uuid: ids the submitter chose itself: those must be new
    to the registry, which only the transaction can check.
    """
    warnings = _extra_metadata(sub, config)
    submitted_uuids = [o.id for o in sub.objects if o.id.startswith("urn:uuid:")]
    assign_uuids(sub)
    nest_loose_classifications(sub)
    return warnings, submitted_uuids


def _extra_metadata(sub: Submission, config: RegistryConfig) -> list[XdsError]:
    if config.keep_extra_metadata:
        return []
    warnings = []
    for o in sub.objects:
        for s in list(o.element.findall(C.q(C.NS_RIM, "Slot"))):
            name = s.get("name") or ""
            if name.startswith("urn:") and name != C.REFERENCE_ID_LIST_SLOT:
                o.element.remove(s)
                warnings.append(XdsError(E.EXTRA_METADATA_NOT_SAVED,
                                         f"extra metadata slot {name} on {o.kind} {o.id} was not saved", o.id,
                                         C.SEVERITY_WARNING))
        o.__init__(o.element)
    return warnings


class _Registration:
    def __init__(self, store: RegistryStore, conn, sub: Submission, config: RegistryConfig,
                 submitted_uuids: list[str]):
        self.store, self.conn, self.sub, self.config = store, conn, sub, config
        self.submitted_uuids = submitted_uuids
        self.errors = ErrorList(E.REGISTRY_METADATA_ERROR)
        self.local = sub.by_id()
        self.ss: SubmissionSet = sub.submission_sets[0]
        self.now = now_dtm()
        self.new_associations: list[Association] = []

    def run(self) -> None:
        entries = [o for o in self.sub.objects if isinstance(o, (DocumentEntry, SubmissionSet, Folder))]
        holders = self.store.lock_and_find(self.conn, [o.unique_id for o in entries if o.unique_id])
        self._ids_are_new()
        self._patient_known()
        self._unique_ids(entries, holders)
        self.errors.raise_if_errors()
        refs = self._resolve_references()
        self.errors.raise_if_errors()
        self._association_rules(refs)
        self.errors.raise_if_errors()
        deprecate, touched = self._lifecycle(refs)
        self.errors.raise_if_errors()

        n = len(entries) + len(self.sub.associations) + len(self.new_associations)
        seq = self.store.next_seq(self.conn, n)
        self.store.write(self.conn, self.store.object_rows(entries, seq, self.now) + self.store.association_rows(
            self.sub.associations + self.new_associations, None if seq is None else seq + len(entries)))
        if deprecate:
            self.store.set_status(self.conn, deprecate, C.STATUS_DEPRECATED)
        if touched:
            self.store.touch_folders(self.conn, touched, self.now)

    # --- registry-state checks ------------------------------------------------------------
    def _ids_are_new(self) -> None:
        if not self.submitted_uuids:
            return
        taken = set(self.store.objects(self.conn, self.submitted_uuids))
        taken |= set(self.store.associations(self.conn, self.submitted_uuids))
        for i in self.submitted_uuids:
            if i in taken:
                self.errors.add(f"object id {i} is already used by an object in the registry; "
                                f"new objects need new ids", i)

    def _patient_known(self) -> None:
        if not self.config.check_patients:
            return
        pid = self.ss.patient_id
        if pid and not self.store.patient_known(self.conn, pid):
            merged = self.store.merged_into(self.conn, pid)
            why = f"; it was merged into {merged}" if merged else ""
            self.errors.add(f"patientId {pid} of SubmissionSet {self.ss.id} is not known to the registry{why}",
                            self.ss.id, E.UNKNOWN_PATIENT_ID)

    def _unique_ids(self, entries: list[RegistryObject], holders) -> None:
        wanted = {o.unique_id: o for o in entries if o.unique_id}
        reported = set()
        for row, stored_hash in holders:
            o = wanted[row.unique_id]
            if o.id in reported:
                continue
            reported.add(o.id)
            if isinstance(o, DocumentEntry) and row.kind == S.KIND_DOCUMENT_ENTRY:
                mine = (o.slot1("hash") or "").lower()
                if mine and stored_hash and mine != stored_hash.lower():
                    self.errors.add(f"DocumentEntry {o.id} has uniqueId {row.unique_id}, already registered "
                                    f"with hash {stored_hash}; this submission gives hash {mine}",
                                    o.id, E.NON_IDENTICAL_HASH)
            else:
                self.errors.add(f"{o.kind} {o.id} has uniqueId {row.unique_id}, which the registry already holds "
                                f"on {_KIND_NAMES[row.kind]} {row.id}", o.id, E.DUPLICATE_UNIQUE_ID_IN_REGISTRY)

    def _resolve_references(self) -> dict[str, ObjectRow | AssociationRow]:
        """Registry objects that the submission's associations point at."""
        outside = {r for a in self.sub.associations for r in (a.source, a.target) if r and r not in self.local}
        found: dict[str, ObjectRow | AssociationRow] = {}
        if outside:
            found.update(self.store.objects(self.conn, outside, share_lock=True))
            found.update(self.store.associations(self.conn, outside - set(found), share_lock=True))
        for a in self.sub.associations:
            for end, ref in (("sourceObject", a.source), ("targetObject", a.target)):
                if ref and ref not in self.local and ref not in found:
                    self.errors.add(f"Association {a.id} {end} {ref} is neither in the submission nor in the registry",
                                    a.id, E.UNRESOLVED_REFERENCE)
        return found

    def _patient_of(self, ref: str, refs) -> str | None:
        if ref in self.local:
            obj = self.local[ref]
            return obj.patient_id if not isinstance(obj, Association) else None
        row = refs.get(ref)
        return row.patient_id if isinstance(row, ObjectRow) else None

    def _association_rules(self, refs) -> None:
        for a in self.sub.associations:
            target = refs.get(a.target)
            if a.type in C.RELATIONSHIP_TYPES:
                if not isinstance(target, ObjectRow) or target.kind != S.KIND_DOCUMENT_ENTRY:
                    if a.target not in self.local:
                        self.errors.add(f"Association {a.id} ({a.type.rsplit(':', 1)[-1]}) must target a "
                                        f"DocumentEntry in the registry; {a.target} is not one", a.id,
                                        E.REGISTRY_ERROR)
                    continue
                if target.status == C.STATUS_DEPRECATED:
                    self.errors.add(f"Association {a.id} ({a.type.rsplit(':', 1)[-1]}) targets DocumentEntry "
                                    f"{a.target} (uniqueId {target.unique_id}), which is Deprecated", a.id,
                                    E.REGISTRY_DEPRECATED_DOCUMENT)
                if a.type == C.ASSOC_IS_SNAPSHOT_OF:
                    self._snapshot_target(a, target)
            elif isinstance(target, ObjectRow) and target.status == C.STATUS_DEPRECATED:
                self.errors.add(f"Association {a.id} targets {_KIND_NAMES[target.kind]} {a.target}, which is "
                                f"Deprecated", a.id, E.REGISTRY_DEPRECATED_DOCUMENT)
            source = refs.get(a.source)
            if isinstance(source, ObjectRow) and source.status == C.STATUS_DEPRECATED:
                self.errors.add(f"Association {a.id} has Deprecated {_KIND_NAMES[source.kind]} {a.source} as source",
                                a.id, E.REGISTRY_DEPRECATED_DOCUMENT)
            if isinstance(source, ObjectRow) and source.kind == S.KIND_SUBMISSION_SET:
                self.errors.add(f"Association {a.id} has SubmissionSet {a.source} of an earlier submission as "
                                f"source; only this submission's SubmissionSet may be a source", a.id,
                                E.REGISTRY_ERROR)
            self._same_patient(a, refs)

    def _snapshot_target(self, a: Association, target: ObjectRow) -> None:
        if self.store.entry_type(self.conn, a.target) != C.OBJECT_TYPE_ON_DEMAND:
            self.errors.add(f"IsSnapshotOf {a.id} must target an On-Demand DocumentEntry; {a.target} is stable", a.id)

    def _same_patient(self, a: Association, refs) -> None:
        # HasMember from this SubmissionSet to an existing object is a by-reference link and may cross
        # patients only in the sense ITI-42 allows; every other link joins objects of one patient.
        if a.type == C.ASSOC_HAS_MEMBER and a.source == self.ss.id:
            if a.target in self.local:
                return
            target = refs.get(a.target)
            if isinstance(target, AssociationRow):
                return
        p1, p2 = self._patient_of(a.source, refs), self._patient_of(a.target, refs)
        if p1 and p2 and p1 != p2:
            self.errors.add(f"Association {a.id} links {a.source} (patient {p1}) and {a.target} (patient {p2})",
                            a.id, E.PATIENT_ID_DOES_NOT_MATCH)

    # --- lifecycle ---------------------------------------------------------------------------
    def _lifecycle(self, refs) -> tuple[set[str], set[str]]:
        """Entries to deprecate and existing folders whose lastUpdateTime moves."""
        deprecate: set[str] = set()
        touched: set[str] = set()
        replaced: dict[str, str] = {}
        for a in self.sub.associations:
            if a.type in C.REPLACING_TYPES and a.target not in self.local:
                if a.target in replaced:
                    self.errors.add(f"DocumentEntry {a.target} is replaced twice in one submission "
                                    f"(by {replaced[a.target]} and {a.source})", a.id)
                    continue
                replaced[a.target] = a.source
            elif a.type == C.ASSOC_HAS_MEMBER:
                src = refs.get(a.source)
                if isinstance(src, ObjectRow) and src.kind == S.KIND_FOLDER:
                    touched.add(a.source)
        if replaced:
            deprecate |= self._deprecation_closure(set(replaced))
            for link in self.store.folders_holding(self.conn, replaced):
                new_doc = replaced[link.target]
                # The replacement joins every folder of the replaced entry, recorded by this SubmissionSet.
                fd = _new_association(link.source, new_doc, C.ASSOC_HAS_MEMBER, None)
                ref = _new_association(self.ss.id, fd.id, C.ASSOC_HAS_MEMBER, "Original")
                self.new_associations += [fd, ref]
                touched.add(link.source)
        return deprecate, touched

    def _deprecation_closure(self, roots: set[str]) -> set[str]:
        """The replaced entries and, transitively, the Approved XFRM/APND entries derived from them."""
        seen = set(roots)
        frontier = set(roots)
        while frontier:
            derived = self.store.target_associations(self.conn, frontier, (C.ASSOC_XFRM, C.ASSOC_APND))
            frontier = {d.source for d in derived} - seen
            seen |= frontier
        return seen


def _new_association(source: str, target: str, type_: str, ss_status: str | None) -> Association:
    el = etree.Element(C.q(C.NS_RIM, "Association"), nsmap={"rim": C.NS_RIM})
    el.set("id", new_uuid())
    el.set("objectType", C.OBJECT_TYPE_ASSOCIATION)
    el.set("associationType", type_)
    el.set("sourceObject", source)
    el.set("targetObject", target)
    if ss_status:
        s = etree.SubElement(el, C.q(C.NS_RIM, "Slot"), name="SubmissionSetStatus")
        vl = etree.SubElement(s, C.q(C.NS_RIM, "ValueList"))
        etree.SubElement(vl, C.q(C.NS_RIM, "Value")).text = ss_status
    return Association(el)
