"""ITI-18 latency on a large PostgreSQL registry: FindDocuments and GetAll through stored_query(),
in process, beside the same FindDocuments written as raw SQL (psycopg2) on the same database, and
FindDocuments with the DMP access policy on against the same query with it off, in the same run.

    python bench/query.py                                   # 10,000 patients x 100 entries (1M), throwaway server
    python bench/query.py --patients 2000 --per-patient 100 # 200k entries
    python bench/query.py --db postgresql://user@host/db --skip-load   # an already loaded database

Loading uses COPY. Each patient gets `per-patient` DocumentEntries in SubmissionSets of ten, one
Folder holding five of them, and varied class/type/format/practice/facility codes, creation and
service times, authors, confidentiality and event codes. Every object records its submitter
(origin_org, origin_person, origin_time, reveal_at), a few percent of the entries carry a DMP
confidentiality code (MASQUE_PS, INVISIBLE_PATIENT, INVISIBLE_REPRESENTANTS_LEGAUX), and every
patient exists (patient table) and has authorised the professional PS1 (acc_patient, acc_person).

Prints p50/p99 per query and the ratio of stored_query() FindDocuments to raw SQL (targets: p99 <=
20 ms, ratio <= 3). Then FindDocuments is run for the same patients with the policy off (no guard)
and on (a RegistryGuard per request for PS1, a DIRECTE professional of ORG1 whose profession may
consult 15 of the 20 typeCodes), alternating which goes first, and prints both, their ratios and
the average answers (target: p99 on <= 1.5x p99 off).
"""
from __future__ import annotations

import argparse
import http.client
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from lxml import etree  # noqa: E402

from registry.config import RegistryConfig  # noqa: E402
from registry.guard import RegistryGuard  # noqa: E402
from registry.query import stored_query  # noqa: E402
from registry.store import RegistryStore  # noqa: E402
from xds import constants as C  # noqa: E402
from xds.security import policy as P  # noqa: E402

RIM = C.NS_RIM
# The data's shape and the access policy's data are the loader's (bench/load_registry.py).
from load_registry import (  # noqa: E402
    CLASS_CODES, CONF_CODES, MATRIX, ORG1, POLICY_RULES, PROFESSION, PS1, TYPE_CODES, Cluster, database, db_name,
    load as fast_load, sizes as print_sizes,
)


# --- queries ----------------------------------------------------------------------------------------------

def request(query_id: str, params: list[tuple[str, str]], return_type: str = "LeafClass") -> etree._Element:
    req = etree.Element(C.q(C.NS_QUERY, "AdhocQueryRequest"), nsmap={"query": C.NS_QUERY, "rim": RIM})
    etree.SubElement(req, C.q(C.NS_QUERY, "ResponseOption"), returnType=return_type, returnComposedObjects="true")
    aq = etree.SubElement(req, C.q(RIM, "AdhocQuery"), id=query_id)
    for name, value in params:
        s = etree.SubElement(aq, C.q(RIM, "Slot"), name=name)
        etree.SubElement(etree.SubElement(s, C.q(RIM, "ValueList")), C.q(RIM, "Value")).text = value
    return req


def find_documents_case(rnd: random.Random, pids: list[str]) -> tuple[str, str, str, str]:
    pid = rnd.choice(pids)
    lo = rnd.randrange(2010, 2023)
    return pid, rnd.choice(CLASS_CODES), str(lo), str(lo + 3)


def find_documents_request(case) -> etree._Element:
    pid, klass, lo, hi = case
    return request(C.SQ_FIND_DOCUMENTS, [
        ("$XDSDocumentEntryPatientId", f"'{pid}'"),
        ("$XDSDocumentEntryStatus", f"('{C.STATUS_APPROVED}')"),
        ("$XDSDocumentEntryClassCode", f"('{klass}')"),
        ("$XDSDocumentEntryCreationTimeFrom", lo),
        ("$XDSDocumentEntryCreationTimeTo", hi),
    ])


def get_all_request(pid: str) -> etree._Element:
    st = f"('{C.STATUS_APPROVED}')"
    return request(C.SQ_GET_ALL, [("$patientId", f"'{pid}'"), ("$XDSDocumentEntryStatus", st),
                                  ("$XDSSubmissionSetStatus", st), ("$XDSFolderStatus", st)])


RAW_FIND = ("SELECT o.xml FROM reg_object o JOIN doc_entry d ON d.id = o.id "
            "WHERE o.patient_id = %s AND o.kind = 'DE' AND o.status = %s AND d.class_code = %s "
            "AND d.creation_time >= %s AND d.creation_time < %s AND d.entry_type = %s ORDER BY o.seq")


# The database being measured is partitioned by patient (registry/partitions.py): its raw SQL then joins the
# side tables on the patient too, as the registry's own statements do, which keeps each join in one partition.
PARTITIONED = False
_SAME_PATIENT = (("JOIN doc_entry d ON d.id = o.id", " AND d.patient_id = o.patient_id"),
                 ("JOIN folder f ON f.id = o.id", " AND f.patient_id = o.patient_id"),
                 ("c.object_id = o.id", " AND c.patient_id = o.patient_id"),
                 ("JOIN reg_object o ON o.id = a.source", " AND o.patient_id = a.patient_id"),
                 ("JOIN reg_object o ON o.id = a.target", " AND o.patient_id = a.patient_id"),
                 ("ELSE a.source END", " AND o.patient_id = a.patient_id"))


def layout_sql(sql: str) -> str:
    if PARTITIONED:
        for join, more in _SAME_PATIENT:
            sql = sql.replace(join, join + more)
    return sql


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def measure(name: str, fn, cases) -> list[float]:
    times = []
    for c in cases[:50]:  # warm caches and the statement cache
        fn(c)
    for c in cases:
        t = time.perf_counter()
        fn(c)
        times.append((time.perf_counter() - t) * 1000)
    report(name, times)
    return times


def report(name: str, times: list[float]) -> None:
    print(f"{name:<34} p50 {pct(times, 50):7.2f} ms   p99 {pct(times, 99):7.2f} ms   "
          f"mean {statistics.fmean(times):7.2f} ms")


# --- the access policy on and off -------------------------------------------------------------------------

def professional(pid: str) -> P.Caller:
    """PS1 as the DMP pipeline sees it: a DIRECTE professional of ORG1 whose token names this patient."""
    return P.Caller(P.PROFESSIONAL, person=PS1, organisation=ORG1, profession=PROFESSION, auth_mode=P.DIRECTE,
                    patient=pid)


def find_ids(store: RegistryStore, config: RegistryConfig, case, guard) -> list[str]:
    resp = stored_query(store, find_documents_request(case), config, guard)
    if resp.get("status") != C.RESPONSE_SUCCESS:
        raise SystemExit(etree.tostring(resp).decode()[:2000])
    return [el.get("id") for el in resp[-1]]


def policy_check(store: RegistryStore, pid: str, off: list[str], on: list[str], hidden: dict) -> None:
    """The SQL filter must keep exactly what the pure policy (Visibility.admits) admits of the answer
    without it. Counts why entries were hidden."""
    from registry.access import states

    now = time.time()
    with store.reading() as conn:
        state = states(conn, [pid])[pid]
        facts = store.policy_facts(conn, off)
    vis = P.visibility(POLICY_RULES, professional(pid), state, P.READ, now)
    expected = [i for i in off if vis.admits(facts[i], now)]
    if on != expected:
        raise SystemExit(f"policy on answered {len(on)} entries for {pid}, the policy admits {len(expected)} "
                         f"of the {len(off)} answered with it off")
    for i in set(off) - set(on):
        doc = facts[i]
        hidden["typeCode" if doc.type_code not in vis.types else "MASQUE_PS"] += 1


def measure_policy(store: RegistryStore, config: RegistryConfig, cases) -> tuple[list[float], list[float]]:
    """FindDocuments with the policy off (no guard: the administrator) and on (a guard per request, as the
    pipeline makes one), for the same case one after the other, alternating which goes first."""
    def off(case):
        return find_ids(store, config, case, None)

    def on(case):
        return find_ids(store, config, case, RegistryGuard(professional(case[0]), POLICY_RULES, store))

    for c in cases[:50]:  # warm caches and both statements
        off(c)
        on(c)
    times: dict[str, list[float]] = {"off": [], "on": []}
    answered: dict[str, list[int]] = {"off": [], "on": []}
    answers = []
    for n, c in enumerate(cases):
        got = {}
        for name, fn in ((("off", off), ("on", on)) if n % 2 == 0 else (("on", on), ("off", off))):
            t = time.perf_counter()
            got[name] = fn(c)
            times[name].append((time.perf_counter() - t) * 1000)
            answered[name].append(len(got[name]))
        answers.append((c[0], got["off"], got["on"]))
    hidden = {"typeCode": 0, "MASQUE_PS": 0}
    for pid, got_off, got_on in answers:  # after the timing, so that it does not disturb it
        policy_check(store, pid, got_off, got_on, hidden)
    report("FindDocuments policy off", times["off"])
    report("FindDocuments policy on", times["on"])
    n = len(cases)
    print(f"  average answer: off {statistics.fmean(answered['off']):.2f}, on {statistics.fmean(answered['on']):.2f} "
          f"DocumentEntries; hidden per query {hidden['typeCode'] / n:.2f} by typeCode, "
          f"{hidden['MASQUE_PS'] / n:.2f} by MASQUE_PS; every answer is what Visibility.admits keeps")
    return times["off"], times["on"]


def explain(store: RegistryStore, config: RegistryConfig, case) -> None:
    """EXPLAIN (ANALYZE, BUFFERS) of the FindDocuments statement, policy off and on, for one case."""
    from registry.query.filters import Ctx
    from registry.query.params import parse_params, read_request
    from registry.query.queries import find_documents_select

    req = read_request(find_documents_request(case))
    params = parse_params(req.query_id, req.slots)
    for name, guard in (("off", None), ("on", RegistryGuard(professional(case[0]), POLICY_RULES, store))):
        with store.reading() as conn:
            scope = guard.query_scope(conn, case[0], lambda: set(), True) if guard else None
            ctx = Ctx(conn, True, params, True, config.max_query_results, scope, partitioned=store.partitioned)
            stmt, values = find_documents_select(ctx, with_xml=True)
            expanded = stmt.compile(dialect=conn.dialect).construct_expanded_state(values)
            with conn.connection.dbapi_connection.cursor() as cur:
                sql = cur.mogrify(expanded.statement, expanded.parameters).decode()
                print(f"-- policy {name}\n{sql}")
                cur.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql)
                for (line,) in cur.fetchall():
                    print("   ", line)


# --- over HTTP, against the running server --------------------------------------------------------------------
# Each query is a (name, request body builder, raw SQL) triple over the same cases; the raw SQL reads the
# same rows (with their stored XML) that the server's answer holds, so that the ratio is what the server
# adds around the database's work.

APPROVED = f"('{C.STATUS_APPROVED}')"


def record_patients(raw, lo: int = 80, hi: int = 120) -> tuple[list[str], list[str]]:
    """Patients whose record has lo-hi Approved stable entries (the record-opening query's ~100), and
    every patient under the LeafClass limit (1,000 objects)."""
    with raw.cursor() as cur:
        cur.execute("SELECT o.patient_id, count(*) FROM reg_object o JOIN doc_entry d ON d.id = o.id "
                    "WHERE o.kind = 'DE' AND o.status = %s AND d.entry_type = %s GROUP BY 1",
                    (C.STATUS_APPROVED, C.OBJECT_TYPE_STABLE))
        rows = cur.fetchall()
    raw.rollback()
    return sorted(p for p, n in rows if lo <= n <= hi), sorted(p for p, n in rows if n <= 300)


def fd_cases(kind: str, rnd: random.Random, pids: list[str], n: int) -> list[tuple]:
    out = []
    for _ in range(n):
        pid = rnd.choice(pids)
        lo = rnd.randrange(2012, 2022)
        value = {"patient": None, "classCode": rnd.choice(CLASS_CODES), "typeCode": rnd.choice(TYPE_CODES),
                 "creationTime": (f"{lo}", f"{lo + 3}"), "confidentiality": CONF_CODES[0]}[kind]
        out.append((pid, value))
    return out


def fd_slots(kind: str, case) -> list[tuple[str, str]]:
    pid, v = case
    slots = [("$XDSDocumentEntryPatientId", f"'{pid}'"), ("$XDSDocumentEntryStatus", APPROVED)]
    if kind == "classCode":
        slots.append(("$XDSDocumentEntryClassCode", f"('{v}')"))
    elif kind == "typeCode":
        slots.append(("$XDSDocumentEntryTypeCode", f"('{v}')"))
    elif kind == "creationTime":
        slots += [("$XDSDocumentEntryCreationTimeFrom", v[0]), ("$XDSDocumentEntryCreationTimeTo", v[1])]
    elif kind == "confidentiality":
        slots.append(("$XDSDocumentEntryConfidentialityCode", f"('{v}')"))
    return slots


def fd_raw(kind: str, case) -> tuple[str, tuple]:
    pid, v = case
    sql = ("SELECT o.id, o.status, o.lid, o.version, o.xml FROM reg_object o JOIN doc_entry d ON d.id = o.id "
           "WHERE o.patient_id = %s AND o.kind = 'DE' AND o.status = %s AND d.entry_type = %s")
    args: tuple = (pid, C.STATUS_APPROVED, C.OBJECT_TYPE_STABLE)
    if kind in ("classCode", "typeCode"):
        sql += f" AND d.{'class_code' if kind == 'classCode' else 'type_code'} = %s"
        args += (v,)
    elif kind == "creationTime":
        sql += " AND d.creation_time >= %s AND d.creation_time < %s"
        args += v
    elif kind == "confidentiality":
        sql += (" AND EXISTS (SELECT 1 FROM object_code c WHERE c.object_id = o.id AND c.scheme = %s "
                "AND c.code = %s)")
        args += (C.DE_CONFIDENTIALITY_CODE, v)
    return sql + " ORDER BY o.seq", args


def run_raw(raw, statements) -> int:
    n = 0
    with raw.cursor() as cur:
        for sql, args in statements:
            cur.execute(layout_sql(sql), args)
            n += len(cur.fetchall())
    raw.rollback()
    return n


def get_all_raw(pid: str) -> list[tuple[str, tuple]]:
    """GetAll as the registry answers it (Approved, stable entries): the objects, then the Approved
    associations from or to them, each side through its index (with the columns a bare association is
    answered from, registry/bare_association.py)."""
    objs = ("SELECT o.id, o.status, o.xml FROM reg_object o LEFT JOIN doc_entry d ON d.id = o.id "
            "WHERE o.patient_id = %s AND o.status = %s AND (o.kind <> 'DE' OR d.entry_type = %s)")
    assocs = ("SELECT a.id, a.type, a.source, a.target, a.status, a.ss_status, a.xml FROM association a JOIN reg_object o ON o.id = a.source "
              "WHERE o.patient_id = %s AND o.status = %s AND a.status = %s UNION "
              "SELECT a.id, a.type, a.source, a.target, a.status, a.ss_status, a.xml FROM association a JOIN reg_object o ON o.id = a.target "
              "WHERE o.patient_id = %s AND o.status = %s AND a.status = %s")
    return [(objs, (pid, C.STATUS_APPROVED, C.OBJECT_TYPE_STABLE)),
            (assocs, (pid, C.STATUS_APPROVED, C.STATUS_APPROVED) * 2)]


def folder_raw(fd: str) -> list[tuple[str, tuple]]:
    return [("SELECT o.id, o.status, o.xml, f.last_update_time FROM reg_object o JOIN folder f ON f.id = o.id "
             "WHERE o.id = %s", (fd,)),
            ("SELECT a.id, a.type, a.source, a.target, a.status, a.ss_status, a.xml, o.xml FROM association a JOIN reg_object o ON o.id = a.target "
             "JOIN doc_entry d ON d.id = o.id WHERE a.source = %s AND a.type = %s AND d.entry_type = %s "
             "ORDER BY a.seq", (fd, C.ASSOC_HAS_MEMBER, C.OBJECT_TYPE_STABLE))]


def related_raw(de: str) -> list[tuple[str, tuple]]:
    types = [C.ASSOC_RPLC, C.ASSOC_APND]
    return [("SELECT o.id, o.xml FROM reg_object o WHERE o.id = %s", (de,)),
            ("SELECT a.id, a.type, a.source, a.target, a.ss_status, a.xml, o.xml FROM association a JOIN reg_object o ON o.id = "
             "CASE WHEN a.source = %s THEN a.target ELSE a.source END "
             "WHERE (a.source = %s OR a.target = %s) AND a.type = ANY(%s)", (de, de, de, types))]


class Server:
    """`python -m node.cli serve --role registry` on the loaded database, loopback; security none, or with
    xua=True the production configuration: every request carries a signed SAML assertion (one, reused as XUA
    allows) that the server checks, and the access policy filters every answer (audit is on either way)."""

    def __init__(self, db_url: str, workers: int | None = None, env: dict | None = None, xua: bool = False):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.data = tempfile.mkdtemp(prefix="xds-bench-query-")
        cmd = [sys.executable, "-m", "node.cli", "serve", "--role", "registry", "--db", db_url, "--data", self.data,
               "--host", "127.0.0.1", "--port", str(self.port), "--no-patient-check"]
        self.security = None
        if xua:
            from xds.security import issue

            key, cert, _ = issue.signing_pair(os.path.join(self.data, "sts"))
            self.security = issue.wsse_security(issue.Issuer(key, cert).issue("valid", subject=PS1))
            cmd += ["--security", "xua", "--xua-trust", cert, "--xua-audience", issue.DEFAULT_AUDIENCE]
        else:
            cmd += ["--security", "none"]
        if workers:
            cmd += ["--workers", str(workers)]
        self.log = open(os.path.join(self.data, "server.log"), "w")
        self.proc = subprocess.Popen(cmd, env=dict(os.environ, XDS_LOG_LEVEL="WARNING", **(env or {})),
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     cwd=os.path.join(os.path.dirname(__file__), ".."))
        deadline = time.time() + 300  # the first start migrates and checks the database
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited: {open(self.log.name).read()[-3000:]}")
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    c.close()
                    break
            except OSError:
                time.sleep(0.5)
        else:
            raise SystemExit("the server did not answer /health")
        from xds.client import SoapClient
        self.client = SoapClient(f"http://127.0.0.1:{self.port}/xds/registry")

    def body(self, query_id: str, slots: list[tuple[str, str]]) -> bytes:
        return self.client.envelope(C.ACTION_QUERY, request(query_id, slots),
                                    extra_headers=[self.security] if self.security is not None else None)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        shutil.rmtree(self.data, ignore_errors=True)


HEADERS = {"Content-Type": f'application/soap+xml; charset=UTF-8; action="{C.ACTION_QUERY}"'}


def post(conn: http.client.HTTPConnection, body: bytes) -> bytes:
    conn.request("POST", "/xds/registry", body=body, headers=HEADERS)
    resp = conn.getresponse()
    data = resp.read()
    if resp.status != 200 or b"ResponseStatusType:Success" not in data[:4000]:
        raise SystemExit(f"ITI-18 over HTTP failed ({resp.status}): {data[:2000]!r}")
    return data


def answer_ids(data: bytes) -> list[str]:
    """The ids in an ITI-18 response, read with the project's parser (the answer must be valid ebRIM)."""
    from xds.ebrim import read_object
    from xds.xmlsafe import parse

    root = parse(data, "ITI-18 response")
    rol = root.find(f".//{{{RIM}}}RegistryObjectList")
    return [read_object(el).id for el in (rol if rol is not None else [])]


def http_round(port: int, bodies: list[bytes], clients: int) -> tuple[list[float], float]:
    """Every body once, from `clients` threads each on its own keep-alive connection. Returns the
    latencies (ms) and queries/s."""
    parts = [bodies[i::clients] for i in range(clients)]
    lat: list[list[float]] = [[] for _ in parts]
    errors: list[BaseException] = []
    start = threading.Barrier(clients + 1)

    def worker(i, mine):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        start.wait()
        try:
            for b in mine:
                t = time.perf_counter()
                post(conn, b)
                lat[i].append((time.perf_counter() - t) * 1000)
        except BaseException as exc:  # noqa: BLE001 - reported after the round
            errors.append(exc)
        conn.close()

    threads = [threading.Thread(target=worker, args=(i, p)) for i, p in enumerate(parts)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"{len(errors)} clients failed: {errors[0]}")
    return [x for xs in lat for x in xs], len(bodies) / elapsed


def raw_round(url: str, statements: list, clients: int) -> tuple[list[float], float]:
    """The raw SQL of the same cases, from `clients` threads each with its own psycopg2 connection."""
    import psycopg2
    from load_registry import _dsn

    parts = [statements[i::clients] for i in range(clients)]
    lat: list[list[float]] = [[] for _ in parts]
    conns = [psycopg2.connect(_dsn(url)) for _ in parts]
    start = threading.Barrier(clients + 1)

    def worker(i, mine):
        start.wait()
        for st in mine:
            t = time.perf_counter()
            run_raw(conns[i], st)
            lat[i].append((time.perf_counter() - t) * 1000)

    threads = [threading.Thread(target=worker, args=(i, p)) for i, p in enumerate(parts)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    for c in conns:
        c.close()
    return [x for xs in lat for x in xs], len(statements) / elapsed


def http_cases(raw, rnd: random.Random, n: int) -> list[tuple[str, list[bytes] | None, list, list]]:
    """(name, slots per case, raw statements per case, query id) for every measured query."""
    record, ordinary = record_patients(raw)
    if not record:
        raise SystemExit("no patient has 80-120 Approved entries; load more")
    out = []
    for kind in ("patient", "classCode", "typeCode", "creationTime", "confidentiality"):
        cases = fd_cases(kind, rnd, record, n)
        out.append((f"FindDocuments {kind if kind != 'patient' else '(record: patient+Approved)'}",
                    C.SQ_FIND_DOCUMENTS, [fd_slots(kind, c) for c in cases], [[fd_raw(kind, c)] for c in cases]))
    pids = [rnd.choice(ordinary) for _ in range(n)]
    out.append(("GetAll", C.SQ_GET_ALL,
                [[("$patientId", f"'{p}'"), ("$XDSDocumentEntryStatus", APPROVED), ("$XDSSubmissionSetStatus", APPROVED),
                  ("$XDSFolderStatus", APPROVED)] for p in pids], [get_all_raw(p) for p in pids]))
    with raw.cursor() as cur:
        cur.execute("SELECT id FROM reg_object WHERE kind = 'FD' AND status = %s ORDER BY seq LIMIT 20000",
                    (C.STATUS_APPROVED,))
        folders = [r[0] for r in cur.fetchall()]
        cur.execute("SELECT a.target FROM association a JOIN doc_entry d ON d.id = a.target WHERE a.type = ANY(%s) "
                    "AND d.entry_type = %s ORDER BY a.seq LIMIT 20000",
                    ([C.ASSOC_RPLC, C.ASSOC_APND], C.OBJECT_TYPE_STABLE))
        related = [r[0] for r in cur.fetchall()]
    raw.rollback()
    fds = [rnd.choice(folders) for _ in range(n)]
    out.append(("GetFolderAndContents", C.SQ_GET_FOLDER_AND_CONTENTS,
                [[("$XDSFolderEntryUUID", f"'{f}'")] for f in fds], [folder_raw(f) for f in fds]))
    des = [rnd.choice(related) for _ in range(n)]
    out.append(("GetRelatedDocuments", C.SQ_GET_RELATED_DOCUMENTS,
                [[("$XDSDocumentEntryEntryUUID", f"'{d}'"), ("$AssociationTypes", f"('{C.ASSOC_RPLC}','{C.ASSOC_APND}')")]
                 for d in des], [related_raw(d) for d in des]))
    return out


def measure_http(url: str, server: Server, queries: int, clients: list[int], seed: int,
                 rounds: int = 3, only: str | None = None) -> list[dict]:
    """For each query: its raw SQL and the server over HTTP, 1 client and then N clients, `rounds` rounds
    alternating which goes first; medians of the rounds' p50, p99 and queries/s."""
    import psycopg2
    from load_registry import _dsn

    raw = psycopg2.connect(_dsn(url))
    rnd = random.Random(seed)
    results = []
    for name, qid, slots, statements in http_cases(raw, rnd, queries):
        if only and not any(name.startswith(o) for o in only.split(",")):
            continue
        bodies = [server.body(qid, s) for s in slots]
        # Outside the timing: the answers hold the raw SQL's objects, and parse as ebRIM.
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        answered = []
        for b, st in list(zip(bodies, statements))[:20]:
            ids = answer_ids(post(conn, b))
            answered.append(len(ids))
            with raw.cursor() as cur:
                want = set()
                for sql, args in st:
                    cur.execute(layout_sql(sql), args)
                    for row in cur.fetchall():
                        want.add(row[0])
                        if name == "GetFolderAndContents" and len(row) == 4:
                            pass
            raw.rollback()
            # With the policy on, the answer is what the caller may see of the raw SQL's entries.
            if name.startswith("FindDocuments") and (set(ids) > want if server.security is not None
                                                     else set(ids) != want):
                raise SystemExit(f"{name}: the server answered {len(ids)} objects, raw SQL {len(want)}")
        for b in bodies[:30]:
            post(conn, b)  # warm the server's statement cache and the buffers
        conn.close()
        run_raw(raw, [s for st in statements[:30] for s in st])
        row = {"name": name, "answer": statistics.fmean(answered)}
        for n in clients:
            per = {"http": [], "raw": []}
            for r in range(rounds):
                order = (("http", lambda: http_round(server.port, bodies, n)),
                         ("raw", lambda: raw_round(url, statements, n)))
                for which, fn in (order if r % 2 == 0 else order[::-1]):
                    lat, qps = fn()
                    per[which].append((pct(lat, 50), pct(lat, 99), qps))
            for which in ("http", "raw"):
                row[(which, n)] = tuple(statistics.median(x[i] for x in per[which]) for i in range(3))
        results.append(row)
        print_http_row(row, clients)
    raw.close()
    return results


def print_http_row(row: dict, clients: list[int]) -> None:
    print(f"{row['name']}  (answer {row['answer']:.0f} objects)")
    for n in clients:
        h, r = row[("http", n)], row[("raw", n)]
        print(f"  {n} client{'s' if n > 1 else ' '}  HTTP p50 {h[0]:7.2f} p99 {h[1]:7.2f} ms {h[2]:7.0f} q/s   "
              f"raw SQL p50 {r[0]:6.2f} p99 {r[1]:6.2f} ms {r[2]:7.0f} q/s   "
              f"ratio p50 {h[0] / r[0]:5.2f}x p99 {h[1] / r[1]:5.2f}x", flush=True)


def http_summary(by_size: dict[str, list[dict]], clients: list[int]) -> None:
    """The issue's targets for FindDocuments (the record-opening query) beside the figures; the ratio of
    p99s compares the largest database with the first one given."""
    print("\ntargets, FindDocuments over HTTP:")
    for size, rows in by_size.items():
        rec = rows[0]
        h1, r1 = rec[("http", 1)], rec[("raw", 1)]
        print(f"  {size:>11} entries, record query, 1 client: p99 {h1[1]:.2f} ms (target <= 20: "
              f"{'met' if h1[1] <= 20 else 'NOT met'}), p50 {h1[0] / r1[0]:.2f}x raw SQL "
              f"(target <= 2: {'met' if h1[0] / r1[0] <= 2 else 'NOT met'}), p99 {h1[1] / r1[1]:.2f}x raw SQL")
        if 8 in clients:
            h8 = rec[("http", 8)]
            print(f"  {size:>11} entries, record query, 8 clients: {h8[2]:.0f} q/s (target >= 150: "
                  f"{'met' if h8[2] >= 150 else 'NOT met'}), p99 {h8[1]:.1f} ms (target <= 100: "
                  f"{'met' if h8[1] <= 100 else 'NOT met'})")
    # A partitioned database (N:pK) beside the plain one of the same size, when both were measured.
    for spec, rows in by_size.items():
        entries, *options = spec.split(":")
        plain = ":".join([entries] + [o for o in options if not o.startswith("p")])
        if plain == spec or plain not in by_size:
            continue
        print(f"\n{spec} (partitioned) / {plain} (plain), 1 client:")
        for rec, ref in zip(rows, by_size[plain]):
            (h50, h99, _), (r50, r99, _) = rec[("http", 1)], ref[("http", 1)]
            raw_p, raw_ref = rec[("raw", 1)][0], ref[("raw", 1)][0]
            print(f"  {rec['name']:<44} server p50 {h50 / r50:.2f}x, p99 {h99 / r99:.2f}x; "
                  f"raw SQL p50 {raw_p / raw_ref:.2f}x")
    # The largest database against the first one given of the same layout and compression.
    groups: dict[tuple, list[str]] = {}
    for spec in by_size:
        groups.setdefault(tuple(spec.split(":")[1:]), []).append(spec)
    for sized in groups.values():
        if len(sized) < 2:
            continue
        small = sized[0]
        big = max(sized, key=lambda s: int(s.partition(":")[0]))
        for i, rec in enumerate(by_size[big]):
            a, b = by_size[small][i][("http", 1)][1], rec[("http", 1)][1]
            print(f"  {rec['name']}: 1-client p99 at {big} / at {small} = {b / a:.2f}x"
                  + ("  (target <= 1.5: " + ("met)" if b / a <= 1.5 else "NOT met)") if i == 0 else ""))


# --- main -------------------------------------------------------------------------------------------------------

def in_process(url: str, args, pids: list[str]) -> None:
    store = RegistryStore(url)
    config = RegistryConfig()
    rnd = random.Random(args.seed + 1)
    cases = [find_documents_case(rnd, pids) for _ in range(args.queries)]
    counts = []

    def ours(case):
        resp = stored_query(store, find_documents_request(case), config)
        if resp.get("status") != C.RESPONSE_SUCCESS:
            raise SystemExit(etree.tostring(resp).decode()[:2000])
        counts.append(len(resp[-1]))

    raw = store.engine.raw_connection()

    def raw_sql(case):
        pid, klass, lo, hi = case
        with raw.cursor() as cur:
            cur.execute(layout_sql(RAW_FIND), (pid, C.STATUS_APPROVED, klass, lo, hi, C.OBJECT_TYPE_STABLE))
            cur.fetchall()
        raw.rollback()

    print(f"{args.queries} queries over random patients; FindDocuments = patient + Approved + classCode + "
          f"3-year creationTime range, LeafClass, in process")
    t_raw = measure("FindDocuments raw SQL (psycopg2)", raw_sql, cases)
    t_ours = measure("FindDocuments stored_query()", ours, cases)
    print(f"  average answer: {statistics.fmean(counts):.1f} DocumentEntries")
    gcases = [rnd.choice(pids) for _ in range(max(200, args.queries // 4))]
    answers = []

    def get_all(pid):
        resp = stored_query(store, get_all_request(pid), config)
        if resp.get("status") != C.RESPONSE_SUCCESS:
            raise SystemExit(etree.tostring(resp).decode()[:2000])
        answers.append(len(resp[-1]))

    measure("GetAll stored_query()", get_all, gcases)
    print(f"  average answer: {statistics.fmean(answers):.0f} objects (LeafClass)")
    raw.close()
    r50, r99 = pct(t_ours, 50) / pct(t_raw, 50), pct(t_ours, 99) / pct(t_raw, 99)
    print(f"ratio stored_query()/raw SQL: p50 {r50:.2f}x   p99 {r99:.2f}x")
    ok = pct(t_ours, 99) <= 20 and r50 <= 3 and r99 <= 3
    print("targets (FindDocuments p99 <= 20 ms, within 3x of raw SQL):", "met" if ok else "NOT met")

    print(f"\n{args.queries} pairs, the same cases: FindDocuments with the access policy off (no guard) and on "
          f"(PS1, DIRECTE, authorised; matrix row of {len(MATRIX.rows[PROFESSION])} of {len(TYPE_CODES)} "
          f"typeCodes), alternating which runs first")
    t_off, t_on = measure_policy(store, config, cases)
    p50, p99 = pct(t_on, 50) / pct(t_off, 50), pct(t_on, 99) / pct(t_off, 99)
    print(f"ratio policy on/off: p50 {p50:.2f}x   p99 {p99:.2f}x")
    print("target (FindDocuments p99 with the policy on within 1.5x of it off):", "met" if p99 <= 1.5 else "NOT met")
    if args.explain:
        explain(store, config, cases[0])
    store.engine.dispose()


def loaded_entries(url: str) -> int:
    import psycopg2
    from load_registry import _dsn

    conn = psycopg2.connect(_dsn(url))
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('doc_entry') IS NOT NULL")
        n = 0
        if cur.fetchone()[0]:
            cur.execute("SELECT count(*) FROM doc_entry")
            n = cur.fetchone()[0]
    conn.close()
    return n


def prewarm(dsn: str) -> None:
    """Every registry table and index, partitions included, read once (pg_prewarm), into the OS cache."""
    import psycopg2

    t0 = time.perf_counter()
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    blocks = 0
    with conn.cursor() as cur:
        cur.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
        # The tables (their TOAST too, where longer stored XML lives) and indexes, partitions included.
        cur.execute("SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'i') "
                    "AND c.relname !~ '^(audit|sec|portal)_' UNION "
                    "SELECT t.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "JOIN pg_class t ON t.oid = c.reltoastrelid WHERE n.nspname = current_schema() "
                    "AND c.relkind = 'r' UNION "
                    "SELECT i.indexrelid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "JOIN pg_index i ON i.indrelid = c.reltoastrelid WHERE n.nspname = current_schema()")
        for (oid,) in cur.fetchall():
            cur.execute("SELECT pg_prewarm(%s::regclass, 'read')", (oid,))  # into the OS cache: larger than the buffers
            blocks += cur.fetchone()[0]
    conn.close()
    print(f"prewarmed {blocks * 8192 / 1e9:,.1f} GB in {time.perf_counter() - t0:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", help="PostgreSQL server URL (default: start a cluster, --pgdata or a throwaway one)")
    ap.add_argument("--pgdata", help="a cluster folder kept between runs (bench/load_registry.py's Cluster): "
                                     "its databases xds_<entries> are loaded once and reused")
    ap.add_argument("--entries", default="1000000",
                    help="DocumentEntries, or several separated by commas (1000000,10000000): one database each; "
                         "N:lz4 loads that one with the stored XML compressed by lz4 instead of pglz; N:p64 with the "
                         "registry's tables hash-partitioned by patient into 64 partitions (N:lz4:p64 both)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="loader processes")
    ap.add_argument("--queries", type=int, default=2000, help="in-process queries")
    ap.add_argument("--seed", type=int, default=18)
    ap.add_argument("--skip-load", action="store_true", help="--db is one database, already loaded")
    ap.add_argument("--no-in-process", action="store_true", help="only the HTTP measurement")
    ap.add_argument("--http", action="store_true",
                    help="also measure over HTTP: `node.cli serve --role registry` on each database, the "
                         "record-opening FindDocuments, its common filters, GetAll, GetFolderAndContents and "
                         "GetRelatedDocuments, beside their raw SQL")
    ap.add_argument("--http-queries", type=int, default=300, help="requests per query and round over HTTP")
    ap.add_argument("--clients", default="1,8", help="HTTP client counts")
    ap.add_argument("--rounds", type=int, default=3, help="HTTP rounds (medians are printed)")
    ap.add_argument("--workers", type=int, help="the server's --workers")
    ap.add_argument("--security", choices=("none", "xua"), default="none",
                    help="the HTTP server's security: xua is the production configuration (XUA assertion checked, "
                         "access policy on, as PS1)")
    ap.add_argument("--only", help="HTTP queries whose name starts with one of these (comma-separated), "
                                   "e.g. 'FindDocuments (record'")
    ap.add_argument("--sizes", action="store_true", help="print the tables' sizes per entry")
    ap.add_argument("--prewarm", action="store_true",
                    help="read each database's registry tables and indexes into the OS cache (pg_prewarm) "
                         "before measuring it, so that the database measured last is not the only warm one")
    ap.add_argument("--explain", action="store_true",
                    help="also print EXPLAIN ANALYZE of FindDocuments with the policy off and on, for one patient")
    args = ap.parse_args()

    cluster, server = None, None
    admin = args.db
    if not admin:
        cluster = Cluster(args.pgdata or tempfile.mkdtemp(prefix="xds-pg-", dir="/tmp"))
        admin = cluster.start()
    clients = [int(c) for c in args.clients.split(",")]
    by_size: dict[str, list[dict]] = {}
    try:
        for spec in args.entries.split(","):
            entries, *options = spec.split(":")
            entries = int(entries)
            partitions = next((int(o[1:]) for o in options if re.fullmatch(r"p\d+", o)), 0)
            compression = next((o for o in options if o in ("pglz", "lz4")), "")
            if set(options) - {compression, f"p{partitions}"}:
                raise SystemExit(f"--entries {spec}: options are lz4/pglz and pN (N partitions)")
            name = db_name(entries, compression or None, partitions)
            if args.skip_load:
                url = admin
            else:
                url = database(admin, name, fresh=False)
                have = loaded_entries(url)
                if have != entries:
                    url = database(admin, name, fresh=True)
                    print(f"loading {entries:,} DocumentEntries into {url}")
                    fast_load(url, entries, args.jobs, args.seed, compression=compression or None,
                              partitions=partitions)
            global PARTITIONED
            PARTITIONED = partitions > 0
            print(f"\n=== {loaded_entries(url):,} DocumentEntries ({url}), "
                  + (f"{partitions} partitions by patient" if partitions else "plain tables"))
            if args.sizes:
                print_sizes(url)
            import psycopg2
            from load_registry import _dsn
            if args.prewarm:
                prewarm(_dsn(url))
            raw = psycopg2.connect(_dsn(url))
            _, ordinary = record_patients(raw)
            raw.close()
            if not args.no_in_process:
                in_process(url, args, ordinary)
            if args.http:
                server = Server(url, args.workers, xua=args.security == "xua")
                try:
                    print(f"\nover HTTP: {args.http_queries} requests per query, {args.rounds} rounds, "
                          f"medians; clients {clients}; security {args.security}"
                          + (" (a signed assertion checked per request, the access policy on)"
                             if args.security == "xua" else "") + ", audit on")
                    by_size[spec] = measure_http(url, server, args.http_queries, clients, args.seed + 7,
                                                    args.rounds, args.only)
                finally:
                    server.stop()
                    server = None
        if by_size:
            http_summary(by_size, clients)
    finally:
        if server:
            server.stop()
        if cluster:
            cluster.stop()
            if not args.pgdata:
                shutil.rmtree(cluster.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
