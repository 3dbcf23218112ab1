"""What auditing costs: ITI-42 and ITI-18 latency over HTTP with the audit layer off, on without an audit
repository, and on with an unreachable one (and, when rsyslog is installed, delivering to a real one),
all measured in the same run.

    python bench/audit.py                           # SQLite and a throwaway PostgreSQL, 3 rounds x 200 requests
    python bench/audit.py --db sqlite --rounds 2    # a quick check
    python bench/audit.py --clients 8 --requests 500 --profile

Configurations, each an all-in-one server of its own (own data folder, own database), started in process:

    A  audit = false                            the reference
    B  audit on, no audit_repository            records wait in the outbox
    C  audit on, audit_repository unreachable   tls://127.0.0.1:<closed port>: delivery retries in the background
    D  audit on, delivering to rsyslog (TLS)    only when tests/rsyslog.py finds rsyslogd (--no-rsyslog: skip)

Each round times, for every transaction and client count, A B C D one after the other (the order turns by
one each round), so that the machine's drift falls on all of them alike. ITI-42: single-document
submissions, a fresh patient and fresh uniqueIds each (built before the clock starts). ITI-18:
FindDocuments (LeafClass) for patients holding --per-patient documents each, seeded first. Latency is per
request, at the client (time.perf_counter around one keep-alive request and its answer read to the end).

Prints per configuration median and p99 latency (ms) and requests/s, then the ratios B/A, C/A (D/A) of
the medians and of p99 against the target (issue 13: auditing adds at most 10 % to ITI-18 and ITI-42
latency, and never blocks a request on the audit repository), and C/B: what the unreachable repository
adds beyond the outbox. --profile (and any median ratio B/A over 1.10) adds a breakdown of the audit
layer's time inside configuration B.
"""
from __future__ import annotations

import argparse
import http.client
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from node.server import Services  # noqa: E402
from xds import builder  # noqa: E402
from xds import constants as C  # noqa: E402
from xds.client import SoapClient  # noqa: E402
from xds.settings import Settings  # noqa: E402
from xds.tls import TlsFiles, client_context  # noqa: E402

TARGET = 1.10
AUTHORITY = "&1.2.250.1.213.1.4.10&ISO"
SUCCESS = b"ResponseStatusType:Success"
NAMES = {"A": "audit off", "B": "outbox only", "C": "unreachable ARR", "D": "rsyslog (TLS)"}
KINDS = (("ITI-42", 1), ("ITI-42", "N"), ("ITI-18", 1), ("ITI-18", "N"))


class _AuditClientSettings(Settings):
    """Settings whose audit TLS context also presents a client certificate (the test rsyslog requires
    one) while the XDS server itself stays plain HTTP like A, B and C. In production that identity
    is the node's tls_cert, which would also turn the server to HTTPS and change what is compared."""

    def audit_ssl_context(self):
        cert, key = self.extra["bench_audit_client"]
        return client_context(TlsFiles(cert, key, self.audit_tls_ca), ca=self.audit_tls_ca)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Config:
    def __init__(self, key: str, services: Services, rsyslog=None, received_before: int = 0):
        self.key = key
        self.name = NAMES[key]
        self.services = services
        self.rsyslog = rsyslog
        self.url = services.url + "/xds/registry"
        self.envelopes = SoapClient(self.url)
        self.drain_seconds: list[float] = []
        self.received_before = received_before  # one rsyslog serves every database's D

    def bodies(self, kind: str, n: int, patients: list[str], counter) -> list[tuple[bytes, str]]:
        """n request bodies and their SOAP action, built before timing: fresh uniqueIds (and a fresh
        patient) for every submission, the seeded patients in turn for the queries."""
        out = []
        for i in range(n):
            if kind == "ITI-42":
                pid = f"R{next(counter)}^^^{AUTHORITY}"
                out.append((self.envelopes.envelope(C.ACTION_REGISTER, builder.simple_submission(pid)),
                            C.ACTION_REGISTER))
            else:
                pid = patients[next(counter) % len(patients)]
                out.append((self.envelopes.envelope(C.ACTION_QUERY, builder.find_documents_request(pid)),
                            C.ACTION_QUERY))
        return out

    def drain(self, timeout: float = 120.0) -> None:
        """D: wait until the delivery thread has sent everything, so that its backlog does not run
        during the next configuration's timing."""
        if self.key != "D":
            return
        t0 = time.perf_counter()
        while self.services.auditor.store.status()["pending"] and time.perf_counter() - t0 < timeout:
            time.sleep(0.02)
        self.drain_seconds.append(time.perf_counter() - t0)


def segment(cfg: Config, bodies: list[tuple[bytes, str]], clients: int) -> tuple[list[float], float]:
    """Send the bodies from `clients` threads, each on one keep-alive connection opened before the clock
    starts; (latencies in seconds, requests per second)."""
    host, port = cfg.services.settings.host, cfg.services.port
    parts = [bodies[i::clients] for i in range(clients)]
    latencies: list[list[float]] = [[] for _ in range(clients)]
    failures: list[bytes] = []
    ready = threading.Barrier(clients + 1)

    def worker(k: int) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=120)
        conn.connect()
        mine = latencies[k]
        ready.wait()
        for body, action in parts[k]:
            headers = {"Content-Type": f'application/soap+xml; charset=UTF-8; action="{action}"'}
            t = time.perf_counter()
            conn.request("POST", "/xds/registry", body=body, headers=headers)
            data = conn.getresponse().read()
            mine.append(time.perf_counter() - t)
            if SUCCESS not in data:
                failures.append(data[:400])
        conn.close()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    ready.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if failures:
        raise SystemExit(f"{cfg.key} ({cfg.name}): {len(failures)} requests failed, first: {failures[0]!r}")
    return [x for part in latencies for x in part], len(bodies) / elapsed


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]


def start_configs(keys: list[str], work: str, db: str, pg_admin: str | None, pki, rsyslog, threads: int,
                  patients: list[str], per_patient: int) -> list[Config]:
    configs = []
    for key in keys:
        kw = dict(port=0, check_patients=False, settle_interval=0, threads=threads, log_level="WARNING",
                  data=os.path.join(work, f"{db}-{key}"))
        if pg_admin:
            from tests.pgserver import create_database

            kw["db"] = create_database(pg_admin, f"bench_audit_{key.lower()}")
        cls = Settings
        if key == "A":
            kw["audit"] = False
        elif key == "C":
            kw.update(audit_repository=f"tls://127.0.0.1:{closed_port()}", audit_tls_ca=pki["ca"])
        elif key == "D":
            cls = _AuditClientSettings
            kw.update(audit_repository=f"tls://127.0.0.1:{rsyslog.tls_port}", audit_tls_ca=pki["ca"],
                      audit_interval=0.2, extra={"bench_audit_client": pki["client"]})
        settings = cls(**kw)
        settings.validate()
        before = len(rsyslog.messages()) if key == "D" else 0
        services = Services(settings).start()
        for pid in patients:
            services.registry.register_element(builder.simple_submission(pid, per_patient))
        cfg = Config(key, services, rsyslog if key == "D" else None, before)
        reply = SoapClient(cfg.url, 30).call(C.ACTION_QUERY, builder.find_documents_request(patients[0]))
        found = len(reply.body.findall(f".//{{{C.NS_RIM}}}ExtrinsicObject"))
        if reply.body.get("status") != C.RESPONSE_SUCCESS or found != per_patient:
            raise SystemExit(f"{key}: FindDocuments of a seeded patient gave {found} entries, not {per_patient}")
        configs.append(cfg)
    return configs


def run_database(db: str, args, work: str, pki, rsyslog) -> dict:
    pg = None
    pg_admin = None
    if db == "postgresql":
        from tests.pgserver import PgServer

        pg = PgServer()
        pg_admin = pg.start()
    keys = ["A", "B", "C"] + (["D"] if rsyslog is not None else [])
    patients = [f"Q{i}^^^{AUTHORITY}" for i in range(args.patients)]
    counter = iter(range(10**9))
    configs = start_configs(keys, work, db, pg_admin, pki, rsyslog, max(16, args.clients * 2), patients,
                            args.per_patient)
    results: dict = defaultdict(lambda: {"lat": [], "rate": []})
    try:
        for cfg in configs:  # warm-up: connections, statement caches, first-use imports; not timed
            for kind, clients in KINDS:
                n = args.clients if clients == "N" else 1
                segment(cfg, cfg.bodies(kind, max(20, n * 5), patients, counter), n)
            cfg.drain()
        t_start = time.perf_counter()
        for r in range(args.rounds):
            order = configs[r % len(configs):] + configs[:r % len(configs)]
            for kind, clients in KINDS:
                n = args.clients if clients == "N" else 1
                for cfg in order:
                    bodies = cfg.bodies(kind, args.requests, patients, counter)
                    lat, rate = segment(cfg, bodies, n)
                    cell = results[(kind, n, cfg.key)]
                    cell["lat"].extend(lat)
                    cell["rate"].append(rate)
                    cfg.drain()
            print(f"  [{db}] round {r + 1}/{args.rounds} done ({time.perf_counter() - t_start:.0f} s)", flush=True)
        report(db, args, configs, results)
        outboxes(configs)
        if args.profile or any(ratio_of(results, kind, n, "B", statistics.median) > TARGET
                               for kind, n in {(k, args.clients if c == "N" else 1) for k, c in KINDS}):
            profile(configs[keys.index("B")], patients, counter, args)
    finally:
        for cfg in configs:
            cfg.services.stop()
        if pg:
            pg.stop()
    return results


def ratio_of(results, kind, n, key, stat, against: str = "A") -> float:
    return stat(results[(kind, n, key)]["lat"]) / stat(results[(kind, n, against)]["lat"])


def report(db: str, args, configs: list[Config], results) -> None:
    print()
    print(f"database: {db}; {args.rounds} rounds x {args.requests} requests per configuration, transaction and "
          f"client count; ITI-18: {args.per_patient} documents per patient ({args.patients} patients)")
    print(f"{'':33s}{'median ms':>10s}{'p99 ms':>9s}{'req/s':>9s}   {'ratio median':>14s}   {'ratio p99':>10s}"
          f"   {'C/B median, p99':>15s}")
    for kind, clients in KINDS:
        n = args.clients if clients == "N" else 1
        print(f"{kind}, {n} client{'s' if n > 1 else ''}")
        for cfg in configs:
            cell = results[(kind, n, cfg.key)]
            med, tail = statistics.median(cell["lat"]) * 1000, p99(cell["lat"]) * 1000
            rate = statistics.median(cell["rate"])
            line = f"  {cfg.key} {cfg.name:29s}{med:10.2f}{tail:9.2f}{rate:9.1f}"
            if cfg.key != "A":
                rm = ratio_of(results, kind, n, cfg.key, statistics.median)
                rp = ratio_of(results, kind, n, cfg.key, p99)
                line += (f"   {cfg.key}/A {rm:5.2f} {'PASS' if rm <= TARGET else 'FAIL'}"
                         f"   {rp:5.2f} {'PASS' if rp <= TARGET else 'FAIL'}")
                if cfg.key == "C":  # what the unreachable repository itself adds to the outbox's cost
                    line += (f"   C/B {ratio_of(results, kind, n, 'C', statistics.median, 'B'):5.2f}"
                             f" {ratio_of(results, kind, n, 'C', p99, 'B'):5.2f}")
            print(line)
    print(f"target: ratio <= {TARGET:.2f} (auditing adds at most 10 % to the latency)")


def outboxes(configs: list[Config]) -> None:
    for cfg in configs:
        if cfg.services.auditor is None:
            continue
        s = cfg.services.auditor.store.status()
        line = (f"  outbox {cfg.key}: {s['records']} records, {s['delivered']} delivered, {s['pending']} pending"
                + (f", last error: {s['last_error']}" if s["last_error"] else ""))
        if cfg.rsyslog is not None:
            drains = cfg.drain_seconds
            try:  # rsyslogd writes its file a moment after it has read the message
                cfg.rsyslog.wait_for(cfg.received_before + s["delivered"], timeout=5)
            except AssertionError:
                pass
            received = len(cfg.rsyslog.messages()) - cfg.received_before
            line += (f"; rsyslog received {received}; waiting for delivery after each segment: median"
                     f" {statistics.median(drains) * 1000:.0f} ms, max {max(drains) * 1000:.0f} ms")
        print(line)


def profile(cfg: Config, patients: list[str], counter, args) -> None:
    """Where configuration B spends its audit time: the audit layer's parts timed around the real calls
    (1 client, so that the parts add up), then put back."""
    import sqlalchemy

    import xds.audit.auditor as auditor_mod
    import xds.audit.facts as facts_mod
    import xds.audit.records as records_mod
    import xds.audit.store as store_mod
    import xds.pipeline as pipeline_mod

    spent: dict[str, float] = defaultdict(float)
    local = threading.local()
    undo = []

    def timed(owner, attr: str, label: str, inside_append: bool = False) -> None:
        original = owner.__dict__[attr] if isinstance(owner, type) else getattr(owner, attr)

        def wrapper(*a, **kw):
            if inside_append:
                local.marks = {}
            t = time.perf_counter()
            try:
                return original(*a, **kw)
            finally:
                end = time.perf_counter()
                spent[label] += end - t
                if inside_append:
                    marks = local.marks
                    local.marks = None
                    if "begin" in marks:
                        spent["    checkout + BEGIN"] += marks["begin"] - t
                    if "commit" in marks:
                        spent["    COMMIT + return to pool"] += end - marks["commit"]
        setattr(owner, attr, wrapper)
        undo.append(lambda: setattr(owner, attr, original))

    engine = cfg.services.auditor.store.engine

    def on_begin(conn):
        if getattr(local, "marks", None) is not None:
            local.marks["begin"] = time.perf_counter()

    def on_commit(conn):
        if getattr(local, "marks", None) is not None:
            local.marks["commit"] = time.perf_counter()

    def before_execute(conn, cursor, statement, parameters, context, executemany):
        if getattr(local, "marks", None) is not None:
            local.marks["exec"] = time.perf_counter()

    def after_execute(conn, cursor, statement, parameters, context, executemany):
        marks = getattr(local, "marks", None)
        if marks is not None and "exec" in marks:
            spent["    INSERT statements"] += time.perf_counter() - marks.pop("exec")

    listeners = [("begin", on_begin), ("commit", on_commit), ("before_cursor_execute", before_execute),
                 ("after_cursor_execute", after_execute)]
    for name, fn in listeners:
        sqlalchemy.event.listen(engine, name, fn)
    timed(pipeline_mod.Audit, "__call__", "whole request inside the pipeline")
    timed(auditor_mod.Auditor, "soap", "Auditor.soap (all of the audit work)")
    timed(facts_mod, "of_request", "  facts.of_request (extraction)")
    timed(facts_mod, "outcome", "  facts.outcome")
    timed(auditor_mod.Auditor, "_accesses", "  Auditor._accesses (patient's log rows)")
    timed(records_mod, "to_stored", "  records.to_stored (JSON)")
    timed(store_mod.AuditStore, "append", "  AuditStore.append", inside_append=True)
    try:
        print(f"profile of {cfg.key} ({cfg.name}), 1 client, {args.requests} requests each, microseconds per request:")
        for kind in ("ITI-42", "ITI-18"):
            bodies = cfg.bodies(kind, args.requests, patients, counter)
            spent.clear()
            lat, _ = segment(cfg, bodies, 1)
            n = len(bodies)
            whole = spent["whole request inside the pipeline"]
            print(f"  {kind}: client-side median {statistics.median(lat) * 1e6:.0f}")
            for label in ("whole request inside the pipeline", "Auditor.soap (all of the audit work)",
                          "  facts.of_request (extraction)", "  facts.outcome",
                          "  Auditor._accesses (patient's log rows)", "  records.to_stored (JSON)",
                          "  AuditStore.append", "    checkout + BEGIN", "    INSERT statements",
                          "    COMMIT + return to pool"):
                value = spent[label]
                print(f"    {label:44s}{value / n * 1e6:8.0f}   {value / whole * 100 if whole else 0:5.1f} %")
            rest = spent["  AuditStore.append"] - sum(spent[k] for k in (
                "    checkout + BEGIN", "    INSERT statements", "    COMMIT + return to pool"))
            label = "    rest of append (SQLAlchemy Core, rows)"
            print(f"    {label:44s}{rest / n * 1e6:8.0f}   "
                  f"{rest / whole * 100 if whole else 0:5.1f} %")
    finally:
        for fn in reversed(undo):
            fn()
        for name, fn in listeners:
            sqlalchemy.event.remove(engine, name, fn)
    cfg.drain()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default="both", choices=("both", "sqlite", "postgresql"),
                    help="both: SQLite, then a throwaway PostgreSQL when initdb is installed")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=200,
                    help="requests per round, configuration, transaction and client count")
    ap.add_argument("--clients", type=int, default=4, help="the concurrent client count (beside 1)")
    ap.add_argument("--patients", type=int, default=20, help="seeded patients that ITI-18 queries")
    ap.add_argument("--per-patient", type=int, default=10, help="documents of each seeded patient")
    ap.add_argument("--no-rsyslog", action="store_true", help="skip D even when rsyslog is installed")
    ap.add_argument("--profile", action="store_true", help="also break down the audit time of B")
    args = ap.parse_args()
    if args.clients < 2:
        ap.error("--clients must be at least 2 (1 client is always measured)")

    from tests import pgserver
    from tests import rsyslog as rsyslog_mod
    from tests.certs import Authority

    dbs = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    if "postgresql" in dbs and not pgserver.available():
        print("note: PostgreSQL skipped: initdb/pg_ctl not found (Debian package postgresql) and "
              "XDS_TEST_POSTGRES_URL not set")
        dbs.remove("postgresql")
        if not dbs:
            raise SystemExit("nothing to measure")
    work = tempfile.mkdtemp(prefix="xds-bench-audit-")
    ca = Authority(work)
    pki = {"ca": ca.path, "client": ca.issue("xds-node"), "arr": ca.issue("audit-repository")}
    rsyslog = None
    if args.no_rsyslog:
        print("note: D (delivery to rsyslog) skipped: --no-rsyslog")
    elif not rsyslog_mod.available():
        print(f"note: D (delivery to rsyslog) skipped: {rsyslog_mod.unavailable_reason()}")
    else:
        rsyslog = rsyslog_mod.Rsyslog(pki["ca"], *pki["arr"], folder=os.path.join(work, "rsyslog")).start()
    print(f"machine: {os.cpu_count()} CPUs, {os.uname().sysname} {os.uname().release}; python "
          f"{sys.version.split()[0]}; {args.clients} concurrent clients; configurations "
          + ", ".join(f"{k} = {NAMES[k]}" for k in ("A", "B", "C", "D") if k != "D" or rsyslog is not None))
    t0 = time.perf_counter()
    try:
        for db in dbs:
            run_database(db, args, work, pki, rsyslog)
    finally:
        if rsyslog is not None:
            rsyslog.close()
        shutil.rmtree(work, ignore_errors=True)
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
