"""Alembic's entry point for the registry tree. xds.migrate runs it with an open connection."""
from alembic import context

from registry.schema import metadata
from xds.migrate import own_tables

connection = context.config.attributes.get("connection")
if connection is None:
    # There is no alembic.ini with a URL, and offline SQL scripts are not supported.
    raise RuntimeError("run registry migrations through xds.migrate, which passes a connection")

context.configure(connection=connection, target_metadata=metadata,
                  version_table=context.config.attributes["tree"].version_table,
                  include_name=own_tables(metadata))
with context.begin_transaction():
    context.run_migrations()
