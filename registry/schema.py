"""The registry's tables.

Queryable attributes live in indexed columns and side tables; each object's registered
ebRIM XML is kept whole so that queries answer with exactly what was submitted.
Coded values are stored as `code^^codingScheme`, the form stored-query parameters use.
"""
from __future__ import annotations

from sqlalchemy import (
    BigInteger, Boolean, Column, ForeignKey, Index, Integer, MetaData, Sequence, String, Table, Text, false,
)

metadata = MetaData()

# Registration order. PostgreSQL draws it from a sequence inside the INSERT (no extra round trip);
# SQLite, which has no sequences, gets it from the reg_counter row under its write lock.
REG_SEQ = Sequence("reg_seq", metadata=metadata)

ID = String(64)      # urn:uuid: ids
CODE = String(514)   # code^^codingScheme: two ebRIM LongNames (256) and the separator
DTM = String(14)

KIND_DOCUMENT_ENTRY = "DE"
KIND_SUBMISSION_SET = "SS"
KIND_FOLDER = "FD"
# How the kinds are named in messages.
KIND_NAMES = {KIND_DOCUMENT_ENTRY: "DocumentEntry", KIND_SUBMISSION_SET: "SubmissionSet", KIND_FOLDER: "Folder"}

# Every DocumentEntry, SubmissionSet and Folder version.
registry_object = Table(
    "reg_object", metadata,
    Column("id", ID, primary_key=True),
    Column("lid", ID, nullable=False),
    Column("version", Integer, nullable=False, default=1),
    Column("kind", String(2), nullable=False),
    Column("status", String(64), nullable=False),
    Column("patient_id", String(256)),
    Column("unique_id", String(300)),
    Column("seq", BigInteger, REG_SEQ, nullable=False),  # registration order, for stable answers
    Column("xml", Text, nullable=False),
    # Who submitted the first version, and when (epoch seconds), kept by every later version: the
    # access policy's "submitter" (who may change it) and "author" (MASQUE_PS), and when INVISIBLE_PATIENT
    # lapses (one month later, precomputed so that queries compare a column). NULL: registered before
    # these were recorded; only an administrator changes such objects.
    Column("origin_org", String(256)),
    Column("origin_person", String(256)),
    Column("origin_time", BigInteger),
    Column("reveal_at", BigInteger),
    # The xml is answer-ready (registry/splice.py prepare): it holds this row's lid and versionName, and a
    # query answer only sets its status (and home) in the root's start tag, without reading the rest.
    Column("ready", Boolean, nullable=False, server_default=false()),
    Index("ix_reg_object_patient", "patient_id", "kind", "status"),
    Index("ix_reg_object_unique", "unique_id"),
    Index("ix_reg_object_lid", "lid", "version"),
)

# The side tables' patient_id is the partition key of the partitioned layout (registry/partitions.py,
# setting registry_partitions): there it is the owning object's patient (an association's: its source's),
# so that a patient's rows and their joins stay in one partition. In the plain layout it stays NULL, which
# costs nothing (a row's null bitmap fits in its header's padding).
doc_entry = Table(
    "doc_entry", metadata,
    Column("id", ID, ForeignKey("reg_object.id", ondelete="CASCADE"), primary_key=True),
    Column("entry_type", String(64), nullable=False),
    Column("class_code", CODE),
    Column("type_code", CODE),
    Column("format_code", CODE),
    Column("practice_setting_code", CODE),
    Column("hcft_code", CODE),
    Column("creation_time", DTM),
    Column("service_start_time", DTM),
    Column("service_stop_time", DTM),
    Column("hash", String(64)),
    Column("size", BigInteger),
    Column("repository_unique_id", String(64)),
    Column("mime_type", String(256)),
    Column("availability", String(64)),
    Column("patient_id", String(256)),
)

submission_set = Table(
    "submission_set", metadata,
    Column("id", ID, ForeignKey("reg_object.id", ondelete="CASCADE"), primary_key=True),
    Column("submission_time", DTM),
    Column("source_id", String(64)),
    Column("content_type_code", CODE),
    Column("patient_id", String(256)),
)

folder = Table(
    "folder", metadata,
    Column("id", ID, ForeignKey("reg_object.id", ondelete="CASCADE"), primary_key=True),
    Column("last_update_time", DTM, nullable=False),
    Column("patient_id", String(256)),
)

# Multi-valued codes: DocumentEntry eventCodeList and confidentialityCode, Folder codeList.
# `scheme` is the classificationScheme UUID.
object_code = Table(
    "object_code", metadata,
    Column("object_id", ID, ForeignKey("reg_object.id", ondelete="CASCADE"), nullable=False),
    Column("scheme", String(64), nullable=False),
    Column("code", CODE, nullable=False),
    Column("patient_id", String(256)),
    Index("ix_object_code_object", "object_id"),
    Index("ix_object_code_code", "scheme", "code"),
)

# authorPerson of DocumentEntries and SubmissionSets.
object_author = Table(
    "object_author", metadata,
    Column("object_id", ID, ForeignKey("reg_object.id", ondelete="CASCADE"), nullable=False),
    Column("person", String(512), nullable=False),
    Column("patient_id", String(256)),
    Index("ix_object_author_object", "object_id"),
)

reference_id = Table(
    "reference_id", metadata,
    Column("object_id", ID, ForeignKey("reg_object.id", ondelete="CASCADE"), nullable=False),
    Column("value", String(512), nullable=False),
    Column("patient_id", String(256)),
    Index("ix_reference_id_value", "value"),
    Index("ix_reference_id_object", "object_id"),
)

association = Table(
    "association", metadata,
    Column("id", ID, primary_key=True),
    Column("type", String(128), nullable=False),
    Column("source", ID, nullable=False),
    Column("target", ID, nullable=False),
    Column("status", String(64), nullable=False),
    Column("ss_status", String(16)),
    Column("seq", BigInteger, REG_SEQ, nullable=False),
    # NULL when the columns say all of it (registry/bare_association.py).
    Column("xml", Text),
    Column("patient_id", String(256)),
    Index("ix_association_source", "source", "type"),
    Index("ix_association_target", "target", "type"),
)

# Patients the registry accepts (ITI-8 feed or `xds patient add`); merged ids point at the survivor.
patient = Table(
    "patient", metadata,
    Column("patient_id", String(256), primary_key=True),
    Column("active", Boolean, nullable=False, default=True),
    Column("merged_into", String(256)),
)

# The repository hosts this registry knows: where ITI-43 for a repositoryUniqueId is forwarded,
# and which client certificate subject may register documents for it.
repository_directory = Table(
    "repository_directory", metadata,
    Column("repository_unique_id", String(64), primary_key=True),
    Column("retrieve_url", String(1024), nullable=False),
    Column("cert_subject", String(1024)),
    Index("ix_repository_directory_subject", "cert_subject"),
)

# The patient's access state (the access policy, xds/security/policy.py): one row per patient that has
# any, and the professionals they authorised or blocked and their legal representatives.
access_state = Table(
    "acc_patient", metadata,
    Column("patient_id", String(256), primary_key=True),
    Column("closed", Boolean, nullable=False, default=False),
    Column("minor", Boolean, nullable=False, default=False),
    Column("treating_doctor", String(256)),
    Column("object_break_glass", Boolean, nullable=False, default=False),
    Column("object_centre_15", Boolean, nullable=False, default=False),
    Column("updated", BigInteger, nullable=False),
)

ACCESS_AUTHORISED, ACCESS_BLOCKED, ACCESS_REPRESENTATIVE = "authorised", "blocked", "representative"
access_person = Table(
    "acc_person", metadata,
    Column("patient_id", String(256), nullable=False),
    Column("person", String(256), nullable=False),
    Column("relation", String(16), nullable=False),   # authorised | blocked | representative
    Column("since", BigInteger),
    Column("until", BigInteger),
    Column("updated", BigInteger, nullable=False),
    Index("ix_acc_person_key", "patient_id", "relation", "person", unique=True),
)

# The partitioned layout only (registry/partitions.py): every object's and association's id with its
# patient. PostgreSQL keeps a key unique on a partitioned table only together with the partition key, so
# the entryUUIDs' uniqueness across the registry rests on this unpartitioned table, written in the same
# transaction as the rows.
registry_key = Table(
    "registry_key", MetaData(),
    Column("id", ID, primary_key=True),
    Column("patient_id", String(256), nullable=False),
    # An object's uniqueId (NULL for an association): with registry_uid, where its other versions are.
    Column("unique_id", String(300)),
)

# The partitioned layout only: the patients each uniqueId is filed under (one, or two after an ITI-64 change
# filed its new versions under another patient), so that a lookup by uniqueId, which every submission makes,
# reads those patients' partitions and not every one. A row may outlive its objects (ITI-62 leaves it): it
# then only adds a partition to look in.
registry_uid = Table(
    "registry_uid", registry_key.metadata,
    Column("unique_id", String(300), primary_key=True),
    Column("patient_id", String(256), primary_key=True),
)

# A single-row counter for registration order; portable across SQLite and PostgreSQL.
counter = Table(
    "reg_counter", metadata,
    Column("name", String(32), primary_key=True),
    Column("value", BigInteger, nullable=False),
)
