"""A throwaway rsyslogd for tests: a real Audit Record Repository receiver on 127.0.0.1.

It runs as whoever runs the tests, in a temporary folder, from the machine's rsyslog (Debian packages
``rsyslog`` and ``rsyslog-openssl``), with its own configuration and nothing of the system's: no
/dev/log or kernel input, its own work directory and pid file.  It listens on

- a TLS port (RFC 5425, imtcp with the ``ossl`` stream driver) that requires a client certificate
  signed by the given CA (``x509/certvalid``: chain checked, name not), and
- a UDP port (RFC 5426, imudp),

and writes every message it receives as one JSON line (``received.jsonl``) with the fields rsyslog
parsed and the message exactly as it arrived, so a test gets back the XML byte for byte.  The ports
are chosen once, so :meth:`Rsyslog.restart` comes back on the same ones.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

_PROBE_MSGID = "xds-rsyslog-probe"
_MODULES = ("imtcp.so", "imudp.so", "lmnsd_ossl.so")


def _rsyslogd() -> str | None:
    found = shutil.which("rsyslogd")
    if found:
        return found
    return "/usr/sbin/rsyslogd" if os.access("/usr/sbin/rsyslogd", os.X_OK) else None


def _module_dir() -> str | None:
    for folder in sorted(glob.glob("/usr/lib/*/rsyslog")) + ["/usr/lib/rsyslog", "/usr/lib64/rsyslog"]:
        if all(os.path.exists(os.path.join(folder, m)) for m in _MODULES):
            return folder
    return None


def unavailable_reason() -> str | None:
    """Why a real rsyslogd cannot be run here, or None when it can."""
    if _rsyslogd() is None:
        return "rsyslogd is not installed (Debian package rsyslog)"
    if _module_dir() is None:
        return f"rsyslog's {', '.join(_MODULES)} are not all installed (Debian packages rsyslog, rsyslog-openssl)"
    return None


def available() -> bool:
    return unavailable_reason() is None


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _PortTaken(Exception):
    pass


def _quote(value: str) -> str:
    # RainerScript string: backslash and double quote are the only specials.
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Rsyslog:
    """``Rsyslog(ca, cert, key)``: clients must chain to ``ca``; the server presents ``cert``/``key``."""

    def __init__(self, ca: str, cert: str, key: str, folder: str | None = None):
        reason = unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        self.ca, self.cert, self.key = ca, cert, key
        self._own_folder = folder is None
        self.folder = folder or tempfile.mkdtemp(prefix="xds-rsyslog-")
        self.tls_port = _free_port(socket.SOCK_STREAM)
        self.udp_port = _free_port(socket.SOCK_DGRAM)
        self.conf = os.path.join(self.folder, "rsyslog.conf")
        self.pidfile = os.path.join(self.folder, "rsyslogd.pid")
        self.received = os.path.join(self.folder, "received.jsonl")
        self.internal = os.path.join(self.folder, "internal.log")
        self.stderr_path = os.path.join(self.folder, "rsyslogd.stderr")
        self.workdir = os.path.join(self.folder, "work")
        os.makedirs(self.workdir, exist_ok=True)
        self.process: subprocess.Popen | None = None
        self._paused = False
        self._started_once = False
        self._runs = 0         # which start() this is: each run's readiness probe names it
        self._write_config()

    # --- the configuration ----------------------------------------------------------------------
    def _write_config(self) -> None:
        q = _quote
        # processInternalMessages: rsyslogd's own messages stay in this instance (internal.log) instead
        # of going to the machine's system log socket.
        # maxMessageSize must be set before any input is defined, or inputs keep the 8k default and
        # cut (or, over TCP, split) a large AuditMessage.  Control characters are kept as received:
        # by default rsyslog would turn a tab into "#011" and the XML would no longer be the XML sent.
        conf = f"""
global(workDirectory={q(self.workdir)}
       maxMessageSize="256k"
       parser.escapeControlCharactersOnReceive="off"
       net.enableDNS="off"
       processInternalMessages="on"
       defaultNetstreamDriver="ossl"
       defaultNetstreamDriverCAFile={q(self.ca)}
       defaultNetstreamDriverCertFile={q(self.cert)}
       defaultNetstreamDriverKeyFile={q(self.key)})

module(load="imtcp" streamDriver.name="ossl" streamDriver.mode="1" streamDriver.authMode="x509/certvalid")
module(load="imudp")

# One JSON object a line: json escaping makes any byte of the message (a newline, a tab) survive the
# line format, and the reader undoes it exactly.
template(name="xds_received" type="list") {{
  constant(value="{{")
  property(outname="input" name="inputname" format="jsonf") constant(value=",")
  property(outname="pri" name="pri" format="jsonf") constant(value=",")
  property(outname="version" name="protocol-version" format="jsonf") constant(value=",")
  property(outname="timestamp" name="timereported" dateFormat="rfc3339" format="jsonf") constant(value=",")
  property(outname="hostname" name="hostname" format="jsonf") constant(value=",")
  property(outname="app_name" name="app-name" format="jsonf") constant(value=",")
  property(outname="procid" name="procid" format="jsonf") constant(value=",")
  property(outname="msgid" name="msgid" format="jsonf") constant(value=",")
  property(outname="structured_data" name="structured-data" format="jsonf") constant(value=",")
  property(outname="msg" name="msg" format="jsonf") constant(value=",")
  property(outname="raw" name="rawmsg" format="jsonf")
  constant(value="}}\\n")
}}

# The readiness probes go to the same action as everything else, on purpose: see _wait_ready.
ruleset(name="xds_audit") {{
  action(type="omfile" file={q(self.received)} template="xds_received")
}}

input(type="imtcp" address="127.0.0.1" port="{self.tls_port}" ruleset="xds_audit")
input(type="imudp" address="127.0.0.1" port="{self.udp_port}" ruleset="xds_audit")

# rsyslogd's own messages (errors, TLS refusals) go apart from what clients sent.
*.* action(type="omfile" file={q(self.internal)})
"""
        with open(self.conf, "w") as f:
            f.write(conf)

    # --- life cycle -----------------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> "Rsyslog":
        if self.process is not None:
            raise RuntimeError("rsyslogd is already running")
        for attempt in range(5):
            try:
                self._start_once(timeout)
                self._started_once = True
                return self
            except _PortTaken as exc:
                # Free ports are only free until someone takes them; the first start may pick others,
                # a restart must come back on the same ones.
                if self._started_once or attempt == 4:
                    raise RuntimeError(f"rsyslogd cannot listen: {exc}") from None
                self.tls_port = _free_port(socket.SOCK_STREAM)
                self.udp_port = _free_port(socket.SOCK_DGRAM)
                self._write_config()
        return self

    def _start_once(self, timeout: float) -> None:
        with open(self.stderr_path, "ab") as err:
            self.process = subprocess.Popen(
                [_rsyslogd(), "-n", "-f", self.conf, "-i", self.pidfile, "-M", _module_dir()],
                stdin=subprocess.DEVNULL, stdout=err, stderr=err, cwd=self.folder)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self._runs += 1
        token = f"run {self._runs}"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"rsyslogd exited with {self.process.returncode}: {self.diagnostics()}")
                owners = {"tls": self._owner("tcp", self.tls_port), "udp": self._owner("udp", self.udp_port)}
                taken = [f"{kind} port {port} is held by another process"
                         for kind, port in (("tls", self.tls_port), ("udp", self.udp_port)) if owners[kind] == "other"]
                if taken:
                    raise _PortTaken("; ".join(taken))
                # A datagram that came through the rules into received.jsonl proves the UDP input and
                # the output are live; the socket table shows the TLS port is rsyslogd's own.
                #
                # It also makes omfile open received.jsonl now, before any TLS session exists.
                # rsyslog 8.2302's ossl driver closes each session's socket twice (SSL_free, then
                # the TCP layer; fixed upstream in rsyslog PR 6375): a file omfile opened lazily
                # between the two closes lost its descriptor, the next accepted connection got the
                # same number, and omfile wrote received records into that client's TLS stream.
                udp.sendto(f"<85>1 - - xds-test - {_PROBE_MSGID} - {token}".encode(),
                           ("127.0.0.1", self.udp_port))
                time.sleep(0.05)
                if self._probed(token) and owners["tls"] == "ours":
                    return
        raise RuntimeError(f"rsyslogd did not become ready within {timeout:g} s: {self.diagnostics()}")

    def _probed(self, token: str) -> bool:
        return any(r["msg"] == token.encode() for r in self.records(probes=True) if r["msgid"] == _PROBE_MSGID)

    def _owner(self, proto: str, port: int) -> str:
        """Who has 127.0.0.1:port bound (TCP: listening): "ours" (this rsyslogd), "other" or "none".

        Read from the kernel's socket tables rather than by connecting: a connection that never
        completes its TLS handshake keeps rsyslogd busy and delays its next shutdown by a second.
        """
        try:
            with open(f"/proc/net/{proto}") as f:
                rows = [row.split() for row in f.read().splitlines()[1:]]
        except OSError:   # no /proc: fall back to "something answers"
            if proto == "udp":
                return "ours"
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return "ours"
            except OSError:
                return "none"
        local = f"0100007F:{port:04X}"
        inodes = {row[9] for row in rows
                  if row[1] == local and (proto == "udp" or row[3] == "0A")}   # 0A: LISTEN
        if not inodes:
            return "none"
        return "ours" if inodes & self._socket_inodes() else "other"

    def _socket_inodes(self) -> set[str]:
        found = set()
        if self.process is None:
            return found
        folder = f"/proc/{self.process.pid}/fd"
        try:
            names = os.listdir(folder)
        except OSError:
            return found
        for name in names:
            try:
                target = os.readlink(os.path.join(folder, name))
            except OSError:
                continue
            if target.startswith("socket:["):
                found.add(target[8:-1])
        return found

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait: rsyslogd writes out what it has queued, then its ports are free."""
        if self.process is None:
            return
        if self.process.poll() is None:
            if self._paused:   # a stopped process would not act on SIGTERM
                self.resume()
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        # Reaped, so the kernel has closed its sockets: the ports are free (SO_REUSEADDR lets a
        # restart bind them again despite connections in TIME_WAIT).
        self.process = None

    def restart(self) -> None:
        """Stop and start again on the same ports; what was received before stays in messages()."""
        self.stop()
        self.start()

    def pause(self) -> None:
        """Freeze rsyslogd (SIGSTOP): its sockets stay open but nothing is read or answered."""
        self.process.send_signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        # Only when paused: a SIGCONT to a running rsyslogd delays its next SIGTERM by a second.
        if self._paused:
            self.process.send_signal(signal.SIGCONT)
            self._paused = False

    def close(self) -> None:
        self.stop()
        if self._own_folder:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> "Rsyslog":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # --- what was received ----------------------------------------------------------------------
    def records(self, probes: bool = False) -> list[dict]:
        """Every message received so far, in order, as rsyslog parsed it; ``msg`` and ``raw`` are bytes.

        The fixture's own readiness probes are left out unless ``probes``."""
        try:
            with open(self.received, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return []
        out = []
        for line in data.split(b"\n")[:-1]:   # a last line without its newline is still being written
            record = json.loads(line.decode("utf-8"))
            record["msg"] = record["msg"].encode("utf-8")
            record["raw"] = record["raw"].encode("utf-8")
            if probes or record["msgid"] != _PROBE_MSGID:
                out.append(record)
        return out

    def messages(self) -> list[bytes]:
        """The MSG of each message received, in order, without the UTF-8 BOM that RFC 5424 puts before it."""
        return [r["msg"][3:] if r["msg"].startswith(b"\xef\xbb\xbf") else r["msg"] for r in self.records()]

    def wait_for(self, count: int, timeout: float = 5.0) -> list[bytes]:
        """messages() once there are at least ``count``; AssertionError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.messages()
            if len(got) >= count or time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        assert len(got) >= count, f"rsyslog received {len(got)} messages, expected {count}"
        return got

    def diagnostics(self) -> str:
        parts = []
        for path in (self.stderr_path, self.internal):
            try:
                with open(path, errors="replace") as f:
                    parts.append(f.read()[-2000:])
            except OSError:
                pass
        return " | ".join(p.strip() for p in parts if p.strip()) or "(no output)"
