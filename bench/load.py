"""Many concurrent clients for minutes: ITI-41 (small documents), ITI-18 and ITI-43 mixed, against a
server in its own process on PostgreSQL; answers per second, every error by kind, latency, and the
server's resident memory over the run.

    python bench/load.py                          # 200 clients, 120 s, throwaway PostgreSQL
    python bench/load.py --clients 100 --duration 30 --db sqlite
    python bench/load.py --server-env XDS_THREADS=64 --server-env XDS_MAX_CONNECTIONS=512
    python bench/load.py --url http://host:8080 --pid 1234      # an existing server (RSS of that pid)

Each client is a thread with one keep-alive connection (a new one after an error) that sends requests
back to back, choosing each by the --mix weights. The work stays the same throughout: ITI-18 asks about
--patients patients that hold the --seed-docs documents stored before the clock starts, ITI-41 stores
documents for other patients (a fresh uniqueId each), ITI-43 fetches any stored document. Errors are
counted by kind: HTTP errors (by status), resets, closes without response, SOAP Failure (a 200 whose
status is not Success), timeouts, other.
The server's VmRSS is sampled every --sample seconds; after --warmup seconds the samples are split in
two halves and memory is called flat when the second half's median is within max(5 MB, 3 %) of the
first half's. The target is 0 errors.
"""
from __future__ import annotations

import argparse
import http.client
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from lxml import etree  # noqa: E402

from node.transfer import provide_and_register, retrieve_request  # noqa: E402
from xds import builder, mtom  # noqa: E402
from xds import constants as C  # noqa: E402
from xds.client import SoapClient  # noqa: E402

REPO = "1.2.250.1.999.3.1"
PID_ROOT = "1.2.250.1.213.1.4.10"
# Stand-ins in the ITI-41 template, replaced in each request (the server needs fresh uniqueIds).
DOC_UID, SS_UID, PID_MARK = "9.9.9.1111111111", "9.9.9.2222222222", "LOADPIDXXXXXX"
SUCCESS = b"ResponseStatusType:Success"


def start_server(db_url: str, data: str, extra_env: dict[str, str]) -> tuple[subprocess.Popen, str, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, XDS_LOG_LEVEL="WARNING", **extra_env)
    log_path = os.path.join(os.path.dirname(data), "server.log")
    proc = subprocess.Popen([sys.executable, "-m", "node.cli", "serve", "--port", str(port), "--db", db_url,
                             "--data", data, "--no-patient-check"], env=env, stdout=subprocess.PIPE,
                            stderr=open(log_path, "wb"), cwd=os.path.join(os.path.dirname(__file__), ".."))
    line = proc.stdout.readline()  # "xds: all on ..." once listening
    if not line:
        raise SystemExit(f"the server did not start; see {log_path}")
    return proc, f"http://127.0.0.1:{port}", log_path


def pid_of(n: int, kind: str = "R") -> str:
    """Patient n: "R" patients hold the seeded documents and are queried; "W" patients receive the
    ITI-41 of the run, so that what a query returns (and costs) stays the same throughout."""
    return f"LOAD{kind}{n:08d}^^^&{PID_ROOT}&ISO"


class Requests:
    """Request bodies, built before the clock starts; ITI-41 from one template with fresh ids."""

    def __init__(self, url: str, patients: int, doc_bytes: int):
        self.patients = patients
        client = SoapClient(url + "/xds/repository")
        template_pid = f"{PID_MARK}^^^&{PID_ROOT}&ISO"
        req = builder.simple_submission(template_pid, register=False, doc_kwargs={"unique_id": DOC_UID},
                                        ss_kwargs={"unique_id": SS_UID})
        pnr, attachments = provide_and_register(req, {"Document01": b"\0" * doc_bytes})
        writer = mtom.MtomWriter()
        for cid, ctype, data in attachments:
            writer.add_bytes(data, ctype, cid)
        writer.set_root(client.envelope(C.ACTION_PROVIDE, pnr), "application/soap+xml")
        self.provide_template = b"".join(writer.chunks())
        self.provide_type = writer.content_type(C.ACTION_PROVIDE)
        assert self.provide_template.count(DOC_UID.encode()) == 1 and PID_MARK.encode() in self.provide_template
        self.doc_bytes = doc_bytes
        self.queries = [self._query(client, pid_of(n)) for n in range(patients)]

    @staticmethod
    def _query(client: SoapClient, pid: str) -> bytes:
        return SoapClient("http://x/xds/registry").envelope(C.ACTION_QUERY, builder.find_documents_request(pid))

    def provide(self, rnd: random.Random, seeding: bool = False) -> tuple[bytes, str]:
        uid = f"2.25.{uuid.uuid4().int}"
        patient = pid_of(rnd.randrange(self.patients)) if seeding else pid_of(rnd.randrange(10 ** 8), "W")
        pid = patient.split("^", 1)[0]
        body = (self.provide_template.replace(DOC_UID.encode(), uid.encode())
                .replace(SS_UID.encode(), f"2.25.{uuid.uuid4().int}".encode())
                .replace(PID_MARK.encode(), pid.encode()))
        return body, uid

    @staticmethod
    def retrieve(uid: str) -> tuple[bytes, str]:
        writer = mtom.MtomWriter()
        writer.set_root(SoapClient("http://x/xds/repository").envelope(C.ACTION_RETRIEVE, _retrieve_set(uid)),
                        "application/soap+xml")
        return b"".join(writer.chunks()), writer.content_type(C.ACTION_RETRIEVE)


def _retrieve_set(uid: str) -> etree._Element:
    req = etree.Element(f"{{{C.NS_XDSB}}}RetrieveDocumentSetRequest", nsmap={"xdsb": C.NS_XDSB})
    req.append(retrieve_request(uid, REPO)[0])
    return req


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.ok = Counter()
        self.errors = Counter()
        self.latency: dict[str, list[float]] = {"ITI-41": [], "ITI-18": [], "ITI-43": []}
        self.first_errors: list[str] = []

    def error(self, kind: str, detail: str) -> None:
        with self.lock:
            self.errors[kind] += 1
            if len(self.first_errors) < 5:
                self.first_errors.append(f"{kind}: {detail[:200]}")


def classify(exc: BaseException) -> str:
    if isinstance(exc, http.client.RemoteDisconnected):
        return "closed without response"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return "reset"
    if isinstance(exc, http.client.IncompleteRead):
        return "closed mid-response"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    return f"other ({exc.__class__.__name__})"


def client_loop(k: int, url: str, reqs: Requests, uids: list[str], weights: list[int], end: float,
                tally: Tally, timeout: float) -> None:
    host, port = url.split("//")[1].split(":")
    rnd = random.Random(k)
    conn = None
    ops = ["ITI-41", "ITI-18", "ITI-43"]
    while time.monotonic() < end:
        op = rnd.choices(ops, weights)[0]
        if op == "ITI-41":
            body, uid = reqs.provide(rnd)
            path, ctype = "/xds/repository", reqs.provide_type
        elif op == "ITI-18":
            body, uid = reqs.queries[rnd.randrange(len(reqs.queries))], None
            path, ctype = "/xds/registry", f'application/soap+xml; charset=UTF-8; action="{C.ACTION_QUERY}"'
        else:
            uid = uids[rnd.randrange(len(uids))]
            body, ctype = reqs.retrieve(uid)
            path = "/xds/repository"
        if conn is None:
            conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
        t0 = time.perf_counter()
        try:
            conn.request("POST", path, body=body, headers={"Content-Type": ctype})
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            tally.error(classify(exc), f"{op}: {exc!r}")
            conn.close()
            conn = None
            continue
        elapsed = time.perf_counter() - t0
        if resp.status != 200:
            tally.error(f"HTTP {resp.status}", f"{op}: {data[:200]!r}")
        elif SUCCESS not in data:
            tally.error("SOAP Failure", f"{op}: {data[:300]!r}")
        elif op == "ITI-43" and data.count(b"\0" * reqs.doc_bytes) < 1:
            tally.error("SOAP Failure", f"{op}: the document is not in the answer")
        else:
            with tally.lock:
                tally.ok[op] += 1
                tally.latency[op].append(elapsed)
            if op == "ITI-41":
                uids.append(uid)  # list.append is atomic: retrievable from now on
        if resp.will_close:
            conn.close()
            conn = None
    if conn is not None:
        conn.close()


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def sampler(pid: int | None, every: float, stop: threading.Event, samples: list, t0: float, tally) -> None:
    """(seconds, RSS MB, answers so far) every `every` seconds."""
    while not stop.wait(every):
        mb = rss_mb(pid) if pid is not None else None
        samples.append((time.monotonic() - t0, mb, sum(tally.ok.values())))


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))] if s else float("nan")


def seed(url: str, reqs: Requests, n: int) -> list[str]:
    """n documents stored before the clock starts, so that ITI-18 and ITI-43 find something."""
    host, port = url.split("//")[1].split(":")
    uids: list[str] = []
    rnd = random.Random(-1)

    def one(count: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        for _ in range(count):
            body, uid = reqs.provide(rnd, seeding=True)
            conn.request("POST", "/xds/repository", body=body, headers={"Content-Type": reqs.provide_type})
            data = conn.getresponse().read()
            if SUCCESS not in data:
                raise SystemExit(f"seeding failed: {data[:500]!r}")
            uids.append(uid)
        conn.close()

    threads = [threading.Thread(target=one, args=(n // 10,)) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return uids


def memory_verdict(samples: list[tuple[float, float]], warmup: float) -> str:
    after = [mb for t, mb in samples if t >= warmup and mb is not None]
    if len(after) < 4:
        return "memory: too few samples after the warm-up for a verdict"
    half = len(after) // 2
    first, second = statistics.median(after[:half]), statistics.median(after[half:])
    growth = second - first
    flat = growth <= max(5.0, 0.03 * first)
    return (f"memory after {warmup:g} s of warm-up: first half median {first:.1f} MB, second half median "
            f"{second:.1f} MB, growth {growth:+.1f} MB ({growth / first * 100:+.1f} %), max {max(after):.1f} MB"
            f" -> {'FLAT' if flat else 'GROWING'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", default="postgresql", help="'postgresql' (throwaway server), 'sqlite', or a URL")
    ap.add_argument("--url", help="an already running server (its database must accept any patient)")
    ap.add_argument("--pid", type=int, help="with --url: the server's process id, for its RSS")
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--duration", type=float, default=120, help="seconds of load")
    ap.add_argument("--mix", default="1,2,2", help="weights of ITI-41, ITI-18, ITI-43 (default 1,2,2)")
    ap.add_argument("--doc-bytes", type=int, default=2048, help="size of each ITI-41 document")
    ap.add_argument("--patients", type=int, default=100, help="patients that ITI-18 asks about")
    ap.add_argument("--seed-docs", type=int, default=500,
                    help="documents stored for those patients before the clock starts")
    ap.add_argument("--sample", type=float, default=5, help="seconds between RSS samples")
    ap.add_argument("--warmup", type=float, default=20, help="seconds left out of the memory verdict")
    ap.add_argument("--timeout", type=float, default=60, help="client socket timeout, seconds")
    ap.add_argument("--server-env", action="append", default=[], metavar="XDS_NAME=VALUE",
                    help="a setting for the server process (repeatable)")
    args = ap.parse_args()
    weights = [int(w) for w in args.mix.split(",")]
    extra_env = dict(kv.split("=", 1) for kv in args.server_env)

    pg = None
    tmp = tempfile.mkdtemp(prefix="xds-load-")
    db_url = args.db
    if args.db == "postgresql" and not args.url:
        from tests.pgserver import PgServer, create_database

        pg = PgServer()
        db_url = create_database(pg.start(), "bench_load")
    elif args.db == "sqlite":
        db_url = f"sqlite:///{tmp}/registry.db"
    proc, log_path = None, None
    try:
        url, pid = args.url, args.pid
        if not url:
            proc, url, log_path = start_server(db_url, os.path.join(tmp, "data"), extra_env)
            pid = proc.pid
        reqs = Requests(url, args.patients, args.doc_bytes)
        uids = seed(url, reqs, args.seed_docs)
        tally = Tally()
        samples: list[tuple[float, float]] = []
        stop = threading.Event()
        t0 = time.monotonic()
        cpu0 = cpu_seconds(pid) if pid else None
        samples.append((0.0, rss_mb(pid) if pid else None, 0))
        rss = threading.Thread(target=sampler, args=(pid, args.sample, stop, samples, t0, tally), daemon=True)
        rss.start()
        end = t0 + args.duration
        clients = [threading.Thread(target=client_loop, args=(k, url, reqs, uids, weights, end, tally, args.timeout),
                                    daemon=True) for k in range(args.clients)]
        for c in clients:
            c.start()
        for c in clients:
            c.join()
        elapsed = time.monotonic() - t0
        stop.set()
        cpu = (cpu_seconds(pid) - cpu0) if pid and cpu0 is not None else None

        answers = sum(tally.ok.values())
        errors = sum(tally.errors.values())
        every = [x for v in tally.latency.values() for x in v]
        print(f"machine: {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python "
              f"{platform.python_version()}")
        print(f"load: {args.clients} clients for {elapsed:.1f} s, mix ITI-41:ITI-18:ITI-43 = {args.mix}, "
              f"{args.doc_bytes}-byte documents, database {db_url.split(':', 1)[0]}, "
              f"{args.seed_docs} documents seeded" + (f", server env {extra_env}" if extra_env else ""))
        print(f"answers: {answers} in {elapsed:.1f} s = {answers / elapsed:.1f} answers/s  (" +
              ", ".join(f"{op} {tally.ok[op] / elapsed:.1f}/s" for op in tally.latency) + ")")
        kinds = ["HTTP errors", "reset", "closed without response", "SOAP Failure", "timeout"]
        http_errors = sum(n for k, n in tally.errors.items() if k.startswith("HTTP "))
        others = {k: n for k, n in tally.errors.items() if not k.startswith("HTTP ") and k not in kinds}
        print(f"errors: {errors} ({errors / max(1, errors + answers) * 100:.3f} %) - HTTP errors {http_errors}"
              + (f" {dict((k, n) for k, n in tally.errors.items() if k.startswith('HTTP '))}" if http_errors else "")
              + f", resets {tally.errors['reset']}, closes without response {tally.errors['closed without response']}"
              f", SOAP Failure {tally.errors['SOAP Failure']}, timeouts {tally.errors['timeout']}"
              + (f", other {others}" if others else ""))
        for line in tally.first_errors:
            print(f"  first errors: {line}")
        if every:
            print(f"latency: median {statistics.median(every) * 1000:.1f} ms, p99 {pct(every, 99) * 1000:.1f} ms  (" +
                  ", ".join(f"{op} {statistics.median(v) * 1000:.1f}/{pct(v, 99) * 1000:.1f}"
                            for op, v in tally.latency.items() if v) + " ms median/p99)")
        if cpu is not None:
            print(f"server CPU: {cpu:.1f} s over {elapsed:.1f} s ({cpu / elapsed * 100:.0f} % of one core)")
        rates = [(n1 - n0) / (t1 - t0_) for (t0_, _, n0), (t1, _, n1) in zip(samples, samples[1:])]
        print(f"answers/s in each {args.sample:g} s: " + " ".join(f"{r:.0f}" for r in rates))
        if pid:
            print(f"server RSS (MB) every {args.sample:g} s: " + " ".join(f"{mb:.0f}" for _, mb, _ in samples
                                                                         if mb is not None))
            print(memory_verdict([(t, mb) for t, mb, _ in samples], args.warmup))
        if log_path:
            with open(log_path, "rb") as f:
                levels = Counter(w for line in f for w in ("WARNING", "ERROR", "CRITICAL") if w.encode() in line)
            print(f"server log: {levels['WARNING']} warnings, {levels['ERROR'] + levels['CRITICAL']} errors "
                  f"({log_path})")
    finally:
        if proc:
            proc.terminate()
            proc.wait()
        if pg:
            pg.stop()


if __name__ == "__main__":
    main()
