"""What a person or a monitor meets first: GET / names the server and its endpoints, /health answers
503 when the database does not, and a port already in use is one line on stderr, not a traceback."""
from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys

from node.server import Services
from xds.settings import Settings
from tests import pgserver
from tests.conftest import _pg_admin_url

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def test_the_root_page_names_the_role_version_and_endpoints(tmp_path):
    services = Services(Settings(port=0, data=str(tmp_path / "data"), settle_interval=0)).start()
    try:
        status, body = get(services.port, "/")
        text = body.decode()
        assert status == 200 and "role <code>all</code>" in text and "xds-server 0." in text
        for path in ("/xds/registry", "/xds/repository", "/xds/pix", "/health"):
            assert f"<code>{path}</code>" in text
        assert "ITI-18" in text and "ITI-43" in text
        status, body = get(services.port, "/health")
        assert status == 200 and b'"database": "ok"' in body
    finally:
        services.stop()


def test_health_is_503_when_the_database_does_not_answer(pg_url):
    services = Services(Settings(port=0, role="registry", db=pg_url, data=os.path.join("/tmp", "unused"),
                                 settle_interval=0)).start()
    try:
        assert get(services.port, "/health")[0] == 200
        pgserver.drop_database(_pg_admin_url(), pg_url.rsplit("/", 1)[1])
        status, body = get(services.port, "/health")
        assert status == 503 and b"database" in body and b"Traceback" not in body
        assert get(services.port, "/")[0] == 200          # the server itself keeps serving
    finally:
        services.stop()


def _held_port() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s


def test_a_port_in_use_is_one_line_not_a_traceback(tmp_path):
    held = _held_port()
    try:
        port = held.getsockname()[1]
        for args, words in ((["--port", str(port)], f"127.0.0.1:{port}"),
                            (["--port", "0", "--mllp-port", str(port)], "patient feed")):
            r = subprocess.run([sys.executable, "-m", "node.cli", "serve", "--host", "127.0.0.1",
                                "--data", str(tmp_path / "data"), *args], cwd=ROOT, capture_output=True, text=True,
                               timeout=60)
            assert r.returncode == 2, r.stderr
            lines = [line for line in r.stderr.splitlines() if line.startswith("xds:")]
            assert len(lines) == 1 and "already in use" in lines[0] and words in lines[0], r.stderr
            assert "Traceback" not in r.stderr
    finally:
        held.close()
