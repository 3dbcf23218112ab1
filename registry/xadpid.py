"""ITI-64 Notify XAD-PID Link Change (XPID profile, ITI TF-2b 3.64): an ADT^A43 on the patient feed (HL7
v2 over MLLP, as ITI-8) that tells the registry a local patient id now belongs to another XAD-PID, and
possibly that a subsumed local id merged into it.

PID-3 holds the new XAD-PID then the local patient id; MRG-1 the previous XAD-PID then, for a merge, the
subsumed local id (equal XAD-PIDs: a merge of local ids only). Every Approved DocumentEntry filed under the
previous XAD-PID whose sourcePatientId is the local or the subsumed id gets a new version (same logical id,
version + 1, new entryUUID) under the new XAD-PID, with the local id as sourcePatientId, and the version it
follows is Deprecated. An entry the change leaves as it is gets no new version. All the new versions
belong to one new SubmissionSet made by the registry (TF 3.64.4.1.3.1.1), which is created only when
something changes.

Links follow the new versions, once each (TF 3.64.4.1.3.1.2 to .7):

- a document relationship (APND, RPLC, XFRM, XFRM_RPLC, signs, IsSnapshotOf) whose other end moves too, or
  already is the new patient's, is copied between the new versions; one whose other end is Deprecated is
  dropped, as the TF says of RPLC;
- a SubmissionSet's HasMember labelled Reference is Deprecated and made again to the new version;
- a Folder whose Approved members all move gets a new version under the new XAD-PID holding the new
  versions; when only local ids merge (the XAD-PID stays) the Folder keeps its version and gets the new
  versions as members.

Constraint conflicts (TF 3.64.4.1.3.2) are resolved by the TF's second strategy: a change that would leave
a relationship or a Folder across two patients is refused whole (AE, "XPID_CONFLICT", naming the object),
nothing changes, and the operator resolves the link by hand before the Cross-Reference Manager sends the
notification again.

Who may send it is ``registry.feed_sources``, as for ITI-8: a source that may merge patients in the
XAD-PIDs' assigning authority. Both XAD-PIDs must be active patients of the registry. The feed handler
(registry.feed) answers the acknowledgement and tells the audit hook; this module reads the message and
applies it in one database transaction.
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field

from xds import constants as C
from xds.ebrim import new_uuid, read_object
from xds.hl7 import is_oid, parse_cx, patient_key
from xds.model import (
    Association, Classification, DocumentEntry, ExternalIdentifier, Folder, LocalizedString, RegistryObject,
    Slot, SubmissionSet,
)
from xds.xmlsafe import parse as safe_parse
from . import schema as S
from .checks import new_association, now_dtm
from .feed_sources import ERR_INTERNAL, MERGE_NOT_ALLOWED, AUTHORITY_NOT_ALLOWED, ERR_TABLE_VALUE_NOT_FOUND
from .store import AssociationRow, ObjectRow, RegistryStore

log = logging.getLogger(__name__)

TRIGGER = "A43"

# HL7 table 0357 codes used here (registry.feed defines the others it shares).
ERR_REQUIRED_FIELD_MISSING = 101
ERR_DATA_TYPE = 102
ERR_UNKNOWN_KEY = 204
# The registry's own rule for a refused constraint conflict (ERR-5, a local code).
CONFLICT = "XPID_CONFLICT"   # its ERR-5 text is in registry.feed_sources.APP_CODE_TEXT

# The SubmissionSet's contentTypeCode: "XDS Affinity Domain defined" (TF Table 3.64.4.1.3.1.1-1); this one
# is the registry's own, so that consumers can tell these SubmissionSets from the sources' submissions.
CONTENT_TYPE = ("XPID-LinkChange", "urn:xds-server:xpid", "Notify XAD-PID Link Change")

# The participant objects of the audit record (TF 3.64.5.1.2), by their patientIdentifierType.
LOCAL, SUBSUMED, NEW, PREVIOUS = "localPatientId", "subsumedPatientId", "newPatientId", "previousPatientId"


class LinkRefused(Exception):
    """Why the message is refused: its ACK code, text, table 0357 code, ERR-2 location, ERR-5 code, and the
    feed's outcome (invalid or denied)."""

    def __init__(self, ack_code: str, text: str, error_code: int, location: str, app_code: str = "",
                 outcome: str = "invalid"):
        super().__init__(text)
        self.ack_code, self.text, self.error_code = ack_code, text, error_code
        self.location, self.app_code, self.outcome = location, app_code, outcome


@dataclass(frozen=True)
class LinkChange:
    """One ADT^A43: each id as the message sent it (the CX text, unescaped)."""

    new_xad: str
    local: str
    previous_xad: str
    subsumed: str | None
    source_id: str          # the new SubmissionSet's sourceId: MSH-3's OID

    @property
    def xad_changes(self) -> bool:
        return patient_key(self.new_xad) != patient_key(self.previous_xad)

    def links(self) -> tuple[tuple[str, str], ...]:
        """(patientIdentifierType, id) of every id the message names, for the audit record."""
        out = [(LOCAL, self.local)]
        if self.subsumed:
            out.append((SUBSUMED, self.subsumed))
        return tuple(out + [(NEW, self.new_xad), (PREVIOUS, self.previous_xad)])


@dataclass
class Applied:
    submission_set: str | None = None     # entryUUID of the new SubmissionSet; None: nothing changed
    entries: int = 0
    folders: int = 0


# --- reading the message ------------------------------------------------------------------------

def _repetitions(msg, segment: str, number: int) -> list[str]:
    seg = msg.first(segment)
    value = seg[number] if seg is not None and number < len(seg) else ""
    return [rep for rep in value.split(msg.encoding.repetition)] if value else []


def _cx(msg, rep: str, label: str, location: str) -> str:
    """One repetition as an XDS patient id (``id^^^&OID&ISO``), its CX text unescaped."""
    enc = msg.encoding
    text = enc.component.join(msg.unescape(c) for c in rep.split(enc.component))
    if enc.subcomponent != "&":
        text = text.replace(enc.subcomponent, "&")
    cx = parse_cx(text)
    if not cx.id:
        raise LinkRefused("AE", f"{label} has no id (CX.1)", ERR_REQUIRED_FIELD_MISSING, location)
    if cx.aa_universal_id_type.upper() != "ISO" or not is_oid(cx.aa_universal_id):
        raise LinkRefused("AE", f"{label} '{text}' has no ISO assigning authority (id^^^&OID&ISO): CX.4 must "
                                "carry an OID and the type ISO", ERR_DATA_TYPE, location)
    if any(ch in cx.id for ch in "^&~|\\"):
        raise LinkRefused("AE", f"{label} id '{cx.id}' contains an HL7 separator and cannot be an XDS patient id",
                          ERR_DATA_TYPE, location)
    return text


def _source_id(msg) -> str:
    """MSH-3 as an OID (TF: the Cross-Reference Manager's OID); a name only is turned into a stable
    2.25 OID of its own, so that every change of one sender carries the same sourceId."""
    enc = msg.encoding
    parts = [msg.unescape(p) for p in (msg.msh[3] if len(msg.msh) > 3 else "").split(enc.component)]
    for part in (parts[1] if len(parts) > 1 else "", parts[0]):
        if is_oid(part):
            return part
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, '^'.join(parts)).int}"


def read_link_change(msg, grant, named: list[str]) -> LinkChange:
    """The ids of one ADT^A43 (a registry.feed Message), every rule checked before anything is stored.
    ``grant`` is the sender's source-list entry; the ids read are added to ``named`` as they are read."""
    pid3 = [r for r in _repetitions(msg, "PID", 3) if r]
    mrg1 = [r for r in _repetitions(msg, "MRG", 1) if r]
    if msg.first("PID") is None:
        raise LinkRefused("AE", "PID segment is missing", 100, "PID")
    if msg.first("MRG") is None:
        raise LinkRefused("AE", "MRG segment is missing: an ADT^A43 names the previous XAD-PID in MRG-1", 100,
                          "MRG")
    if len(pid3) != 2:
        raise LinkRefused("AE", f"PID-3 has {len(pid3)} identifier(s); an ADT^A43 carries two: the new XAD-PID, "
                                "then the local patient id", ERR_REQUIRED_FIELD_MISSING, "PID^1^3")
    if len(mrg1) not in (1, 2):
        raise LinkRefused("AE", f"MRG-1 has {len(mrg1)} identifier(s); an ADT^A43 carries the previous XAD-PID, "
                                "then optionally the subsumed local patient id", ERR_REQUIRED_FIELD_MISSING,
                          "MRG^1^1")
    new_xad = _cx(msg, pid3[0], "PID-3 repetition 1 (the new XAD-PID)", "PID^1^3^1")
    local = _cx(msg, pid3[1], "PID-3 repetition 2 (the local patient id)", "PID^1^3^2")
    previous = _cx(msg, mrg1[0], "MRG-1 repetition 1 (the previous XAD-PID)", "MRG^1^1^1")
    subsumed = _cx(msg, mrg1[1], "MRG-1 repetition 2 (the subsumed local patient id)", "MRG^1^1^2") \
        if len(mrg1) == 2 else None
    named += [new_xad, local, previous] + ([subsumed] if subsumed else [])
    authority = parse_cx(new_xad).aa_universal_id
    if parse_cx(previous).aa_universal_id != authority:
        raise LinkRefused("AE", f"the previous XAD-PID '{previous}' and the new XAD-PID '{new_xad}' are in different "
                                "assigning authorities; both are XDS Affinity Domain ids", ERR_DATA_TYPE, "MRG^1^1^1")
    if subsumed and parse_cx(subsumed).aa_universal_id != parse_cx(local).aa_universal_id:
        raise LinkRefused("AE", f"the subsumed local id '{subsumed}' is not in the assigning authority of the local "
                                f"id '{local}' (TF 3.64.4.1.2.4)", ERR_DATA_TYPE, "MRG^1^1^2")
    if subsumed and patient_key(subsumed) == patient_key(local):
        raise LinkRefused("AE", f"the subsumed local id '{subsumed}' is the local id, nothing to merge",
                          ERR_DATA_TYPE, "MRG^1^1^2")
    change = LinkChange(new_xad, local, previous, subsumed, _source_id(msg))
    if not change.xad_changes and not subsumed:
        raise LinkRefused("AE", f"MRG-1 names the new XAD-PID '{new_xad}' as the previous one and no subsumed local "
                                "id: the message changes nothing", ERR_DATA_TYPE, "MRG^1^1")
    # Re-filing documents from one XAD-PID to another is a merge to the source list.
    if not grant.may_feed(authority):
        raise LinkRefused("AR", f"XAD-PID '{new_xad}' is in assigning authority {authority}, whose patients source "
                                f"'{grant.name}' may not feed", ERR_TABLE_VALUE_NOT_FOUND, "PID^1^3^1",
                          AUTHORITY_NOT_ALLOWED, "denied")
    if not grant.may_merge(authority):
        raise LinkRefused("AR", f"source '{grant.name}' may not merge patients of assigning authority {authority}, "
                                "which a link change does", ERR_INTERNAL, "MRG^1^1^1", MERGE_NOT_ALLOWED, "denied")
    return change


# --- applying it ---------------------------------------------------------------------------------

def relink(store: RegistryStore, change: LinkChange) -> Applied:
    """Apply one link change in one database transaction; raises LinkRefused (nothing changed)."""
    with store.transaction() as conn:
        return _Relink(store, conn, change).run()


@dataclass
class _Version:
    old: ObjectRow
    obj: RegistryObject


@dataclass
class _Relink:
    store: RegistryStore
    conn: object
    change: LinkChange
    now: str = field(default_factory=now_dtm)
    renamed: dict[str, str] = field(default_factory=dict)     # old version id -> new version id
    versions: list[_Version] = field(default_factory=list)
    associations: list[Association] = field(default_factory=list)
    deprecated_links: set[str] = field(default_factory=set)
    touched: set[str] = field(default_factory=set)            # Folders that gain members
    ss: SubmissionSet | None = None

    def run(self) -> Applied:
        c = self.change
        self.store.lock_unique_ids(self.conn, sorted({f"xpid {patient_key(c.previous_xad)}",
                                                      f"xpid {patient_key(c.new_xad)}"}))
        if not self.store.patient_known(self.conn, c.new_xad):
            raise LinkRefused("AE", f"the new XAD-PID '{c.new_xad}' (PID-3) is not an active patient of this "
                                    "registry", ERR_UNKNOWN_KEY, "PID^1^3^1")
        if not self.store.patient_known(self.conn, c.previous_xad):
            raise LinkRefused("AE", f"the previous XAD-PID '{c.previous_xad}' (MRG-1) is not an active patient of "
                                    "this registry", ERR_UNKNOWN_KEY, "MRG^1^1^1")
        moving = self._moving_entries()
        if not moving:
            log.info("XAD-PID link change: no entry of %s has sourcePatientId %s%s; nothing to change",
                     c.previous_xad, c.local, f" or {c.subsumed}" if c.subsumed else "")
            return Applied()
        self.store.lock_unique_ids(self.conn, [row.lid for row, _ in moving])
        for row, obj in moving:
            self._new_version(row, obj)
        self.ss = self._submission_set()
        for v in list(self.versions):
            self._member(v)
        self._links()
        self._write()
        entries = sum(1 for v in self.versions if isinstance(v.obj, DocumentEntry))
        return Applied(self.ss.id, entries, len(self.versions) - entries)

    # --- what moves ------------------------------------------------------------------------------
    def _moving_entries(self) -> list[tuple[ObjectRow, DocumentEntry]]:
        c = self.change
        local, subsumed = patient_key(c.local), patient_key(c.subsumed) if c.subsumed else None
        out = []
        for row, xml in self.store.filed_under(self.conn, c.previous_xad, S.KIND_DOCUMENT_ENTRY):
            obj = read_object(safe_parse(xml.encode(), "stored DocumentEntry"))
            source = (obj.slot1("sourcePatientId") or "").strip()
            key = patient_key(source) if source else None
            if key == subsumed or (key == local and c.xad_changes):
                out.append((row, obj))
        return out

    def _new_version(self, row: ObjectRow, obj: RegistryObject) -> None:
        """A copy of the latest version with a new entryUUID (and new ids inside), filed under the new XAD-PID
        and, after a merge, the local id as its sourcePatientId."""
        new_id = new_uuid()
        obj.id, obj.lid = new_id, row.lid
        for cl in obj.classifications:
            cl.id, cl.classified_object = new_uuid(), new_id
        for ei in obj.external_ids:
            ei.id, ei.registry_object = new_uuid(), new_id
            if ei.scheme == obj.patient_scheme:
                ei.value = self.change.new_xad
        if isinstance(obj, DocumentEntry) and self.change.subsumed:
            obj.set_slot("sourcePatientId", [self.change.local])
        self.renamed[row.id] = new_id
        self.versions.append(_Version(row, obj))

    def _submission_set(self) -> SubmissionSet:
        c, ss_id = self.change, new_uuid()

        def ext(scheme: str, value: str, name: str) -> ExternalIdentifier:
            return ExternalIdentifier(id=new_uuid(), scheme=scheme, registry_object=ss_id, value=value,
                                      object_type=C.OBJECT_TYPE_EXTERNAL_IDENTIFIER, names=[LocalizedString(name)])

        code, scheme, display = CONTENT_TYPE
        return SubmissionSet(
            id=ss_id, lid=ss_id, object_type=C.OBJECT_TYPE_REGISTRY_PACKAGE,
            slots=[Slot("submissionTime", [self.now])], names=[LocalizedString(display)],
            classifications=[
                Classification(id=new_uuid(), classified_object=ss_id, classification_node=C.SS_CLASSIFICATION_NODE,
                               object_type=C.OBJECT_TYPE_CLASSIFICATION),
                Classification(id=new_uuid(), scheme=C.SS_CONTENT_TYPE_CODE, classified_object=ss_id,
                               node_representation=code, slots=[Slot("codingScheme", [scheme])],
                               names=[LocalizedString(display)], object_type=C.OBJECT_TYPE_CLASSIFICATION)],
            external_ids=[ext(C.SS_PATIENT_ID, c.new_xad, "XDSSubmissionSet.patientId"),
                          ext(C.SS_SOURCE_ID, c.source_id, "XDSSubmissionSet.sourceId"),
                          ext(C.SS_UNIQUE_ID, f"2.25.{uuid.uuid4().int}", "XDSSubmissionSet.uniqueId")])

    def _member(self, v: _Version) -> None:
        """The new SubmissionSet's HasMember of a new version, naming the version it follows."""
        link = new_association(self.ss.id, v.obj.id, C.ASSOC_HAS_MEMBER, "Original")
        link.set_slot("PreviousVersion", [str(v.old.version)])
        self.associations.append(link)

    # --- the links of the moved versions -----------------------------------------------------------
    def _links(self) -> None:
        old_ids = list(self.renamed)
        links = [a for a in self.store.associations_touching(self.conn, old_ids) if a.status == C.STATUS_APPROVED]
        ends = self.store.objects(self.conn, {a.source for a in links} | {a.target for a in links})
        folders: dict[str, ObjectRow] = {}
        copied: set[tuple[str, str, str]] = set()
        for a in links:
            source, target = ends.get(a.source), ends.get(a.target)
            if source is None or target is None:
                continue  # a link to an association: none of an entry's own links
            if a.type == C.ASSOC_HAS_MEMBER and source.kind == S.KIND_SUBMISSION_SET:
                if a.ss_status == "Reference":
                    self.deprecated_links.add(a.id)
                    self.associations.append(new_association(a.source, self.renamed[a.target], a.type, "Reference"))
            elif a.type == C.ASSOC_HAS_MEMBER and source.kind == S.KIND_FOLDER:
                if source.status == C.STATUS_APPROVED:
                    folders[source.id] = source
            elif a.type in C.RELATIONSHIP_TYPES:
                self._relationship(a, source, target, copied)
        for folder in folders.values():
            self._folder(folder)

    def _relationship(self, a: AssociationRow, source: ObjectRow, target: ObjectRow, copied: set) -> None:
        for other in (source, target):
            if other.id in self.renamed:
                continue
            if other.status != C.STATUS_APPROVED:
                return  # e.g. the replaced version of an RPLC: it keeps its patient, the link is not carried
            if patient_key(other.patient_id or "") != patient_key(self.change.new_xad):
                raise LinkRefused("AE", f"{CONFLICT}: {a.type.rsplit(':', 1)[-1]} association {a.id} links "
                                        f"DocumentEntry {source.id} to {target.id}, and only one of them moves to "
                                        f"'{self.change.new_xad}'", ERR_INTERNAL, "PID^1^3^2", CONFLICT)
        key = (a.type, self.renamed.get(a.source, a.source), self.renamed.get(a.target, a.target))
        if key not in copied:
            copied.add(key)
            self.associations.append(new_association(key[1], key[2], a.type, None))

    def _folder(self, folder: ObjectRow) -> None:
        members = [a for a in self.store.associations_touching(self.conn, [folder.id])
                   if a.source == folder.id and a.type == C.ASSOC_HAS_MEMBER and a.status == C.STATUS_APPROVED]
        rows = self.store.objects(self.conn, [a.target for a in members])
        approved = [a for a in members if rows.get(a.target) is not None
                    and rows[a.target].kind == S.KIND_DOCUMENT_ENTRY and rows[a.target].status == C.STATUS_APPROVED]
        holder = folder.id
        if self.change.xad_changes:
            staying = [a.target for a in approved if a.target not in self.renamed]
            if staying:
                raise LinkRefused("AE", f"{CONFLICT}: Folder {folder.id} also holds DocumentEntry {staying[0]}, which "
                                        f"stays with '{self.change.previous_xad}'", ERR_INTERNAL, "PID^1^3^2", CONFLICT)
            holder = self._new_folder_version(folder)
        else:
            self.touched.add(folder.id)
        for a in approved:
            if a.target in self.renamed:
                membership = new_association(holder, self.renamed[a.target], C.ASSOC_HAS_MEMBER, None)
                self.associations += [membership, new_association(self.ss.id, membership.id, C.ASSOC_HAS_MEMBER,
                                                                  None)]

    def _new_folder_version(self, folder: ObjectRow) -> str:
        stored = self.store.load_objects(self.conn, [folder.id])
        obj = read_object(stored[0])
        if not isinstance(obj, Folder):
            raise LinkRefused("AE", f"registry object {folder.id} is not a Folder", ERR_INTERNAL, "PID^1^3^2")
        obj.drop_slot("lastUpdateTime")
        self.store.lock_unique_ids(self.conn, [folder.lid])
        self._new_version(folder, obj)
        self._member(self.versions[-1])
        return obj.id

    # --- storing -----------------------------------------------------------------------------------
    def _write(self) -> None:
        objects = [self.ss] + [v.obj for v in self.versions]
        self.store.insert_submission(self.conn, objects, self.associations, self.now,
                                     versions={v.obj.id: v.old.version + 1 for v in self.versions},
                                     inherits={v.obj.id: v.old.id for v in self.versions})
        self.store.set_status(self.conn, list(self.renamed), C.STATUS_DEPRECATED)
        if self.deprecated_links:
            self.store.set_association_status(self.conn, self.deprecated_links, C.STATUS_DEPRECATED)
        if self.touched:
            self.store.touch_folders(self.conn, self.touched, self.now)
