"""ITI-42 throughput: single-document submissions per second against a running server, beside the
same rows inserted by raw SQL (one transaction per submission) on the same kind of database.

    python bench/register.py                      # PostgreSQL (throwaway server), 4 clients, 1 worker and one per core
    python bench/register.py --db sqlite          # SQLite
    python bench/register.py --security xua --workers 0 --clients 8   # the production configuration
    python bench/register.py --url http://host:8080 --db postgresql+psycopg2://...  # an existing server

Prints, for each --workers value (servers started side by side, rounds interleaved), the median rate over
rounds and the ratio to raw SQL (issue 17 targets: PostgreSQL >= 500/s and >= 0.6 of raw SQL; SQLite >= 0.4).
"""
from __future__ import annotations

import argparse
import http.client
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from sqlalchemy import insert  # noqa: E402

from registry import schema as S  # noqa: E402
from registry.store import RegistryStore  # noqa: E402
from xds import builder, constants as C  # noqa: E402
from xds.client import SoapClient  # noqa: E402

PID = "BENCH1^^^&1.2.250.1.213.1.4.10&ISO"


def start_server(db_url: str, data: str, workers: int = 0, xua: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    """workers: --workers (0: the default, one per core); xua: the flags of security = xua."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("XDS_")}
    env["XDS_LOG_LEVEL"] = "WARNING"
    proc = subprocess.Popen([sys.executable, "-m", "node.cli", "serve", "--port", str(port), "--db", db_url,
                             "--data", data, "--no-patient-check", "--workers", str(workers), *xua], env=env,
                            stdout=subprocess.PIPE)
    proc.stdout.readline()  # "xds: all on ..." once listening
    return proc, f"http://127.0.0.1:{port}"


def make_bodies(url: str, n: int, security=None) -> list[bytes]:
    """security: a wsse:Security element to send in every request (one assertion reused, as XUA allows)."""
    client = SoapClient(url + "/xds/registry")
    extra = [security] if security is not None else None
    return [client.envelope(C.ACTION_REGISTER, builder.simple_submission(PID), extra_headers=extra)
            for _ in range(n)]


def http_round(url: str, bodies: list[bytes], clients: int) -> float:
    host, port = url.split("//")[1].split(":")
    parts = [bodies[i::clients] for i in range(clients)]
    failures = []

    def worker(mine):
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        for b in mine:
            conn.request("POST", "/xds/registry", body=b, headers={
                "Content-Type": f'application/soap+xml; charset=UTF-8; action="{C.ACTION_REGISTER}"'})
            data = conn.getresponse().read()
            if b"ResponseStatusType:Success" not in data:
                failures.append(data[:500])
        conn.close()

    threads = [threading.Thread(target=worker, args=(p,)) for p in parts]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if failures:
        raise SystemExit(f"{len(failures)} submissions failed, first: {failures[0]!r}")
    return len(bodies) / elapsed


def raw_rows(seq: int, partitioned: bool = False) -> dict:
    """The rows one single-document submission writes, built without the server's code path; partitioned:
    as the partitioned layout has them (each side row with its patient, the keys in registry_key and
    registry_uid)."""
    rows = _plain_rows(seq)
    if partitioned:
        for table, rs in rows.items():
            for r in rs:
                r["patient_id"] = PID
        objects = rows[S.registry_object]
        rows[S.registry_key] = [dict(id=r["id"], patient_id=PID, unique_id=r.get("unique_id"))
                                for r in objects + rows[S.association]]
        rows[S.registry_uid] = [dict(unique_id=r["unique_id"], patient_id=PID) for r in objects]
    return rows


def _plain_rows(seq: int) -> dict:
    ss, de, a = (f"urn:uuid:{uuid.uuid4()}" for _ in range(3))
    xml = "<rim:ExtrinsicObject xmlns:rim='%s'/>" % C.NS_RIM
    de_xml = xml * 40  # about the size of a real DocumentEntry's XML
    return {
        S.registry_object: [
            dict(id=ss, lid=ss, version=1, kind="SS", status=C.STATUS_APPROVED, patient_id=PID,
                 unique_id=builder.new_oid(), seq=seq, xml=xml * 25),
            dict(id=de, lid=de, version=1, kind="DE", status=C.STATUS_APPROVED, patient_id=PID,
                 unique_id=builder.new_oid(), seq=seq + 1, xml=de_xml)],
        S.submission_set: [dict(id=ss, submission_time="20240101120000", source_id="1.2.3",
                                content_type_code="04^^1.2.250.1.213.1.1.4.12")],
        S.doc_entry: [dict(id=de, entry_type=C.OBJECT_TYPE_STABLE, class_code="a^^b", type_code="a^^b",
                           format_code="a^^b", practice_setting_code="a^^b", hcft_code="a^^b",
                           creation_time="20240101120000", hash="da39a3ee5e6b4b0d3255bfef95601890afd80709",
                           size=0, repository_unique_id="1.2.3", mime_type="text/plain",
                           availability=C.AVAILABILITY_ONLINE)],
        S.object_code: [dict(object_id=de, scheme=C.DE_CONFIDENTIALITY_CODE, code="N^^2.16.840.1.113883.5.25")],
        S.object_author: [dict(object_id=de, person="123^Martin^Paul"), dict(object_id=ss, person="123^Martin")],
        S.association: [dict(id=a, type=C.ASSOC_HAS_MEMBER, source=ss, target=de, status=C.STATUS_APPROVED,
                             ss_status="Original", seq=seq + 2, xml=xml * 8)],
    }


def raw_round(store: RegistryStore, n: int, clients: int, seq0: int) -> float:
    per = n // clients
    partitioned = store.partitioned

    def worker(k):
        for i in range(per):
            rows = raw_rows(seq0 + (k * per + i) * 3, partitioned)
            with store.engine.begin() as conn:
                for table, r in rows.items():
                    conn.execute(insert(table), r)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return per * clients / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", default="postgresql", help="'postgresql' (throwaway server), 'sqlite', or a URL")
    ap.add_argument("--url", help="an already running server (then --db must be its database URL)")
    ap.add_argument("-n", type=int, default=500, help="submissions per round")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", default="1,0", help="comma-separated --workers values to measure in the same "
                                                    "run (0: the default, one per core)")
    ap.add_argument("--security", choices=("none", "xua"), default="none",
                    help="xua: the server checks a signed SAML assertion on every request (the production "
                         "configuration; audit is on either way)")
    ap.add_argument("--partitions", type=int, default=0,
                    help="PostgreSQL: the registry's tables hash-partitioned by patient into N partitions")
    args = ap.parse_args()

    pg = None
    tmp = tempfile.mkdtemp(prefix="xds-bench-")
    db_url = args.db
    if args.db == "postgresql":
        from tests.pgserver import PgServer, create_database

        pg = PgServer()
        db_url = create_database(pg.start(), "bench_register")
    elif args.db == "sqlite":
        db_url = f"sqlite:///{tmp}/registry.db"
    xua, security = (), None
    if args.security == "xua":
        from xds.security import issue

        key, cert, _ = issue.signing_pair(os.path.join(tmp, "sts"))
        security = issue.wsse_security(issue.Issuer(key, cert).issue("valid"))
        xua = ("--security", "xua", "--xua-trust", cert, "--xua-audience", issue.DEFAULT_AUDIENCE)
    procs = []
    if args.partitions:
        made = RegistryStore(db_url, partitions=args.partitions)
        made.migrate()   # the servers take the layout the database has
        made.engine.dispose()
    try:
        store = None
        servers = []
        for w in ([None] if args.url else [int(x) for x in args.workers.split(",")]):
            if w is None:
                servers.append(("given", args.url))
                continue
            proc, url = start_server(db_url, os.path.join(tmp, f"data-{w}"), w, xua)
            procs.append(proc)
            servers.append((f"workers={w or os.cpu_count()}", url))
        store = RegistryStore(db_url)
        store.create_schema()
        rates: dict[str, list[float]] = {name: [] for name, _ in servers}
        raw: list[float] = []
        bodies = {name: make_bodies(url, args.n * args.rounds + 50, security) for name, url in servers}
        for name, url in servers:
            http_round(url, bodies[name][:50], args.clients)  # warm-up
        for r in range(args.rounds):
            # Interleaved, so that the machine's noise falls on every configuration alike.
            for name, url in servers:
                rates[name].append(http_round(url, bodies[name][50 + r * args.n: 50 + (r + 1) * args.n], args.clients))
            raw.append(raw_round(store, args.n, args.clients, 10**9 + r * args.n * 3))
        w = statistics.median(raw)
        kind = store.engine.dialect.name
        target = 0.6 if kind == "postgresql" else 0.4
        layout = f", {store.partitions} partitions by patient" if store.partitions else ""
        print(f"database: {kind}{layout}; security {args.security}, audit on; {args.n} single-document submissions x "
              f"{args.rounds} rounds, {args.clients} concurrent clients; {os.cpu_count()} cores")
        for name, _ in servers:
            s = statistics.median(rates[name])
            print(f"ITI-42 over HTTP, {name:11}: {s:8.1f} submissions/s  ratio to raw SQL {s / w:5.2f} "
                  f"(targets >= {target} and, on PostgreSQL, >= 500/s)  rounds: "
                  f"{', '.join(f'{x:.0f}' for x in rates[name])}")
        print(f"raw SQL inserts            : {w:8.1f} submissions/s  rounds: {', '.join(f'{x:.0f}' for x in raw)}")
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()
        if pg:
            pg.stop()


if __name__ == "__main__":
    main()
