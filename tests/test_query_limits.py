"""LeafClass stored queries stop reading at the result limit: with many entries for one patient,
the database hands over at most max_results + 1 rows, and the refusal is the one it always was."""
from __future__ import annotations

import os

import pytest
from sqlalchemy import event

from registry.config import RegistryConfig
from registry.query import stored_query
from registry.register import register
from tests import helpers
from xds import builder
from xds import constants as C
from xds import errors as E
from tests.test_query import Answer, lst, request, sq

PID = "PLIM1^^^&1.2.250.1.213.1.4.10&ISO"
SUBMISSIONS, DOCS_EACH = 60, 5  # 300 DocumentEntries, 60 SubmissionSets, 60 Folders
LIMIT = 7


class _CountingCursor:
    """Stands in for the DBAPI cursor of one statement and counts the rows taken from it."""

    def __init__(self, cursor, record: list):
        self._cursor = cursor
        self._record = record

    def __getattr__(self, name):
        return getattr(self._cursor, name)

    def _took(self, rows):
        self._record[1] += len(rows)
        return rows

    def fetchone(self):
        row = self._cursor.fetchone()
        if row is not None:
            self._record[1] += 1
        return row

    def fetchmany(self, *args):
        return self._took(self._cursor.fetchmany(*args))

    def fetchall(self):
        return self._took(self._cursor.fetchall())

    def __iter__(self):
        for row in self._cursor:
            self._record[1] += 1
            yield row


class RowMeter:
    """Every statement run on the engine with the rows it produced: the rows fetched through the
    cursor, and, where the driver knows it at execute time (psycopg2 holds the whole result
    client side), the rows the server sent."""

    def __init__(self, engine):
        self.engine = engine
        self.statements: list[list] = []  # [sql, rows fetched, rows sent or -1]
        event.listen(engine, "after_cursor_execute", self._after)

    def _after(self, conn, cursor, statement, parameters, context, executemany):
        if context is None or executemany:
            return
        record = [statement, 0, cursor.rowcount if self.engine.dialect.name == "postgresql" else -1]
        self.statements.append(record)
        # Swapped in before the result object is built on it, so every fetch goes through the counter.
        context.cursor = _CountingCursor(cursor, record)

    def close(self):
        event.remove(self.engine, "after_cursor_execute", self._after)

    def rows(self, only_xml: bool = False) -> int:
        out = 0
        for sql, fetched, sent in self.statements:
            if only_xml and "reg_object.xml" not in sql:
                continue
            out += max(fetched, sent)
        return out


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def many(request, tmp_path_factory):
    from tests import conftest, pgserver

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('limits')}/registry.db"
    else:
        if not pgserver.available():
            pytest.skip("PostgreSQL is not installed here")
        url = pgserver.create_database(conftest._pg_admin_url(), f"xds_test_limits_{os.getpid()}")
    store = helpers.schema_store(url)
    for i in range(SUBMISSIONS):
        register(store, builder.simple_submission(PID, DOCS_EACH, folder_too=True),
                 RegistryConfig(check_patients=False))
    yield store
    store.engine.dispose()


QUERIES = {
    "FindDocuments": (C.SQ_FIND_DOCUMENTS, [("$XDSDocumentEntryPatientId", sq(PID)),
                                            ("$XDSDocumentEntryStatus", lst(C.STATUS_APPROVED))]),
    "FindSubmissionSets": (C.SQ_FIND_SUBMISSION_SETS, [("$XDSSubmissionSetPatientId", sq(PID)),
                                                       ("$XDSSubmissionSetStatus", lst(C.STATUS_APPROVED))]),
    "FindFolders": (C.SQ_FIND_FOLDERS, [("$XDSFolderPatientId", sq(PID)),
                                        ("$XDSFolderStatus", lst(C.STATUS_APPROVED))]),
    "GetAll": (C.SQ_GET_ALL, [("$patientId", sq(PID)), ("$XDSDocumentEntryStatus", lst(C.STATUS_APPROVED)),
                              ("$XDSSubmissionSetStatus", lst(C.STATUS_APPROVED)),
                              ("$XDSFolderStatus", lst(C.STATUS_APPROVED))]),
}


def run(store, name, limit, return_type="LeafClass"):
    query_id, params = QUERIES[name]
    meter = RowMeter(store.engine)
    try:
        answer = Answer(stored_query(store, request(query_id, params, return_type),
                                     RegistryConfig(max_query_results=limit)))
    finally:
        meter.close()
    return answer, meter


@pytest.mark.parametrize("name", sorted(QUERIES))
def test_leaf_class_over_the_limit_reads_at_most_limit_plus_one_rows(many, name):
    answer, meter = run(many, name, LIMIT)
    assert answer.status == C.RESPONSE_FAILURE and answer.items == []
    assert answer.errors == [(E.TOO_MANY_RESULTS, "AdhocQuery")]
    texts = [e.get("codeContext") for e in answer.element.iter(C.q(C.NS_RS, "RegistryError"))]
    assert texts == [f"the query selects more than {LIMIT} objects; narrow it or ask for ObjectRef"]
    assert meter.rows(only_xml=True) <= LIMIT + 1, meter.statements
    assert meter.rows() <= LIMIT + 1, meter.statements


@pytest.mark.parametrize("name,total", [("FindDocuments", SUBMISSIONS * DOCS_EACH),
                                        ("FindSubmissionSets", SUBMISSIONS), ("FindFolders", SUBMISSIONS)])
def test_leaf_class_at_the_limit_is_answered_whole(many, name, total):
    answer, _ = run(many, name, total)
    assert answer.status == C.RESPONSE_SUCCESS and len(answer.items) == total
    answer, _ = run(many, name, total - 1)
    assert answer.errors == [(E.TOO_MANY_RESULTS, "AdhocQuery")]


def test_get_all_at_the_limit_is_answered_whole(many):
    everything, _ = run(many, "GetAll", 10 ** 6)
    total = len(everything.items)
    assert everything.status == C.RESPONSE_SUCCESS and total > SUBMISSIONS * (2 + DOCS_EACH)
    answer, _ = run(many, "GetAll", total)
    assert answer.status == C.RESPONSE_SUCCESS and answer.ids == everything.ids
    # The objects fit and the associations tip it over: they too are read only as far as needed
    # (each association touches two objects of the answer, so an unbounded read meets most twice).
    # The DocumentEntries' stored XML comes with their rows (one round trip less per answer), so what
    # is read of it in vain stays within the limit too.
    answer, meter = run(many, "GetAll", total - 1)
    assert answer.errors == [(E.TOO_MANY_RESULTS, "AdhocQuery")]
    assert 0 < meter.rows(only_xml=True) <= total and meter.rows() <= total, meter.statements


@pytest.mark.parametrize("name", sorted(QUERIES))
def test_object_ref_answers_stay_unlimited(many, name):
    answer, _ = run(many, name, LIMIT, return_type="ObjectRef")
    assert answer.status == C.RESPONSE_SUCCESS and len(answer.ids) > LIMIT
