"""`xds serve --workers N` (node/workers.py) as real processes on 127.0.0.1: the workers share one port and
answer alike, the node-wide jobs run once (the patient feed, the start-up record), /metrics counts the whole
node whichever worker answers, a worker that dies is started again, SIGTERM stops them all, a killed
supervisor takes its workers with it, and a port someone holds is one line on stderr."""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.helpers import new_pid
from xds import builder
from xds import constants as C
from xds.client import SoapClient
from xds.mllp import mllp_send

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    def __init__(self, tmp_path, *args: str, workers: int = 2):
        self.port = free_port()
        self.data = str(tmp_path / "data")
        self.err = open(tmp_path / "serve.err", "wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith("XDS_")}
        env["PYTHONPATH"] = ROOT
        self.proc = subprocess.Popen([sys.executable, "-m", "node.cli", "serve", "--port", str(self.port), "--data",
                                      self.data, "--workers", str(workers), *args], cwd=ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=self.err, text=True)
        line = self.proc.stdout.readline()
        assert line.strip() == f"xds: all on http://127.0.0.1:{self.port}", open(tmp_path / "serve.err").read()
        self.url = f"http://127.0.0.1:{self.port}"

    def children(self) -> list[int]:
        with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
            return [int(p) for p in f.read().split()]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(60)
        self.proc.stdout.close()
        self.err.close()


def get(url: str, path: str) -> tuple[int, bytes]:
    host, port = url.rsplit("/", 1)[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)  # a new connection each time
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def workers_seen(node: Node, tries: int = 200) -> set[int]:
    seen = set()
    for _ in range(tries):
        status, body = get(node.url, "/health")
        assert status == 200
        seen.add(json.loads(body)["worker"])
        if len(seen) == 2:
            break
    return seen


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def node(tmp_path):
    n = Node(tmp_path, "--mllp-port", "0", "--no-patient-check")
    yield n
    n.stop()


def test_two_workers_share_the_port_and_serve_alike(node):
    assert len(node.children()) == 2
    assert workers_seen(node) == {0, 1}
    pid = new_pid()
    # Each request on a fresh connection: the kernel spreads them over both workers.
    for i in range(6):
        reply = SoapClient(node.url + "/xds/registry").call(C.ACTION_REGISTER, builder.simple_submission(pid))
        assert reply.body.get("status") == C.RESPONSE_SUCCESS
    for _ in range(6):
        found = SoapClient(node.url + "/xds/registry").call(C.ACTION_QUERY, builder.find_documents_request(pid))
        assert len(found.body.findall(f".//{{{C.NS_RIM}}}ExtrinsicObject")) == 6
    # /metrics adds up every worker's requests, whichever worker answers the scrape.
    for _ in range(4):
        status, body = get(node.url, "/metrics")
        lines = body.decode().splitlines()
        assert 'xds_requests_total{outcome="success",transaction="ITI-42"} 6.0' in lines
        assert 'xds_requests_total{outcome="success",transaction="ITI-18"} 6.0' in lines


def test_node_wide_jobs_run_once(node, tmp_path):
    from xds.audit import records as R
    from xds.audit.store import AuditStore
    from xds.db import make_engine

    # One MLLP listener (a second worker binding the same port would have failed to start).
    ack = mllp_send("127.0.0.1", _mllp_port(node), "\r".join([
        "MSH|^~\\&|APP|FAC|XDS|XDS|20240101||ADT^A01^ADT_A01|MSG1|P|2.5", "EVN||20240101",
        "PID|||W1^^^&1.2.3.4&ISO"]) + "\r")
    assert "MSA|AA|MSG1" in ack
    engine = make_engine(f"sqlite:///{node.data}/registry.db")
    try:
        store = AuditStore(engine)
        starts = [e for seq, stored, *_ in store.records(0, 10000)
                  for e in [R.from_stored(stored, seq)] if isinstance(e, R.SystemEvent)
                  and e.kind == "application-start"]
        assert len(starts) == 1
    finally:
        engine.dispose()


def _mllp_port(node: Node) -> int:
    with open(node.err.name, encoding="utf-8") as f:
        for line in f:
            if "ITI-8 feed" in line:
                return int(json.loads(line)["msg"].rsplit(":", 1)[1])
    raise AssertionError("no MLLP listener was logged")


def test_a_worker_that_dies_is_started_again(node):
    first = node.children()
    os.kill(first[1], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = node.children()
        if len(now) == 2 and first[1] not in now:
            break
        time.sleep(0.2)
    assert len(node.children()) == 2 and first[1] not in node.children() and first[0] in node.children()
    assert workers_seen(node) == {0, 1}
    with open(node.err.name, encoding="utf-8") as f:
        assert "starting it again" in f.read()


def test_sigterm_stops_every_worker(tmp_path):
    n = Node(tmp_path)
    kids = n.children()
    n.proc.send_signal(signal.SIGTERM)
    assert n.proc.wait(60) == 0
    n.stop()
    assert not any(alive(k) for k in kids)


def test_a_killed_supervisor_takes_its_workers_with_it(tmp_path):
    n = Node(tmp_path)
    kids = n.children()
    n.proc.kill()
    n.proc.wait(30)
    deadline = time.monotonic() + 10
    while any(alive(k) for k in kids) and time.monotonic() < deadline:
        time.sleep(0.1)
    n.stop()
    assert not any(alive(k) for k in kids)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # nothing listens on the port any more
        try:
            socket.create_connection(("127.0.0.1", n.port), timeout=2).close()
        except ConnectionRefusedError:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"something still listens on {n.port}")


def test_a_port_in_use_is_one_line(tmp_path):
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen(1)
    port = held.getsockname()[1]
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("XDS_")}
        env["PYTHONPATH"] = ROOT
        done = subprocess.run([sys.executable, "-m", "node.cli", "serve", "--port", str(port), "--data",
                               str(tmp_path / "d"), "--workers", "2"], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=60)
    finally:
        held.close()
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if not line.startswith("{")]
    assert lines == [f"xds: cannot listen on 127.0.0.1:{port}: the address is already in use (another server, "
                     "or an earlier xds serve still running); choose another with --port"]


def test_a_second_node_on_the_same_port_is_refused(node, tmp_path):
    # SO_REUSEPORT would let it join the first node's workers: the supervisor's plain bind refuses it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("XDS_")}
    env["PYTHONPATH"] = ROOT
    done = subprocess.run([sys.executable, "-m", "node.cli", "serve", "--port", str(node.port), "--data",
                           str(tmp_path / "other"), "--workers", "2"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "already in use" in done.stderr
    assert workers_seen(node) == {0, 1}
