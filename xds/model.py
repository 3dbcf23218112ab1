"""The XDS metadata model: plain dataclasses, with no XML in them.

xds.ebrim converts both ways: it reads ebRIM 3.0 elements into these objects and writes the
objects back as elements. Code reads and changes metadata here (``obj.id = ...``,
``obj.set_slot(...)``), never on an element. Objects read from XML carry an ``origin``: what
ebrim's writer needs to apply the object back onto the element it came from, so that
everything the model does not describe (extra attributes, formatting, unknown children)
is stored exactly as submitted. ``origin`` is opaque: only xds.ebrim reads or sets it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from . import constants as C


def _origin() -> Any:
    return field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class LocalizedString:
    """One rim:LocalizedString of a Name or Description; value None when the attribute is absent."""

    value: str | None
    lang: str | None = None
    charset: str | None = None


def first_value(strings: list[LocalizedString]) -> str | None:
    return strings[0].value if strings else None


@dataclass
class Slot:
    name: str
    values: list[str]


class _Named:
    """The Name shared by every object that carries one: its first LocalizedString's value."""

    names: list[LocalizedString]

    @property
    def name(self) -> str | None:
        return first_value(self.names)


class _Slotted:
    """Slot access shared by every object that carries slots."""

    slots: list[Slot]

    def slot(self, name: str) -> list[str] | None:
        for s in self.slots:
            if s.name == name:
                return s.values
        return None

    def slot1(self, name: str) -> str | None:
        v = self.slot(name)
        return v[0] if v else None

    def set_slot(self, name: str, values: list[str]) -> None:
        """Give slot ``name`` these values (the first slot of that name), or add it after the others."""
        for s in self.slots:
            if s.name == name:
                s.values = list(values)
                return
        self.slots.append(Slot(name, list(values)))

    def drop_slot(self, name: str) -> None:
        self.slots = [s for s in self.slots if s.name != name]


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
class Classification(_Slotted, _Named):
    id: str = ""
    scheme: str | None = None
    classified_object: str | None = None
    node_representation: str | None = None
    classification_node: str | None = None
    object_type: str | None = None
    slots: list[Slot] = field(default_factory=list)
    names: list[LocalizedString] = field(default_factory=list)
    descriptions: list[LocalizedString] = field(default_factory=list)
    origin: Any = _origin()
    def as_code(self) -> Code:
        cs = self.slot("codingScheme") or [""]
        return Code(self.node_representation or "", cs[0] if cs else "", self.name)


@dataclass
class ExternalIdentifier(_Named):
    id: str = ""
    scheme: str | None = None
    registry_object: str | None = None
    value: str | None = None
    object_type: str | None = None
    names: list[LocalizedString] = field(default_factory=list)
    descriptions: list[LocalizedString] = field(default_factory=list)
    origin: Any = _origin()

@dataclass
class Author:
    person: str | None = None
    institutions: list[str] = field(default_factory=list)
    roles: list[str] = field(default_factory=list)
    specialties: list[str] = field(default_factory=list)
    telecoms: list[str] = field(default_factory=list)


@dataclass(eq=False, repr=False)
class RegistryObject(_Slotted, _Named):
    """A top-level object of a submission. Compared by identity, like the objects it models."""

    kind: ClassVar[str] = "RegistryObject"
    ebrim_class: ClassVar[str] = ""  # the rim element it is written as
    author_scheme: ClassVar[str | None] = None
    patient_scheme: ClassVar[str | None] = None
    unique_scheme: ClassVar[str | None] = None

    id: str = ""
    lid: str | None = None
    status: str | None = None
    object_type: str | None = None
    home: str | None = None
    slots: list[Slot] = field(default_factory=list)
    names: list[LocalizedString] = field(default_factory=list)
    descriptions: list[LocalizedString] = field(default_factory=list)
    classifications: list[Classification] = field(default_factory=list)
    external_ids: list[ExternalIdentifier] = field(default_factory=list)
    origin: Any = _origin()
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


@dataclass(eq=False, repr=False)
class DocumentEntry(RegistryObject):
    kind: ClassVar[str] = "DocumentEntry"
    ebrim_class: ClassVar[str] = "ExtrinsicObject"
    author_scheme: ClassVar[str | None] = C.DE_AUTHOR
    patient_scheme: ClassVar[str | None] = C.DE_PATIENT_ID
    unique_scheme: ClassVar[str | None] = C.DE_UNIQUE_ID

    mime_type: str | None = None

    @property
    def is_on_demand(self) -> bool:
        return self.object_type == C.OBJECT_TYPE_ON_DEMAND


@dataclass(eq=False, repr=False)
class SubmissionSet(RegistryObject):
    kind: ClassVar[str] = "SubmissionSet"
    ebrim_class: ClassVar[str] = "RegistryPackage"
    author_scheme: ClassVar[str | None] = C.SS_AUTHOR
    patient_scheme: ClassVar[str | None] = C.SS_PATIENT_ID
    unique_scheme: ClassVar[str | None] = C.SS_UNIQUE_ID

    @property
    def source_id(self) -> str | None:
        return self.external_id(C.SS_SOURCE_ID)


@dataclass(eq=False, repr=False)
class Folder(RegistryObject):
    kind: ClassVar[str] = "Folder"
    ebrim_class: ClassVar[str] = "RegistryPackage"
    patient_scheme: ClassVar[str | None] = C.FOLDER_PATIENT_ID
    unique_scheme: ClassVar[str | None] = C.FOLDER_UNIQUE_ID


@dataclass(eq=False, repr=False)
class UnknownPackage(RegistryObject):
    """A RegistryPackage classified as neither SubmissionSet nor Folder."""

    kind: ClassVar[str] = "RegistryPackage"
    ebrim_class: ClassVar[str] = "RegistryPackage"


@dataclass(eq=False, repr=False)
class Association(RegistryObject):
    kind: ClassVar[str] = "Association"
    ebrim_class: ClassVar[str] = "Association"

    type: str | None = None     # associationType
    source: str | None = None   # sourceObject
    target: str | None = None   # targetObject

    @property
    def submission_set_status(self) -> str | None:
        return self.slot1("SubmissionSetStatus")


@dataclass
class Submission:
    """The objects of one SubmitObjectsRequest, in document order."""

    # The lcm:SubmitObjectsRequest element it was read from: ebrim.to_request() brings it up to
    # date with the objects before it is forwarded.
    request: Any
    objects: list[RegistryObject]
    # Top-level Classifications and ExternalIdentifiers that name no object of the submission
    # (ebrim.nest_top_level moved the others into their objects): the validator reports them.
    loose_classifications: list[Classification] = field(default_factory=list)
    loose_external_ids: list[ExternalIdentifier] = field(default_factory=list)
    object_refs: list[str] = field(default_factory=list)
    # assigned urn:uuid: -> the id as the source sent it (ebrim.assign_uuids), for messages.
    sent_ids: dict[str, str] = field(default_factory=dict)
    # RegistryObjectList children of no kind the model knows, as read (opaque elements).
    unknown_elements: list[Any] = field(default_factory=list)

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
