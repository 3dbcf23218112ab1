"""The repository's tables. Prefixed repo_ so that they can share a database with the registry."""
from __future__ import annotations

from sqlalchemy import BigInteger, Column, DateTime, Index, MetaData, String, Table

metadata = MetaData()

document = Table(
    "repo_document", metadata,
    # OIDs are at most 64 characters, but submitters send other identifiers too.
    Column("unique_id", String(300), primary_key=True),
    Column("hash", String(40), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("mime_type", String(256), nullable=False),
    Column("location", String(512), nullable=False),
    Column("repository_unique_id", String(64), nullable=False),
    Column("created", DateTime(timezone=True), nullable=False),
)

# Documents staged for an ITI-41 whose ITI-42 outcome is not settled yet (docs/decisions.md, "ITI-41 as
# a recoverable protocol"): recorded before the registry is called, removed when the bytes are committed
# or discarded, so that a crash at any step leaves a row saying what is left to finish.
pending = Table(
    "repo_pending", metadata,
    Column("id", String(36), primary_key=True),
    Column("unique_id", String(300), nullable=False),
    Column("hash", String(40), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("mime_type", String(256), nullable=False),
    Column("staged", String(512), nullable=False),  # the blob store's staging key
    Column("repository_unique_id", String(64), nullable=False),
    # The CommitDeadline sent with the ITI-42: once the registry's clock passes it, its answer is final.
    Column("deadline", DateTime(timezone=True), nullable=False),
    Column("created", DateTime(timezone=True), nullable=False),
    Index("ix_repo_pending_deadline", "deadline"),
)
