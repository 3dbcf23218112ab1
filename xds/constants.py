"""Identifiers fixed by the IHE ITI Technical Framework and ebXML RegRep 3.0."""

# --- XML namespaces -------------------------------------------------------
NS_RIM = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"
NS_RS = "urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0"
NS_LCM = "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0"
NS_QUERY = "urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0"
NS_XDSB = "urn:ihe:iti:xds-b:2007"
NS_RMD = "urn:ihe:iti:rmd:2017"
NS_SOAP12 = "http://www.w3.org/2003/05/soap-envelope"
NS_SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
NS_WSA = "http://www.w3.org/2005/08/addressing"
NS_XOP = "http://www.w3.org/2004/08/xop/include"
NS_XSI = "http://www.w3.org/2001/XMLSchema-instance"
NS_HL7V3 = "urn:hl7-org:v3"  # ITI-44 Patient Identity Feed HL7 v3

NSMAP = {
    "rim": NS_RIM,
    "rs": NS_RS,
    "lcm": NS_LCM,
    "query": NS_QUERY,
    "xdsb": NS_XDSB,
}


def q(ns: str, local: str) -> str:
    """Clark notation for lxml tags."""
    return "{%s}%s" % (ns, local)


def last_segment(value: str | None, default: str = "?") -> str:
    """The part of a URN after its last colon (e.g. "HasMember", "Approved"); default when there is no value."""
    return (value or default).rsplit(":", 1)[-1]


# --- SOAP actions ------------------------------------------------------------
ACTION_REGISTER = "urn:ihe:iti:2007:RegisterDocumentSet-b"
ACTION_PROVIDE = "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b"
ACTION_QUERY = "urn:ihe:iti:2007:RegistryStoredQuery"
ACTION_RETRIEVE = "urn:ihe:iti:2007:RetrieveDocumentSet"
ACTION_UPDATE = "urn:ihe:iti:2010:UpdateDocumentSet"
ACTION_RESTRICTED_UPDATE = "urn:ihe:iti:2018:RestrictedUpdateDocumentSet"  # ITI-92 (RMU)
ACTION_DELETE = "urn:ihe:iti:2010:DeleteDocumentSet"
ACTION_REMOVE_DOCUMENTS = "urn:ihe:iti:2017:RemoveDocuments"
ACTION_MPQ = "urn:ihe:iti:2009:MultiPatientStoredQuery"
ACTION_REGISTER_ON_DEMAND = "urn:ihe:iti:2010:RegisterOnDemandDocumentEntry"  # ITI-61 (On-Demand Documents)
# ITI-44 Patient Identity Feed HL7 v3 (ITI TF-2b 3.44): the interactions, answered MCCI_IN000002UV01.
ACTION_PIX_ADD = "urn:hl7-org:v3:PRPA_IN201301UV02"
ACTION_PIX_REVISE = "urn:hl7-org:v3:PRPA_IN201302UV02"
ACTION_PIX_MERGE = "urn:hl7-org:v3:PRPA_IN201304UV02"
ACTION_PIX_ACK = "urn:hl7-org:v3:MCCI_IN000002UV01"

# This server's own messages between its repositories and its registry (docs/decisions.md,
# "ITI-41 as a recoverable protocol"): not IHE transactions, and no other XDS actor sends them.
NS_SERVER = "urn:xds-server:2026"
ACTION_REGISTERED_DOCUMENTS = "urn:xds-server:2026:RegisteredDocuments"
COMMIT_DEADLINE = "{urn:xds-server:2026}CommitDeadline"  # ITI-42 header: commit only before this instant

# The transaction each action carries, as logs and audit name it.
TRANSACTIONS = {
    ACTION_REGISTER: "ITI-42", ACTION_PROVIDE: "ITI-41", ACTION_QUERY: "ITI-18", ACTION_RETRIEVE: "ITI-43",
    ACTION_UPDATE: "ITI-57", ACTION_DELETE: "ITI-62", ACTION_REMOVE_DOCUMENTS: "ITI-86", ACTION_MPQ: "ITI-51",
    ACTION_RESTRICTED_UPDATE: "ITI-92", ACTION_REGISTER_ON_DEMAND: "ITI-61",
    ACTION_PIX_ADD: "ITI-44", ACTION_PIX_REVISE: "ITI-44", ACTION_PIX_MERGE: "ITI-44",
    ACTION_REGISTERED_DOCUMENTS: "registered-documents",
}


def response_action(action: str) -> str:
    return action + "Response"


# --- object types --------------------------------------------------------------
OBJECT_TYPE_STABLE = "urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1"
OBJECT_TYPE_ON_DEMAND = "urn:uuid:34268e47-fdf5-41a6-ba33-82133c465248"
DOCUMENT_ENTRY_TYPES = (OBJECT_TYPE_STABLE, OBJECT_TYPE_ON_DEMAND)
OBJECT_TYPE_REGISTRY_PACKAGE = "urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:RegistryPackage"
OBJECT_TYPE_ASSOCIATION = "urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:Association"
OBJECT_TYPE_CLASSIFICATION = "urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:Classification"
OBJECT_TYPE_EXTERNAL_IDENTIFIER = "urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:ExternalIdentifier"

# --- DocumentEntry classification and identification schemes ---------------------
DE_CLASS_CODE = "urn:uuid:41a5887f-8865-4c09-adf7-e362475b143a"
DE_CONFIDENTIALITY_CODE = "urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f"
DE_EVENT_CODE = "urn:uuid:2c6b8cb7-8b2a-4051-b291-b1ae6a575ef4"
DE_FORMAT_CODE = "urn:uuid:a09d5840-386c-46f2-b5ad-9c3699a4309d"
DE_HEALTHCARE_FACILITY_TYPE_CODE = "urn:uuid:f33fb8ac-18af-42cc-ae0e-ed0b0bdb91e1"
DE_PRACTICE_SETTING_CODE = "urn:uuid:cccf5598-8b07-4b77-a05e-ae952c785ead"
DE_TYPE_CODE = "urn:uuid:f0306f51-975f-434e-a61c-c59651d33983"
DE_AUTHOR = "urn:uuid:93606bcf-9494-43ec-9b4e-a7748d1a838d"
DE_LIMITED_METADATA = "urn:uuid:ab9b591b-83ab-4d03-8f5d-f93b1fb92e85"
DE_PATIENT_ID = "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427"
DE_UNIQUE_ID = "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"

# --- SubmissionSet -----------------------------------------------------------------
SS_CLASSIFICATION_NODE = "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"
SS_AUTHOR = "urn:uuid:a7058bb9-b4e4-4307-ba5b-e3f0ab85e12d"
SS_CONTENT_TYPE_CODE = "urn:uuid:aa543740-bdda-424e-8c96-df4873be8500"
SS_LIMITED_METADATA = "urn:uuid:5003a9db-8d8d-49e6-bf0c-990e34ac7707"
SS_PATIENT_ID = "urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446"
SS_SOURCE_ID = "urn:uuid:554ac39e-e3fe-47fe-b233-965d2a147832"
SS_UNIQUE_ID = "urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8"

# --- Folder ---------------------------------------------------------------------------
FOLDER_CLASSIFICATION_NODE = "urn:uuid:d9d542f3-6cc4-48b6-8870-ea235fbc94c2"
FOLDER_CODE_LIST = "urn:uuid:1ba97051-7806-41a8-a48b-8fce7af683c5"
FOLDER_LIMITED_METADATA = "urn:uuid:2c144a76-29a9-4b7c-af54-b25409fe7d03"
FOLDER_PATIENT_ID = "urn:uuid:f64ffdf0-4b97-4e06-b79f-a52b38ec2f8a"
FOLDER_UNIQUE_ID = "urn:uuid:75df8f67-9973-4fbe-a900-df66cefecc5a"

ASSOCIATION_DOCUMENTATION = "urn:uuid:abd807a3-4432-4053-87b4-fd82c643d1f3"

# --- status values -----------------------------------------------------------------
STATUS_PREFIX = "urn:oasis:names:tc:ebxml-regrep:StatusType:"
STATUS_APPROVED = STATUS_PREFIX + "Approved"
STATUS_DEPRECATED = STATUS_PREFIX + "Deprecated"
STATUS_SUBMITTED = STATUS_PREFIX + "Submitted"
STATUSES = (STATUS_APPROVED, STATUS_DEPRECATED, STATUS_SUBMITTED)
# The French DMP's own statuses (CI-SIS JDV_J52, TRE_R270): set by ITI-57 only, under profile dmp.
STATUS_ARCHIVED = "urn:asip:ci-sis:2010:StatusType:Archived"
STATUS_DELETED = "urn:asip:ci-sis:2010:StatusType:Deleted"

RESPONSE_SUCCESS = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"
RESPONSE_FAILURE = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Failure"
RESPONSE_PARTIAL_SUCCESS = "urn:ihe:iti:2007:ResponseStatusType:PartialSuccess"

SEVERITY_ERROR = "urn:oasis:names:tc:ebxml-regrep:ErrorSeverityType:Error"
SEVERITY_WARNING = "urn:oasis:names:tc:ebxml-regrep:ErrorSeverityType:Warning"

AVAILABILITY_ONLINE = "urn:ihe:iti:2010:DocumentAvailability:Online"
AVAILABILITY_OFFLINE = "urn:ihe:iti:2010:DocumentAvailability:Offline"

# --- association types -------------------------------------------------------------
ASSOC_HAS_MEMBER = "urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember"
ASSOC_RPLC = "urn:ihe:iti:2007:AssociationType:RPLC"
ASSOC_XFRM = "urn:ihe:iti:2007:AssociationType:XFRM"
ASSOC_APND = "urn:ihe:iti:2007:AssociationType:APND"
ASSOC_XFRM_RPLC = "urn:ihe:iti:2007:AssociationType:XFRM_RPLC"
ASSOC_SIGNS = "urn:ihe:iti:2007:AssociationType:signs"
ASSOC_IS_SNAPSHOT_OF = "urn:ihe:iti:2010:AssociationType:IsSnapshotOf"
ASSOC_UPDATE_AVAILABILITY_STATUS = "urn:ihe:iti:2010:AssociationType:UpdateAvailabilityStatus"
ASSOC_SUBMIT_ASSOCIATION = "urn:ihe:iti:2010:AssociationType:SubmitAssociation"

RELATIONSHIP_TYPES = (ASSOC_RPLC, ASSOC_XFRM, ASSOC_APND, ASSOC_XFRM_RPLC, ASSOC_SIGNS, ASSOC_IS_SNAPSHOT_OF)
REPLACING_TYPES = (ASSOC_RPLC, ASSOC_XFRM_RPLC)
# ITI-61 (ITI TF-2b 3.61.4.1.2): an On-Demand entry may replace another; it has no content yet to
# transform, append to or sign, and a snapshot (IsSnapshotOf) is a stable entry that ITI-42 registers.
ON_DEMAND_ASSOCIATION_TYPES = (ASSOC_HAS_MEMBER, ASSOC_RPLC)
REGISTER_ASSOCIATION_TYPES = (ASSOC_HAS_MEMBER,) + RELATIONSHIP_TYPES

# --- stored queries ------------------------------------------------------------------
SQ_FIND_DOCUMENTS = "urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d"
SQ_FIND_DOCUMENTS_BY_REFERENCE_ID = "urn:uuid:12941a89-e02e-4be5-967c-ce4bfc8fe492"
SQ_FIND_SUBMISSION_SETS = "urn:uuid:f26abbcb-ac74-4422-8a30-edb644bbc1a9"
SQ_FIND_FOLDERS = "urn:uuid:958f3006-baad-4929-a4de-ff1114824431"
SQ_GET_ALL = "urn:uuid:10b545ea-725c-446d-9b95-8aeb444eddf3"
SQ_GET_DOCUMENTS = "urn:uuid:5c4f972b-d56b-40ac-a5fc-c8ca9b40b9d4"
SQ_GET_FOLDERS = "urn:uuid:5737b14c-8a1a-4539-b659-e03a34a5e1e4"
SQ_GET_ASSOCIATIONS = "urn:uuid:a7ae438b-4bc2-4642-93e9-be891f7bb155"
SQ_GET_DOCUMENTS_AND_ASSOCIATIONS = "urn:uuid:bab9529a-4a10-40b3-a01f-f68a615d247a"
SQ_GET_SUBMISSION_SETS = "urn:uuid:51224314-5390-4169-9b91-b1980040715a"
SQ_GET_SUBMISSION_SET_AND_CONTENTS = "urn:uuid:e8e3cb2c-e39c-46b9-99e4-c12f57260b83"
SQ_GET_FOLDER_AND_CONTENTS = "urn:uuid:b909a503-523d-4517-8acf-8e5834dfc4c7"
SQ_GET_FOLDERS_FOR_DOCUMENT = "urn:uuid:10cae35a-c7f9-4cf5-b61e-fc3278ffb578"
SQ_GET_RELATED_DOCUMENTS = "urn:uuid:d90e5407-b356-4d91-a89f-873917b4b0e6"
# ITI-51 Multi-Patient Stored Query (ITI TF-2 3.51.4.1.2), sent with ACTION_MPQ only.
SQ_FIND_DOCUMENTS_FOR_MULTIPLE_PATIENTS = "urn:uuid:3d1bdb10-39a2-11de-89c2-2f44d94eaa9f"
SQ_FIND_FOLDERS_FOR_MULTIPLE_PATIENTS = "urn:uuid:50d3f5ac-39a2-11de-a1ca-b366239e58df"

# --- DocumentEntry slots known to the profile (others must be urn: extra metadata) ----
DE_SLOTS = (
    "creationTime", "languageCode", "sourcePatientId", "sourcePatientInfo", "legalAuthenticator",
    "serviceStartTime", "serviceStopTime", "hash", "size", "URI", "repositoryUniqueId",
    "documentAvailability", "urn:ihe:iti:xds:2013:referenceIdList",
)
SS_SLOTS = ("submissionTime", "intendedRecipient")
FOLDER_SLOTS = ("lastUpdateTime",)
REFERENCE_ID_LIST_SLOT = "urn:ihe:iti:xds:2013:referenceIdList"
