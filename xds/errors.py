"""XDS error codes and the exception that carries code, message and location."""
from __future__ import annotations

from dataclasses import dataclass, field

from . import constants as C

# Error codes (IHE ITI TF-3 Table 4.2.4.1-2 and the ebRS extensions used by ITI-57/62).
REGISTRY_METADATA_ERROR = "XDSRegistryMetadataError"
REGISTRY_ERROR = "XDSRegistryError"
REPOSITORY_ERROR = "XDSRepositoryError"
REPOSITORY_METADATA_ERROR = "XDSRepositoryMetadataError"
PATIENT_ID_DOES_NOT_MATCH = "XDSPatientIdDoesNotMatch"
UNKNOWN_PATIENT_ID = "XDSUnknownPatientId"
NON_IDENTICAL_HASH = "XDSNonIdenticalHash"
NON_IDENTICAL_SIZE = "XDSNonIdenticalSize"
DUPLICATE_UNIQUE_ID_IN_MESSAGE = "XDSRegistryDuplicateUniqueIdInMessage"
REPOSITORY_DUPLICATE_UNIQUE_ID_IN_MESSAGE = "XDSRepositoryDuplicateUniqueIdInMessage"
DUPLICATE_UNIQUE_ID_IN_REGISTRY = "XDSDuplicateUniqueIdInRegistry"
REGISTRY_DEPRECATED_DOCUMENT = "XDSRegistryDeprecatedDocumentError"
MISSING_DOCUMENT = "XDSMissingDocument"
MISSING_DOCUMENT_METADATA = "XDSMissingDocumentMetadata"
REGISTRY_NOT_AVAILABLE = "XDSRegistryNotAvailable"
REGISTRY_BUSY = "XDSRegistryBusy"
REGISTRY_OUT_OF_RESOURCES = "XDSRegistryOutOfResources"
TOO_MANY_RESULTS = "XDSTooManyResults"
EXTRA_METADATA_NOT_SAVED = "XDSExtraMetadataNotSaved"
UNKNOWN_STORED_QUERY = "XDSUnknownStoredQuery"
STORED_QUERY_MISSING_PARAM = "XDSStoredQueryMissingParam"
STORED_QUERY_PARAM_NUMBER = "XDSStoredQueryParamNumber"
RESULT_NOT_SINGLE_PATIENT = "XDSResultNotSinglePatient"
UNKNOWN_REPOSITORY_ID = "XDSUnknownRepositoryId"
DOCUMENT_UNIQUE_ID_ERROR = "XDSDocumentUniqueIdError"
PARTIAL_SUCCESS = "XDSPartialSuccess"
UNRESOLVED_REFERENCE = "UnresolvedReferenceException"
UNMODIFIABLE_METADATA = "UnmodifiableMetadataError"
MISSING_HOME_COMMUNITY_ID = "XDSMissingHomeCommunityId"
METADATA_UPDATE_ERROR = "XDSMetadataUpdateError"
METADATA_VERSION_ERROR = "XDSMetadataVersionError"
# ITI-92 Restricted Update Document Set (the RMU supplement) names these too.
METADATA_UPDATE_OPERATION_ERROR = "XDSMetadataUpdateOperationError"
METADATA_IDENTIFIER_ERROR = "XDSMetadataIdentifierError"
PATIENT_ID_RECONCILIATION_ERROR = "XDSPatientIDReconciliationError"
REFERENCES_EXIST = "ReferencesExistException"
UNREFERENCED_OBJECT = "XDSUnreferencedObjectException"


@dataclass
class XdsError:
    """One RegistryError entry."""

    code: str
    message: str
    location: str = ""
    severity: str = C.SEVERITY_ERROR

    @property
    def is_error(self) -> bool:
        return self.severity == C.SEVERITY_ERROR


class XdsException(Exception):
    """Raised to fail a transaction with one or more RegistryErrors."""

    def __init__(self, code: str, message: str, location: str = "", errors: list[XdsError] | None = None):
        super().__init__(f"{code}: {message}" + (f" [{location}]" if location else ""))
        self.errors = errors if errors is not None else [XdsError(code, message, location)]

    @classmethod
    def of(cls, errors: list[XdsError]) -> "XdsException":
        first = errors[0]
        return cls(first.code, first.message, first.location, errors=list(errors))


@dataclass
class ErrorList:
    """Collects errors so that a validator can report every problem of a request at once."""

    default_code: str = REGISTRY_METADATA_ERROR
    items: list[XdsError] = field(default_factory=list)

    def add(self, message: str, location: str = "", code: str | None = None) -> None:
        self.items.append(XdsError(code or self.default_code, message, location))

    def warn(self, message: str, location: str = "", code: str | None = None) -> None:
        self.items.append(XdsError(code or self.default_code, message, location, C.SEVERITY_WARNING))

    @property
    def has_errors(self) -> bool:
        return any(e.is_error for e in self.items)

    @property
    def warnings(self) -> list[XdsError]:
        return [e for e in self.items if not e.is_error]

    def raise_if_errors(self) -> None:
        if self.has_errors:
            raise XdsException.of([e for e in self.items if e.is_error] + self.warnings)


class SoapFault(Exception):
    """An envelope-level problem: answered with a SOAP Fault, never a RegistryResponse."""

    def __init__(self, reason: str, code: str = "Sender", subcode: str | None = None, http_status: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.code = code  # Sender | Receiver | MustUnderstand | VersionMismatch
        self.subcode = subcode
        # SOAP 1.2 HTTP binding: a Sender fault is the client's problem (400); the others are 500.
        self.http_status = http_status or (400 if code == "Sender" else 500)
