"""The repository's tables. Prefixed repo_ so that they can share a database with the registry."""
from __future__ import annotations

from sqlalchemy import BigInteger, Column, DateTime, MetaData, String, Table

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
