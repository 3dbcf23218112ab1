import itertools
import os

import pytest

from tests import helpers, pgserver

_pg = None
_dbs = itertools.count()

# The `xds serve` processes the tests start run one process each unless a test asks for workers
# (tests/test_workers.py, and the README quick start, which runs the default of one per core): the other
# tests are about what one server does, and the crash tests kill exactly the process they name.
os.environ.setdefault("XDS_WORKERS", "1")


def _pg_admin_url():
    global _pg
    if _pg is None:
        _pg = pgserver.PgServer()
        _pg.start()
    return _pg.url


def pytest_sessionfinish(session, exitstatus):
    if _pg is not None:
        _pg.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A fresh, empty database on each backend: SQLite in a temp folder, and a real PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/registry.db"
    else:
        if not pgserver.available():
            if os.environ.get("CI"):
                pytest.fail("PostgreSQL binaries are missing; .ci/run installs them")
            pytest.skip("PostgreSQL is not installed here (apt-get install postgresql)")
        name = f"xds_test_{os.getpid()}_{next(_dbs)}"
        url = pgserver.create_database(_pg_admin_url(), name)
        if os.environ.get("XDS_TEST_PARTITIONS"):
            # The registry's tables made partitioned first (helpers.schema_store): a developer's wider check
            # of that layout; the migration tests, which expect an empty database, do not apply then.
            helpers.schema_store(url).engine.dispose()
        yield url
    helpers.dispose_stores()
    if request.param == "postgresql":
        pgserver.drop_database(_pg_admin_url(), name)


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path}/registry.db"


@pytest.fixture
def pg_url():
    """A fresh database on the real PostgreSQL server (for tests that are about production deployments)."""
    if not pgserver.available():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL binaries are missing; .ci/run installs them")
        pytest.skip("PostgreSQL is not installed here (apt-get install postgresql)")
    name = f"xds_test_{os.getpid()}_{next(_dbs)}"
    yield pgserver.create_database(_pg_admin_url(), name)
    helpers.dispose_stores()
    pgserver.drop_database(_pg_admin_url(), name)
