"""ITI-43 download throughput beside nginx serving the same bytes, and the server's peak memory while
one very large document goes in (ITI-41) and comes out (ITI-43).

    python bench/retrieve.py                      # 1 MB and 100 MB, 5 rounds, then a 2 GB document
    python bench/retrieve.py --sizes 1,10,100 --rounds 7 --big-gb 0     # throughput only
    python bench/retrieve.py --sizes '' --big-gb 4                      # memory only, 4 GB
    python bench/retrieve.py --workdir /dev/shm   # both servers on tmpfs: software, not disk

Throughput: each round fetches every stored document once, one after the other on a keep-alive
connection, and reads the answer to the end; nginx answers GET for the same files (sendfile).
Memory: a fresh server receives the large document from a generator (never on the client's disk)
and sends it back; the client hashes the document's bytes out of the MTOM stream and discards
them, and the server's VmHWM (peak resident set, /proc/<pid>/status) is printed (target < 100 MB).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import provide as P  # noqa: E402  (the helpers of bench/provide.py)

from node.transfer import retrieve_request  # noqa: E402
from xds import builder  # noqa: E402
from xds import constants as C  # noqa: E402
from xds import mtom  # noqa: E402
from xds.client import SoapClient  # noqa: E402

REPO = "1.2.250.1.999.3.1"
READ = 1024 * 1024

def retrieve_body(url: str, unique_id: str):
    writer = mtom.MtomWriter()
    writer.set_root(SoapClient(url + "/xds/repository").envelope(C.ACTION_RETRIEVE, retrieve_request(unique_id, REPO)),
                    "application/soap+xml")
    return b"".join(writer.chunks()), {"Content-Type": writer.content_type(C.ACTION_RETRIEVE),
                                       "Content-Length": str(writer.content_length())}

def get_xds(conn, url: str, unique_id: str, prepared=None) -> int:
    body, headers = prepared or retrieve_body(url, unique_id)
    conn.request("POST", "/xds/repository", body=body, headers=headers)
    resp = conn.getresponse()
    n = 0
    while block := resp.read(READ):
        n += len(block)
    if resp.status != 200:
        raise SystemExit(f"ITI-43 answered HTTP {resp.status}")
    return n

def get_nginx(conn, name: str) -> int:
    conn.request("GET", f"/static/{name}")
    resp = conn.getresponse()
    n = 0
    while block := resp.read(READ):
        n += len(block)
    if resp.status != 200:
        raise SystemExit(f"nginx GET answered {resp.status}")
    return n

def timed_round(url: str, fetch, items) -> float:
    conn = P.connect(url)
    t0 = time.perf_counter()
    total = sum(fetch(conn, item) for item in items)
    elapsed = time.perf_counter() - t0
    conn.close()
    return total / P.MB / elapsed

def throughput(args, work: str, nginx) -> None:
    server = P.XdsServer(work, args.db, name="xds-throughput")
    try:
        if nginx:
            os.makedirs(os.path.join(nginx.www, "static"), exist_ok=True)
        for size_mb in (float(s) for s in args.sizes.split(",") if s):
            size = int(size_mb * P.MB)
            path = P.make_file(os.path.join(work, f"doc-{size}.bin"), size)
            n = P.docs_per_round(size)
            uids = [builder.new_oid() for _ in range(n)]
            conn = P.connect(server.url)
            for uid in uids:
                P.post_provide(conn, server.url, uid, path, size)
            conn.close()
            names = []
            if nginx:
                for i in range(n):
                    name = f"doc-{size}-{i}"
                    shutil.copyfile(path, os.path.join(nginx.www, "static", name))
                    names.append(name)
            os.unlink(path)
            print(f"{size_mb:g} MB documents, {n} per round, {args.rounds} rounds (median):")
            prepared = {uid: retrieve_body(server.url, uid) for uid in uids}
            fetch_xds = lambda conn, uid: get_xds(conn, server.url, uid, prepared[uid])  # noqa: E731
            timed_round(server.url, fetch_xds, uids[:2])  # warm-up
            xds_rates, nginx_rates = [], []
            for _ in range(args.rounds):
                xds_rates.append(timed_round(server.url, fetch_xds, uids))
                if nginx:
                    nginx_rates.append(timed_round(nginx.url, get_nginx, names))
            x = P.summary("ITI-43 (xds)", xds_rates)
            if nginx:
                g = P.summary("nginx GET (sendfile)", nginx_rates)
                print(f"  {'ratio xds / nginx':<26}: {x / g:8.2f}  (target >= 0.5)")
    finally:
        server.stop()

# --- one very large document ----------------------------------------------------------------------------

def generated(total: int, digest):
    """The document's bytes, made on the fly: a random megabyte repeated, hashed as it goes out."""
    block = os.urandom(P.MB)
    left = total
    while left:
        piece = block[:min(left, P.MB)]
        digest.update(piece)
        left -= len(piece)
        yield piece

def download_hashing(conn, url: str, unique_id: str, size: int) -> tuple[str, float]:
    """Fetch one document and SHA-1 its bytes straight out of the MTOM stream, keeping none of it.

    The answer ends with the document's part and the closing delimiter, and its Content-Length is
    exact, so the document occupies a known window of the body: no parsing, no spooling.
    """
    body, headers = retrieve_body(url, unique_id)
    t0 = time.perf_counter()
    conn.request("POST", "/xds/repository", body=body, headers=headers)
    resp = conn.getresponse()
    boundary = mtom.parse_content_type(resp.getheader("Content-Type"))[1]["boundary"]
    total = int(resp.getheader("Content-Length"))
    end = total - len(f"\r\n--{boundary}--\r\n")
    start = end - size
    digest = hashlib.sha1()
    pos = 0
    while block := resp.read(READ):
        lo, hi = max(start, pos), min(end, pos + len(block))
        if lo < hi:
            digest.update(memoryview(block)[lo - pos:hi - pos])
        pos += len(block)
    if pos != total:
        raise SystemExit(f"ITI-43 body ended after {pos} of {total} bytes")
    return digest.hexdigest(), time.perf_counter() - t0

def big_document(args, work: str) -> None:
    size = int(args.big_gb * 1024 ** 3)
    server = P.XdsServer(work, args.db, name="xds-big")
    try:
        # A small round trip first, so that the baseline includes every import and the first connection.
        conn = P.connect(server.url)
        warm = builder.new_oid()
        P.post_provide(conn, server.url, warm, [b"warm-up"], 7)
        get_xds(conn, server.url, warm)
        base = server.peak_rss_mb()
        print(f"{args.big_gb:g} GB document; server peak RSS after warm-up: {base:.1f} MB")

        uid, sent = builder.new_oid(), hashlib.sha1()
        t0 = time.perf_counter()
        P.post_provide(conn, server.url, uid, generated(size, sent), size)
        up = time.perf_counter() - t0
        after_up = server.peak_rss_mb()
        print(f"  ITI-41 in : {size / P.MB / up:8.1f} MB/s; server peak RSS {after_up:.1f} MB")

        got, down = download_hashing(conn, server.url, uid, size)
        conn.close()
        after_down = server.peak_rss_mb()
        print(f"  ITI-43 out: {size / P.MB / down:8.1f} MB/s; server peak RSS {after_down:.1f} MB")
        print(f"  SHA-1 sent {sent.hexdigest()} / received {got}: {'same' if got == sent.hexdigest() else 'DIFFERENT'}")
        print(f"  peak RSS over the whole run: {after_down:.1f} MB (target < 100 MB)")
    finally:
        server.stop()

def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1,100", help="document sizes in MB for throughput ('' to skip)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--big-gb", type=float, default=2.0, help="size of the memory test's document (0 to skip)")
    ap.add_argument("--db", default="sqlite", help="'sqlite', 'postgresql' (throwaway server) or a URL")
    ap.add_argument("--workdir", help="where the servers keep their files (e.g. /dev/shm to leave the disk out)")
    ap.add_argument("--install-nginx", action="store_true", help="apt-get install nginx when it is missing")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="xds-bench-retrieve-", dir=args.workdir)
    nginx = None
    try:
        if args.sizes:
            binary = P.nginx_binary(args.install_nginx)
            nginx = P.Nginx(binary, work) if binary else None
            throughput(args, work, nginx)
        if args.big_gb > 0:
            big_document(args, work)
    finally:
        if nginx:
            nginx.stop()
        shutil.rmtree(work, ignore_errors=True)

if __name__ == "__main__":
    main()
