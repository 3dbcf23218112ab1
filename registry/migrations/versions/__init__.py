"""Revisions of the registry tree. Alembic loads these files by path, never as modules."""
