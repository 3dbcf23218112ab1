"""Alembic's entry point for the repository tree. xds.migrate runs it with an open connection."""
from alembic import context

from repository.schema import metadata
from xds.migrate import run_env

run_env(context, metadata)
