"""Pooled keep-alive connections in xds.client, against fake hosts that are real HTTP servers on
127.0.0.1 and count what they accept: reuse, stale connections, what is never reused, TLS."""
from __future__ import annotations

import os
import threading
import time

import pytest

from xds import builder
from xds import constants as C
from xds import mtom
from xds.client import ConnectionPool, SoapClient, TransportError, registry_call
from xds.tls import TlsFiles, client_context, server_context
from tests.certs import Authority
from tests.fakehttp import Answer, FakeHost, registry_success, retrieve_answer

CALLS = 6


def query_payload():
    return builder.simple_submission("PPOOL^^^&1.2.250.1.213.1.4.10&ISO")


def register_n(client: SoapClient, n: int = CALLS) -> None:
    for _ in range(n):
        reply = client.call(C.ACTION_REGISTER, query_payload())
        assert reply.body.get("status") == C.RESPONSE_SUCCESS


def test_sequential_calls_share_one_connection():
    with FakeHost(registry_success()) as host:
        register_n(SoapClient(host.url, 5, pool=ConnectionPool()))
        assert (host.connections, host.requests) == (1, CALLS)


def test_registry_call_reuses_its_connection():
    with FakeHost(registry_success()) as host:
        for _ in range(CALLS):
            body = registry_call(host.url, C.ACTION_REGISTER, query_payload(), 5, None)
            assert body.get("status") == C.RESPONSE_SUCCESS
        assert (host.connections, host.requests) == (1, CALLS)


def test_without_a_pool_every_call_has_its_own_connection():
    with FakeHost(registry_success()) as host:
        register_n(SoapClient(host.url, 5))
        assert host.connections == CALLS


def test_idle_connection_closed_by_the_server_is_replaced():
    with FakeHost(registry_success()) as host:
        client = SoapClient(host.url, 5, pool=ConnectionPool())
        register_n(client, 2)
        host.close_idle()
        register_n(client, 2)
        assert (host.connections, host.requests) == (2, 4)


def test_request_on_a_connection_the_server_drops_unread_is_sent_again_once():
    # The race a check before sending cannot see: the server ends the connection as the request
    # arrives, without reading it. Sent again on a fresh connection, it is served exactly once.
    with FakeHost(registry_success()) as host:
        client = SoapClient(host.url, 5, pool=ConnectionPool())
        register_n(client, 1)
        host.drop_reused = True
        register_n(client, 1)
        assert host.counts == {"connections": 2, "requests": 2, "dropped": 1}


def test_each_stale_connection_costs_one_retry_on_a_fresh_one():
    with FakeHost(registry_success()) as host:
        client = SoapClient(host.url, 5, pool=ConnectionPool())
        register_n(client, 1)
        host.drop_reused = True
        # Every connection now serves one request and drops the next: the retry is the fresh
        # connection's first request, so it is served; its reuse is dropped, and retried once.
        register_n(client, 3)
        assert host.counts["requests"] == 4 and host.counts["dropped"] == 3 and host.connections == 4


def test_fresh_connection_failing_is_not_sent_again():
    answers = iter([registry_success()])

    def first_then_hang_up(body):
        try:
            return next(answers)
        except StopIteration:
            raise ConnectionAbortedError("the fake hangs up")

    with FakeHost(first_then_hang_up) as host:
        client = SoapClient(host.url, 5, pool=ConnectionPool())
        register_n(client, 1)
        host.drop_reused = True
        with pytest.raises(TransportError):
            client.call(C.ACTION_REGISTER, query_payload())
        # The reused connection dropped unread, one fresh one whose request was read: no third try.
        assert host.connections == 2 and host.requests == 2


def test_connection_close_answer_is_not_reused():
    answer = registry_success()
    answer.headers["Connection"] = "close"
    with FakeHost(answer) as host:
        register_n(SoapClient(host.url, 5, pool=ConnectionPool()))
        assert host.connections == CALLS


def test_mtom_answer_read_to_its_end_is_reused(tmp_path):
    doc = os.urandom(300_000)
    with FakeHost(retrieve_answer([("1.2.3", "1.2.3.4", doc)], epilogue=b"\r\nthe end\r\n")) as host:
        client = SoapClient(host.url, 5, spool_dir=str(tmp_path), pool=ConnectionPool())
        for _ in range(3):
            reply = client.call(C.ACTION_RETRIEVE, query_payload(), use_mtom=True)
            (part,) = reply.mtom.parts.values()
            assert part.read_bytes() == doc
            reply.mtom.cleanup()
        assert host.connections == 1 and os.listdir(tmp_path) == []


def test_mtom_answer_left_unread_after_an_error_is_not_reused(tmp_path):
    big = retrieve_answer([("1.2.3", "1.2.3.4", os.urandom(2_000_000))])
    with FakeHost(big) as host:
        client = SoapClient(host.url, 5, spool_dir=str(tmp_path), pool=ConnectionPool(), max_part_bytes=1000)
        for _ in range(3):
            with pytest.raises(mtom.MtomLimitError):
                client.call(C.ACTION_RETRIEVE, query_payload(), use_mtom=True)
        # A reused connection would have met the rest of the previous answer instead of its own.
        assert host.connections == 3 and os.listdir(tmp_path) == []


def test_answer_with_an_epilogue_too_long_to_drain_is_not_reused(tmp_path):
    answer = retrieve_answer([("1.2.3", "1.2.3.4", b"doc")], epilogue=b"x" * (1 << 20))
    with FakeHost(answer) as host:
        client = SoapClient(host.url, 5, spool_dir=str(tmp_path), pool=ConnectionPool())
        for _ in range(2):
            client.call(C.ACTION_RETRIEVE, query_payload(), use_mtom=True).mtom.cleanup()
        assert host.connections == 2


def test_http_error_read_whole_keeps_the_connection():
    answers = iter([Answer(b"<half", "application/soap+xml", status=500)])

    def broken_then_fine(body):
        return next(answers, None) or registry_success()

    with FakeHost(broken_then_fine) as host:
        client = SoapClient(host.url, 5, pool=ConnectionPool())
        reply = client.call(C.ACTION_REGISTER, query_payload())
        assert reply.envelope is None and reply.status == 500
        # An HTTP error that was read whole leaves the connection usable.
        register_n(client, 2)
        assert host.connections == 1


def _concurrently(client: SoapClient, threads: int = 6, calls: int = 5) -> list:
    errors = []
    barrier = threading.Barrier(threads)

    def work():
        try:
            barrier.wait()
            register_n(client, calls)
        except Exception as exc:
            errors.append(exc)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return errors


def test_concurrent_callers_each_have_their_own_connection():
    # Two callers on one connection would read each other's answers, and fail.
    pool = ConnectionPool(max_idle=8)
    with FakeHost(registry_success()) as host:
        assert _concurrently(SoapClient(host.url, 5, pool=pool)) == []
        assert host.requests == 30 and 1 <= host.connections <= 6
        assert pool.idle_count() == host.connections


def test_idle_connections_are_bounded_per_key():
    pool = ConnectionPool(max_idle=2)
    with FakeHost(registry_success()) as host:
        assert _concurrently(SoapClient(host.url, 5, pool=pool)) == []
        assert host.requests == 30 and pool.idle_count() <= 2


def test_tls_connection_is_reused_and_recovered(tmp_path):
    ca = Authority(str(tmp_path))
    cert, key = ca.issue("fake-host")
    tls = server_context(TlsFiles(cert, key), require_client_cert=False)
    with FakeHost(registry_success(), tls=tls) as host:
        client = SoapClient(host.url, 5, client_context(None, ca.path), pool=ConnectionPool())
        register_n(client)
        assert host.connections == 1
        host.close_idle()
        register_n(client, 2)
        host.drop_reused = True
        register_n(client, 1)
        assert host.counts == {"connections": 3, "requests": CALLS + 3, "dropped": 1}


def test_pool_keys_on_the_tls_context(tmp_path):
    ca = Authority(str(tmp_path))
    cert, key = ca.issue("fake-host")
    tls = server_context(TlsFiles(cert, key), require_client_cert=False)
    pool = ConnectionPool()
    with FakeHost(registry_success(), tls=tls) as host:
        register_n(SoapClient(host.url, 5, client_context(None, ca.path), pool=pool), 2)
        register_n(SoapClient(host.url, 5, client_context(None, ca.path), pool=pool), 2)
        assert host.connections == 2


def test_closed_pool_keeps_nothing():
    pool = ConnectionPool()
    with FakeHost(registry_success()) as host:
        register_n(SoapClient(host.url, 5, pool=pool), 2)
        assert pool.idle_count() == 1
        pool.close()
        assert pool.idle_count() == 0
        register_n(SoapClient(host.url, 5, pool=pool), 2)
        assert pool.idle_count() == 0 and host.connections == 3


def test_idle_connections_past_their_time_are_closed_not_reused():
    pool = ConnectionPool(idle_seconds=0.2)
    with FakeHost(registry_success()) as a, FakeHost(registry_success()) as b:
        register_n(SoapClient(a.url, 5, pool=pool), 1)
        time.sleep(0.3)
        # Calling another host sweeps the first host's expired connection too.
        register_n(SoapClient(b.url, 5, pool=pool), 1)
        assert pool.idle_count() == 1
        register_n(SoapClient(a.url, 5, pool=pool), 1)
        assert a.connections == 2 and b.connections == 1
