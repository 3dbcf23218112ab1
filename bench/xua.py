"""What XUA costs: assertion verification in process, and ITI-18 FindDocuments throughput over HTTP
with security = xua against the same server with security = none, measured in the same run.

    python bench/xua.py                      # 2,000 verifications, 4 clients x 20 s per mode, SQLite
    python bench/xua.py --clients 8 --seconds 30

Verification is timed two ways: a fresh assertion each time (signature checked: the cost of a new
token), and one assertion reused (XUA lets a client reuse an STS's assertion until it expires; the
server remembers the verified bytes). Throughput: each client reuses one assertion for its whole run,
as a consumer's software holding an STS token does. Targets (issue 11): verification median <= 1 ms;
FindDocuments with xua >= 85 % of none.
"""
from __future__ import annotations

import argparse
import base64
import datetime as _dt
import os
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from lxml import etree  # noqa: E402

from node.server import Services  # noqa: E402
from xds import builder  # noqa: E402
from xds import constants as C  # noqa: E402
from xds.client import ConnectionPool, SoapClient  # noqa: E402
from xds.security import issue  # noqa: E402
from xds.security.issue import DEFAULT_AUDIENCE, Issuer  # noqa: E402
from xds.security.xua import TrustStore, XuaAuthenticator, XuaConfig  # noqa: E402
from xds.settings import Settings  # noqa: E402

PID = "BENCH1^^^&1.2.250.1.213.1.4.10&ISO"


def floor(sts: Issuer, n: int) -> float:
    """The work no verifier can skip, done by hand on the same assertions: exclusive c14n of the
    assertion and of SignedInfo, the SHA-256 digest and the RSA check. A reference measured in the
    same run, since these machines are shared and their speed drifts."""
    import copy
    import hashlib

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    ds = "{http://www.w3.org/2000/09/xmldsig#}"
    key = sts.certificate.public_key()
    items = [sts.issue("valid") for _ in range(n)]
    times = []
    for a in items:
        t = time.perf_counter()
        bare = copy.deepcopy(a)
        sig = bare.find(ds + "Signature")
        bare.remove(sig)
        hashlib.sha256(etree.tostring(bare, method="c14n", exclusive=True)).digest()
        signed_info = etree.tostring(a.find(ds + "Signature/" + ds + "SignedInfo"), method="c14n", exclusive=True)
        value = base64.b64decode(a.findtext(ds + "Signature/" + ds + "SignatureValue"))
        key.verify(value, signed_info, padding.PKCS1v15(), hashes.SHA256())
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def verification(sts: Issuer, cert: str, n: int) -> tuple[float, float]:
    auth = XuaAuthenticator(XuaConfig(TrustStore([cert]), audiences=(DEFAULT_AUDIENCE,)))
    fresh = [issue.wsse_security(sts.issue("valid")) for _ in range(n)]
    auth.authenticate([issue.wsse_security(sts.issue("valid"))], None)  # imports and first-use caches
    times = []
    for header in fresh:
        t = time.perf_counter()
        auth.authenticate([header], None)
        times.append(time.perf_counter() - t)
    reused = []
    for _ in range(n):
        t = time.perf_counter()
        auth.authenticate([fresh[0]], None)
        reused.append(time.perf_counter() - t)
    return statistics.median(times) * 1000, statistics.median(reused) * 1000


def throughput(services: Services, headers_for, clients: int, seconds: float) -> tuple[float, int]:
    url = services.url + "/xds/registry"
    counts = [0] * clients
    errors = [0] * clients
    stop = time.monotonic() + seconds

    def run(i: int) -> None:
        client = SoapClient(url, 30, pool=ConnectionPool())
        headers = headers_for()
        body = builder.find_documents_request(PID)
        while time.monotonic() < stop:
            reply = client.call(C.ACTION_QUERY, body, extra_headers=headers)
            if reply.is_fault or reply.body.get("status") != C.RESPONSE_SUCCESS:
                errors[i] += 1
            else:
                counts[i] += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / seconds, sum(errors)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=2000, help="verifications timed")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--entries", type=int, default=20, help="DocumentEntries of the queried patient")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="xds-bench-xua-")
    key, cert, _ = issue.signing_pair(os.path.join(work, "sts"))
    sts = Issuer(key, cert, validity=_dt.timedelta(hours=4))

    fresh, reused = verification(sts, cert, args.n)
    least = floor(sts, args.n)
    print(f"verification, fresh assertion: median {fresh:.3f} ms; reused assertion: median {reused:.4f} ms "
          f"(target <= 1 ms); c14n + digest + RSA by hand: {least:.3f} ms (fresh/floor {fresh / least:.1f}x)")

    common = dict(port=0, check_patients=False, settle_interval=0, threads=max(16, args.clients * 2))
    none = Services(Settings(data=os.path.join(work, "none"), **common)).start()
    xua = Services(Settings(data=os.path.join(work, "xua"), security="xua", xua_trust=[cert],
                            xua_audiences=[DEFAULT_AUDIENCE], **common)).start()
    try:
        for services in (none, xua):
            services.registry.register_element(builder.simple_submission(PID, args.entries))
        rates = {"none": [], "xua": []}
        for _ in range(args.rounds):
            for name, services, headers_for in (
                    ("none", none, lambda: []),
                    ("xua", xua, lambda: [issue.wsse_security(sts.issue("valid"))])):
                rate, errors = throughput(services, headers_for, args.clients, args.seconds)
                rates[name].append(rate)
                print(f"  {name:4s}: {rate:7.1f} FindDocuments/s ({args.clients} clients, {args.entries} entries, "
                      f"{errors} errors)")
        a, b = statistics.median(rates["none"]), statistics.median(rates["xua"])
        print(f"FindDocuments: none median {a:.1f}/s, xua median {b:.1f}/s, ratio {b / a:.2f} (target >= 0.85)")
    finally:
        xua.stop()
        none.stop()


if __name__ == "__main__":
    main()
