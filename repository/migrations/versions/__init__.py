"""Revisions of the repository tree. Alembic loads these files by path, never as modules."""
