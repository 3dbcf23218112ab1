"""The operations of one ITI-57 Update Document Set message, read from the message alone.

ITI-57 reuses the ITI-42 message shape, so what each object means comes from how the
SubmissionSet points at it (ITI TF-2 3.57.4.1.3.3): a DocumentEntry or Folder with a
SubmissionSet HasMember carrying PreviousVersion is a new version; an UpdateAvailabilityStatus
association changes a status; a SubmitAssociation association adds the association it targets.
Anything else in the message has no meaning in ITI-57 and is refused.

ITI-92 Restricted Update Document Set (the RMU supplement) is the same message restricted to new
versions of DocumentEntries: read with restricted=True, a status change, a SubmitAssociation, a Folder
or any other association is an operation ITI-92 does not carry (XDSMetadataUpdateOperationError).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from xds import constants as C
from xds import errors as E
from xds.constants import last_segment
from xds.ebrim import is_uuid_urn
from xds.errors import ErrorList
from xds.model import Association, DocumentEntry, Folder, Submission

PREVIOUS_VERSION = "PreviousVersion"
ASSOCIATION_PROPAGATION = "AssociationPropagation"
ORIGINAL_STATUS = "OriginalStatus"
NEW_STATUS = "NewStatus"
_SETTABLE_STATUSES = (C.STATUS_APPROVED, C.STATUS_DEPRECATED)
# Associations a SubmitAssociation may add: those ITI-42 itself creates between existing objects.
SUBMITTABLE_TYPES = (C.ASSOC_HAS_MEMBER,) + C.RELATIONSHIP_TYPES


@dataclass
class NewVersion:
    obj: DocumentEntry | Folder
    link: Association  # SubmissionSet -HasMember-> obj
    previous: int
    propagate: bool


@dataclass
class StatusChange:
    link: Association  # SubmissionSet -UpdateAvailabilityStatus-> target
    original: str
    new: str

    @property
    def target(self) -> str:
        return self.link.target or ""


@dataclass
class AddedAssociation:
    link: Association  # SubmissionSet -SubmitAssociation-> added
    added: Association


@dataclass
class Operations:
    versions: list[NewVersion] = field(default_factory=list)
    statuses: list[StatusChange] = field(default_factory=list)
    added: list[AddedAssociation] = field(default_factory=list)


def read_operations(sub: Submission, statuses: tuple[str, ...] = (), restricted: bool = False) -> Operations:
    """The message's operations; raises XdsException (XDSMetadataUpdateError) when any is malformed.
    statuses: the profile's availability statuses beyond IHE's (the DMP's Archived and Deleted);
    restricted: ITI-92, whose only operation is a new version of a DocumentEntry."""
    reader = _Reader(sub, _SETTABLE_STATUSES + tuple(statuses), restricted)
    reader.run()
    reader.errors.raise_if_errors()
    return reader.ops


class _Reader:
    def __init__(self, sub: Submission, settable: tuple[str, ...] = _SETTABLE_STATUSES, restricted: bool = False):
        self.sub = sub
        self.settable = settable
        self.restricted = restricted
        self.transaction = "ITI-92" if restricted else "ITI-57"
        self.ss = sub.submission_sets[0]
        self.errors = ErrorList(E.METADATA_UPDATE_ERROR)
        self.ops = Operations()
        self.local = sub.by_id()
        self.used: set[str] = set()  # associations that belong to an operation

    def run(self) -> None:
        from_set = [a for a in self.sub.associations if a.source == self.ss.id]
        for obj in self.sub.objects:
            if isinstance(obj, Folder) and self.restricted:
                self.errors.add(f"Folder {obj.id}: ITI-92 updates DocumentEntries only; Folders are created and "
                                f"updated by ITI-42 and ITI-57", obj.id, E.METADATA_UPDATE_OPERATION_ERROR)
                self.used.update(a.id for a in from_set if a.target == obj.id and a.type == C.ASSOC_HAS_MEMBER)
            elif isinstance(obj, (DocumentEntry, Folder)):
                self._new_version(obj, [a for a in from_set if a.target == obj.id and a.type == C.ASSOC_HAS_MEMBER])
        for a in from_set:
            if self.restricted and a.type in (C.ASSOC_UPDATE_AVAILABILITY_STATUS, C.ASSOC_SUBMIT_ASSOCIATION):
                self.used.add(a.id)
                self.errors.add(f"Association {a.id} is a {last_segment(a.type)} operation, which ITI-92 does not "
                                f"carry: it registers new versions of DocumentEntries only (status changes and "
                                f"associations go by ITI-57)", a.id, E.METADATA_UPDATE_OPERATION_ERROR)
            elif a.type == C.ASSOC_UPDATE_AVAILABILITY_STATUS:
                self._status_change(a)
            elif a.type == C.ASSOC_SUBMIT_ASSOCIATION:
                self._added_association(a)
        for a in self.sub.associations:
            if a.id in self.used:
                continue
            if self.restricted:
                self.errors.add(f"Association {a.id} ({last_segment(a.type)} from {a.source} to {a.target}) is not "
                                f"the SubmissionSet HasMember of a new DocumentEntry version, the only association "
                                f"ITI-92 carries", a.id, E.METADATA_UPDATE_OPERATION_ERROR)
            else:
                self.errors.add(f"Association {a.id} ({last_segment(a.type)} from {a.source} to {a.target}) is not "
                                f"part of any ITI-57 operation (new version, UpdateAvailabilityStatus or "
                                f"SubmitAssociation)", a.id)
        self._one_operation_per_object()
        if not (self.ops.versions or self.ops.statuses or self.ops.added) and not self.errors.has_errors:
            self.errors.add(f"SubmissionSet {self.ss.id} carries no update operation", self.ss.id)

    def _new_version(self, obj: DocumentEntry | Folder, links: list[Association]) -> None:
        what = f"{obj.kind} {obj.id}"
        ok = True
        if not obj.lid or obj.lid == obj.id:
            self.errors.add(f"{what} has {'no lid' if not obj.lid else 'lid equal to its id'}, so it is an original; "
                            f"{self.transaction} only registers new versions of registered objects (originals go by ITI-42)",
                            obj.id)
            ok = False
        elif not is_uuid_urn(obj.lid):
            self.errors.add(f"{what} has lid {obj.lid!r}; the lid of a new version is the urn:uuid: logical id of "
                            f"the registered object", obj.id)
            ok = False
        if not links:  # the validator reports the missing membership; say why an update needs it
            self.errors.add(f"{what} is a new version only through a SubmissionSet HasMember with a "
                            f"{PREVIOUS_VERSION} slot, and it has none", obj.id)
            return
        link = links[0]
        self.used.update(a.id for a in links)
        if len(links) > 1:
            self.errors.add(f"{what} is linked to the SubmissionSet {len(links)} times; a new version has one "
                            f"SubmissionSet HasMember", links[1].id)
        previous = self._previous_version(link, what)
        propagate = self._propagation(link, what)
        for name in (ORIGINAL_STATUS, NEW_STATUS):
            if link.slot(name) is not None:
                self.errors.add(f"Association {link.id} holds slot {name}, which belongs to UpdateAvailabilityStatus, "
                                f"not to a new version of {what}", link.id)
        if ok and previous is not None and propagate is not None:
            self.ops.versions.append(NewVersion(obj, link, previous, propagate))

    def _previous_version(self, link: Association, what: str) -> int | None:
        values = link.slot(PREVIOUS_VERSION)
        if values is None:
            self.errors.add(f"Association {link.id} (SubmissionSet HasMember {what}) has no {PREVIOUS_VERSION} slot; "
                            f"without it {what} would be an original, which {self.transaction} does not register", link.id)
            return None
        if len(values) != 1 or not values[0].strip().isdigit() or int(values[0]) < 1:
            self.errors.add(f"Association {link.id} slot {PREVIOUS_VERSION} must hold one version number (1, 2, ...), "
                            f"got {values!r}", link.id)
            return None
        return int(values[0])

    def _propagation(self, link: Association, what: str) -> bool | None:
        values = link.slot(ASSOCIATION_PROPAGATION)
        if values is None:
            return True
        if values in (["yes"], ["no"]):
            return values[0] == "yes"
        self.errors.add(f"Association {link.id} (SubmissionSet HasMember {what}) slot {ASSOCIATION_PROPAGATION} must "
                        f"be yes or no, got {values!r}", link.id)
        return None

    def _status_change(self, a: Association) -> None:
        self.used.add(a.id)
        values = {}
        for name in (ORIGINAL_STATUS, NEW_STATUS):
            given = a.slot(name) or []
            if len(given) != 1 or given[0] not in self.settable:
                self.errors.add(f"UpdateAvailabilityStatus {a.id} slot {name} must be one of "
                                f"{', '.join(self.settable)}, got {given!r}", a.id)
            else:
                values[name] = given[0]
        if a.target in self.local:
            self.errors.add(f"UpdateAvailabilityStatus {a.id} targets {a.target}, an object of this message; it "
                            f"changes the status of an object already in the registry", a.id)
        elif len(values) == 2:
            self.ops.statuses.append(StatusChange(a, values[ORIGINAL_STATUS], values[NEW_STATUS]))

    def _added_association(self, a: Association) -> None:
        self.used.add(a.id)
        added = self.local.get(a.target or "")
        if not isinstance(added, Association):
            return  # the validator reports a SubmitAssociation that does not target an association
        if added.id in self.used:
            self.errors.add(f"Association {added.id} is submitted twice (again by {a.id})", a.id)
            return
        self.used.add(added.id)
        ok = True
        if added.type not in SUBMITTABLE_TYPES:
            self.errors.add(f"SubmitAssociation {a.id} adds a {last_segment(added.type)} association ({added.id}); "
                            f"only HasMember and the document relationships can be added", added.id)
            ok = False
        for end, ref in (("sourceObject", added.source), ("targetObject", added.target)):
            if ref in self.local:
                self.errors.add(f"Association {added.id} {end} {ref} is an object of this message; SubmitAssociation "
                                f"links objects already in the registry", added.id)
                ok = False
        if ok:
            self.ops.added.append(AddedAssociation(a, added))

    def _one_operation_per_object(self) -> None:
        # Two versions of one lid in one message would both claim to follow the same version.
        seen: dict[str, str] = {}
        for v in self.ops.versions:
            lid = v.obj.lid or ""
            if lid in seen:
                self.errors.add(f"{v.obj.kind} {v.obj.id} and {seen[lid]} are both new versions of logical id {lid}; "
                                f"one message may update a logical id once", v.obj.id)
            seen.setdefault(lid, v.obj.id)
        targets: set[str] = set()
        for s in self.ops.statuses:
            if s.target in targets:
                self.errors.add(f"the status of {s.target} is changed twice in one message", s.link.id)
            targets.add(s.target)
