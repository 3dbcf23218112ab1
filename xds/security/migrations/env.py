"""Alembic's entry point for the security tree. xds.migrate runs it with an open connection."""
from alembic import context

from xds.migrate import run_env
from xds.security.replay import metadata

run_env(context, metadata)
