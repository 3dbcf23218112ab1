"""ITI-41 upload throughput against a server subprocess, beside nginx receiving the same bytes.

    python bench/provide.py                       # 1 MB and 100 MB documents, 5 rounds, SQLite
    python bench/provide.py --sizes 1,10,100 --rounds 7 --db postgresql
    python bench/provide.py --install-nginx       # apt-get install nginx first when it is missing

Each round sends documents one after the other on one keep-alive connection, streaming each
file from disk (one PnR per document, so registry work is included), and PUTs the same files to
nginx (`dav_methods PUT`, which also writes a temp file and renames it into place). Prints MB/s
as the median over rounds and the ratio to nginx (target >= 0.5).

bench/retrieve.py imports the helpers below (server, nginx, requests).
"""
from __future__ import annotations

import argparse
import http.client
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from node.transfer import provide_and_register  # noqa: E402
from xds import builder  # noqa: E402
from xds import constants as C  # noqa: E402
from xds import mtom  # noqa: E402
from xds.client import SoapClient  # noqa: E402

PID = "BENCH1^^^&1.2.250.1.213.1.4.10&ISO"
MB = 1024 * 1024
CHUNK = 256 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the XDS server ----------------------------------------------------------------------------------

class XdsServer:
    """`python -m node.cli serve` in a child process, on a fresh data folder."""

    def __init__(self, workdir: str, db: str = "sqlite", fsync: bool = True, name: str = "xds-data"):
        self.data = os.path.join(workdir, name)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "node.cli", "serve", "--port", str(self.port), "--data", self.data,
               "--no-patient-check"]
        self.pg = None
        if db == "postgresql":
            from tests.pgserver import PgServer, create_database

            self.pg = PgServer()
            cmd += ["--db", create_database(self.pg.start(), "bench_repository")]
        elif db != "sqlite":
            cmd += ["--db", db]
        root = os.path.join(os.path.dirname(__file__), "..")
        env = dict(os.environ, XDS_LOG_LEVEL="WARNING", PYTHONPATH=os.path.abspath(root),
                   XDS_DOCUMENT_FSYNC="true" if fsync else "false")
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE)
        line = self.proc.stdout.readline()  # "xds: all on ..." once listening
        if not line:
            raise SystemExit("the xds server did not start")

    def peak_rss_mb(self) -> float:
        """VmHWM: the kernel's high-water mark of the process's resident memory."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        raise RuntimeError("no VmHWM in /proc status")

    def rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS in /proc status")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        if self.pg is not None:
            self.pg.stop()


# --- nginx --------------------------------------------------------------------------------------------

NGINX_CONF = """
worker_processes 1;
daemon off;
{user}
error_log {tmp}/error.log warn;
pid {tmp}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    client_max_body_size 0;
    client_body_buffer_size 1m;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {tmp}/www;
        location /upload/ {{
            dav_methods PUT;
            create_full_put_path on;
        }}
    }}
}}
"""


def nginx_binary(install: bool) -> str | None:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if found or not install:
        if not found:
            print("nginx is not installed: run `apt-get install nginx` (or pass --install-nginx) "
                  "for the comparison", file=sys.stderr)
        return found
    subprocess.run(["apt-get", "update", "-qq"], check=False)
    subprocess.run(["apt-get", "install", "-y", "-qq", "nginx"], check=True,
                   env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    return shutil.which("nginx") or "/usr/sbin/nginx"


class Nginx:
    """nginx in the foreground, with its whole configuration and state in a temp folder."""

    def __init__(self, binary: str, workdir: str):
        self.tmp = os.path.join(workdir, "nginx")
        self.www = os.path.join(self.tmp, "www")
        os.makedirs(os.path.join(self.www, "upload"), exist_ok=True)
        os.makedirs(os.path.join(self.tmp, "body"), exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # As root, workers drop to 'nobody' and could not write our folders; keep them as root.
        user = "user root;" if os.geteuid() == 0 else ""
        conf = os.path.join(self.tmp, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(tmp=self.tmp, port=self.port, user=user))
        self.proc = subprocess.Popen([binary, "-c", conf, "-p", self.tmp], stderr=subprocess.PIPE)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise SystemExit(f"nginx failed: {self.proc.stderr.read().decode()}")
                time.sleep(0.05)
        raise SystemExit("nginx did not start listening")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGQUIT)  # graceful: lets workers finish and exit
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# --- requests -------------------------------------------------------------------------------------------

def file_chunks(path: str):
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            yield block


def make_file(path: str, size: int) -> str:
    block = os.urandom(MB)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, MB)
            f.write(block[:n])
            left -= n
    return path


def pnr_request(url: str, unique_id: str, source, size: int, mime: str = "application/octet-stream"):
    """Body iterator and headers of a one-document ITI-41 whose content streams from `source`.

    source: a file path or an iterable of bytes (then size must be exact).
    """
    req = builder.simple_submission(PID, register=False, doc_kwargs={"unique_id": unique_id, "mime_type": mime})
    pnr, attachments = provide_and_register(req, {"Document01": b""})
    cid = attachments[0][0]
    writer = mtom.MtomWriter()
    if isinstance(source, str):
        writer.add_file(source, "application/octet-stream", cid)
    else:
        writer.add_stream(source, "application/octet-stream", cid, size=size)
    writer.set_root(SoapClient(url + "/xds/repository").envelope(C.ACTION_PROVIDE, pnr), "application/soap+xml")
    return writer.chunks(), {"Content-Type": writer.content_type(C.ACTION_PROVIDE),
                             "Content-Length": str(writer.content_length())}


def post_provide(conn: http.client.HTTPConnection, url: str, unique_id: str, source, size: int,
                 prepared=None) -> None:
    body, headers = prepared or pnr_request(url, unique_id, source, size)
    conn.request("POST", "/xds/repository", body=body, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    if b"ResponseStatusType:Success" not in data:
        raise SystemExit(f"ITI-41 failed (HTTP {resp.status}): {data[:600]!r}")


def put_nginx(conn: http.client.HTTPConnection, name: str, path: str) -> None:
    conn.request("PUT", f"/upload/{name}", body=file_chunks(path),
                 headers={"Content-Length": str(os.path.getsize(path)),
                          "Content-Type": "application/octet-stream"})
    resp = conn.getresponse()
    resp.read()
    if resp.status not in (201, 204):
        raise SystemExit(f"nginx PUT answered {resp.status}")


def connect(url: str) -> http.client.HTTPConnection:
    host, port = url.split("//")[1].split(":")
    return http.client.HTTPConnection(host, int(port), timeout=600, blocksize=CHUNK)


def docs_per_round(size: int) -> int:
    # Enough documents that a round moves at least ~64 MB, so small documents are not all latency.
    return max(2, min(64, (64 * MB) // size))


def upload_round(url: str, path: str, n: int, send, prepare=None) -> float:
    """MB/s of n uploads of path; prepare(path) builds each request's metadata before the clock starts."""
    conn = connect(url)
    size = os.path.getsize(path)
    prepared = [prepare(path) if prepare else None for _ in range(n)]
    t0 = time.perf_counter()
    for p in prepared:
        send(conn, path, p)
    elapsed = time.perf_counter() - t0
    conn.close()
    return n * size / MB / elapsed


def summary(label: str, rates: list[float]) -> float:
    m = statistics.median(rates)
    print(f"  {label:<26}: {m:8.1f} MB/s  (rounds: {', '.join(f'{r:.0f}' for r in rates)})")
    return m


def raw_registration_ms(db: str, work: str, pg=None, n: int = 300) -> float | None:
    """Median milliseconds of one single-document registration written as raw SQL (bench/register.py's
    rows, one transaction, one client) on the server's kind of database: what an ITI-41 must add to
    nginx's work whatever the server's own cost. None for a --db URL (no throwaway database to write)."""
    from register import raw_rows

    from sqlalchemy import insert

    from registry.store import RegistryStore

    if db == "sqlite":
        url = "sqlite:///" + os.path.join(work, "raw-registration.db")
    elif db == "postgresql" and pg is not None:
        from tests.pgserver import create_database

        url = create_database(pg.start(), "bench_raw_registration")
    else:
        return None
    store = RegistryStore(url)
    store.migrate()
    times = []
    try:
        for i in range(n + 30):
            rows = raw_rows(1 + i * 3)
            t0 = time.perf_counter()
            with store.engine.begin() as conn:
                for table, r in rows.items():
                    conn.execute(insert(table), r)
            if i >= 30:
                times.append((time.perf_counter() - t0) * 1000)
    finally:
        store.engine.dispose()
    return statistics.median(times)


def sha1_ms(path: str, repeat: int = 5) -> float:
    import hashlib

    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        h = hashlib.sha1()
        for block in file_chunks(path):
            h.update(block)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1,100", help="document sizes in MB, comma-separated")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--db", default="sqlite", help="'sqlite', 'postgresql' (throwaway server) or a URL")
    ap.add_argument("--fsync", choices=("on", "off", "both"), default="both",
                    help="document_fsync of the server; nginx never fsyncs, so 'off' is the like-for-like run")
    ap.add_argument("--workdir", help="where both servers keep their files (e.g. /dev/shm to leave the disk out)")
    ap.add_argument("--install-nginx", action="store_true", help="apt-get install nginx when it is missing")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="xds-bench-provide-", dir=args.workdir)
    modes = {"on": [True], "off": [False], "both": [True, False]}[args.fsync]
    servers = {f: XdsServer(work, args.db, fsync=f, name=f"xds-data-{f}") for f in modes}
    binary = nginx_binary(args.install_nginx)
    nginx = Nginx(binary, work) if binary else None
    try:
        pg = next((s.pg for s in servers.values() if s.pg is not None), None)
        raw_ms = raw_registration_ms(args.db, work, pg) if nginx else None
        if raw_ms is not None:
            print(f"raw SQL registration of one single-document submission ({args.db}, one client): "
                  f"{raw_ms:.2f} ms (median)")
        for size_mb in (float(s) for s in args.sizes.split(",")):
            size = int(size_mb * MB)
            path = make_file(os.path.join(work, f"doc-{size}.bin"), size)
            n = docs_per_round(size)
            print(f"{size_mb:g} MB documents, {n} per round, {args.rounds} rounds (median):")
            counter = iter(range(10**9))

            def send_nginx(conn, p, _prepared):
                put_nginx(conn, f"doc-{next(counter)}", p)

            rates: dict[str, list[float]] = {}
            senders = {}
            for f, server in servers.items():
                senders[f"ITI-41, fsync {'on' if f else 'off'}"] = (
                    server.url, lambda conn, p, prepared, u=server.url: post_provide(conn, u, None, p, size, prepared),
                    lambda p, u=server.url: pnr_request(u, builder.new_oid(), p, size))
            if nginx:
                senders["nginx PUT (no fsync)"] = (nginx.url, send_nginx, None)
            for url, send, prepare in senders.values():
                upload_round(url, path, 1, send, prepare)  # warm-up
            for _ in range(args.rounds):
                for label, (url, send, prepare) in senders.items():
                    os.sync()  # each round starts without the previous one's dirty pages
                    rates.setdefault(label, []).append(upload_round(url, path, n, send, prepare))
                if nginx:
                    shutil.rmtree(os.path.join(nginx.www, "upload"), ignore_errors=True)
                    os.makedirs(os.path.join(nginx.www, "upload"), exist_ok=True)
            medians = {label: summary(label, r) for label, r in rates.items()}
            if nginx:
                g = medians["nginx PUT (no fsync)"]
                target = 0.6 if size_mb >= 100 else 0.5
                for label, m in medians.items():
                    if label.startswith("ITI-41"):
                        print(f"  {'ratio ' + label[8:] + ' / nginx':<26}: {m / g:8.2f}  (target >= {target})")
                # What any server must do beyond nginx's PUT: the SHA-1 of the bytes and the registration's
                # rows. Even with nothing else, it could reach only this share of nginx's rate.
                if raw_ms is not None:
                    nginx_ms = size / MB / g * 1000
                    hash_ms = sha1_ms(path)
                    bound = nginx_ms / (nginx_ms + hash_ms + raw_ms)
                    print(f"  {'bound, same run':<26}: {bound:8.2f}  (nginx {nginx_ms:.2f} ms + SHA-1 {hash_ms:.2f} ms "
                          f"+ raw SQL registration {raw_ms:.2f} ms per document: the ratio of a server that did "
                          f"nothing else)")
            os.unlink(path)
        for f, server in servers.items():
            print(f"server (fsync {'on' if f else 'off'}) peak RSS: {server.peak_rss_mb():.1f} MB")
    finally:
        for server in servers.values():
            server.stop()
        if nginx:
            nginx.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
