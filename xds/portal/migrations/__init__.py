"""The portal tables' Alembic tree (run by xds.migrate); a package so that setuptools ships it."""
