"""Two revisions of the server, one loaded registry, the same ITI-18 requests sent to each in turn.

These machines are shared and noisy: two runs of bench/query.py minutes apart can differ by a third, which
hides a change worth 5 %. Here the registry of revision A and the registry of revision B run side by side
(`node.cli serve --role registry`, each from its own git worktree, production configuration: XUA, policy,
audit) on the same database, and every request goes to both, alternating which is first; the noise then
falls on both alike and the ratio B/A is what the change did.

    python bench/ab.py --pgdata /work/pgbig --entries 1000000 --a 90c2850 --b HEAD
    python bench/ab.py --db postgresql+psycopg2://xds@host/xds_1000000 --a main --b HEAD \\
        --queries 'FindDocuments (record: patient+Approved),GetRelatedDocuments'

The database is one that bench/query.py loaded (--pgdata DIR --entries N finds xds_N in that cluster).
Prints, per query, each side's p50 and p99 over the same requests and the ratio B/A of the p50s.
"""
from __future__ import annotations

import argparse
import http.client
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [HERE, ROOT]

import query as Q  # noqa: E402  (bench/query.py: its Server, cases and post)
from load_registry import Cluster, _dsn, db_name  # noqa: E402


def worktree(revision: str, into: str) -> str:
    """A checkout of revision (detached) in a folder of its own."""
    path = os.path.join(into, revision.replace("/", "_"))
    subprocess.run(["git", "-C", ROOT, "worktree", "add", "-q", "--detach", path, revision], check=True)
    return path


def server_from(tree: str, url: str) -> "Q.Server":
    """bench/query.py's Server, started from tree (its cwd decides which code `python -m node.cli` runs)."""
    saved = Q.__file__
    Q.__file__ = os.path.join(tree, "bench", "query.py")
    try:
        return Q.Server(url, xua=True)
    finally:
        Q.__file__ = saved


def interleaved(a: "Q.Server", b: "Q.Server", qid: str, slots: list, warm: int = 50) -> tuple[list, list]:
    conns = [http.client.HTTPConnection("127.0.0.1", s.port) for s in (a, b)]
    bodies = [[s.body(qid, sl) for sl in slots] for s in (a, b)]
    for i in range(min(warm, len(slots))):
        for c, bs in zip(conns, bodies):
            Q.post(c, bs[i])
    lat: tuple[list, list] = ([], [])
    for i in range(len(slots)):
        order = (0, 1) if i % 2 == 0 else (1, 0)
        for side in order:
            t = time.perf_counter()
            Q.post(conns[side], bodies[side][i])
            lat[side].append((time.perf_counter() - t) * 1000)
    for c in conns:
        c.close()
    return lat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", help="the loaded database's URL")
    ap.add_argument("--pgdata", help="a bench/query.py cluster folder (with --entries)")
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--a", required=True, help="revision A (the reference)")
    ap.add_argument("--b", default="HEAD", help="revision B")
    ap.add_argument("--queries", default="FindDocuments (record: patient+Approved),FindDocuments typeCode,"
                                         "GetFolderAndContents,GetRelatedDocuments")
    ap.add_argument("--requests", type=int, default=600, help="per query, to each side")
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args()
    if not args.db and not args.pgdata:
        ap.error("--db or --pgdata is needed")
    cluster = None
    if args.db:
        url = args.db
    else:
        cluster = Cluster(args.pgdata)
        url = cluster.start().rsplit("/", 1)[0] + "/" + db_name(args.entries, None)
    trees_dir = tempfile.mkdtemp(prefix="xds-bench-ab-")
    trees, servers = [], []
    try:
        trees = [worktree(args.a, trees_dir), worktree(args.b, trees_dir)]
        servers = [server_from(t, url) for t in trees]
        import psycopg2

        raw = psycopg2.connect(_dsn(url))
        cases = {name: (qid, slots) for name, qid, slots, _ in Q.http_cases(raw, random.Random(args.seed),
                                                                             args.requests)}
        raw.close()
        print(f"A = {args.a}, B = {args.b}; {args.requests} requests per query to each, alternating which is "
              f"first; security xua, policy and audit on; one client")
        for name in args.queries.split(","):
            if name not in cases:
                raise SystemExit(f"no query named {name!r}; bench/query.py has: {', '.join(cases)}")
            la, lb = interleaved(*servers, *cases[name])
            pa, pb = statistics.median(la), statistics.median(lb)
            print(f"  {name:<42} A p50 {pa:6.2f} p99 {Q.pct(la, 99):6.2f} ms   B p50 {pb:6.2f} p99 "
                  f"{Q.pct(lb, 99):6.2f} ms   B/A {pb / pa:.3f}")
    finally:
        for s in servers:
            s.stop()
        for t in trees:
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", t], check=False)
        shutil.rmtree(trees_dir, ignore_errors=True)
        if cluster is not None:
            cluster.stop()


if __name__ == "__main__":
    main()
