"""The client commands' credentials over real HTTP: `xds submit`, `xds query` and `xds retrieve`
against a server with security = xua, with an assertion file (its bytes sent as they are) or one
fetched from our STS, refused cleanly without one or with a bad one; and mutual TLS from the
--tls-* flags."""
from __future__ import annotations

import os

import pytest
from lxml import etree

from node import sts as sts_server
from node import transfer
from node.cli import main
from node.server import Services
from tests.certs import Authority
from tests.helpers import new_pid
from xds import constants as C
from xds.client import SoapClient
from xds.security import issue as I
from xds.settings import Settings

REPO = "1.2.250.1.999.3.66"


@pytest.fixture(scope="module")
def issuer(tmp_path_factory):
    key, cert, _ = I.signing_pair(str(tmp_path_factory.mktemp("sts")))
    found = I.Issuer(key, cert)
    found.key_path, found.cert_path = key, cert
    return found


@pytest.fixture(scope="module")
def sts_url(issuer):
    server = sts_server.start(issuer, "127.0.0.1", 0)
    yield f"http://127.0.0.1:{server.port}{sts_server.PATH}"
    server.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory, issuer):
    services = Services(Settings(port=0, data=str(tmp_path_factory.mktemp("xua-cli")), repository_id=REPO,
                                 check_patients=False, settle_interval=0, security="xua",
                                 xua_trust=[issuer.cert_path], xua_audiences=[I.DEFAULT_AUDIENCE])).start()
    yield services
    services.stop()


@pytest.fixture
def document(tmp_path):
    path = tmp_path / "note.txt"
    path.write_bytes(b"a note for XUA\r\n")
    return path


def cli(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def round_trip(capsys, server, document, tmp_path, *credentials) -> None:
    """submit, find and retrieve one document, each call with the same credentials."""
    pid = new_pid()
    code, out, err = cli(capsys, "submit", str(document), "--patient", pid, "--url", server.url, *credentials)
    assert code == 0, err
    uid = out.splitlines()[1].split("\t")[0]
    code, out, err = cli(capsys, "query", "find-documents", "--patient", pid, "--url", server.url, *credentials)
    assert code == 0, err
    assert uid in out and "DocumentEntry" in out
    target = tmp_path / "back.txt"
    code, out, err = cli(capsys, "retrieve", uid, "--url", server.url, "--repository-id", REPO, "-o", str(target),
                         *credentials)
    assert code == 0, err
    assert target.read_bytes() == document.read_bytes()


def assertion_file(tmp_path, issuer, variant="valid", name="assertion.xml") -> str:
    path = tmp_path / name
    path.write_bytes(I.serialize(issuer.issue(variant)))
    return str(path)


def test_an_assertion_file_is_sent_by_submit_query_and_retrieve(capsys, server, issuer, document, tmp_path):
    round_trip(capsys, server, document, tmp_path, "--assertion", assertion_file(tmp_path, issuer))


def test_an_assertion_from_the_sts_is_sent_by_submit_query_and_retrieve(capsys, server, sts_url, document, tmp_path):
    round_trip(capsys, server, document, tmp_path, "--sts", sts_url, "--sts-user", "valid")


def test_the_assertion_file_from_xds_sts_token_is_accepted(capsys, server, issuer, tmp_path):
    code, out, err = cli(capsys, "sts", "token", "valid", "--key", issuer.key_path, "--cert", issuer.cert_path)
    assert code == 0, err
    path = tmp_path / "token.xml"
    path.write_text(out)
    code, out, err = cli(capsys, "query", "find-documents", "--patient", new_pid(), "--url", server.url,
                         "--assertion", str(path))
    assert code == 0, err


def test_the_assertion_bytes_are_sent_unchanged(capsys, server, issuer, tmp_path):
    signed = I.serialize(issuer.issue("valid"))
    # Single quotes around ID: the same XML, canonically the same signed bytes, but bytes that lxml
    # would write with double quotes; the declaration and the blank lines around are the file's own.
    ident = signed.split(b' ID="', 1)[1].split(b'"', 1)[0]
    odd = signed.replace(b' ID="' + ident + b'"', b" ID='" + ident + b"'", 1)
    assert odd != signed
    path = tmp_path / "odd.xml"
    path.write_bytes(b'<?xml version="1.0" encoding="UTF-8"?>\n\n' + odd + b"\n")
    assert transfer.read_assertion(str(path)) == odd
    envelope = transfer.soap_envelope(SoapClient(server.url + "/xds/registry"), C.ACTION_QUERY,
                                      etree.Element("x"), transfer.read_assertion(str(path)))
    assert odd in envelope and envelope.count(b"<saml2:Assertion") == 1
    code, out, err = cli(capsys, "query", "find-documents", "--patient", new_pid(), "--url", server.url,
                         "--assertion", str(path))
    assert code == 0, err  # the signature still verifies


def test_an_assertion_file_in_another_encoding_is_sent_as_utf8(tmp_path, issuer):
    signed = I.serialize(issuer.issue("valid"))
    path = tmp_path / "latin1.xml"
    path.write_bytes(b"\xef\xbb\xbf" + b'<?xml version="1.0" encoding="ISO-8859-1"?>' + signed)
    assert transfer.read_assertion(str(path)) == signed


@pytest.mark.parametrize("command", ["submit", "query", "retrieve"])
def test_without_an_assertion_each_command_fails_with_the_fault(capsys, server, document, command):
    code, out, err = cli(capsys, *_command(server, command, document, new_pid()))
    assert code == 1
    assert "wsse:SecurityTokenUnavailable" in err and "requires a SAML 2.0 assertion" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("command", ["submit", "query", "retrieve"])
def test_an_expired_assertion_from_the_sts_fails_with_the_fault(capsys, server, sts_url, document, command):
    code, out, err = cli(capsys, *_command(server, command, document, new_pid()), "--sts", sts_url,
                         "--sts-user", "expired")
    assert code == 1
    assert "wsse:FailedAuthentication" in err and "expired" in err


def test_a_refused_submission_stores_nothing(capsys, server, issuer, sts_url, document, tmp_path):
    pid = new_pid()
    assert cli(capsys, "submit", str(document), "--patient", pid, "--url", server.url)[0] == 1
    assert cli(capsys, "submit", str(document), "--patient", pid, "--url", server.url, "--sts", sts_url,
               "--sts-user", "expired")[0] == 1
    code, out, err = cli(capsys, "query", "get-all", "--patient", pid, "--url", server.url,
                         "--assertion", assertion_file(tmp_path, issuer))
    assert code == 0 and out.startswith("no objects match"), (out, err)


def _command(server, command, document, pid) -> list[str]:
    if command == "submit":
        return ["submit", str(document), "--patient", pid, "--url", server.url]
    if command == "query":
        return ["query", "find-documents", "--patient", pid, "--url", server.url]
    return ["retrieve", "1.2.250.1.999.66.1", "--url", server.url, "--repository-id", REPO,
            "-o", os.devnull]


def test_the_credentials_on_the_command_line_are_checked_first(capsys, server, sts_url, tmp_path):
    base = ["query", "find-documents", "--patient", new_pid(), "--url", server.url]
    code, out, err = cli(capsys, *base, "--assertion", str(tmp_path / "missing.xml"))
    assert code == 2 and "missing.xml" in err
    not_saml = tmp_path / "not-saml.xml"
    not_saml.write_bytes(b"<hello/>")
    code, out, err = cli(capsys, *base, "--assertion", str(not_saml))
    assert code == 2 and "is not a SAML 2.0 assertion" in err
    code, out, err = cli(capsys, *base, "--sts-user", "valid")
    assert code == 2 and "--sts" in err
    code, out, err = cli(capsys, *base, "--sts", sts_url)
    assert code == 2 and "--sts-user" in err
    with pytest.raises(SystemExit):
        main([*base, "--sts", sts_url, "--assertion", str(not_saml)])


def test_an_sts_refusal_is_shown(capsys, server, sts_url):
    code, out, err = cli(capsys, "query", "find-documents", "--patient", new_pid(), "--url", server.url,
                         "--sts", sts_url, "--sts-user", "valid", "--sts-password", "wrong")
    assert code == 1 and "wst:FailedAuthentication" in err
    code, out, err = cli(capsys, "query", "find-documents", "--patient", new_pid(), "--url", server.url,
                         "--sts", "http://127.0.0.1:9/sts", "--sts-user", "valid")
    assert code == 1 and "could not be asked" in err


# --- mutual TLS --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    ca = Authority(str(folder))
    server_cert, server_key = ca.issue("xds-server")
    client_cert, client_key = ca.issue("xds-client")
    services = Services(Settings(port=0, data=str(folder / "data"), repository_id=REPO, check_patients=False,
                                 settle_interval=0, tls_cert=server_cert, tls_key=server_key,
                                 tls_ca=ca.path)).start()
    services.client = ["--tls-cert", client_cert, "--tls-key", client_key, "--tls-ca", ca.path]
    services.ca = ca.path
    yield services
    services.stop()


def test_mutual_tls_from_the_flags(capsys, tls_server, document, tmp_path):
    assert tls_server.url.startswith("https://")
    round_trip(capsys, tls_server, document, tmp_path, *tls_server.client)


def test_without_a_client_certificate_the_handshake_is_refused(capsys, tls_server, document):
    pid = new_pid()
    code, out, err = cli(capsys, "query", "find-documents", "--patient", pid, "--url", tls_server.url,
                         "--tls-ca", tls_server.ca)
    assert code == 1 and "failed" in err and "Traceback" not in err
    code, out, err = cli(capsys, "submit", str(document), "--patient", pid, "--url", tls_server.url,
                         "--tls-ca", tls_server.ca)
    assert code == 1 and "failed" in err
