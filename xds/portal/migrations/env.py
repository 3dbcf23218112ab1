"""Alembic's entry point for the portal tree. xds.migrate runs it with an open connection."""
from alembic import context

from xds.migrate import run_env
from xds.portal.sessions import metadata

run_env(context, metadata)
