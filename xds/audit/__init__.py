"""IHE ATNA audit records (DICOM PS3.15 Annex A.5 AuditMessage) for the transactions this server answers.

This package builds records only; sending them (ITI-20, an outbox) is a separate step.
"""
from xds.audit.records import (
    AuditEvent,
    DocumentRef,
    HumanRequestor,
    Node,
    record_key,
    to_xml,
)

__all__ = ["AuditEvent", "DocumentRef", "HumanRequestor", "Node", "record_key", "to_xml"]
