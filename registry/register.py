"""ITI-42 Register Document Set-b: the registry's whole handling of one submission.

ITI-61 Register On-Demand Document Entry (ITI TF-2b 3.61) is this transaction in Mode.ON_DEMAND: the
same message, rules and writes, with On-Demand DocumentEntries only, HasMember and RPLC only, and an
RPLC that replaces an On-Demand entry by another.

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
from xds import faults
from xds.constants import last_segment
from xds.ebrim import assign_uuids, named_as_sent, parse_submission
from xds.errors import ErrorList, XdsError, XdsException
from xds.model import Association, DocumentEntry, Folder, Submission, SubmissionSet
from xds.security import policy as P
from xds.validation import Mode, validate_submission
from . import schema as S
from .checks import Reference, SubmissionChecks, new_association, now_dtm
from .config import RegistryConfig
from .guard import RegistryGuard, admin_guard, named_ids
from .store import ObjectRow, RegistryStore

log = logging.getLogger(__name__)


MODEL_IDS = frozenset(v for v in vars(C).values() if isinstance(v, str) and v.startswith("urn:uuid:"))
TRANSACTION_OF = {Mode.REGISTER: "ITI-42", Mode.PROVIDE: "ITI-41", Mode.ON_DEMAND: "ITI-61"}


def register(store: RegistryStore, request: etree._Element, config: RegistryConfig,
             mode: Mode = Mode.REGISTER, commit_before: _dt.datetime | None = None,
             guard: RegistryGuard | None = None, registered: dict | None = None) -> list[XdsError]:
    """Register a SubmitObjectsRequest. Returns warnings; raises XdsException on failure.

    registered: filled, once committed, with what the patient's access log says of each new DocumentEntry,
    uniqueId -> (patient, uniqueId, title, confidentiality codes, reveal_at), as the registry now holds it
    (the audit layer would otherwise read it back: RegistryStore.audit_facts).

    commit_before: the instant after which the sender (a repository) may settle this submission as
    not registered; past it the transaction is rolled back instead of committed.
    guard: the access policy of the request (registry/guard.py); None is the administrator.
    """
    guard = guard or admin_guard()
    sub, found = read_submission(request, config, mode)
    check_object_refs(sub, mode, found)
    found.raise_if_errors()
    warnings, submitted_uuids = prepare_for_storage(sub, config)
    try:
        with store.transaction() as conn:
            view = guard.hiding(store, conn, named_ids(sub))
            registration = _Registration(view, conn, sub, config, submitted_uuids, guard, mode)
            registration.run()
            faults.point("registry-stored")
            # Checked last, with the uniqueIds locked: a settlement lookup, which takes the same locks,
            # sees this submission committed, or knows it never will be.
            if commit_before is not None and _dt.datetime.now(_dt.timezone.utc) >= commit_before:
                raise XdsException(E.REGISTRY_BUSY, "the submission was ready after its sender's commit "
                                   f"deadline ({commit_before.isoformat()}); nothing was registered", "CommitDeadline")
    except XdsException as exc:
        raise XdsException.of(named_as_sent(sub, exc.errors)) from None
    faults.point("registry-committed")
    if registered is not None:
        registered.update(registration.registered)
    return warnings + found.warnings


def read_submission(request: etree._Element, config: RegistryConfig, mode: Mode) -> tuple[Submission, ErrorList]:
    """Parse a SubmitObjectsRequest and collect its stateless metadata problems without raising,
    so that the transaction can add its own before answering with all of them."""
    if request.tag != C.q(C.NS_LCM, "SubmitObjectsRequest"):
        raise XdsException(E.REGISTRY_ERROR, f"expected lcm:SubmitObjectsRequest, got {request.tag}", "Body")
    sub = parse_submission(request)
    found = ErrorList(E.REGISTRY_METADATA_ERROR)
    found.items += validate_submission(sub, mode, config.profile,
                                       implied_references=config.implied_references).items
    return sub, found


def check_object_refs(sub: Submission, mode: Mode, found: ErrorList) -> None:
    """Add to found the ObjectRefs of a submission that name something else than the XDS model's ids."""
    for ref in sub.object_refs:
        # A submission may name the classification schemes and object types it uses (ebRS 3.0; the
        # NIST kit's DICOM sample does): the registry has those already and stores nothing for them.
        if ref not in MODEL_IDS:
            found.add(f"ObjectRef {ref} names no classification scheme, node or object type of the XDS model; "
                      f"{TRANSACTION_OF.get(mode, 'ITI-42')} registers objects, not references to them", ref)


def prepare_for_storage(sub: Submission, config: RegistryConfig) -> tuple[list[XdsError], list[str]]:
    """Drop the extra metadata this registry does not keep and give symbolic ids UUIDs.

    Returns the warnings, and the urn:uuid: ids the submitter chose itself: those must be new
    to the registry, which only the transaction can check.
    """
    warnings = _extra_metadata(sub, config)
    submitted_uuids = [o.id for o in sub.objects if o.id.startswith("urn:uuid:")]
    assign_uuids(sub)
    return warnings, submitted_uuids


def _extra_metadata(sub: Submission, config: RegistryConfig) -> list[XdsError]:
    if config.keep_extra_metadata:
        return []
    warnings = []
    for o in sub.objects:
        kept = []
        for s in o.slots:
            if s.name.startswith("urn:") and s.name != C.REFERENCE_ID_LIST_SLOT:
                warnings.append(XdsError(E.EXTRA_METADATA_NOT_SAVED,
                                         f"extra metadata slot {s.name} on {o.kind} {o.id} was not saved", o.id,
                                         C.SEVERITY_WARNING))
            else:
                kept.append(s)
        if len(kept) != len(o.slots):
            o.slots = kept
    return warnings


def _title_of(o) -> str | None:
    """The first non-empty LocalizedString of its Name, as the stored XML's (RegistryStore._title)."""
    return next((n.value for n in o.names if n.value), None)


class _Registration:
    """ITI-42's rules that need the registry's state, then its writes, in the one transaction."""

    def __init__(self, store: RegistryStore, conn, sub: Submission, config: RegistryConfig,
                 submitted_uuids: list[str], guard: RegistryGuard, mode: Mode = Mode.REGISTER):
        self.checks = SubmissionChecks(store, conn, sub, config, submitted_uuids)
        self.mode = mode
        self.store, self.conn, self.sub, self.guard = store, conn, sub, guard
        self.errors = self.checks.errors
        self.local = self.checks.local
        self.ss: SubmissionSet = self.checks.ss
        self.now = now_dtm()
        self.new_associations: list[Association] = []
        self.registered: dict[str, tuple] = {}

    def run(self) -> None:
        entries = [o for o in self.sub.objects if isinstance(o, (DocumentEntry, SubmissionSet, Folder))]
        # One round trip on PostgreSQL for the locks and the first three checks' reads.
        holders, patient, taken = self.store.lock_and_prefetch(
            self.conn, [o.unique_id for o in entries if o.unique_id], self.ss.patient_id,
            self.checks.submitted_uuids)
        self.checks.ids_are_new(taken)
        self.checks.patient_known(patient)
        self.checks.unique_ids(entries, holders)
        self.errors.raise_if_errors()
        self.guard.check_feed(self.conn, {o.patient_id for o in entries if o.patient_id}, self.ss.id)
        refs = self.checks.resolve_references()
        self.errors.raise_if_errors()
        self._association_rules(refs)
        self.errors.raise_if_errors()
        self.guard.check_change(self.conn, *self._changed(refs))
        deprecate, touched = self._lifecycle(refs)
        self.errors.raise_if_errors()

        origins = self.store.insert_submission(self.conn, entries, self.sub.associations + self.new_associations,
                                               self.now, origin=self.guard.origin())
        self.registered = {o.unique_id: (o.patient_id, o.unique_id, _title_of(o),
                                         frozenset(c.key for c in o.codes(C.DE_CONFIDENTIALITY_CODE)),
                                         origins.get(o.id, {}).get("reveal_at"))
                           for o in entries if isinstance(o, DocumentEntry) and o.unique_id}
        if deprecate:
            self.store.set_status(self.conn, deprecate, C.STATUS_DEPRECATED)
        if touched:
            self.store.touch_folders(self.conn, touched, self.now)

    def _changed(self, refs: dict[str, Reference]) -> tuple[dict[str, str], dict[str, str]]:
        """Registered objects this submission changes, with how (for the access policy) and where: the
        targets of relationships (RPLC, APND, XFRM, ...) and the Folders it adds members to."""
        ops: dict[str, str] = {}
        where: dict[str, str] = {}
        for a in self.sub.associations:
            target, source = refs.get(a.target), refs.get(a.source)
            if a.type in C.RELATIONSHIP_TYPES and isinstance(target, ObjectRow):
                ops[target.id], where[target.id] = P.REPLACE, a.id
            elif a.type == C.ASSOC_HAS_MEMBER and isinstance(source, ObjectRow) and source.kind == S.KIND_FOLDER:
                ops.setdefault(source.id, P.UPDATE)
                where.setdefault(source.id, a.id)
        return ops, where

    # --- ITI-42's own registry-state rules ----------------------------------------------------
    def _association_rules(self, refs: dict[str, Reference]) -> None:
        for a in self.sub.associations:
            target = refs.get(a.target)
            if a.type in C.RELATIONSHIP_TYPES:
                if not isinstance(target, ObjectRow) or target.kind != S.KIND_DOCUMENT_ENTRY:
                    if a.target not in self.local:
                        self.errors.add(f"Association {a.id} ({last_segment(a.type)}) must target a "
                                        f"DocumentEntry in the registry; {a.target} is not one", a.id,
                                        E.REGISTRY_ERROR)
                    continue
                if target.status == C.STATUS_DEPRECATED:
                    self.errors.add(f"Association {a.id} ({last_segment(a.type)}) targets DocumentEntry "
                                    f"{a.target} (uniqueId {target.unique_id}), which is Deprecated", a.id,
                                    E.REGISTRY_DEPRECATED_DOCUMENT)
                elif target.status != C.STATUS_APPROVED:
                    # A profile's own statuses (the DMP's Archived): only an Approved entry is replaced,
                    # appended to or transformed (PROFILE.md B-33).
                    self.errors.add(f"Association {a.id} ({last_segment(a.type)}) targets DocumentEntry "
                                    f"{a.target} (uniqueId {target.unique_id}), whose status is "
                                    f"{last_segment(target.status)}; only an Approved entry may be its target",
                                    a.id, E.REGISTRY_ERROR)
                if a.type == C.ASSOC_IS_SNAPSHOT_OF:
                    self._snapshot_target(a, target)
                elif self.mode == Mode.ON_DEMAND:
                    self._on_demand_replaces(a, target)
            elif isinstance(target, ObjectRow) and target.status == C.STATUS_DEPRECATED:
                self.errors.add(f"Association {a.id} targets {S.KIND_NAMES[target.kind]} {a.target}, which is "
                                f"Deprecated", a.id, E.REGISTRY_DEPRECATED_DOCUMENT)
            source = refs.get(a.source)
            if isinstance(source, ObjectRow) and source.status == C.STATUS_DEPRECATED:
                self.errors.add(f"Association {a.id} has Deprecated {S.KIND_NAMES[source.kind]} {a.source} as source",
                                a.id, E.REGISTRY_DEPRECATED_DOCUMENT)
            if isinstance(source, ObjectRow) and source.kind == S.KIND_SUBMISSION_SET:
                self.errors.add(f"Association {a.id} has SubmissionSet {a.source} of an earlier submission as "
                                f"source; only this submission's SubmissionSet may be a source", a.id,
                                E.REGISTRY_ERROR)
            self.checks.same_patient(a, refs)

    def _snapshot_target(self, a: Association, target: ObjectRow) -> None:
        if self.store.entry_type(self.conn, a.target) != C.OBJECT_TYPE_ON_DEMAND:
            self.errors.add(f"IsSnapshotOf {a.id} must target an On-Demand DocumentEntry; {a.target} is stable", a.id)

    def _on_demand_replaces(self, a: Association, target: ObjectRow) -> None:
        # ITI-61 only carries RPLC among the relationships (validation), and only between On-Demand entries:
        # a stable document is never superseded by content that does not exist yet.
        if self.store.entry_type(self.conn, a.target) != C.OBJECT_TYPE_ON_DEMAND:
            self.errors.add(f"Association {a.id} ({last_segment(a.type)}) in ITI-61 must target an On-Demand "
                            f"DocumentEntry; {a.target} (uniqueId {target.unique_id}) is stable", a.id)

    # --- lifecycle ---------------------------------------------------------------------------
    def _lifecycle(self, refs: dict[str, Reference]) -> tuple[set[str], set[str]]:
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
                fd = new_association(link.source, new_doc, C.ASSOC_HAS_MEMBER, None)
                ref = new_association(self.ss.id, fd.id, C.ASSOC_HAS_MEMBER, "Original")
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

