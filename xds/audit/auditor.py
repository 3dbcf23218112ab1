"""The audit layer: every exchange this process serves or makes becomes an ATNA record in the outbox
(xds/audit/store.py), written before the answer leaves; the registry side also writes the patient's
access log and the break-the-glass / centre 15 notifications, in the same transaction.

One record per actor and per hop: the side that answers records what it answered (the pipeline's
audit layer calls :meth:`Auditor.soap`), the side that calls another actor records that call
(:meth:`Auditor.hop`: the repository's ITI-42, the registry's routed ITI-43), and the ITI-8 feed
records each message (:meth:`Auditor.feed`).
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import os
import socket
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

from xds import constants as C
from xds.errors import SoapFault
from xds.security.callers import CallerRules, caller_of
from xds.security.policy import INVISIBLE_PATIENT, INVISIBLE_RL, patient_key
from xds.security.principal import Principal
from xds.security.saml import SecurityFault

from . import facts as F
from . import records as R
from .store import Access, AuditStore, Notification

log = logging.getLogger("xds.audit")

ANONYMOUS_REPLY_TO = "http://www.w3.org/2005/08/addressing/anonymous"
BREAK_THE_GLASS, CENTRE_15, NORMAL = "bris_de_glace", "centre_15", "normal"
# Purposes of use that are emergency access: the DMP's, and XUA's (HL7 PurposeOfUse EMERGENCY / ETREAT).
_MODES = {"bris_de_glace": BREAK_THE_GLASS, "centre_15": CENTRE_15, "EMERGENCY": BREAK_THE_GLASS,
          "ETREAT": BREAK_THE_GLASS}
_ACTIONS = {"ITI-18": "query", "ITI-42": "submit", "ITI-43": "retrieve", "ITI-57": "update", "ITI-62": "delete",
            "ITI-92": "update", "ITI-51": "query", "ITI-61": "submit"}
_READS = ("ITI-18", "ITI-51", "ITI-43")
_SUBJECT_ID = "urn:oasis:names:tc:xspa:1.0:subject:subject-id"
# The records of the calls a request's handler makes (Auditor.hop), held for the request's own record while
# the pipeline's audit layer runs it (Auditor.holding): every row of the request goes in one transaction.
_HELD: contextvars.ContextVar[list | None] = contextvars.ContextVar("xds_audit_held", default=None)


@dataclass(frozen=True)
class AuditSource:
    """This side as its records name it."""

    audit_source_id: str
    enterprise_site_id: str | None = None
    address: str = ""
    pid: str = ""

    @classmethod
    def of(cls, audit_source_id: str | None, enterprise_site_id: str | None = None) -> "AuditSource":
        host = socket.getfqdn() or "localhost"
        return cls(audit_source_id or f"xds@{host}", enterprise_site_id, host, str(os.getpid()))


class RegistryFacts:
    """What the registry knows that the request does not say: the patient and title of a referenced
    document (ITI-43, ITI-62), and the patient's médecin traitant (notifications)."""

    def __init__(self, store, access_store):
        self.store = store
        self.access_store = access_store

    def documents(self, refs) -> dict[str, tuple]:
        refs = [r for r in refs if r]
        if not refs:
            return {}
        with self.store.reading() as conn:
            return self.store.audit_facts(conn, refs)

    def treating_doctor(self, patient: str) -> str | None:
        return self.access_store.state(patient).treating_doctor


def _now() -> datetime:
    return datetime.now(timezone.utc)


def human_of(principal: Principal) -> R.HumanRequestor | None:
    if principal.mode in ("none", "tls") or not (principal.name_id or principal.subject):
        return None
    subject_id = (principal.attributes.get(_SUBJECT_ID) or (None,))[0]
    return R.HumanRequestor(
        name_id=principal.name_id or principal.subject, issuer=principal.issuer,
        alias=subject_id or (principal.subject if principal.subject != principal.name_id else None),
        roles=principal.roles, organization=principal.organization, organization_id=principal.organization_id,
        purposes_of_use=principal.purposes_of_use)


class Auditor:
    def __init__(self, store: AuditStore, source: AuditSource, callers: CallerRules = CallerRules(),
                 registry: RegistryFacts | None = None, base_url: str | None = None):
        self.store = store
        self.source = source
        self.callers = callers
        self.registry = registry
        self.base_url = base_url.rstrip("/") if base_url else None
        self.wake: Callable[[], None] = lambda: None   # the delivery thread's kick, once there is one

    # --- the pipeline's layer ----------------------------------------------------------------------
    @contextlib.contextmanager
    def holding(self):
        """While a request runs: the records of the calls it makes (an ITI-41's ITI-42, with the registry's
        side when both actors share the process) wait for its own record and are written with it, one
        transaction (one round trip) instead of one per hop. Written before the answer leaves either way;
        what is still held when the request ends without its record (never, through the pipeline) is
        written on the way out."""
        held: list = []
        token = _HELD.set(held)
        try:
            yield
        finally:
            _HELD.reset(token)
            if held:
                try:
                    self._write_held(held, [], [])
                except Exception:
                    # As for the request's own record: logged, and the request's answer or error stands.
                    log.exception("the audit records of a request's calls could not be written")

    def before(self, req) -> None:
        """What must be read before the handler changes it: the patients of the objects an ITI-62 removes."""
        if self.registry is not None and C.TRANSACTIONS.get(req.action) == "ITI-62" and req.actor == R.REGISTRY:
            req.audit_before = self.registry.documents(F.of_request("ITI-62", req.body).object_uuids)

    def soap(self, req, resp, exc) -> None:
        tx = C.TRANSACTIONS.get(req.action)
        if tx not in R.TRANSACTION_NAMES or not req.actor:
            return  # the repositories' settlement lookup is not a transaction of the profile
        if tx == "ITI-44":
            return self._feed_v3(req, exc)
        actor = R.REPOSITORY if tx == "ITI-43" else req.actor
        # The whole answer only where its objects are read: an ITI-18 answer's are kept serialised.
        head = resp.head if resp is not None else None

        def payload():
            return resp.payload if resp is not None else None

        def answered():
            # The answer's objects without splicing them into its payload (SoapResponse.registry_objects).
            return F.patients_of(resp.registry_objects()) if resp is not None else set()

        if exc is not None:
            outcome = 8 if isinstance(exc, SoapFault) else 12
            description = (getattr(exc, "subcode", None) or "SOAP fault") if isinstance(exc, SoapFault) \
                else "internal error"
        else:
            outcome, description = F.outcome(head)
        facts = F.of_request(tx, req.body)
        if tx == "ITI-18" and facts.patient_id is None and exc is None:
            patients = answered()   # a query by ids: the patient is the answer's, if one
            facts.patient_id = next(iter(patients)) if len(patients) == 1 else None
        if tx == "ITI-51":
            # One participant object per patient the query names (a query without a list: those answered).
            if not facts.patient_ids and exc is None:
                facts.patient_ids = sorted(answered())
            facts.patient_id = None
        principal = req.principal
        event = R.AuditEvent(
            transaction=tx, actor=actor, sequence=0, outcome=outcome, outcome_description=description,
            requestor=R.Node(user_id=req.envelope.reply_to or ANONYMOUS_REPLY_TO,
                             address=req.environ.get("REMOTE_ADDR")),
            responder=self._this(req.environ), human=human_of(principal),
            tls_subject=principal.tls_subject or req.peer_subject,
            patient_id=facts.patient_id, submission_set_uid=facts.submission_set_uid,
            patient_ids=tuple(facts.patient_ids) if tx == "ITI-51" else (),
            documents=tuple(R.DocumentRef(d.unique_id, d.repository_unique_id, d.home_community_id)
                            for d in facts.documents),
            object_uuids=tuple(facts.object_uuids), query_id=facts.query_id,
            query_request=facts.query_request, query_return_type=facts.query_return_type,
            home_community_id=facts.home_community_id)
        records = [event]
        if isinstance(exc, SecurityFault):
            records.append(R.SystemEvent(
                kind="authentication-failure", node=self._this(req.environ), sequence=0, outcome=4,
                outcome_description=exc.subcode, tls_subject=req.peer_subject, transaction=tx,
                peer=R.Node(user_id=req.peer_subject or "unknown", address=req.environ.get("REMOTE_ADDR"))))
        accesses: list[Access] = []
        if self.registry is not None and req.actor == R.REGISTRY and exc is None:
            accesses = self._accesses(tx, principal, facts, payload, outcome, getattr(req, "audit_before", None),
                                      getattr(req, "registered", None), answered=answered)
        held = _HELD.get()
        if held:
            return self._write_held(held, records, accesses)
        self._write(records, accesses)

    def must_record(self, req) -> bool:
        """A read whose record could not be written is not answered (xds/pipeline.py)."""
        return C.TRANSACTIONS.get(req.action) in _READS

    # --- the calls this side makes -------------------------------------------------------------------
    def hop(self, transaction: str, *, principal: Principal, destination: str, outcome: int,
            description: str | None = None, patient_id: str | None = None, submission_set_uid: str | None = None,
            documents=(), registry_side: bool = False, request=None, registered: dict | None = None) -> None:
        """A call this side made to another actor. For both actors in one process the repository's ITI-42
        also stands for the registry's side of it (registry_side), patient's log included."""
        this = R.Node(user_id=self._url("/xds/repository" if transaction == "ITI-42" else "/xds/registry"),
                      address=self.source.address, alternative_user_id=self.source.pid)
        other = R.Node(user_id=destination)
        actor = R.REPOSITORY if transaction == "ITI-42" else R.CONSUMER
        docs = tuple(R.DocumentRef(*d) if isinstance(d, tuple) else d for d in documents)
        event = R.AuditEvent(transaction=transaction, actor=actor, sequence=0, outcome=outcome,
                             outcome_description=description, requestor=this, responder=other,
                             human=human_of(principal), tls_subject=principal.tls_subject, patient_id=patient_id,
                             submission_set_uid=submission_set_uid, documents=docs)
        records = [event]
        accesses: list[Access] = []
        if registry_side:
            records.append(dataclasses.replace(event, actor=R.REGISTRY, requestor=this, responder=R.Node(
                user_id=self._url("/xds/registry"), address=self.source.address,
                alternative_user_id=self.source.pid), record_id=R._new_record_id()))
            if self.registry is not None and request is not None:
                accesses = self._accesses("ITI-42", principal, F.of_request("ITI-42", request), lambda: None,
                                          outcome, None, registered)
        held = _HELD.get()
        if held is not None:
            held.append((records, accesses))
            return
        self._write(records, accesses)

    # --- the feed and the node --------------------------------------------------------------------------
    def feed(self, event) -> None:
        """One ITI-8 message (registry.feed.FeedEvent), or one ITI-64 (its ADT^A43, TF-2b 3.64.5.1.2: the ids
        of the A43 by role and the SubmissionSet the registry made)."""
        trigger = event.event.split("^")[1] if "^" in event.event else None
        outcome = {"accepted": 0, "invalid": 4, "denied": 8}.get(event.outcome, 12)
        description = " ".join(p for p in (event.ack_code, str(event.error_code or "")) if p) or None
        if trigger == "A43":
            which = dict(transaction="ITI-64", patient_links=tuple(getattr(event, "links", ()) or ()),
                         submission_set_uid=getattr(event, "submission_set", None))
        else:
            which = dict(transaction="ITI-8", patient_id=event.patients[0] if event.patients else None,
                         hl7_trigger=trigger if trigger in R.HL7_TRIGGER_ACTIONS else None)
        record = R.AuditEvent(
            actor=R.REGISTRY, sequence=0, outcome=outcome, outcome_description=None if outcome == 0 else description,
            requestor=R.Node(user_id=f"{event.facility}|{event.application}", address=event.address),
            responder=R.Node(user_id=f"mllp://{self.source.address}", address=self.source.address,
                             alternative_user_id=self.source.pid),
            tls_subject=event.subject, message_control_id=event.control_id or None, **which)
        self._write([record], [])

    def _feed_v3(self, req, exc) -> None:
        """One ITI-44 message (registry/feed_v3.py): from the FeedEvent its handler left on the request, as
        ITI-8's records are made; a request the layers ended before the handler is a failure without it."""
        event = getattr(req, "feed_event", None)
        principal = req.principal
        if event is not None:
            outcome = {"accepted": 0, "invalid": 4, "denied": 8}.get(event.outcome, 12)
            description = None if outcome == 0 else event.ack_code
            interaction, control, patients = event.event, event.control_id, event.patients
            sender = event.application
        else:
            outcome = 8 if isinstance(exc, SoapFault) else 12
            description = (getattr(exc, "subcode", None) or "SOAP fault") if isinstance(exc, SoapFault) \
                else "internal error"
            interaction, control, patients, sender = C.last_segment(req.action), "", (), ""
        record = R.AuditEvent(
            transaction="ITI-44", actor=R.REGISTRY, sequence=0, outcome=outcome, outcome_description=description,
            requestor=R.Node(user_id=sender or req.envelope.reply_to or ANONYMOUS_REPLY_TO,
                             address=req.environ.get("REMOTE_ADDR")),
            responder=self._this(req.environ), human=human_of(principal),
            tls_subject=principal.tls_subject or req.peer_subject, patient_id=patients[0] if patients else None,
            hl7_trigger=interaction or None, message_control_id=control or None)
        records = [record]
        if isinstance(exc, SecurityFault):
            records.append(R.SystemEvent(
                kind="authentication-failure", node=self._this(req.environ), sequence=0, outcome=4,
                outcome_description=exc.subcode, tls_subject=req.peer_subject, transaction="ITI-44",
                peer=R.Node(user_id=req.peer_subject or "unknown", address=req.environ.get("REMOTE_ADDR"))))
        self._write(records, [])

    def system(self, kind: str, outcome: int = 0, description: str | None = None) -> None:
        self._write([R.SystemEvent(kind=kind, node=R.Node(user_id=self._url("/"), address=self.source.address,
                                                          alternative_user_id=self.source.pid),
                                   sequence=0, outcome=outcome, outcome_description=description)], [])

    def access_rights(self, environ: dict, principal: Principal, patient: str, action: str, outcome: int = 0) -> None:
        """A change of a patient's access rights (the portal, the administration interface): who made it,
        for which patient, and which change (its name only, e.g. "block"; never the person blocked)."""
        self._write([self._admin_change(environ, principal, R.ACCESS_RIGHTS, patient, outcome, action[:40])], [])

    def patient_ids(self, environ: dict, principal: Principal, patients: list[str], trigger: str,
                    outcome: int = 0) -> None:
        """An administrator's change of the registry's patient ids (/admin/patients): one record per id
        added (trigger A01), one for the surviving id of a merge (A40), as the ITI-8 feed's records."""
        named = patients[-1:] if trigger == "A40" else patients
        self._write([self._admin_change(environ, principal, R.PATIENT_IDS, pid, outcome,
                                        None if outcome == 0 else "refused", hl7_trigger=trigger)
                     for pid in named or [None]], [])

    def _admin_change(self, environ: dict, principal: Principal, transaction: str, patient: str | None,
                      outcome: int, description: str | None, **more) -> R.AuditEvent:
        """A change made through an administration endpoint or the portal, by the caller of this request."""
        return R.AuditEvent(
            transaction=transaction, actor=R.REGISTRY, sequence=0, outcome=outcome, outcome_description=description,
            requestor=R.Node(user_id=principal.subject or principal.tls_subject or "unknown",
                             address=environ.get("REMOTE_ADDR")),
            responder=self._this(environ), human=human_of(principal),
            tls_subject=principal.tls_subject or environ.get("xds.peer_subject"), patient_id=patient, **more)

    def authentication_failure(self, environ: dict, reason: str | None, transaction: str | None = None) -> None:
        """A refused request of the non-SOAP endpoints (xds/http_auth.py)."""
        self._write([R.SystemEvent(
            kind="authentication-failure", node=self._this(environ), sequence=0, outcome=4,
            outcome_description=(reason or "")[:120] or None, tls_subject=environ.get("xds.peer_subject"),
            transaction=transaction,
            peer=R.Node(user_id=environ.get("xds.peer_subject") or "unknown", address=environ.get("REMOTE_ADDR")))], [])

    # --- the patient's log ------------------------------------------------------------------------------
    def _accesses(self, tx, principal, facts: F.Facts, payload: Callable, outcome: int, before,
                  registered: dict | None = None, answered: Callable = set) -> list[Access]:
        """payload: gives the answer's payload, answered: the patients of its registry objects; each is read
        only where the accesses depend on what the answer holds."""
        action = _ACTIONS.get(tx)
        if action is None:
            return []
        caller = caller_of(principal, self.callers)
        mode = _MODES.get(caller.purpose or "", NORMAL)
        when = _now()
        result = "success" if outcome == 0 else ("partial" if outcome == 4 else "refused")
        who = dict(person=principal.subject or principal.name_id or principal.tls_subject,
                   person_id=principal.name_id or principal.tls_subject,
                   profession=(principal.roles[0].display or principal.roles[0].code) if principal.roles else None,
                   organisation=principal.organization or (principal.tls_subject if principal.mode == "tls" else None),
                   organisation_id=principal.organization_id)
        if principal.mode == "none":
            who.update(person="administrator (security none)", person_id=None)

        def entry(patient, uid=None, title=None, codes=frozenset(), reveal_at=None):
            # reveal_at is kept for every entry; it hides one from the patient only while INVISIBLE_PATIENT.
            return Access(patient_key=patient_key(patient), at=when, action=action, transaction=tx, mode=mode,
                          outcome=result, document_uid=uid, document_title=title,
                          reveal_at=reveal_at if INVISIBLE_PATIENT in codes else None,
                          secret=caller.secret or INVISIBLE_RL in codes, **who)

        out: list[Access] = []
        if tx == "ITI-18":
            patients = {facts.patient_id} if facts.patient_id else answered()
            out = [entry(p) for p in sorted(patients)]
        elif tx == "ITI-51":
            out = [entry(p) for p in sorted(set(facts.patient_ids))]
        elif tx in ("ITI-42", "ITI-61", "ITI-57", "ITI-92"):
            docs = [d for d in facts.documents if d.patient_id or facts.patient_id]
            # The registered entries' confidentiality and reveal time, as the registry now holds them, so
            # that the log names no document hidden from the patient (INVISIBLE_PATIENT) or representatives.
            # registered: what the registration itself stored (ITI-42, ITI-61), saving a read of it.
            known = {} if outcome != 0 or not docs else registered if registered else \
                self.registry.documents([d.unique_id for d in docs])
            out = [entry(d.patient_id or facts.patient_id, d.unique_id, d.title,
                         *(known[d.unique_id][3:5] if d.unique_id in known else ())) for d in docs]
            if not out and facts.patient_id:
                out = [entry(facts.patient_id)]
        elif tx == "ITI-43":
            handed = set(F.retrieved(payload()))
            uids = [d.unique_id for d in facts.documents]
            known = self.registry.documents(uids)
            for uid in uids:
                if uid in known and known[uid][0]:
                    patient, unique, title, codes, reveal_at = known[uid]
                    one = entry(patient, unique, title, codes, reveal_at)
                    if uid not in handed:
                        one = dataclasses.replace(one, outcome="refused")
                    out.append(one)
        elif tx == "ITI-62" and before:
            for ref, (patient, unique, title, codes, reveal_at) in sorted(before.items()):
                if patient:
                    out.append(entry(patient, unique, title, codes, reveal_at))
        return out

    def _notifications(self, accesses: list[Access]) -> list[Notification]:
        out: list[Notification] = []
        seen = set()
        for a in accesses:
            if a.mode == NORMAL or a.outcome == "refused" or (a.patient_key, a.mode) in seen:
                continue
            seen.add((a.patient_key, a.mode))
            base = dict(patient_key=a.patient_key, mode=a.mode, at=a.at, person=a.person,
                        organisation=a.organisation, document_title=a.document_title)
            out.append(Notification(recipient="patient", recipient_id=a.patient_key, **base))
            doctor = self.registry.treating_doctor(a.patient_key) if self.registry is not None else None
            if doctor:
                out.append(Notification(recipient="treating_doctor", recipient_id=doctor, **base))
        return out

    # --- writing -----------------------------------------------------------------------------------------
    def _write(self, events, accesses: list[Access], access_records: list[str] | None = None) -> None:
        notifications = self._notifications(accesses) if accesses else []
        self.store.append([(e.record_id, R.to_stored(e)) for e in events], accesses, notifications,
                          access_records)
        self.wake()

    def _write_held(self, held: list, records: list, accesses: list[Access]) -> None:
        """The held hops' rows first, as they happened, then the request's, each access under its own
        exchange's first record as when written apart; the list is emptied, so nothing is written twice."""
        events, all_accesses, under = [], [], []
        for r, a in [*held, (records, accesses)]:
            if r:
                events += r
                all_accesses += a
                under += [r[0].record_id] * len(a)
        held.clear()
        self._write(events, all_accesses, under)

    def _url(self, path: str) -> str:
        return (self.base_url or f"http://{self.source.address}") + path

    def _this(self, environ: dict) -> R.Node:
        if self.base_url:
            url = self.base_url + (environ.get("PATH_INFO") or "")
        else:
            scheme = environ.get("wsgi.url_scheme", "http")
            url = f"{scheme}://{environ.get('HTTP_HOST') or self.source.address}{environ.get('PATH_INFO') or ''}"
        return R.Node(user_id=url, address=self.source.address, alternative_user_id=self.source.pid)

