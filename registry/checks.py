"""Registry-state checks shared by the transactions that store a submission: ITI-42 Register
Document Set-b (registry.register) and ITI-57 Update Document Set (registry.update).

A transaction builds one `SubmissionChecks` inside the database transaction that stores the
submission, calls the checks it needs in the order it needs them, and raises
`checks.errors` when it is done; the rules that belong to one transaction only stay in its
module. The module also holds the few helpers those transactions build their writes with.
"""
from __future__ import annotations

import datetime as _dt

from xds import constants as C
from xds import errors as E
from xds import hl7
from xds.ebrim import new_uuid
from xds.errors import ErrorList
from xds.model import Association, DocumentEntry, RegistryObject, Slot, Submission, SubmissionSet
from . import schema as S
from .config import RegistryConfig
from .store import AssociationRow, ObjectRow, RegistryStore

# What an association of a submission may point at in the registry.
Reference = ObjectRow | AssociationRow


def now_dtm() -> str:
    """The current UTC time as an HL7 DTM to the second: the lastUpdateTime a transaction records."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d%H%M%S")


def new_association(source: str, target: str, type_: str, ss_status: str | None) -> Association:
    """An Association the registry adds itself (with a new urn:uuid: id), e.g. the Folder membership
    of a replacement document or a link that a new version inherits. ss_status, when given, is its
    SubmissionSetStatus slot."""
    return Association(id=new_uuid(), object_type=C.OBJECT_TYPE_ASSOCIATION, type=type_, source=source,
                       target=target, slots=[Slot("SubmissionSetStatus", [ss_status])] if ss_status else [])


_UNREAD = object()


class SubmissionChecks:
    """The checks of one submission against the registry's state.

    store and conn: the registry's store and the transaction that will store the submission.
    submitted_uuids: the urn:uuid: ids the submitter chose itself (see register.prepare_for_storage).
    Every check adds its problems to `errors` (XDSRegistryMetadataError unless it names another
    code) and raises nothing.
    """

    def __init__(self, store: RegistryStore, conn, sub: Submission, config: RegistryConfig,
                 submitted_uuids: list[str]):
        self.store, self.conn, self.sub, self.config = store, conn, sub, config
        self.submitted_uuids = submitted_uuids
        self.errors = ErrorList(E.REGISTRY_METADATA_ERROR)
        self.local = sub.by_id()  # the submission's own objects and associations, by id
        self.ss: SubmissionSet = sub.submission_sets[0]

    def ids_are_new(self, taken: set[str] | None = None) -> None:
        """No id the submitter chose is already taken by an object or association of the registry.
        taken: those of them the registry holds, when already read (RegistryStore.lock_and_prefetch)."""
        if not self.submitted_uuids:
            return
        if taken is None:
            taken = set(self.store.objects(self.conn, self.submitted_uuids))
            taken |= set(self.store.associations(self.conn, self.submitted_uuids))
        for i in self.submitted_uuids:
            if i in taken:
                self.errors.add(f"object id {i} is already used by an object in the registry; "
                                f"new objects need new ids", i)

    def patient_known(self, state: tuple[bool, str | None] | None | object = _UNREAD) -> None:
        """The SubmissionSet's patientId was announced by the identity feed (when the registry checks).
        state: the patient's (active, merged into), or None when unknown, when already read."""
        if not self.config.check_patients:
            return
        pid = self.ss.patient_id
        if not pid:
            return
        if state is _UNREAD:
            known = self.store.patient_known(self.conn, pid)
            merged = None if known else self.store.merged_into(self.conn, pid)
        else:
            known, merged = (bool(state[0]), state[1]) if state else (False, None)
        if not known:
            why = f"; it was merged into {merged}" if merged else ""
            self.errors.add(f"patientId {pid} of SubmissionSet {self.ss.id} is not known to the registry{why}",
                            self.ss.id, E.UNKNOWN_PATIENT_ID)

    def unique_ids(self, entries: list[RegistryObject], holders: list[tuple[ObjectRow, str | None]]) -> None:
        """No entry takes a uniqueId the registry holds, except a DocumentEntry registered again with
        the same hash. holders: the registry's objects holding the entries' uniqueIds, with their hash
        (RegistryStore.lock_and_prefetch or by_unique_ids)."""
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
                    self._same_size(o, row)
            else:
                self.errors.add(f"{o.kind} {o.id} has uniqueId {row.unique_id}, which the registry already holds "
                                f"on {S.KIND_NAMES[row.kind]} {row.id}", o.id, E.DUPLICATE_UNIQUE_ID_IN_REGISTRY)

    def _same_size(self, o: DocumentEntry, row: ObjectRow) -> None:
        """The same document registered again also has the same size (XDSNonIdenticalSize otherwise)."""
        mine = (o.slot1("size") or "").strip()
        stored = self.store.entry_size(self.conn, row.id)
        if mine.isdigit() and stored is not None and int(mine) != stored:
            self.errors.add(f"DocumentEntry {o.id} has uniqueId {row.unique_id}, already registered with size "
                            f"{stored}; this submission gives size {mine}", o.id, E.NON_IDENTICAL_SIZE)

    def resolve_references(self) -> dict[str, Reference]:
        """Registry objects and associations that the submission's associations point at, share-locked
        against removal until commit; a reference found nowhere is reported."""
        outside = {r for a in self.sub.associations for r in (a.source, a.target) if r and r not in self.local}
        found: dict[str, Reference] = {}
        if outside:
            hidden = self.config.rules.hidden_statuses
            # An object in a hidden status (the DMP's Deleted) is answered as one the registry never held.
            found.update((k, row) for k, row in self.store.objects(self.conn, outside, share_lock=True).items()
                         if row.status not in hidden)
            found.update(self.store.associations(self.conn, outside - set(found), share_lock=True))
        for a in self.sub.associations:
            for end, ref in (("sourceObject", a.source), ("targetObject", a.target)):
                if ref and ref not in self.local and ref not in found:
                    self.errors.add(f"Association {a.id} {end} {ref} is neither in the submission nor in the registry",
                                    a.id, E.UNRESOLVED_REFERENCE)
        return found

    def patient_of(self, ref: str, refs: dict[str, Reference]) -> str | None:
        """The patientId of a submitted or registered object; None for an association."""
        if ref in self.local:
            obj = self.local[ref]
            return obj.patient_id if not isinstance(obj, Association) else None
        row = refs.get(ref)
        return row.patient_id if isinstance(row, ObjectRow) else None

    def same_patient(self, a: Association, refs: dict[str, Reference]) -> None:
        """An association joins objects of one patient."""
        # HasMember from this SubmissionSet to an existing object is a by-reference link and may cross
        # patients only in the sense ITI-42 allows; every other link joins objects of one patient.
        if a.type == C.ASSOC_HAS_MEMBER and a.source == self.ss.id:
            if a.target in self.local:
                return
            target = refs.get(a.target)
            if isinstance(target, AssociationRow):
                return
        p1, p2 = self.patient_of(a.source, refs), self.patient_of(a.target, refs)
        if p1 and p2 and not hl7.same_patient(p1, p2):
            self.errors.add(f"Association {a.id} links {a.source} (patient {p1}) and {a.target} (patient {p2})",
                            a.id, E.PATIENT_ID_DOES_NOT_MATCH)
