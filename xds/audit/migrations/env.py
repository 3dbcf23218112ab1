"""Alembic's entry point for the audit tree. xds.migrate runs it with an open connection."""
from alembic import context

from xds.migrate import run_env
from xds.audit.store import metadata

run_env(context, metadata)
