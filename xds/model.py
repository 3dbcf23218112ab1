"""The XDS metadata model: typed views over ebRIM 3.0 elements.

Each object keeps the element it was parsed from, so that whatever the submitter sent
(extra slots, names, descriptions) is stored and returned exactly.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree

from . import constants as C

RIM = C.NS_RIM


def _t(local: str) -> str:
    return C.q(RIM, local)


def localized(el: etree._Element, child: str) -> str | None:
    holder = el.find(_t(child))
    if holder is None:
        return None
    ls = holder.find(_t("LocalizedString"))
    return ls.get("value") if ls is not None else None


@dataclass
class Slot:
    name: str
    values: list[str]


def read_slots(el: etree._Element) -> list[Slot]:
    slots = []
    for s in el.findall(_t("Slot")):
        values = [(v.text or "") for v in s.iterfind(f"{_t('ValueList')}/{_t('Value')}")]
        slots.append(Slot(s.get("name") or "", values))
    return slots


@dataclass
class Code:
    code: str
    scheme: str
    display: str | None = None

    @property
    def key(self) -> str:
        """The form stored queries use: code^^codingScheme."""
        return f"{self.code}^^{self.scheme}"


@dataclass
class Classification:
    element: etree._Element
    id: str
    scheme: str | None
    classified_object: str | None
    node_representation: str | None
    classification_node: str | None
    name: str | None
    slots: list[Slot]

    def slot(self, name: str) -> list[str] | None:
        for s in self.slots:
            if s.name == name:
                return s.values
        return None

    def as_code(self) -> Code:
        cs = self.slot("codingScheme") or [""]
        return Code(self.node_representation or "", cs[0] if cs else "", self.name)


@dataclass
class ExternalIdentifier:
    element: etree._Element
    id: str
    scheme: str | None
    registry_object: str | None
    value: str | None
    name: str | None


@dataclass
class Author:
    person: str | None = None
    institutions: list[str] = field(default_factory=list)
    roles: list[str] = field(default_factory=list)
    specialties: list[str] = field(default_factory=list)
    telecoms: list[str] = field(default_factory=list)


class RegistryObject:
    kind = "RegistryObject"
    author_scheme: str | None = None
    patient_scheme: str | None = None
    unique_scheme: str | None = None

    def __init__(self, element: etree._Element):
        self.element = element
        self.slots = read_slots(element)
        self.classifications = [_classification(c) for c in element.findall(_t("Classification"))]
        self.external_ids = [_external_id(e) for e in element.findall(_t("ExternalIdentifier"))]

    # Attribute access reads the element so that id rewriting stays in one place.
    @property
    def id(self) -> str:
        return self.element.get("id") or ""

    @property
    def lid(self) -> str | None:
        return self.element.get("lid")

    @property
    def status(self) -> str | None:
        return self.element.get("status")

    @property
    def object_type(self) -> str | None:
        return self.element.get("objectType")

    @property
    def name(self) -> str | None:
        return localized(self.element, "Name")

    def slot(self, name: str) -> list[str] | None:
        for s in self.slots:
            if s.name == name:
                return s.values
        return None

    def slot1(self, name: str) -> str | None:
        v = self.slot(name)
        return v[0] if v else None

    def classifications_by(self, scheme: str) -> list[Classification]:
        return [c for c in self.classifications if c.scheme == scheme]

    def codes(self, scheme: str) -> list[Code]:
        return [c.as_code() for c in self.classifications_by(scheme)]

    def code(self, scheme: str) -> Code | None:
        cs = self.codes(scheme)
        return cs[0] if cs else None

    def external_id(self, scheme: str | None) -> str | None:
        for e in self.external_ids:
            if e.scheme == scheme:
                return e.value
        return None

    @property
    def patient_id(self) -> str | None:
        v = self.external_id(self.patient_scheme)
        return v.strip() if v else v

    @property
    def unique_id(self) -> str | None:
        v = self.external_id(self.unique_scheme)
        return v.strip() if v else v

    def authors(self) -> list[Author]:
        out = []
        for c in self.classifications_by(self.author_scheme) if self.author_scheme else []:
            a = Author()
            for s in c.slots:
                if s.name == "authorPerson":
                    a.person = s.values[0] if s.values else None
                elif s.name == "authorInstitution":
                    a.institutions = s.values
                elif s.name == "authorRole":
                    a.roles = s.values
                elif s.name == "authorSpecialty":
                    a.specialties = s.values
                elif s.name == "authorTelecommunication":
                    a.telecoms = s.values
            out.append(a)
        return out

    def __repr__(self) -> str:
        return f"<{self.kind} {self.id}>"


class DocumentEntry(RegistryObject):
    kind = "DocumentEntry"
    author_scheme = C.DE_AUTHOR
    patient_scheme = C.DE_PATIENT_ID
    unique_scheme = C.DE_UNIQUE_ID

    @property
    def mime_type(self) -> str | None:
        return self.element.get("mimeType")

    @property
    def is_on_demand(self) -> bool:
        return self.object_type == C.OBJECT_TYPE_ON_DEMAND


class SubmissionSet(RegistryObject):
    kind = "SubmissionSet"
    author_scheme = C.SS_AUTHOR
    patient_scheme = C.SS_PATIENT_ID
    unique_scheme = C.SS_UNIQUE_ID

    @property
    def source_id(self) -> str | None:
        return self.external_id(C.SS_SOURCE_ID)


class Folder(RegistryObject):
    kind = "Folder"
    patient_scheme = C.FOLDER_PATIENT_ID
    unique_scheme = C.FOLDER_UNIQUE_ID


class UnknownPackage(RegistryObject):
    """A RegistryPackage classified as neither SubmissionSet nor Folder."""

    kind = "RegistryPackage"


class Association(RegistryObject):
    kind = "Association"

    @property
    def type(self) -> str | None:
        return self.element.get("associationType")

    @property
    def source(self) -> str | None:
        return self.element.get("sourceObject")

    @property
    def target(self) -> str | None:
        return self.element.get("targetObject")

    @property
    def submission_set_status(self) -> str | None:
        return self.slot1("SubmissionSetStatus")


def _classification(el: etree._Element) -> Classification:
    return Classification(
        element=el,
        id=el.get("id") or "",
        scheme=el.get("classificationScheme"),
        classified_object=el.get("classifiedObject"),
        node_representation=el.get("nodeRepresentation"),
        classification_node=el.get("classificationNode"),
        name=localized(el, "Name"),
        slots=read_slots(el),
    )


def _external_id(el: etree._Element) -> ExternalIdentifier:
    return ExternalIdentifier(
        element=el,
        id=el.get("id") or "",
        scheme=el.get("identificationScheme"),
        registry_object=el.get("registryObject"),
        value=el.get("value"),
        name=localized(el, "Name"),
    )


@dataclass
class Submission:
    """The objects of one SubmitObjectsRequest, in document order."""

    request: etree._Element
    objects: list[RegistryObject]
    # Classifications placed at the top level of the list (the SubmissionSet marker in
    # particular) rather than nested in the object they classify.
    loose_classifications: list[Classification] = field(default_factory=list)
    object_refs: list[str] = field(default_factory=list)
    unknown_elements: list[etree._Element] = field(default_factory=list)

    def of(self, cls) -> list:
        return [o for o in self.objects if isinstance(o, cls)]

    @property
    def document_entries(self) -> list[DocumentEntry]:
        return self.of(DocumentEntry)

    @property
    def submission_sets(self) -> list[SubmissionSet]:
        return self.of(SubmissionSet)

    @property
    def folders(self) -> list[Folder]:
        return self.of(Folder)

    @property
    def associations(self) -> list[Association]:
        return self.of(Association)

    def by_id(self) -> dict[str, RegistryObject]:
        return {o.id: o for o in self.objects}
