"""Sends what the audit outbox holds: ATNA records to the audit repository (syslog over TLS or UDP,
xds/audit/syslog.py) and notifications to the webhook. A background thread per process, woken when a
request wrote something and every ``interval`` seconds otherwise; never on a request's path, so an
unreachable repository slows no answer.

Over TLS a batch counts as delivered only once the peer has read all of it (the confirmed close of
:class:`xds.audit.syslog.TlsSender`); until then it stays pending and is sent again after a pause that
grows with each failure (at most ``max_backoff``). Over UDP nothing is ever confirmed: a record is sent
once and marked sent, and stays in the outbox.
"""
from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone

from . import records as R
from . import syslog
from .store import AuditStore

log = logging.getLogger("xds.audit")

LEASE_SECONDS = 60.0   # a process that died while sending gives its rows back after this
COALESCE = 0.2        # seconds a wake-up waits for more records before sending
PRUNE_EVERY = 3600.0   # seconds between prunings of sent records


class Delivery:
    def __init__(self, store: AuditStore, source, *, destination: str | None = None, ssl_context=None,
                 webhook: str | None = None, webhook_ssl_context=None, interval: float = 1.0, batch: int = 200,
                 max_backoff: float = 10.0, timeout: float = 10.0, app_name: str = "xds",
                 keep_days: float | None = None):
        self.store = store
        self.source = source
        self.destination = syslog.parse_destination(destination) if destination else None
        self.sender = syslog.sender_for(self.destination, ssl_context, timeout) if self.destination else None
        self.webhook = webhook
        self.webhook_ssl_context = webhook_ssl_context
        self.interval = interval
        self.batch = batch
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.app_name = app_name
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failures = 0
        self._notify_failures = 0
        self.keep_days = keep_days
        self._pruned_at = 0.0

    # --- the thread ----------------------------------------------------------------------------
    def start(self) -> "Delivery":
        self._thread = threading.Thread(target=self._run, name="xds-audit-delivery", daemon=True)
        self._thread.start()
        return self

    def kick(self) -> None:
        self._wake.set()

    def stop(self, flush_timeout: float = 5.0) -> None:
        """Stop after one last attempt to send what is pending (bounded by flush_timeout)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(flush_timeout + self.timeout)
            self._thread = None

    def _run(self) -> None:
        while True:
            stopping = self._stop.is_set()
            try:
                busy = self.run_once()
            except Exception:
                log.exception("audit delivery failed; trying again")
                busy = False
            if stopping:
                return
            if busy:
                continue
            if self._failures or self._notify_failures:
                # Backing off: a request's kick does not bring the retry forward, or a busy server would
                # knock on a repository that is down once per request.
                deadline = time.monotonic() + self._pause()
                while not self._stop.is_set() and time.monotonic() < deadline:
                    self._stop.wait(min(0.5, max(0.0, deadline - time.monotonic())))
            elif self._wake.wait(self.interval) and not self._stop.is_set():
                # Woken by a request: let the requests of the next moment join the batch, so that one
                # connection carries many records instead of one each.
                self._stop.wait(COALESCE)
            self._wake.clear()

    def _pause(self) -> float:
        failures = max(self._failures, self._notify_failures)
        if failures == 0:
            return self.interval
        return min(self.max_backoff, self.interval * 2 ** min(failures, 10))

    # --- one round ------------------------------------------------------------------------------
    def run_once(self) -> bool:
        """Send one batch of records and notifications; True when there may be more to send now."""
        more = False
        self._prune()
        if self.sender is not None:
            more |= self._records()
        if self.webhook:
            more |= self._notifications()
        return more

    def _prune(self) -> None:
        """Once an hour, the sent records older than keep_days go (the audit repository has them)."""
        if not self.keep_days or time.monotonic() - self._pruned_at < PRUNE_EVERY:
            return
        self._pruned_at = time.monotonic()
        gone = self.store.prune(datetime.now(timezone.utc) - timedelta(days=self.keep_days))
        if gone:
            log.info("pruned %d audit records sent more than %s days ago", gone, self.keep_days)

    def _records(self) -> bool:
        rows = self.store.lease_records(self.batch, LEASE_SECONDS)
        if not rows:
            return False
        seqs = [seq for seq, _ in rows]
        try:
            messages = [self._message(seq, stored) for seq, stored in rows]
        except Exception as exc:  # a stored event this version cannot render: kept, said, not resent in a loop
            self.store.records_failed(seqs, f"cannot render: {exc.__class__.__name__}", self.max_backoff)
            raise
        try:
            if self.destination.transport == "udp":
                self.sender.send(messages)
                self.store.records_done(seqs, confirmed=False)
            else:
                self.sender.deliver(messages)
                self.store.records_done(seqs, confirmed=True)
        except syslog.DeliveryError as exc:
            self._failures += 1
            self.store.records_failed(seqs, str(exc), self._pause())
            if self._failures in (1, 10) or self._failures % 100 == 0:
                log.warning("audit repository unreachable (%d records waiting in this batch): %s", len(seqs), exc)
            return False
        if self._failures:
            log.info("audit repository reachable again")
        self._failures = 0
        return len(rows) == self.batch

    def _message(self, seq: int, stored: str) -> bytes:
        event = R.from_stored(stored, seq)
        xml = R.render(event, self.source.audit_source_id, self.source.enterprise_site_id)
        return syslog.format_message(xml, hostname=self.source.address or "-", app_name=self.app_name,
                                     procid=self.source.pid or "-", timestamp=event.event_time)

    def _notifications(self) -> bool:
        rows = self.store.lease_notifications(self.batch, LEASE_SECONDS)
        if not rows:
            return False
        for row in rows:
            body = json.dumps(notification_json(row)).encode("utf-8")
            request = urllib.request.Request(self.webhook, data=body, method="POST",
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout, context=self.webhook_ssl_context) as r:
                    ok = 200 <= r.status < 300
                    why = f"HTTP {r.status}"
            except urllib.error.HTTPError as exc:
                ok, why = False, f"HTTP {exc.code}"
            except (urllib.error.URLError, OSError) as exc:
                ok, why = False, f"{exc.__class__.__name__}: {getattr(exc, 'reason', exc)}"
            if ok:
                self.store.notification_done(row["id"])
                self._notify_failures = 0
            else:
                self._notify_failures += 1
                self.store.notification_failed(row["id"], f"webhook {why}", self._pause())
                if self._notify_failures in (1, 10) or self._notify_failures % 100 == 0:
                    log.warning("notification webhook failed: %s", why)
                return False
        return len(rows) == self.batch


def notification_json(row: dict) -> dict:
    """What the webhook receives: who is told, about which access; no document content."""
    at = row["at"]
    if isinstance(at, datetime):
        at = (at if at.tzinfo else at.replace(tzinfo=timezone.utc)).isoformat()
    return {"id": row["id"], "recipient": row["recipient"], "recipient_id": row["recipient_id"],
            "patient": row["patient"], "mode": row["mode"], "at": at, "professional": row["person"],
            "organisation": row["organisation"], "document_title": row["document_title"]}
