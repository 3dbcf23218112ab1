"""The changes the replay makes to the pack's messages, and the ITI-57 metadata updates it builds from the
C# kit's template (the pack has no masking example).

Each adaptation works on parsed elements and returns what it changed, one phrase per change, so that
the report lists the adaptations of each message next to its outcome. The ones PROVENANCE.md and the
issue notes allow: wsse:Security removed (the replay runs with security none), the Document id case
(PROVENANCE 2), the status-update targets (PROVENANCE 5), the retrieve naming what this replay stored,
and fresh uniqueIds when the server may hold an earlier run. `fill_nested_references` is not one of
them: the replay uses it only to go on after a refusal, and says so.
"""
from __future__ import annotations

import copy
import itertools
import time

from lxml import etree

from xds import constants as C
from xds import soap
from xds.xmlsafe import parse

RIM = C.NS_RIM
WSSE_SECURITY = soap.WSSE_SECURITY

# ebRIM identification and classification schemes (ITI TF-3 4.2.5).
SS_UNIQUE_ID = "urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8"
DE_UNIQUE_ID = "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"
SS_PATIENT_ID = "urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446"
DE_PATIENT_ID = "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427"
CONFIDENTIALITY = "urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f"
STATUS_SLOT = "$XDSDocumentEntryStatus"
PATIENT_SLOT = "$XDSDocumentEntryPatientId"
MASK_CODE = "MASQUE_PS"


def rim(local: str) -> str:
    return C.q(RIM, local)


def load(data: bytes, what: str) -> etree._Element:
    return parse(data, what)


def dump(el: etree._Element) -> bytes:
    return etree.tostring(el, xml_declaration=True, encoding="UTF-8")


def envelope_body(env: etree._Element) -> etree._Element:
    """The first element child of soap:Body (SOAP 1.2 or 1.1)."""
    for ns in (C.NS_SOAP12, C.NS_SOAP11):
        body = env.find(C.q(ns, "Body"))
        if body is not None:
            for child in body:
                if isinstance(child.tag, str):
                    return child
    raise ValueError("not a SOAP envelope with a Body")


def wsa_header(env: etree._Element, local: str) -> str | None:
    for ns in (C.NS_SOAP12, C.NS_SOAP11):
        header = env.find(C.q(ns, "Header"))
        if header is not None:
            found = header.find(C.q(C.NS_WSA, local))
            if found is not None:
                return (found.text or "").strip()
    return None


def wsa_action(env: etree._Element) -> str | None:
    return wsa_header(env, "Action")


def soap_version(env: etree._Element) -> str:
    return soap.SOAP11 if etree.QName(env).namespace == C.NS_SOAP11 else soap.SOAP12


# --- adaptations of the pack's messages ------------------------------------------------------------

def strip_security(env: etree._Element) -> list[str]:
    """Security none: the VIHF is not what this replay tests (its DIRECTE token is unsigned and long
    expired anyway)."""
    done = []
    for el in list(env.iter(WSSE_SECURITY)):
        el.getparent().remove(el)
        done.append("wsse:Security removed")
    return done


def fix_document_ids(request: etree._Element) -> list[str]:
    """PROVENANCE 2: ``<Document id="documentME2">`` for ``ExtrinsicObject id="DocumentME2"``. Only an id
    that names no ExtrinsicObject, but names exactly one when case is ignored, is changed."""
    entries = [eo.get("id") for eo in request.iter(rim("ExtrinsicObject")) if eo.get("id")]
    done = []
    for doc in request.iter(C.q(C.NS_XDSB, "Document")):
        sent = doc.get("id")
        if sent is None or sent in entries:
            continue
        same = [e for e in entries if e.lower() == sent.lower()]
        if len(same) == 1:
            doc.set("id", same[0])
            done.append(f"Document id {sent} -> {same[0]}")
    return done


_serial = itertools.count(1)


def fresh_oid(old: str) -> str:
    """A uniqueId under the same root, so that its shape stays the sender's: the last arc replaced by one
    made of the time and a counter, unique to this process."""
    root = old.rsplit(".", 1)[0] if "." in old else old
    return f"{root}.{int(time.time() * 1000)}{next(_serial):03d}"


def fresh_unique_ids(request: etree._Element) -> tuple[dict[str, str], list[str]]:
    """New SubmissionSet and DocumentEntry uniqueIds: a server that kept an earlier run's data would
    answer XDSDuplicateUniqueIdInRegistry to the pack's."""
    mapping: dict[str, str] = {}
    for ei in request.iter(rim("ExternalIdentifier")):
        if ei.get("identificationScheme") in (SS_UNIQUE_ID, DE_UNIQUE_ID):
            old = ei.get("value")
            mapping[old] = fresh_oid(old)
            ei.set("value", mapping[old])
    return mapping, [f"uniqueId {old} -> {new}" for old, new in mapping.items()]


def missing_nested_references(request: etree._Element) -> list[str]:
    """The Classifications and ExternalIdentifiers nested in an object that leave out classifiedObject or
    registryObject, which ebRIM 3.0 requires (the pack's TD3.3c/d SubmissionSets do)."""
    found = []
    for obj in _registry_objects(request):
        for c in obj.findall(rim("Classification")):
            if not c.get("classifiedObject"):
                found.append(f"Classification {c.get('id')} of {obj.get('id')} has no classifiedObject")
        for ei in obj.findall(rim("ExternalIdentifier")):
            if not ei.get("registryObject"):
                found.append(f"ExternalIdentifier {ei.get('id')} of {obj.get('id')} has no registryObject")
    return found


def fill_nested_references(request: etree._Element) -> list[str]:
    """The enclosing object's id in every nested Classification or ExternalIdentifier that leaves it out."""
    done = []
    for obj in _registry_objects(request):
        for c in obj.findall(rim("Classification")):
            if not c.get("classifiedObject"):
                c.set("classifiedObject", obj.get("id"))
                done.append(f"Classification {c.get('id')} classifiedObject={obj.get('id')}")
        for ei in obj.findall(rim("ExternalIdentifier")):
            if not ei.get("registryObject"):
                ei.set("registryObject", obj.get("id"))
                done.append(f"ExternalIdentifier {ei.get('id')} registryObject={obj.get('id')}")
    return done


def _registry_objects(request: etree._Element) -> list[etree._Element]:
    return [el for el in request.iter(rim("RegistryPackage"), rim("ExtrinsicObject")) if el.get("id")]


def swap_status_targets(request: etree._Element, target: str) -> list[str]:
    """PROVENANCE 5: the pack's TD3.3c/d target an entry of the DMP they were captured on."""
    done = []
    for assoc in request.iter(rim("Association")):
        if assoc.get("associationType") == C.ASSOC_UPDATE_AVAILABILITY_STATUS and assoc.get("targetObject") != target:
            done.append(f"targetObject {assoc.get('targetObject')} -> {target}")
            assoc.set("targetObject", target)
    return done


def status_change(request: etree._Element) -> tuple[str | None, str | None]:
    """(OriginalStatus, NewStatus) of the first UpdateAvailabilityStatus association."""
    for assoc in request.iter(rim("Association")):
        if assoc.get("associationType") == C.ASSOC_UPDATE_AVAILABILITY_STATUS:
            return slot_value(assoc, "OriginalStatus"), slot_value(assoc, "NewStatus")
    return None, None


def swap_retrieve(request: etree._Element, unique_id: str, repository_id: str | None = None) -> list[str]:
    """The retrieve names what this replay stored, not the pack's document."""
    done = []
    for el in request.iter(C.q(C.NS_XDSB, "DocumentUniqueId")):
        if (el.text or "").strip() != unique_id:
            done.append(f"DocumentUniqueId {(el.text or '').strip()} -> {unique_id}")
            el.text = unique_id
    if repository_id:
        for el in request.iter(C.q(C.NS_XDSB, "RepositoryUniqueId")):
            if (el.text or "").strip() != repository_id:
                done.append(f"RepositoryUniqueId {(el.text or '').strip()} -> {repository_id}")
                el.text = repository_id
    return done


def with_statuses(query_env: etree._Element, statuses: list[str]) -> etree._Element:
    """A copy of a FindDocuments envelope that asks for other statuses: the checks that follow TD3.3c/d
    ask what the pack's TD3.1 asks, with the status list changed."""
    env = copy.deepcopy(query_env)
    for slot in env.iter(rim("Slot")):
        if slot.get("name") == STATUS_SLOT:
            _set_values(slot, ["(" + ",".join(f"'{s}'" for s in statuses) + ")"])
            return env
    query = next(env.iter(rim("AdhocQuery")), None)
    if query is None:
        raise ValueError("the envelope holds no AdhocQuery")
    _set_values(etree.SubElement(query, rim("Slot"), name=STATUS_SLOT),
                ["(" + ",".join(f"'{s}'" for s in statuses) + ")"])
    return env


def as_get_documents(query_env: etree._Element, entry_uuids: list[str]) -> etree._Element:
    """A copy of the pack's FindDocuments envelope turned into GetDocuments of entryUUIDs (same header,
    same ResponseOption)."""
    env = copy.deepcopy(query_env)
    query = next(env.iter(rim("AdhocQuery")), None)
    if query is None:
        raise ValueError("the envelope holds no AdhocQuery")
    query.set("id", C.SQ_GET_DOCUMENTS)
    for slot in query.findall(rim("Slot")):
        query.remove(slot)
    slot = etree.Element(rim("Slot"), name="$XDSDocumentEntryEntryUUID")
    _set_values(slot, ["(" + ",".join(f"'{u}'" for u in entry_uuids) + ")"])
    query.insert(0, slot)
    return env


def _set_values(slot: etree._Element, values: list[str]) -> None:
    for old in slot.findall(rim("ValueList")):
        slot.remove(old)
    value_list = etree.SubElement(slot, rim("ValueList"))
    for v in values:
        etree.SubElement(value_list, rim("Value")).text = v


def query_statuses(query_env: etree._Element) -> list[str]:
    for slot in query_env.iter(rim("Slot")):
        if slot.get("name") == STATUS_SLOT:
            text = " ".join(v.text or "" for v in slot.iter(rim("Value")))
            return [s.strip().strip("'") for s in text.strip().strip("()").split(",") if s.strip()]
    return [C.STATUS_APPROVED]


def query_patient(query_env: etree._Element) -> str | None:
    for slot in query_env.iter(rim("Slot")):
        if slot.get("name") == PATIENT_SLOT:
            value = slot.find(f"{rim('ValueList')}/{rim('Value')}")
            return (value.text or "").strip().strip("'") if value is not None else None
    return None


# --- reading entries --------------------------------------------------------------------------------

def slot_value(obj: etree._Element, name: str) -> str | None:
    values = slot_values(obj, name)
    return values[0] if values else None


def slot_values(obj: etree._Element, name: str) -> list[str]:
    for slot in obj.findall(rim("Slot")):
        if slot.get("name") == name:
            return [(v.text or "").strip() for v in slot.iter(rim("Value"))]
    return []


def external_id(obj: etree._Element, scheme: str) -> str | None:
    for ei in obj.findall(rim("ExternalIdentifier")):
        if ei.get("identificationScheme") == scheme:
            return ei.get("value")
    return None


def codes(obj: etree._Element, scheme: str) -> list[str]:
    return [c.get("nodeRepresentation") or "" for c in obj.findall(rim("Classification"))
            if c.get("classificationScheme") == scheme]


def version(obj: etree._Element) -> str:
    info = obj.find(rim("VersionInfo"))
    return info.get("versionName") if info is not None and info.get("versionName") else "1"


def signature_entries(request: etree._Element) -> set[str]:
    """The ids of the entries that sign something (the source of a `signs` association, B-32)."""
    return {a.get("sourceObject") for a in request.iter(rim("Association"))
            if a.get("associationType") == C.ASSOC_SIGNS}


# --- ITI-57 metadata updates from template_masquage.xml ---------------------------------------------

def build_update(template: bytes, entry: etree._Element, *, add: str | None = None, remove: str | None = None,
                 submission_unique_id: str | None = None) -> tuple[etree._Element, list[str]]:
    """A TD3.3a/b request: the template's SubmissionSet and its HasMember association (SubmissionSetStatus
    Original, PreviousVersion), carrying the entry as the registry holds it with one confidentiality
    code added (the template's own MASQUE_PS classification) or removed.

    What the template holds for another patient and another document comes from the replay's own
    entry: the patient, the lid, the PreviousVersion, and the metadata, so that the update changes the
    confidentiality and nothing else. The entry's nested objects get new ids and name the new
    version's symbolic id; the template's name the lid, and its SubmissionSet's leave
    classifiedObject and registryObject out, which ebRIM requires."""
    root = load(template, "template_masquage.xml")
    t_rol = next(root.iter(rim("RegistryObjectList"), "RegistryObjectList"), None)
    if t_rol is None:
        raise ValueError("template_masquage.xml has no RegistryObjectList")
    t_ss, t_assoc, t_eo = (_first(t_rol, name) for name in ("RegistryPackage", "Association", "ExtrinsicObject"))
    if t_ss is None or t_assoc is None or t_eo is None:
        raise ValueError("template_masquage.xml lacks its RegistryPackage, Association or ExtrinsicObject")
    notes: list[str] = []
    request = etree.Element(C.q(C.NS_LCM, "SubmitObjectsRequest"), nsmap={"lcm": C.NS_LCM, "rim": RIM})
    rol = etree.SubElement(request, rim("RegistryObjectList"))

    ss = _in_rim(t_ss)
    ss_id = ss.get("id") or "SubmissionSet01"
    patient = external_id(entry, DE_PATIENT_ID)
    for ei in ss.findall(rim("ExternalIdentifier")):
        ei.set("registryObject", ss_id)
        if ei.get("identificationScheme") == SS_PATIENT_ID:
            notes.append(f"SubmissionSet patientId {ei.get('value')} -> {patient}")
            ei.set("value", patient)
        elif ei.get("identificationScheme") == SS_UNIQUE_ID:
            fresh = submission_unique_id or fresh_oid(ei.get("value"))
            notes.append(f"SubmissionSet uniqueId {ei.get('value')} -> {fresh}")
            ei.set("value", fresh)
    for c in ss.findall(rim("Classification")):
        c.set("classifiedObject", ss_id)
    for slot in ss.findall(rim("Slot")):
        if slot.get("name") == "submissionTime":
            _set_values(slot, [time.strftime("%Y%m%d%H%M%S", time.gmtime())])
            notes.append("submissionTime now")
    rol.append(ss)
    # A template may also classify its SubmissionSet from the top of the list (the marker, ebRIM allows both).
    for c in t_rol:
        if isinstance(c.tag, str) and etree.QName(c).localname == "Classification" \
                and c.get("classifiedObject") == t_ss.get("id"):
            rol.append(_in_rim(c))
            rol[-1].set("classifiedObject", ss_id)

    new_id = t_eo.get("id") or "Document01"
    assoc = _in_rim(t_assoc)
    assoc.set("sourceObject", ss_id)
    assoc.set("targetObject", new_id)
    previous = version(entry)
    for slot in assoc.findall(rim("Slot")):
        if slot.get("name") == "PreviousVersion":
            notes.append(f"PreviousVersion {slot_value(assoc, 'PreviousVersion')} -> {previous}")
            _set_values(slot, [previous])
    rol.append(assoc)

    eo = copy.deepcopy(entry)
    notes.append(f"ExtrinsicObject: the registry's entry {eo.get('id')} (lid {eo.get('lid')}, version {previous}) "
                 f"as id {new_id}")
    eo.set("id", new_id)
    for n, c in enumerate(eo.findall(rim("Classification")), start=1):
        c.set("id", f"cl{n:02d}")
        c.set("classifiedObject", new_id)
    for n, ei in enumerate(eo.findall(rim("ExternalIdentifier")), start=1):
        ei.set("id", f"ei{n:02d}")
        ei.set("registryObject", new_id)
    if add:
        mark = next((c for c in t_eo.iter(rim("Classification"), "Classification")
                     if c.get("classificationScheme") == CONFIDENTIALITY and c.get("nodeRepresentation") == add), None)
        if mark is None:
            raise ValueError(f"template_masquage.xml has no {add} confidentialityCode classification")
        mark = _in_rim(mark)
        mark.set("id", "clmask")
        mark.set("classifiedObject", new_id)
        present = [c for c in eo.findall(rim("Classification")) if c.get("classificationScheme") == CONFIDENTIALITY]
        anchor = present[-1] if present else eo.find(rim("Classification"))
        if anchor is not None:
            anchor.addnext(mark)
        else:
            eo.append(mark)
        notes.append(f"confidentialityCode {add} added (the template's classification)")
    if remove:
        gone = [c for c in eo.findall(rim("Classification"))
                if c.get("classificationScheme") == CONFIDENTIALITY and c.get("nodeRepresentation") == remove]
        for c in gone:
            eo.remove(c)
        notes.append(f"confidentialityCode {remove} removed" if gone else f"confidentialityCode {remove} was absent")
    rol.append(eo)
    return request, notes


def _first(parent: etree._Element, local: str) -> etree._Element | None:
    for el in parent:
        if isinstance(el.tag, str) and etree.QName(el).localname == local:
            return el
    return None


def _in_rim(el: etree._Element) -> etree._Element:
    """A copy of a template element with its elements put in the rim namespace: the C# templates
    carry no namespace at all (the kit's code adds it when it fills them)."""
    out = copy.deepcopy(el)
    for node in out.iter():
        if isinstance(node.tag, str) and etree.QName(node).namespace in (None, RIM):
            node.tag = rim(etree.QName(node).localname)
    etree.cleanup_namespaces(out)
    return out
