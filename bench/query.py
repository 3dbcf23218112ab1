"""ITI-18 latency on a large PostgreSQL registry: FindDocuments and GetAll through stored_query(),
in process, beside the same FindDocuments written as raw SQL (psycopg2) on the same database.

    python bench/query.py                                   # 10,000 patients x 100 entries (1M), throwaway server
    python bench/query.py --patients 2000 --per-patient 100 # 200k entries
    python bench/query.py --db postgresql://user@host/db --skip-load   # an already loaded database

Loading uses COPY. Each patient gets `per-patient` DocumentEntries in SubmissionSets of ten, one
Folder holding five of them, and varied class/type/format/practice/facility codes, creation and
service times, authors, confidentiality and event codes. Prints p50/p99 per query and the ratio
of stored_query() FindDocuments to raw SQL (targets: p99 <= 20 ms, ratio <= 3).
"""
from __future__ import annotations

import argparse
import io
import os
import random
import re
import statistics
import sys
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from lxml import etree  # noqa: E402

from registry import schema as S  # noqa: E402
from registry.config import RegistryConfig  # noqa: E402
from registry.query import stored_query  # noqa: E402
from registry.store import RegistryStore  # noqa: E402
from xds import builder  # noqa: E402
from xds import constants as C  # noqa: E402

RIM = C.NS_RIM
LOINC = "2.16.840.1.113883.6.1"
CLASS_CODES = [f"CL{i:02d}^^{LOINC}" for i in range(10)]
TYPE_CODES = [f"TY{i:02d}^^{LOINC}" for i in range(20)]
FORMAT_CODES = [f"urn:fmt:{i}^^1.3.6.1.4.1.19376.1.2.3" for i in range(5)]
PRACTICE_CODES = [f"PS{i}^^1.2.250.1.213.1.1.4.9" for i in range(8)]
HCFT_CODES = [f"HF{i}^^1.2.250.1.213.1.1.4.9" for i in range(5)]
CONF_CODES = ["N^^2.16.840.1.113883.5.25"] * 16 + ["R^^2.16.840.1.113883.5.25"] * 3 + ["V^^2.16.840.1.113883.5.25"]
EVENT_CODES = [f"EV{i:02d}^^1.2.250.1.213.2.2" for i in range(30)]
AUTHORS = [f"{i}^Name{i}^Given{i % 97}^^^^^^&1.2.250.1.71.4.2.1&ISO" for i in range(2000)]
STATUS_WEIGHTS = [(C.STATUS_APPROVED, 95), (C.STATUS_DEPRECATED, 5)]


def esc(v: str) -> str:
    return v.replace("&", "&amp;").replace("<", "&lt;").replace('"', "&quot;")


def patient_id(n: int) -> str:
    return f"B{n:07d}^^^&1.2.250.1.213.1.4.10&ISO"


def dtm(rnd: random.Random, lo=2010, hi=2025) -> str:
    return "%04d%02d%02d%02d%02d%02d" % (rnd.randrange(lo, hi), rnd.randrange(1, 13), rnd.randrange(1, 29),
                                         rnd.randrange(24), rnd.randrange(60), rnd.randrange(60))


# --- templates -------------------------------------------------------------------------------------
# One DocumentEntry, SubmissionSet and Folder are built with the project's builder, then turned
# into format strings so that a million rows cost string formatting, not tree building.

def _split(code: str) -> tuple[str, str, str]:
    c, _, s = code.split("^")
    return (c, s, c)


def _de_template() -> str:
    codes = {"class": ("@CLASS@", "@CLASSS@", "x"), "type": ("@TYPE@", "@TYPES@", "x"),
             "format": ("@FMT@", "@FMTS@", "x"), "hcft": ("@HF@", "@HFS@", "x"),
             "practice": ("@PS@", "@PSS@", "x"), "confidentiality": [("@CONF@", "@CONFS@", "x")],
             "event": [("@EV@", "@EVS@", "x")]}
    el = builder.document_entry("@PID@", id="@ID@", unique_id="@UID@", codes=codes, creation_time="@CT@",
                                service_start="@SST@", service_stop="@SSP@", author_person="@AUTHOR@",
                                hash="da39a3ee5e6b4b0d3255bfef95601890afd80709", size=1234,
                                repository_unique_id="1.2.250.1.999.3.1", title="Compte rendu")
    el.set("lid", "@ID@")
    el.set("status", C.STATUS_APPROVED)
    for i, sub in enumerate(el.iter(f"{{{RIM}}}Classification", f"{{{RIM}}}ExternalIdentifier")):
        sub.set("id", f"@SUB{i}@")
    return _fmt(etree.tostring(el, encoding="unicode"))


def _ss_template() -> str:
    el = builder.submission_set("@PID@", id="@ID@", unique_id="@UID@", submission_time="@ST@")
    el.set("lid", "@ID@")
    el.set("status", C.STATUS_APPROVED)
    for i, sub in enumerate(el.iter(f"{{{RIM}}}Classification", f"{{{RIM}}}ExternalIdentifier")):
        sub.set("id", f"@SUB{i}@")
    return _fmt(etree.tostring(el, encoding="unicode"))


def _fd_template() -> str:
    el = builder.folder("@PID@", id="@ID@", unique_id="@UID@")
    el.set("lid", "@ID@")
    el.set("status", C.STATUS_APPROVED)
    for i, sub in enumerate(el.iter(f"{{{RIM}}}Classification", f"{{{RIM}}}ExternalIdentifier")):
        sub.set("id", f"@SUB{i}@")
    return _fmt(etree.tostring(el, encoding="unicode"))


def _assoc_template() -> str:
    el = builder.association("@SRC@", "@TGT@", id="@ID@")
    el.set("status", C.STATUS_APPROVED)
    return _fmt(etree.tostring(el, encoding="unicode"))


def _fmt(xml: str) -> str:
    xml = xml.replace("{", "{{").replace("}", "}}")
    return re.sub(r"@([A-Z0-9]+)@", lambda m: "{" + m.group(1).lower() + "}", xml)


def _sub_ids(n: int) -> dict:
    return {f"sub{i}": "urn:uuid:" + str(uuid.uuid4()) for i in range(n)}


# --- loading --------------------------------------------------------------------------------------------

class Copier:
    """Buffers rows per table and COPYs them in batches."""

    def __init__(self, raw_conn, batch: int = 20000):
        self.raw, self.batch = raw_conn, batch
        self.buf: dict[str, tuple[list[str], io.StringIO, int]] = {}

    def add(self, table: str, cols: list[str], row: tuple) -> None:
        cols_, out, n = self.buf.get(table) or (cols, io.StringIO(), 0)
        out.write("\t".join("\\N" if v is None else str(v).replace("\\", "\\\\").replace("\t", "\\t")
                            .replace("\n", "\\n") for v in row))
        out.write("\n")
        self.buf[table] = (cols_, out, n + 1)
        if n + 1 >= self.batch:
            self.flush(table)

    def flush(self, table: str | None = None) -> None:
        for t in [table] if table else list(self.buf):
            if t not in self.buf:
                continue
            cols, out, _ = self.buf.pop(t)
            out.seek(0)
            with self.raw.cursor() as cur:
                cur.copy_expert(f"COPY {t} ({', '.join(cols)}) FROM STDIN", out)


OBJ_COLS = ["id", "lid", "version", "kind", "status", "patient_id", "unique_id", "seq", "xml"]
DE_COLS = ["id", "entry_type", "class_code", "type_code", "format_code", "practice_setting_code", "hcft_code",
           "creation_time", "service_start_time", "service_stop_time", "hash", "size", "repository_unique_id",
           "mime_type", "availability"]
ASSOC_COLS = ["id", "type", "source", "target", "status", "ss_status", "seq", "xml"]


def load(store: RegistryStore, patients: int, per_patient: int, seed: int) -> float:
    rnd = random.Random(seed)
    de_t, ss_t, fd_t, as_t = _de_template(), _ss_template(), _fd_template(), _assoc_template()
    n_de_subs = de_t.count("{sub")
    n_ss_subs, n_fd_subs = ss_t.count("{sub"), fd_t.count("{sub")
    store.create_schema()
    indexes = [ix for t in S.metadata.sorted_tables for ix in t.indexes]
    for ix in indexes:
        ix.drop(store.engine, checkfirst=True)
    t0 = time.perf_counter()
    raw = store.engine.raw_connection()
    try:
        with raw.cursor() as cur:
            # Foreign-key triggers off during the bulk load; every row is consistent by construction.
            cur.execute("SET session_replication_role = replica")
        cp = Copier(raw)
        seq = 0
        for p in range(patients):
            pid = patient_id(p)
            ss_id = None
            fd_id = "urn:uuid:" + str(uuid.uuid4())
            seq += 1
            cp.add("reg_object", OBJ_COLS, (fd_id, fd_id, 1, "FD", C.STATUS_APPROVED, pid, f"2.25.{uuid.uuid4().int}",
                                            seq, fd_t.format(pid=esc(pid), id=fd_id, uid="1", **_sub_ids(n_fd_subs))))
            cp.add("folder", ["id", "last_update_time"], (fd_id, dtm(rnd, 2020, 2025)))
            cp.add("object_code", ["object_id", "scheme", "code"],
                   (fd_id, C.FOLDER_CODE_LIST, "Referrals^^1.3.6.1.4.1.21367.100.1"))
            for i in range(per_patient):
                if i % 10 == 0:
                    ss_id = "urn:uuid:" + str(uuid.uuid4())
                    st = dtm(rnd, 2020, 2025)
                    seq += 1
                    cp.add("reg_object", OBJ_COLS, (ss_id, ss_id, 1, "SS", C.STATUS_APPROVED, pid,
                                                    f"2.25.{uuid.uuid4().int}", seq,
                                                    ss_t.format(pid=esc(pid), id=ss_id, uid="1", st=st,
                                                                **_sub_ids(n_ss_subs))))
                    cp.add("submission_set", ["id", "submission_time", "source_id", "content_type_code"],
                           (ss_id, st, "1.2.250.1.999.7", "04^^1.2.250.1.213.1.1.4.12"))
                de_id = "urn:uuid:" + str(uuid.uuid4())
                uid = f"2.25.{uuid.uuid4().int}"
                klass, type_, fmt, ps, hf = (rnd.choice(CLASS_CODES), rnd.choice(TYPE_CODES),
                                             rnd.choice(FORMAT_CODES), rnd.choice(PRACTICE_CODES),
                                             rnd.choice(HCFT_CODES))
                conf, ev, author = rnd.choice(CONF_CODES), rnd.choice(EVENT_CODES), rnd.choice(AUTHORS)
                ct = dtm(rnd)
                sst, ssp = ct[:8], ct[:8]
                status = rnd.choices([s for s, _ in STATUS_WEIGHTS], [w for _, w in STATUS_WEIGHTS])[0]
                entry_type = C.OBJECT_TYPE_ON_DEMAND if rnd.random() < 0.02 else C.OBJECT_TYPE_STABLE
                kv = dict(pid=esc(pid), id=de_id, uid=uid, ct=ct, sst=sst, ssp=ssp, author=esc(author),
                          **{k: v for k, v in zip(("class", "classs"), _split(klass)[:2])},
                          **{k: v for k, v in zip(("type", "types"), _split(type_)[:2])},
                          **{k: v for k, v in zip(("fmt", "fmts"), _split(fmt)[:2])},
                          **{k: v for k, v in zip(("ps", "pss"), _split(ps)[:2])},
                          **{k: v for k, v in zip(("hf", "hfs"), _split(hf)[:2])},
                          **{k: v for k, v in zip(("conf", "confs"), _split(conf)[:2])},
                          **{k: v for k, v in zip(("ev", "evs"), _split(ev)[:2])},
                          **_sub_ids(n_de_subs))
                seq += 1
                cp.add("reg_object", OBJ_COLS, (de_id, de_id, 1, "DE", status, pid, uid, seq, de_t.format(**kv)))
                cp.add("doc_entry", DE_COLS, (de_id, entry_type, klass, type_, fmt, ps, hf, ct, sst, ssp,
                                              "da39a3ee5e6b4b0d3255bfef95601890afd80709", 1234,
                                              "1.2.250.1.999.3.1", "text/plain", C.AVAILABILITY_ONLINE))
                cp.add("object_code", ["object_id", "scheme", "code"], (de_id, C.DE_CONFIDENTIALITY_CODE, conf))
                cp.add("object_code", ["object_id", "scheme", "code"], (de_id, C.DE_EVENT_CODE, ev))
                cp.add("object_author", ["object_id", "person"], (de_id, author))
                a_id = "urn:uuid:" + str(uuid.uuid4())
                seq += 1
                cp.add("association", ASSOC_COLS, (a_id, C.ASSOC_HAS_MEMBER, ss_id, de_id, C.STATUS_APPROVED,
                                                   "Original", seq, as_t.format(id=a_id, src=ss_id, tgt=de_id)))
                if i < 5:
                    a_id = "urn:uuid:" + str(uuid.uuid4())
                    seq += 1
                    cp.add("association", ASSOC_COLS, (a_id, C.ASSOC_HAS_MEMBER, fd_id, de_id, C.STATUS_APPROVED,
                                                       None, seq, as_t.format(id=a_id, src=fd_id, tgt=de_id)))
            if p % 500 == 499:
                print(f"  {p + 1} patients, {time.perf_counter() - t0:.0f} s", flush=True)
        cp.flush()
        with raw.cursor() as cur:
            cur.execute("SELECT setval('reg_seq', %s)", (seq + 1,))
        raw.commit()
    finally:
        raw.close()
    print(f"  rows copied in {time.perf_counter() - t0:.0f} s; building indexes", flush=True)
    for ix in indexes:
        ix.create(store.engine)
    with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.exec_driver_sql("VACUUM ANALYZE")
    return time.perf_counter() - t0


# --- queries ----------------------------------------------------------------------------------------------

def request(query_id: str, params: list[tuple[str, str]], return_type: str = "LeafClass") -> etree._Element:
    req = etree.Element(C.q(C.NS_QUERY, "AdhocQueryRequest"), nsmap={"query": C.NS_QUERY, "rim": RIM})
    etree.SubElement(req, C.q(C.NS_QUERY, "ResponseOption"), returnType=return_type, returnComposedObjects="true")
    aq = etree.SubElement(req, C.q(RIM, "AdhocQuery"), id=query_id)
    for name, value in params:
        s = etree.SubElement(aq, C.q(RIM, "Slot"), name=name)
        etree.SubElement(etree.SubElement(s, C.q(RIM, "ValueList")), C.q(RIM, "Value")).text = value
    return req


def find_documents_case(rnd: random.Random, patients: int) -> tuple[str, str, str, str]:
    pid = patient_id(rnd.randrange(patients))
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
    print(f"{name:<34} p50 {pct(times, 50):7.2f} ms   p99 {pct(times, 99):7.2f} ms   "
          f"mean {statistics.fmean(times):7.2f} ms")
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", help="PostgreSQL URL (default: start a throwaway server)")
    ap.add_argument("--patients", type=int, default=10000)
    ap.add_argument("--per-patient", type=int, default=100)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=18)
    ap.add_argument("--skip-load", action="store_true", help="the database is already loaded with these sizes")
    args = ap.parse_args()

    server = None
    url = args.db
    if not url:
        from tests.pgserver import PgServer, create_database
        server = PgServer()
        url = create_database(server.start(), "xds_bench_query")
    try:
        store = RegistryStore(url)
        if not store.is_postgres:
            sys.exit("bench/query.py measures PostgreSQL; give a postgresql:// URL")
        total = args.patients * args.per_patient
        if not args.skip_load:
            print(f"loading {args.patients} patients x {args.per_patient} entries = {total:,} DocumentEntries")
            secs = load(store, args.patients, args.per_patient, args.seed)
            print(f"loaded in {secs:.0f} s")
        config = RegistryConfig()
        rnd = random.Random(args.seed + 1)
        cases = [find_documents_case(rnd, args.patients) for _ in range(args.queries)]
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
                cur.execute(RAW_FIND, (pid, C.STATUS_APPROVED, klass, lo, hi, C.OBJECT_TYPE_STABLE))
                cur.fetchall()
            raw.rollback()

        print(f"{args.queries} queries over random patients; FindDocuments = patient + Approved + classCode + "
              f"3-year creationTime range, LeafClass")
        t_raw = measure("FindDocuments raw SQL (psycopg2)", raw_sql, cases)
        t_ours = measure("FindDocuments stored_query()", ours, cases)
        print(f"  average answer: {statistics.fmean(counts):.1f} DocumentEntries")
        gcases = [patient_id(rnd.randrange(args.patients)) for _ in range(max(200, args.queries // 4))]
        sizes = []

        def get_all(pid):
            resp = stored_query(store, get_all_request(pid), config)
            if resp.get("status") != C.RESPONSE_SUCCESS:
                raise SystemExit(etree.tostring(resp).decode()[:2000])
            sizes.append(len(resp[-1]))

        measure("GetAll stored_query()", get_all, gcases)
        print(f"  average answer: {statistics.fmean(sizes):.0f} objects (LeafClass)")
        raw.close()
        r50, r99 = pct(t_ours, 50) / pct(t_raw, 50), pct(t_ours, 99) / pct(t_raw, 99)
        print(f"ratio stored_query()/raw SQL: p50 {r50:.2f}x   p99 {r99:.2f}x")
        ok = pct(t_ours, 99) <= 20 and r50 <= 3 and r99 <= 3
        print("targets (FindDocuments p99 <= 20 ms, within 3x of raw SQL):", "met" if ok else "NOT met")
    finally:
        if server:
            server.stop()


if __name__ == "__main__":
    main()
