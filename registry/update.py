"""ITI-57 Update Document Set (XDS Metadata Update option): the registry's handling of one message.

The message is read and validated as a Register would be, its operations are told apart
(update_ops), and every rule that needs the registry's state runs inside the one transaction
that applies all of them, so that one failing operation leaves the registry untouched.

ITI-92 Restricted Update Document Set (IHE RMU supplement, ITI TF-2 3.92) is this transaction with
restricted=True: the same reading, validation, access policy and writes, limited to new versions of
DocumentEntries (update_ops refuses every other operation), with the attributes that RMU forbids to
change refused under its own error codes, and a new version of a Deprecated latest version kept
Deprecated (the XDS Persistence of Metadata rule, CP 1190).
"""
from __future__ import annotations

import logging

from lxml import etree

from xds import constants as C
from xds import errors as E
from xds import hl7
from xds.constants import last_segment
from xds.ebrim import named_as_sent, read_object
from xds.errors import XdsError, XdsException
from xds.model import Association, DocumentEntry, Submission
from xds.security import policy as P
from xds.validation import Mode
from . import schema as S
from .changes import changed_attributes
from .checks import Reference, SubmissionChecks, new_association, now_dtm
from .config import RegistryConfig
from .guard import RegistryGuard, admin_guard, named_ids
from .register import prepare_for_storage, read_submission
from .store import AssociationRow, ObjectRow, RegistryStore
from .update_ops import AddedAssociation, NewVersion, Operations, StatusChange, read_operations

log = logging.getLogger(__name__)


# ITI-92: attributes a new version may not change (RMU 3.92.4.1.3), and the code each refusal carries;
# uniqueId (XDSMetadataIdentifierError) and objectType are checked with ITI-57's own rules below.
RESTRICTED_ATTRIBUTES = {
    "patientId": E.PATIENT_ID_RECONCILIATION_ERROR,
    "repositoryUniqueId": E.UNMODIFIABLE_METADATA,
    "sourcePatientId": E.UNMODIFIABLE_METADATA,
    "documentAvailability": E.UNMODIFIABLE_METADATA,
}


def update_document_set(store: RegistryStore, request: etree._Element, config: RegistryConfig,
                        guard: RegistryGuard | None = None, restricted: bool = False) -> list[XdsError]:
    """Apply every operation of the SubmitObjectsRequest, or none. Returns warnings; raises XdsException.
    guard: the access policy of the request; None is the administrator. restricted: ITI-92."""
    guard = guard or admin_guard()
    sub, found = read_submission(request, config, Mode.UPDATE)
    found.raise_if_errors()
    ops = read_operations(sub, config.rules.statuses, restricted)
    warnings, submitted_uuids = prepare_for_storage(sub, config)
    try:
        with store.transaction() as conn:
            view = guard.hiding(store, conn, named_ids(sub))
            _Update(view, conn, sub, config, submitted_uuids, ops, guard, restricted).run()
    except XdsException as exc:
        raise XdsException.of(named_as_sent(sub, exc.errors)) from None
    return warnings + found.warnings


class _Update:
    """ITI-57's rules that need the registry's state, then its writes, in the one transaction. The
    checks that ITI-42 makes as well (new ids, known patient, the SubmissionSet's uniqueId, resolvable
    references, one patient per association) are those of registry.checks."""

    def __init__(self, store: RegistryStore, conn, sub: Submission, config: RegistryConfig,
                 submitted_uuids: list[str], ops: Operations, guard: RegistryGuard, restricted: bool = False):
        self.restricted = restricted
        self.kept_status: dict[str, str] = {}   # ITI-92: new version id -> the non-Approved status it keeps
        self.checks = SubmissionChecks(store, conn, sub, config, submitted_uuids)
        self.store, self.conn, self.sub, self.ops, self.guard = store, conn, sub, ops, guard
        self.changes: dict[str, str] = {}   # registered object -> how this message changes it (access policy)
        self.change_at: dict[str, str] = {}
        self.errors = self.checks.errors
        self.ss = self.checks.ss
        self.now = now_dtm()
        self.new_associations: list[Association] = []  # links the new versions inherit
        self.new_versions: dict[str, int] = {}  # id of a new version -> its version number
        self.renamed: dict[str, str] = {}       # id of a replaced latest version -> id of its successor
        self.deprecate: set[str] = set()
        self.object_status: dict[str, str] = {}
        self.association_status: dict[str, str] = {}
        self.touched: set[str] = set()
        self.rules = config.rules

    def run(self) -> None:
        self._lock()
        holders = self.store.by_unique_ids(self.conn, [self.ss.unique_id] if self.ss.unique_id else [])
        self.checks.ids_are_new()
        self.checks.patient_known()
        self.checks.unique_ids([self.ss], holders)
        refs = self.checks.resolve_references()
        self.errors.raise_if_errors()

        lids = [v.obj.lid for v in self.ops.versions] + [r.lid for r in refs.values() if isinstance(r, ObjectRow)]
        latest = self.store.latest_versions(self.conn, lids)
        for v in self.ops.versions:
            self._new_version(v, latest)
        if not self.errors.has_errors:  # propagation needs every new version to have its predecessor
            self._propagate(latest)
        for s in self.ops.statuses:
            self._status_change(s, refs, latest)
        for added in self.ops.added:
            self._added_association(added, refs)
        for a in self.sub.associations:
            self.checks.same_patient(a, refs)
        self.errors.raise_if_errors()
        self.guard.check_change(self.conn, self.changes, self.changes, self.change_at)
        self._write()

    def _changes(self, oid: str, op: str, where: str) -> None:
        if self.changes.get(oid) != P.DELETE:
            self.changes[oid] = op
            self.change_at[oid] = where

    def _lock(self) -> None:
        """Serialise with other updates of the same version chains, associations and object pairs until
        commit, so that the checks below still hold when this transaction writes."""
        keys = {v.obj.lid for v in self.ops.versions if v.obj.lid} | {s.target for s in self.ops.statuses}
        # A status change names a version by id; its chain is known by the lid stored with it.
        keys |= {r.lid for r in self.store.objects(self.conn, [s.target for s in self.ops.statuses]).values()}
        keys |= {f"{a.added.source} {a.added.target}" for a in self.ops.added}
        if self.ss.unique_id:
            keys.add(self.ss.unique_id)
        self.store.lock_unique_ids(self.conn, keys)

    # --- new versions of DocumentEntries and Folders -------------------------------------------
    def _new_version(self, v: NewVersion, latest) -> None:
        obj, what = v.obj, f"{v.obj.kind} {v.obj.id}"
        found = latest.get(obj.lid)
        if found is not None and found[0].status in self.rules.hidden_statuses:
            found = None  # answered as a logical id the registry never held
        if found is None:
            self.errors.add(f"{what} is a new version of logical id {obj.lid}, which the registry does not hold",
                            obj.id, E.METADATA_VERSION_ERROR)
            return
        row, entry_type = found
        kind = S.KIND_DOCUMENT_ENTRY if isinstance(obj, DocumentEntry) else S.KIND_FOLDER
        if row.kind != kind:
            self.errors.add(f"{what} is a new version of logical id {obj.lid}, which is a {S.KIND_NAMES[row.kind]}",
                            obj.id, E.METADATA_UPDATE_ERROR)
            return
        if v.previous != row.version:
            self.errors.add(f"{what} gives PreviousVersion {v.previous} but the latest version of {obj.lid} is "
                            f"{row.version} ({row.id})", v.link.id, E.METADATA_VERSION_ERROR)
        if self.restricted and row.status == C.STATUS_DEPRECATED:
            self.kept_status[obj.id] = row.status  # the latest version, Deprecated: its successor stays so
        elif row.status != C.STATUS_APPROVED:
            self.errors.add(f"{what}: the latest version of {obj.lid} ({row.id}) is {last_segment(row.status)}; "
                            f"only an Approved version can be updated", obj.id, E.METADATA_UPDATE_ERROR)
        if obj.unique_id != row.unique_id:
            self.errors.add(f"{what} has uniqueId {obj.unique_id}, but logical id {obj.lid} has uniqueId "
                            f"{row.unique_id}; an update keeps the uniqueId", obj.id,
                            E.METADATA_IDENTIFIER_ERROR if self.restricted else E.METADATA_UPDATE_ERROR)
        if kind == S.KIND_DOCUMENT_ENTRY and (obj.object_type or C.OBJECT_TYPE_STABLE) != entry_type:
            self.errors.add(f"{what} has objectType {obj.object_type}, but logical id {obj.lid} has objectType "
                            f"{entry_type}; an update keeps the objectType", obj.id,
                            E.UNMODIFIABLE_METADATA if self.restricted else E.METADATA_UPDATE_ERROR)
        if self.restricted:
            self._only_modifiable(v, row)
        if self.rules.updatable is not None:
            self._only_updatable(v, row)
        self.new_versions[obj.id] = row.version + 1
        self._changes(row.id, P.UPDATE, obj.id)
        self.renamed[row.id] = obj.id
        self.deprecate.add(row.id)

    def _links(self, version_ids: list[str]) -> list[AssociationRow]:
        """Approved associations that a new version inherits: Folder membership, a Folder's members,
        and document relationships."""
        touching = self.store.associations_touching(self.conn, version_ids) if version_ids else []
        approved = [a for a in touching if a.status == C.STATUS_APPROVED]
        ends = self.store.objects(self.conn, {a.source for a in approved} | {a.target for a in approved})
        out = []
        for a in approved:
            source, target = ends.get(a.source), ends.get(a.target)
            if source is None or target is None:
                continue  # an association between associations, none of a version's own links
            if C.STATUS_APPROVED != source.status or C.STATUS_APPROVED != target.status:
                continue  # e.g. the membership in a Folder's superseded version
            if (a.type == C.ASSOC_HAS_MEMBER and source.kind == S.KIND_FOLDER) or a.type in C.RELATIONSHIP_TYPES:
                out.append(a)
        return out

    def _propagate(self, latest) -> None:
        by_old = {latest[v.obj.lid][0].id: v for v in self.ops.versions}
        links = self._links(list(by_old))
        for old_id, v in by_old.items():
            mine = [a for a in links if old_id in (a.source, a.target)]
            if mine and not hl7.same_patient(v.obj.patient_id, latest[v.obj.lid][0].patient_id):
                # A new patient would leave the linked objects with the old one.
                self.errors.add(f"{v.obj.kind} {v.obj.id} changes patientId from {latest[v.obj.lid][0].patient_id} to "
                                f"{v.obj.patient_id}, but version {old_id} is linked to other objects (e.g. "
                                f"association {mine[0].id})", v.obj.id, E.PATIENT_ID_DOES_NOT_MATCH)
        # A link between two objects both updated here is carried once, between the two new versions.
        wanted: list[tuple[str, str, str]] = []
        for a in links:
            ends = [v for v in (by_old.get(a.source), by_old.get(a.target)) if v is not None]
            key = (a.type, self.renamed.get(a.source, a.source), self.renamed.get(a.target, a.target))
            if any(v.propagate for v in ends) and key not in wanted:
                wanted.append(key)
        for type_, source, target in wanted:
            self.new_associations.append(new_association(source, target, type_, None))
            if type_ == C.ASSOC_HAS_MEMBER:
                self.touched.add(source)

    def _only_modifiable(self, v: NewVersion, row: ObjectRow) -> None:
        """ITI-92: the attributes RMU keeps from version to version (patientId, repositoryUniqueId, ...)."""
        stored = self.store.load_objects(self.conn, [row.id])
        if not stored:
            return
        for name in changed_attributes(read_object(stored[0]), v.obj):
            code = RESTRICTED_ATTRIBUTES.get(name)
            if code is not None:
                self.errors.add(f"{v.obj.kind} {v.obj.id} changes {name} of {row.id}; ITI-92 keeps {name} from "
                                f"one version to the next", v.obj.id, code)

    def _only_updatable(self, v: NewVersion, row: ObjectRow) -> None:
        """The profile lets a new version change some attributes only (the DMP: confidentialityCode)."""
        stored = self.store.load_objects(self.conn, [row.id])
        if not stored:
            return
        changed = [a for a in changed_attributes(read_object(stored[0]), v.obj) if a not in self.rules.updatable]
        if changed:
            self.errors.add(f"{v.obj.kind} {v.obj.id} changes {', '.join(changed)} of {row.id}; under profile "
                            f"{self.rules.name} a new version may change only {', '.join(self.rules.updatable)}",
                            v.obj.id, E.METADATA_UPDATE_ERROR)

    # --- UpdateAvailabilityStatus ------------------------------------------------------------
    def _status_change(self, s: StatusChange, refs: dict[str, Reference], latest) -> None:
        target = refs.get(s.target)
        where, what = s.link.id, f"UpdateAvailabilityStatus {s.link.id}"
        if isinstance(target, ObjectRow):
            if target.kind == S.KIND_SUBMISSION_SET:
                self.errors.add(f"{what} targets SubmissionSet {target.id}, whose status cannot change", where,
                                E.METADATA_UPDATE_ERROR)
                return
            newest = latest[target.lid][0]
            if target.id in self.renamed:
                self.errors.add(f"{what} targets {target.id}, which this message replaces with a new version", where,
                                E.METADATA_UPDATE_ERROR)
            elif newest.id != target.id:
                self.errors.add(f"{what} targets version {target.version} of {S.KIND_NAMES[target.kind]} {target.lid}; "
                                f"only its latest version ({newest.version}, {newest.id}) may change status", where,
                                E.METADATA_UPDATE_ERROR)
            changes = self.object_status
            # Taking an entry out of the Approved set (Deprecated, the DMP's Deleted) is a deletion to the
            # policy: only its author's structure; archiving and back are updates.
            leaves = not (s.new == C.STATUS_APPROVED or s.new.endswith(":Archived"))
            self._changes(target.id, P.DELETE if leaves else P.UPDATE, where)
        elif isinstance(target, AssociationRow):
            self._association_status_allowed(s, target)
            changes = self.association_status
            self._changes(target.source, P.UPDATE, where)
        else:
            return  # unresolved: reported already
        if target.status != s.original:
            self.errors.add(f"{what} gives OriginalStatus {last_segment(s.original)}, but {target.id} is "
                            f"{last_segment(target.status)}", where, E.METADATA_UPDATE_ERROR)
        elif (isinstance(target, ObjectRow) and self.rules.transitions is not None
              and (s.original, s.new) not in self.rules.transitions):
            allowed = ", ".join(f"{last_segment(a)} to {last_segment(b)}" for a, b in self.rules.transitions)
            self.errors.add(f"{what} changes {target.id} from {last_segment(s.original)} to {last_segment(s.new)}; "
                            f"profile {self.rules.name} allows {allowed}", where, E.METADATA_UPDATE_ERROR)
        changes[target.id] = s.new

    def _association_status_allowed(self, s: StatusChange, target: AssociationRow) -> None:
        what = f"UpdateAvailabilityStatus {s.link.id}"
        if target.type in C.RELATIONSHIP_TYPES:
            return
        if target.type == C.ASSOC_HAS_MEMBER:
            source = self.store.objects(self.conn, [target.source]).get(target.source)
            if source is not None and source.kind == S.KIND_FOLDER:
                return
            self.errors.add(f"{what} targets HasMember {target.id} of a SubmissionSet; only Folder membership and "
                            f"document relationships change status", s.link.id, E.METADATA_UPDATE_ERROR)
            return
        self.errors.add(f"{what} targets a {last_segment(target.type)} association ({target.id}); only Folder "
                        f"membership and document relationships change status", s.link.id, E.METADATA_UPDATE_ERROR)

    # --- SubmitAssociation -------------------------------------------------------------------
    def _added_association(self, added: AddedAssociation, refs: dict[str, Reference]) -> None:
        a = added.added
        where, name = a.id, f"submitted {last_segment(a.type)} {a.id}"
        ends = []
        for end, ref in (("sourceObject", a.source), ("targetObject", a.target)):
            row = refs.get(ref)
            if isinstance(row, AssociationRow):
                self.errors.add(f"{name} {end} {ref} is an association; SubmitAssociation links DocumentEntries and "
                                f"Folders", where, E.METADATA_UPDATE_ERROR)
            elif isinstance(row, ObjectRow):
                ends.append(row)
                if row.kind == S.KIND_SUBMISSION_SET:
                    self.errors.add(f"{name} {end} {ref} is a SubmissionSet", where, E.METADATA_UPDATE_ERROR)
                elif row.status == C.STATUS_DEPRECATED:
                    self.errors.add(f"{name} {end} {ref} is Deprecated", where, E.METADATA_UPDATE_ERROR)
                elif row.id in self.renamed:
                    self.errors.add(f"{name} {end} {ref} is replaced by a new version in this message", where,
                                    E.METADATA_UPDATE_ERROR)
        if len(ends) != 2:
            return
        source, target = ends
        self._changes(source.id, P.UPDATE, where)
        if a.type == C.ASSOC_HAS_MEMBER:
            if source.kind != S.KIND_FOLDER or target.kind != S.KIND_DOCUMENT_ENTRY:
                self.errors.add(f"{name} must go from a Folder to a DocumentEntry, not from a "
                                f"{S.KIND_NAMES[source.kind]} to a {S.KIND_NAMES[target.kind]}", where,
                                E.METADATA_UPDATE_ERROR)
            self.touched.add(source.id)
        elif S.KIND_DOCUMENT_ENTRY != source.kind or S.KIND_DOCUMENT_ENTRY != target.kind:
            self.errors.add(f"{name} must link two DocumentEntries", where, E.METADATA_UPDATE_ERROR)
        existing = [r for r in self.store.associations_touching(self.conn, [source.id])
                    if r.source == source.id and r.target == target.id and r.status == C.STATUS_APPROVED]
        if existing:
            self.errors.add(f"{name}: {source.id} and {target.id} are already linked by Approved association "
                            f"{existing[0].id} ({last_segment(existing[0].type)})", where, E.METADATA_UPDATE_ERROR)

    # --- storing ----------------------------------------------------------------------------
    def _write(self) -> None:
        entries = [self.ss] + [v.obj for v in self.ops.versions]
        self.store.insert_submission(self.conn, entries, self.sub.associations + self.new_associations, self.now,
                                     versions=self.new_versions, origin=self.guard.origin(),
                                     inherits={new: old for old, new in self.renamed.items()})
        if self.deprecate:
            self.store.set_status(self.conn, self.deprecate | set(self.kept_status), C.STATUS_DEPRECATED)
        for status in set(self.object_status.values()):
            self.store.set_status(self.conn, [i for i, s in self.object_status.items() if s == status], status)
        for status in set(self.association_status.values()):
            self.store.set_association_status(self.conn, [i for i, s in self.association_status.items()
                                                          if s == status], status)
        if self.touched:
            self.store.touch_folders(self.conn, self.touched, self.now)
