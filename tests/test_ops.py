"""Operations: structured logs, graceful shutdown, the deploy/ example configurations."""
import glob
import json
import logging
import os
import socket
import threading
import time

import pytest

from xds import builder, logs
from xds import constants as C
from xds.client import SoapClient
from node.server import Services
from xds.settings import Settings, load

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_json_log_lines_carry_the_request_id():
    rec = logging.LogRecord("xds.test", logging.INFO, __file__, 1, '{"event": "x", "n": 1}', None, None)
    token = logs.request_id.set("rid-1")
    try:
        line = json.loads(logs.JsonFormatter().format(rec))
    finally:
        logs.request_id.reset(token)
    assert line["request_id"] == "rid-1" and line["event"] == "x" and line["n"] == 1 and line["level"] == "INFO"
    plain = json.loads(logs.JsonFormatter().format(
        logging.LogRecord("xds.test", logging.WARNING, __file__, 1, "hello %s", ("world",), None)))
    assert plain["msg"] == "hello world" and "request_id" not in plain


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "deploy", "*.toml"))))
def test_deploy_configurations_are_valid(path):
    s = load(path, env={})
    assert s.tls_cert and s.tls_key and s.tls_ca
    if s.role == "registry":
        assert s.db.startswith("postgresql") and s.require_known_repositories and s.mllp_port
    else:
        assert s.role == "repository" and s.registry_url.startswith("https://")


def test_mime_bare_lf_setting_from_toml_env_and_flag(tmp_path):
    import argparse

    from node import cli

    assert load(env={}).mime_bare_lf is False
    toml = tmp_path / "x.toml"
    toml.write_text("[xds]\nmime_bare_lf = true\n")
    assert load(str(toml), env={}).mime_bare_lf is True
    assert load(env={"XDS_MIME_BARE_LF": "true"}).mime_bare_lf is True
    assert load(str(toml), env={"XDS_MIME_BARE_LF": "off"}).mime_bare_lf is False
    assert cli._settings(argparse.Namespace(config=None, mime_bare_lf=True)).mime_bare_lf is True
    services = Services(Settings(data=str(tmp_path / "data"), mime_bare_lf=True))
    try:
        assert services.app.config.mime_bare_lf is True
    finally:
        services.stop()


def test_graceful_shutdown_finishes_the_request_in_flight(tmp_path):
    services = Services(Settings(port=0, data=str(tmp_path), check_patients=False)).start()
    body = SoapClient(services.url + "/xds/registry").envelope(
        C.ACTION_REGISTER, builder.simple_submission("G1^^^&1.2.3&ISO"))
    s = socket.create_connection(("127.0.0.1", services.port), timeout=20)
    s.sendall(b"POST /xds/registry HTTP/1.1\r\nHost: x\r\nContent-Type: application/soap+xml\r\n"
              b"Content-Length: %d\r\n\r\n" % len(body) + body[:100])
    time.sleep(0.3)  # the request is being read when shutdown starts
    stopper = threading.Thread(target=services.stop)
    stopper.start()
    time.sleep(0.3)
    s.sendall(body[100:])
    data = b""
    while b"</env:Envelope>" not in data and b"Envelope>" not in data[-200:]:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    stopper.join(timeout=30)
    assert b"200 OK" in data.split(b"\r\n", 1)[0]
    assert C.RESPONSE_SUCCESS.encode() in data
    with pytest.raises(OSError):  # and no new connection is accepted
        socket.create_connection(("127.0.0.1", services.port), timeout=2).sendall(b"GET / HTTP/1.0\r\n\r\n")
