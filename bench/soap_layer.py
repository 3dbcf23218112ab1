"""Measure spyne against the thin lxml SOAP layer (xds.soap + xds.mtom), in-process.

    python bench/soap_layer.py [--rounds 7] [--echo-calls 500] [--mtom-rounds 5] [--sizes 1,32]

(a) per-request cost of a ~5 KB SOAP 1.2 echo through each WSGI callable;
(b) 1 MB and 32 MB MTOM requests: seconds, peak RSS delta and tracemalloc peak,
    each measurement in a fresh child process so that high-water marks do not leak
    from one case into the next;
(c) what spyne does with an MTOM response, two operations sharing one body
    element (ITI-42 / ITI-57 both send lcm:SubmitObjectsRequest), and an unknown
    mustUnderstand header.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import io
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
# spyne imports the deprecated cgi module; the warning is noise for a benchmark.
warnings.filterwarnings("ignore", category=DeprecationWarning)
# spyne logs every exception it turns into a fault; the bench reports them itself.
logging.basicConfig(level=logging.CRITICAL)

from lxml import etree  # noqa: E402

from xds import constants as C  # noqa: E402
from xds.errors import SoapFault  # noqa: E402
from xds.mtom import MtomWriter, read_multipart, resolve_xop, xop_include  # noqa: E402
from xds.soap import SOAP12, build_envelope, build_fault, parse_envelope  # noqa: E402

TNS = "urn:xds:bench"
MB = 1024 * 1024
SOAP12_CT = "application/soap+xml; charset=UTF-8"
IMPLS = ("spyne", "spyne-huge", "thin")


# --------------------------------------------------------------------------------------------
# The two server sides


def spyne_apps(huge_tree: bool = False):
    from spyne import Application, AnyXml, ByteArray, Integer, ServiceBase, Unicode, rpc
    from spyne.protocol.soap import Soap12
    from spyne.server.wsgi import WsgiApplication

    class Bench(ServiceBase):
        @rpc(AnyXml, _returns=AnyXml)
        def echo(ctx, doc):
            return doc

        @rpc(ByteArray, _returns=Unicode)
        def provide(ctx, doc):
            # The repository must hash and size every document, so spyne's side does it too.
            h, n = hashlib.sha1(), 0
            for block in doc:
                h.update(block)
                n += len(block)
            return f"{n} {h.hexdigest()}"

        @rpc(Integer, _returns=ByteArray, _mtom=True)
        def fetch(ctx, n):
            return [b"\r\n--binary\r\n" * n]

    # huge_tree lifts libxml2's 10 MB text-node limit (and its other safety limits), which spyne
    # needs because it inlines every attachment into the envelope as base64 text.
    app = Application([Bench], tns=TNS, in_protocol=Soap12(huge_tree=huge_tree), out_protocol=Soap12())
    # Limits raised and block size matched to ours so that neither side is handicapped.
    return WsgiApplication(app, max_content_length=128 * MB, block_length=256 * 1024)


def thin_echo_app(environ, start_response):
    data = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    try:
        env = parse_envelope(data)
        out = build_envelope(env.version, C.response_action(env.action or ""), env.message_id, env.body)
        status = "200 OK"
    except SoapFault as fault:
        out = build_fault(SOAP12, fault)
        status = "500 Internal Server Error"
    start_response(status, [("Content-Type", SOAP12_CT), ("Content-Length", str(len(out)))])
    return [out]


def thin_mtom_app(spool_dir):
    def app(environ, start_response):
        cl = environ.get("CONTENT_LENGTH")
        with read_multipart(environ["wsgi.input"], environ["CONTENT_TYPE"], spool_dir, 256 * MB, 512 * MB,
                            content_length=int(cl) if cl else None) as msg:
            env = parse_envelope(msg.root)
            found = resolve_xop(env.body, msg)
            text = " ".join(f"{a.size} {a.sha1}" for a in found.values())
        payload = etree.Element(C.q(TNS, "provideResponse"))
        etree.SubElement(payload, C.q(TNS, "provideResult")).text = text
        out = build_envelope(env.version, C.response_action(env.action or ""), env.message_id, payload)
        start_response("200 OK", [("Content-Type", SOAP12_CT), ("Content-Length", str(len(out)))])
        return [out]
    return app


def call(app, body: bytes | None, content_type: str, stream=None, length: int | None = None):
    environ = {
        "REQUEST_METHOD": "POST", "CONTENT_TYPE": content_type,
        "CONTENT_LENGTH": str(len(body) if body is not None else length),
        "wsgi.input": stream if stream is not None else io.BytesIO(body),
        "PATH_INFO": "/", "QUERY_STRING": "", "SERVER_NAME": "localhost", "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr,
    }
    seen = []
    result = app(environ, lambda status, headers, exc_info=None: seen.append((status, headers)))
    out = b"".join(c if isinstance(c, bytes) else c.encode() for c in result)
    return seen[0][0] if seen else None, out


# --------------------------------------------------------------------------------------------
# Requests


def wsa_header(env, header, action):
    for tag, text in (("Action", action), ("MessageID", "urn:uuid:6b1f3a44-8f0e-4c61-9a8e-0d3b2f1f0c11"),
                      ("To", "http://localhost/xds")):
        el = etree.SubElement(header, C.q(C.NS_WSA, tag))
        el.text = text
        if tag == "Action":
            el.set(C.q(C.NS_SOAP12, "mustUnderstand"), "true")


def echo_request(target: int = 5 * 1024) -> bytes:
    def build(n_slots: int) -> bytes:
        env = etree.Element(C.q(C.NS_SOAP12, "Envelope"), nsmap={"s": C.NS_SOAP12, "a": C.NS_WSA})
        wsa_header(env, etree.SubElement(env, C.q(C.NS_SOAP12, "Header")), "urn:xds:bench:echo")
        body = etree.SubElement(env, C.q(C.NS_SOAP12, "Body"))
        op = etree.SubElement(body, C.q(TNS, "echo"), nsmap={"t": TNS})
        doc = etree.SubElement(op, C.q(TNS, "doc"))
        eo = etree.SubElement(doc, C.q(C.NS_RIM, "ExtrinsicObject"), nsmap={"rim": C.NS_RIM},
                              id="Document01", mimeType="text/xml", objectType=C.OBJECT_TYPE_STABLE)
        for i in range(n_slots):
            slot = etree.SubElement(eo, C.q(C.NS_RIM, "Slot"), name=f"urn:bench:slot{i}")
            vl = etree.SubElement(slot, C.q(C.NS_RIM, "ValueList"))
            etree.SubElement(vl, C.q(C.NS_RIM, "Value")).text = f"20261126{i:06d}"
        return etree.tostring(env, xml_declaration=True, encoding="UTF-8")

    n = 1
    while len(build(n)) < target:
        n += 1
    return build(n)


def mtom_request_file(size: int, directory: str, declaration: bool = False) -> tuple[str, str, int]:
    """Write a ProvideAndRegister-shaped MTOM request with one document of `size` bytes.

    Without an XML declaration by default: spyne 2.14 cannot read a root part that has
    one (see capabilities()), and the timing comparison needs spyne to succeed.
    """
    doc_path = os.path.join(directory, f"doc-{size}.bin")
    with open(doc_path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, MB))
            f.write(block)
            left -= len(block)
    w = MtomWriter()
    cid = w.add_file(doc_path, "application/pdf")
    env = etree.Element(C.q(C.NS_SOAP12, "Envelope"), nsmap={"s": C.NS_SOAP12, "a": C.NS_WSA})
    wsa_header(env, etree.SubElement(env, C.q(C.NS_SOAP12, "Header")), "urn:xds:bench:provide")
    body = etree.SubElement(env, C.q(C.NS_SOAP12, "Body"))
    op = etree.SubElement(body, C.q(TNS, "provide"), nsmap={"t": TNS})
    xop_include(etree.SubElement(op, C.q(TNS, "doc")), cid)
    w.set_root(etree.tostring(env, xml_declaration=declaration, encoding="UTF-8"))
    body_path = os.path.join(directory, f"request-{size}-{int(declaration)}.mime")
    with open(body_path, "wb") as f:
        for chunk in w:
            f.write(chunk)
    os.unlink(doc_path)
    return body_path, w.content_type("urn:xds:bench:provide"), os.path.getsize(body_path)


# --------------------------------------------------------------------------------------------
# (a) echo


def bench_echo(rounds: int, calls: int) -> dict:
    req = echo_request()
    ct = SOAP12_CT + '; action="urn:xds:bench:echo"'
    spyne = spyne_apps()
    sides = {"spyne": spyne, "thin": thin_echo_app}
    for name, app in sides.items():
        status, out = call(app, req, ct)
        assert status.startswith("200") and b"20261126000000" in out, (name, status, out[:300])
    per_call: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(rounds):
        for name, app in sides.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                call(app, req, ct)
            per_call[name].append((time.perf_counter() - t0) / calls)
    return {"request_bytes": len(req), "calls_per_round": calls, "rounds": rounds,
            "median_us": {n: statistics.median(v) * 1e6 for n, v in per_call.items()},
            "min_us": {n: min(v) * 1e6 for n, v in per_call.items()}}


# --------------------------------------------------------------------------------------------
# (b) MTOM, one measurement per child process


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_hwm() -> bool:
    # Writing 5 resets VmHWM (Linux >= 4.0), so the peak we read belongs to this request only.
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child_mtom(impl: str, body_path: str, content_type: str, length: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-spool-") as spool:
        app = thin_mtom_app(spool) if impl == "thin" else spyne_apps(huge_tree=impl == "spyne-huge")
        return _measure(app, body_path, content_type, length)


def _measure(app, body_path: str, content_type: str, length: int) -> dict:

    def one() -> tuple[str, bytes]:
        with open(body_path, "rb") as f:
            return call(app, None, content_type, stream=f, length=length)

    # Warm up lazy imports and caches with a tiny request of the same shape.
    with tempfile.TemporaryDirectory() as d:
        wp, wct, wl = mtom_request_file(1024, d)
        with open(wp, "rb") as f:
            status, _ = call(app, None, wct, stream=f, length=wl)
    assert status and status.startswith("200"), status
    ok_hwm = _reset_hwm()
    base = _status_kb("VmRSS")
    t0 = time.perf_counter()
    status, out = one()
    seconds = time.perf_counter() - t0
    peak = _status_kb("VmHWM") if ok_hwm else None
    if not (status or "").startswith("200"):
        try:
            reason = etree.fromstring(out).findtext(f".//{{{C.NS_SOAP12}}}Text")
        except etree.XMLSyntaxError:
            reason = repr(out[:300])
        return {"error": f"{status}, fault: {reason}"}
    size_match = etree.fromstring(out).findtext(".//" + C.q(TNS, "provideResult"))
    tracemalloc.start()
    one()
    _, tm_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"seconds": seconds, "rss_delta_mb": (peak - base) / 1024 if peak else None,
            "tracemalloc_peak_mb": tm_peak / MB, "result": size_match}


def bench_mtom(sizes_mb: list[int], rounds: int) -> dict:
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-mtom-") as d:
        for size_mb in sizes_mb:
            path, ct, length = mtom_request_file(size_mb * MB, d)
            for impl in IMPLS:
                runs = []
                for _ in range(rounds):
                    proc = subprocess.run(
                        [sys.executable, os.path.abspath(__file__), "--child-mtom", impl, path, ct, str(length)],
                        capture_output=True, text=True)
                    if proc.returncode != 0:
                        runs.append({"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"})
                        break
                    runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
                results[(size_mb, impl)] = runs
            os.unlink(path)
    return results


# --------------------------------------------------------------------------------------------
# (c) capabilities


def _exc(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


def capabilities() -> dict:
    from spyne import Application, AnyXml, ServiceBase, Unicode, rpc
    from spyne.protocol.soap import Soap12
    from spyne.server.wsgi import WsgiApplication

    found = {}

    app = spyne_apps()
    with tempfile.TemporaryDirectory() as d:
        # Axis2, CXF and .NET clients start the root part with an XML declaration.
        path, ct, length = mtom_request_file(1024, d, declaration=True)
        with open(path, "rb") as f:
            try:
                status, out = call(app, None, ct, stream=f, length=length)
                fault = etree.fromstring(out).findtext(f".//{{{C.NS_SOAP12}}}Text") if status[:3] != "200" else ""
                found["mtom_request_with_xml_declaration"] = f"{status} {fault}".strip()
            except Exception as e:  # noqa: BLE001
                found["mtom_request_with_xml_declaration"] = "exception escapes the WSGI callable: " + _exc(e)
    req = (f'<s:Envelope xmlns:s="{C.NS_SOAP12}"><s:Body><t:fetch xmlns:t="{TNS}"><t:n>3</t:n></t:fetch>'
           "</s:Body></s:Envelope>").encode()
    try:
        status, out = call(app, req, SOAP12_CT)
        found["mtom_response"] = f"{status}; multipart={out.lstrip().startswith(b'--')}; body={out[:120]!r}"
    except Exception as e:  # noqa: BLE001 - the point is to report whatever spyne raises
        found["mtom_response"] = "exception escapes the WSGI callable: " + _exc(e)

    called = []

    class Iti42(ServiceBase):
        @rpc(AnyXml, _returns=Unicode, _in_message_name="SubmitObjectsRequest", _body_style="bare")
        def register(ctx, req):
            called.append("ITI-42")
            return "ITI-42"

    class Iti57(ServiceBase):
        @rpc(AnyXml, _returns=Unicode, _in_message_name="SubmitObjectsRequest", _body_style="bare")
        def update(ctx, req):
            called.append("ITI-57")
            return "ITI-57"

    try:
        Application([Iti42, Iti57], tns=C.NS_LCM, in_protocol=Soap12(), out_protocol=Soap12())
        found["shared_body_element"] = "Application built (unexpected)"
    except Exception as e:  # noqa: BLE001
        found["shared_body_element"] = "Application() refuses: " + _exc(e)

    single = WsgiApplication(Application([Iti42], tns=C.NS_LCM, in_protocol=Soap12(), out_protocol=Soap12()))
    routed = []
    for action in (C.ACTION_REGISTER, C.ACTION_UPDATE):
        body = (f'<s:Envelope xmlns:s="{C.NS_SOAP12}" xmlns:a="{C.NS_WSA}"><s:Header>'
                f'<a:Action s:mustUnderstand="true">{action}</a:Action></s:Header><s:Body>'
                f'<lcm:SubmitObjectsRequest xmlns:lcm="{C.NS_LCM}"/></s:Body></s:Envelope>').encode()
        called.clear()
        status, out = call(single, body, f'{SOAP12_CT}; action="{action}"')
        routed.append(f"{action.rsplit(':', 1)[-1]} -> {called or 'nothing'} ({status}, "
                      f"wsa:Action in response: {C.NS_WSA.encode() in out})")
    found["action_routing_with_one_service"] = "; ".join(routed)

    mu = (f'<s:Envelope xmlns:s="{C.NS_SOAP12}"><s:Header><z:Unknown xmlns:z="urn:z" s:mustUnderstand="true"/>'
          f'</s:Header><s:Body><lcm:SubmitObjectsRequest xmlns:lcm="{C.NS_LCM}"/></s:Body></s:Envelope>').encode()
    called.clear()
    status, out = call(single, mu, SOAP12_CT)
    found["unknown_mustUnderstand_spyne"] = f"{status}, operation called: {called or 'no'}"
    status, out = call(thin_echo_app, mu, SOAP12_CT)
    code = etree.fromstring(out).findtext(f".//{{{C.NS_SOAP12}}}Code/{{{C.NS_SOAP12}}}Value")
    found["unknown_mustUnderstand_thin"] = f"{status}, fault code {code}"
    return found


# --------------------------------------------------------------------------------------------


def median(runs: list[dict], key: str):
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7, help="echo rounds (median reported)")
    ap.add_argument("--echo-calls", type=int, default=500, help="echo requests per round")
    ap.add_argument("--mtom-rounds", type=int, default=5, help="child processes per MTOM case")
    ap.add_argument("--sizes", default="1,32", help="MTOM document sizes in MiB")
    ap.add_argument("--child-mtom", nargs=4, metavar=("IMPL", "BODY", "CT", "LEN"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child_mtom:
        impl, path, ct, length = args.child_mtom
        print(json.dumps(child_mtom(impl, path, ct, int(length))))
        return

    import spyne
    import lxml
    print(f"# soap_layer bench {datetime.date.today()}  python {platform.python_version()}  "
          f"spyne {spyne.__version__}  lxml {lxml.__version__}  cpus {os.cpu_count()}")

    echo = bench_echo(args.rounds, args.echo_calls)
    s, t = echo["median_us"]["spyne"], echo["median_us"]["thin"]
    print(f"\n(a) SOAP 1.2 echo, {echo['request_bytes']} byte request, {echo['rounds']} rounds x "
          f"{echo['calls_per_round']} calls, median per request:")
    print(f"    spyne {s:9.1f} us   (best round {echo['min_us']['spyne']:.1f})")
    print(f"    thin  {t:9.1f} us   (best round {echo['min_us']['thin']:.1f})")
    print(f"    spyne / thin = {s / t:.2f}x")

    sizes = [int(x) for x in args.sizes.split(",") if x]
    mt = bench_mtom(sizes, args.mtom_rounds)
    print(f"\n(b) MTOM request with one document, {args.mtom_rounds} fresh processes per case, medians:")
    print(f"    {'size':>6} {'impl':10} {'seconds':>9} {'RSS delta MB':>13} {'tracemalloc MB':>15}  result")
    for size_mb in sizes:
        row = {}
        for impl in IMPLS:
            runs = mt[(size_mb, impl)]
            errs = [r["error"] for r in runs if "error" in r]
            if errs:
                print(f"    {size_mb:>4}MB {impl:10} failed: {errs[0]}")
                continue
            row[impl] = (median(runs, "seconds"), median(runs, "rss_delta_mb"), median(runs, "tracemalloc_peak_mb"))
            sec, rss, tm = row[impl]
            rss_s = f"{rss:13.1f}" if rss is not None else f"{'n/a':>13}"
            print(f"    {size_mb:>4}MB {impl:10} {sec:9.3f} {rss_s} {tm:15.2f}  {runs[0]['result'][:24]}...")
        for impl in ("spyne", "spyne-huge"):
            if impl in row and "thin" in row:
                (s1, r1, m1), (s2, r2, m2) = row[impl], row["thin"]
                # The thin side's RSS delta is near the noise floor, so a ratio would overstate precision.
                rss = f"{r1:.0f} vs {r2:.1f} MB" if r1 is not None and r2 is not None else "n/a"
                print(f"    {size_mb:>4}MB {impl}/thin: time {s1 / s2:.1f}x, RSS {rss}, "
                      f"tracemalloc {m1 / m2:.0f}x")

    print("\n(c) spyne behaviour:")
    for k, v in capabilities().items():
        print(f"    {k}: {v}")


if __name__ == "__main__":
    main()
