"""Prometheus metrics, served at GET /metrics (README, "Metrics").

What is counted, and where:

- the SOAP transactions: :class:`Measure`, the outermost layer of the request pipeline
  (xds/pipeline.py), so every request that reaches an operation is counted once, whether it is read off
  the network, answered asynchronously (xds/async_reply.py) or run in-process by the patients' portal
  (XdsApp.call). A SOAP fault raised before the pipeline (an envelope that does not parse, an action
  not served) is counted by XdsApp._soap through :meth:`Metrics.fault`;
- the ITI-8 feed: :meth:`Metrics.counting_feed` wraps the feed's audit hook (node/server.py);
- the database pools and the audit outbox: :class:`_StateCollector`, read when Prometheus scrapes, so
  nothing runs between scrapes;
- the process (CPU, memory, open files), the platform and the garbage collector: prometheus_client's
  own collectors.

No label carries what a request said: transaction, outcome, error code, severity, store and pool
class come from fixed vocabularies, and anything outside them is "other". A patient id, a uniqueId, a
certificate subject or a URL never reaches a label, so the page can be served without authentication,
like /health.

Each application has its own CollectorRegistry, not prometheus_client's global one, so that several
servers in one process (the tests) count apart.

Several worker processes (`xds serve --workers N`, node/workers.py): the supervisor names an empty folder
in PROMETHEUS_MULTIPROC_DIR before it starts the workers, each worker writes its counters, histograms
and its share of the in-flight gauge (multiprocess_mode "livesum") there, and the page, whichever worker
answers the scrape, is prometheus_client's MultiProcessCollector over the folder: the whole node. The
supervisor marks a worker dead when it exits. The process collectors and the scrape-time collector
(pools, outbox) are the answering worker's: its own pools, and the outbox depth read from the shared
database, which is right for all.
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
import time
from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client import GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder

from . import constants as C
from . import errors as E
from .errors import SoapFault

log = logging.getLogger("xds.metrics")

# Set on a request's environ by XdsApp._soap: when the request began to be read, so that the latency
# covers reading the body (an ITI-41's documents) and not only the handler.
STARTED_KEY = "xds.metrics.started"
# Set by Measure on a request whose SOAP fault it counted, so that XdsApp._soap does not count it again.
COUNTED_KEY = "xds.metrics.counted"

OTHER = "other"
TRANSACTIONS = frozenset(C.TRANSACTIONS.values())
OUTCOMES = ("success", "partial", "failure", "soap_fault", OTHER)
# The codes of IHE ITI TF-3 Table 4.2.4.1-2 and the ebRS extensions this server answers (xds/errors.py).
# A routed ITI-43 passes on a repository host's RegistryErrors: a code outside this list is "other".
ERROR_CODES = frozenset(v for k, v in vars(E).items() if k.isupper() and isinstance(v, str))
SEVERITIES = {C.SEVERITY_ERROR: "error", C.SEVERITY_WARNING: "warning"}
FEED_OUTCOMES = frozenset(("accepted", "denied", "invalid", "failed"))  # registry.feed.FeedEvent.outcome
POOL_CLASSES = frozenset(("QueuePool", "AsyncAdaptedQueuePool", "SingletonThreadPool", "StaticPool", "NullPool",
                          "AssertionPool"))
STORES = frozenset(("registry", "repository"))

# From a quick stored query (about a millisecond) to a large ITI-41 or a routed ITI-43 that waits for a
# slow repository host (forward_timeout, 30 s by default).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

_STATUS = {C.RESPONSE_SUCCESS: "success", C.RESPONSE_PARTIAL_SUCCESS: "partial", C.RESPONSE_FAILURE: "failure"}
_HL7_ACK = {"AA": "success", "CA": "success", "AE": "failure", "AR": "failure", "CE": "failure", "CR": "failure"}
_RS_ERROR_LIST = C.q(C.NS_RS, "RegistryErrorList")
_RS_RESPONSE = C.q(C.NS_RS, "RegistryResponse")
_V3_ACK_TYPE = f"{{{C.NS_HL7V3}}}acknowledgement/{{{C.NS_HL7V3}}}typeCode"


def transaction_of(action: str | None) -> str:
    name = C.TRANSACTIONS.get(action or "")
    return name if name in TRANSACTIONS else OTHER


def _one_of(value, vocabulary) -> str:
    return value if value in vocabulary else OTHER


def outcome_of(payload) -> tuple[str, list[tuple[str, str]]]:
    """(outcome, [(error code, severity)]) of an answer payload, from its status and RegistryErrorList.

    Only the status holder's own RegistryErrorList is read, never the whole payload: an ITI-18 answer
    may hold a thousand entries."""
    holder = payload if payload.get("status") is not None else payload.find(_RS_RESPONSE)
    if holder is None:
        ack = payload.find(_V3_ACK_TYPE)  # ITI-44: an MCCI_IN000002UV01 acknowledgement
        if ack is not None:
            return _HL7_ACK.get(ack.get("code"), OTHER), []
        return "success", []  # an answer in its own message type (registered-documents), not a failure
    codes = []
    errors = holder.find(_RS_ERROR_LIST)
    if errors is not None:
        for e in errors:
            if isinstance(e.tag, str) and e.tag.endswith("}RegistryError"):
                codes.append((_one_of(e.get("errorCode"), ERROR_CODES),
                              SEVERITIES.get(e.get("severity"), "error")))
    return _STATUS.get(holder.get("status"), OTHER), codes


class Metrics:
    """The metrics of one application, and its /metrics page."""

    def __init__(self, engines: Iterable[tuple[str, object]] = (), audit_store=None, audit_delivery: bool = False):
        """engines: (store name, SQLAlchemy engine) of the process's databases; an engine given twice (the
        repository on the registry's database) is one pool, reported under its first name.
        audit_store: the xds.audit.store.AuditStore whose outbox depth to report, if auditing is on;
        audit_delivery: whether a delivery thread sends it anywhere (audit_repository, webhook)."""
        # The *_created series (each counter's start time) would double the series for nothing Prometheus
        # uses; the switch is prometheus_client's, for the whole process, and this server is its only user.
        disable_created_metrics()
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        r = self.registry
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # Several worker processes (node/workers.py): each writes its counts to that folder, and the
            # scrape, whichever worker answers it, sums every worker's files. The metrics are kept in a
            # registry of their own, not shown, so that the page does not count this worker twice.
            from prometheus_client import multiprocess

            multiprocess.MultiProcessCollector(self.registry)
            r = CollectorRegistry()
        self.requests = Counter("xds_requests", "SOAP requests, by transaction and outcome (success, partial, "
                                "failure, soap_fault)", ["transaction", "outcome"], registry=r)
        self.errors = Counter("xds_registry_errors", "RegistryError entries answered, by transaction, errorCode and "
                              "severity", ["transaction", "error_code", "severity"], registry=r)
        self.latency = Histogram("xds_request_duration_seconds", "Time from the start of reading a SOAP request to "
                                 "its answer being ready to send", ["transaction"], buckets=LATENCY_BUCKETS,
                                 registry=r)
        self.in_flight = Gauge("xds_requests_in_flight", "SOAP requests being processed", ["transaction"],
                               registry=r, multiprocess_mode="livesum")
        self.feed = Counter("xds_feed_messages", "ITI-8 patient identity feed messages (MLLP), by outcome "
                            "(accepted, denied, invalid, failed)", ["outcome"], registry=r)
        self.registry.register(_StateCollector(engines, audit_store, audit_delivery))

    def expect(self, transactions: Iterable[str]) -> None:
        """Show the served transactions at zero before their first request, so that a rate over them is
        defined from the first scrape."""
        for t in sorted({transaction_of_name(t) for t in transactions}):
            for outcome in OUTCOMES[:4]:
                self.requests.labels(t, outcome)
            self.in_flight.labels(t)

    # --- counting ---------------------------------------------------------------------------------
    def layer(self) -> "Measure":
        return Measure(self)

    def answered(self, transaction: str, payload, seconds: float) -> None:
        outcome, codes = outcome_of(payload)
        self.requests.labels(transaction, outcome).inc()
        for code, severity in codes:
            self.errors.labels(transaction, code, severity).inc()
        self.latency.labels(transaction).observe(seconds)

    def fault(self, action: str | None, started: float | None) -> None:
        """A SOAP fault answered before the request reached the pipeline."""
        transaction = transaction_of(action)
        self.requests.labels(transaction, "soap_fault").inc()
        if started is not None:
            self.latency.labels(transaction).observe(time.perf_counter() - started)

    def counting_feed(self, hook: Callable) -> Callable:
        """The ITI-8 feed's audit hook, counting each message's outcome before passing it on."""
        def counted(event):
            self.feed.labels(_one_of(getattr(event, "outcome", None), FEED_OUTCOMES)).inc()
            return hook(event)

        return counted

    # --- the page ------------------------------------------------------------------------------------
    def exposition(self, accept: str = "") -> tuple[str, bytes]:
        """(content type, body) of a scrape: the Prometheus text format, or OpenMetrics when asked for."""
        encode, content_type = choose_encoder(accept)
        return content_type, encode(self.registry)


def transaction_of_name(name: str) -> str:
    return name if name in TRANSACTIONS else OTHER


class Measure:
    """The pipeline layer: counts each request once, with its outcome, error codes and latency, and
    holds it in the in-flight gauge while the layers inside run."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def __call__(self, req, call_next):
        m = self.metrics
        transaction = transaction_of(getattr(req, "action", None))
        environ = getattr(req, "environ", None)
        environ = environ if environ is not None else {}
        started = environ.get(STARTED_KEY) or time.perf_counter()
        gauge = m.in_flight.labels(transaction)
        gauge.inc()
        try:
            resp = call_next(req)
        except SoapFault:
            environ[COUNTED_KEY] = True
            m.requests.labels(transaction, "soap_fault").inc()
            m.latency.labels(transaction).observe(time.perf_counter() - started)
            raise
        except BaseException:
            m.requests.labels(transaction, OTHER).inc()
            m.latency.labels(transaction).observe(time.perf_counter() - started)
            raise
        finally:
            gauge.dec()
        try:
            m.answered(transaction, resp.head, time.perf_counter() - started)
        except Exception:  # counting must never cost the caller its answer
            log.exception("request %s: its metrics could not be counted", getattr(req, "request_id", "?"))
        return resp


class _StateCollector:
    """What is read at scrape time: the connection pools and the audit outbox."""

    def __init__(self, engines, audit_store, audit_delivery: bool):
        seen, self.engines = set(), []
        for name, engine in engines:
            if engine is not None and id(engine) not in seen:
                seen.add(id(engine))
                self.engines.append((_one_of(name, STORES), engine))
        self.audit_store = audit_store
        self.audit_delivery = audit_delivery

    def describe(self):
        # Nothing to check for clashes, and registering must not query the database.
        return []

    def collect(self):
        yield from self._pools()
        if self.audit_store is not None:
            yield from self._outbox()

    def _pools(self):
        info = GaugeMetricFamily("xds_db_pool_info", "The connection pool of each database store (1), by its "
                                 "SQLAlchemy pool class", labels=["store", "pool_class"])
        size = GaugeMetricFamily("xds_db_pool_size", "Connections the pool keeps (pool_size)", labels=["store"])
        out = GaugeMetricFamily("xds_db_pool_checked_out", "Connections in use", labels=["store"])
        idle = GaugeMetricFamily("xds_db_pool_checked_in", "Idle connections in the pool", labels=["store"])
        over = GaugeMetricFamily("xds_db_pool_overflow", "Connections open beyond pool_size", labels=["store"])
        most = GaugeMetricFamily("xds_db_pool_max_overflow", "Connections allowed beyond pool_size",
                                 labels=["store"])
        for store, engine in self.engines:
            pool = engine.pool
            info.add_metric([store, _one_of(type(pool).__name__, POOL_CLASSES)], 1)
            # Only a QueuePool counts its connections: SQLite in memory has a SingletonThreadPool or a
            # StaticPool, a NullPool keeps none; they show their class alone.
            if not all(hasattr(pool, a) for a in ("size", "checkedout", "checkedin", "overflow")):
                continue
            try:
                size.add_metric([store], pool.size())
                out.add_metric([store], pool.checkedout())
                idle.add_metric([store], pool.checkedin())
                # QueuePool.overflow() starts at -pool_size: the connections it may still open before overflowing.
                over.add_metric([store], max(pool.overflow(), 0))
                limit = getattr(pool, "_max_overflow", None)
                if isinstance(limit, int):
                    most.add_metric([store], max(limit, 0) if limit >= 0 else float("inf"))
            except Exception:
                log.exception("the %s pool's figures could not be read", store)
        yield from (info, size, out, idle, over, most)

    def _outbox(self):
        from sqlalchemy import and_, func, select

        from .audit.store import audit_notification, audit_record

        r, n = audit_record, audit_notification
        pending = and_(r.c.delivered.is_(None), r.c.sent.is_(None))
        try:
            # Both on the pending indexes (ix_audit_record_pending, ix_audit_notification_pending).
            with self.audit_store.engine.connect() as conn:
                records = conn.execute(select(func.count()).select_from(r).where(pending)).scalar() or 0
                oldest = conn.execute(select(r.c.created).where(pending).order_by(r.c.seq).limit(1)).scalar()
                notes = conn.execute(select(func.count()).select_from(n).where(n.c.delivered.is_(None))).scalar() or 0
        except Exception as exc:  # the database does not answer: /health says so; the scrape still answers
            log.warning("the audit outbox could not be read for /metrics: %s", exc.__class__.__name__)
            return
        depth = GaugeMetricFamily("xds_audit_outbox_pending", "Audit outbox entries waiting for delivery: ATNA "
                                  "records (kind=record) and patient notifications (kind=notification)",
                                  labels=["kind"])
        depth.add_metric(["record"], records)
        depth.add_metric(["notification"], notes)
        yield depth
        age = 0.0
        if oldest is not None:
            if oldest.tzinfo is None:  # SQLite gives back the UTC time it was given, without its zone
                oldest = oldest.replace(tzinfo=_dt.timezone.utc)
            age = max((_dt.datetime.now(_dt.timezone.utc) - oldest).total_seconds(), 0.0)
        yield GaugeMetricFamily("xds_audit_outbox_oldest_pending_seconds", "Age of the oldest audit record waiting "
                                "for delivery (0: none waits)", value=age)
        yield GaugeMetricFamily("xds_audit_delivery_enabled", "1 when a delivery thread sends the outbox (an "
                                "audit_repository or notification_webhook is set); 0: records wait in it for ever",
                                value=1 if self.audit_delivery else 0)
