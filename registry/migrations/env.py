"""Alembic's entry point for the registry tree. xds.migrate runs it with an open connection."""
from alembic import context

from registry.schema import metadata
from xds.migrate import run_env

run_env(context, metadata)
