"""What a new version of a registry object changes from the version it follows (ITI-57), attribute by
attribute, for profiles that allow some changes only (the DMP: the confidentiality codes).

Values are compared, not XML: the ids of Classifications and ExternalIdentifiers, their order and
the registry's own attributes (status, lid, version) differ between any two versions.
"""
from __future__ import annotations

from xds import constants as C
from xds import hl7
from xds.model import DocumentEntry, RegistryObject

# The model's names of the classification and identification schemes.
SCHEME_NAMES = {
    C.DE_CLASS_CODE: "classCode", C.DE_CONFIDENTIALITY_CODE: "confidentialityCode", C.DE_EVENT_CODE: "eventCodeList",
    C.DE_FORMAT_CODE: "formatCode", C.DE_HEALTHCARE_FACILITY_TYPE_CODE: "healthcareFacilityTypeCode",
    C.DE_PRACTICE_SETTING_CODE: "practiceSettingCode", C.DE_TYPE_CODE: "typeCode", C.DE_AUTHOR: "author",
    C.DE_LIMITED_METADATA: "limitedMetadata", C.DE_PATIENT_ID: "patientId", C.DE_UNIQUE_ID: "uniqueId",
    C.FOLDER_PATIENT_ID: "patientId", C.FOLDER_UNIQUE_ID: "uniqueId", C.FOLDER_CODE_LIST: "codeList",
}


def _classifications(obj: RegistryObject) -> dict[str, frozenset]:
    out: dict[str, set] = {}
    for c in obj.classifications:
        name = SCHEME_NAMES.get(c.scheme or "", c.scheme or c.classification_node or "classification")
        slots = tuple(sorted((s.name, tuple(s.values)) for s in c.slots))
        out.setdefault(name, set()).add((c.node_representation or "", c.classification_node or "", slots,
                                         tuple(n.value or "" for n in c.names)))
    return {k: frozenset(v) for k, v in out.items()}


def _external_ids(obj: RegistryObject) -> dict[str, str]:
    out = {}
    for e in obj.external_ids:
        name = SCHEME_NAMES.get(e.scheme or "", e.scheme or "externalIdentifier")
        value = (e.value or "").strip()
        # The same patient may be written with or without the profile's CX.5/CX.7 (hl7.patient_key).
        out[name] = hl7.patient_key(value) if name == "patientId" and value else value
    return out


def facts(obj: RegistryObject) -> dict[str, object]:
    """Each attribute of obj under its model name, in a form that compares by value."""
    out: dict[str, object] = {
        "title": tuple(n.value or "" for n in obj.names),
        "comments": tuple(d.value or "" for d in obj.descriptions),
        "objectType": obj.object_type or "",
        "mimeType": getattr(obj, "mime_type", None) or "",
    }
    for s in obj.slots:
        out[s.name] = tuple(s.values)
    if isinstance(obj, DocumentEntry):  # absent, documentAvailability is Online (ITI TF-3 4.2.3.2.28)
        out.setdefault("documentAvailability", (C.AVAILABILITY_ONLINE,))
    out.update(_classifications(obj))
    out.update(_external_ids(obj))
    return out


def changed_attributes(old: RegistryObject, new: RegistryObject) -> list[str]:
    """The model names of the attributes whose values differ, in a stable order."""
    a, b = facts(old), facts(new)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
