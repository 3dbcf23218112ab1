"""The portal's sessions and pending sign-ins, in the database, so that every process and host using it
sees the same ones (a sign-in begun on one worker may come back on another).

A session is known by a random 32-byte token that only the patient's browser holds (the xds_session
cookie); the table keeps its SHA-256, so that someone reading the database, or a backup, cannot sign in
as anyone. The session's CSRF token is derived from the session token (an HMAC keyed with it), so it is
not in the database either: the table keeps its SHA-256 to check it against.

A pending sign-in (between /portal/login and /portal/callback, 10 minutes at most) is known by the
SHA-256 of its OAuth state and bound to the browser that began it (the SHA-256 of the xds_login cookie's
token); it holds the nonce and the PKCE verifier that the callback needs, and is used once: taking it
deletes it.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from sqlalchemy import Column, DateTime, Index, MetaData, String, Table, delete, insert, select, update
from sqlalchemy.engine import Engine

from xds.db import retry_read

from .jwt import b64url_encode

metadata = MetaData()

portal_session = Table(
    "portal_session", metadata,
    Column("id", String(64), primary_key=True),          # hex SHA-256 of the cookie's token
    Column("patient_id", String(256), nullable=False),   # the HL7 CX the session acts for
    Column("subject", String(255), nullable=False),      # the id_token's sub
    Column("issuer", String(512), nullable=False),       # the id_token's iss
    Column("csrf_hash", String(64), nullable=False),     # hex SHA-256 of the session's CSRF token
    Column("created", DateTime(timezone=True), nullable=False),
    Column("expires", DateTime(timezone=True), nullable=False),
    Column("last_seen", DateTime(timezone=True), nullable=False),
    Index("ix_portal_session_expires", "expires"),
)

portal_login = Table(
    "portal_login", metadata,
    Column("state_hash", String(64), primary_key=True),  # hex SHA-256 of the OAuth state
    Column("browser_hash", String(64), nullable=False),  # hex SHA-256 of the xds_login cookie's token
    Column("nonce", String(128), nullable=False),
    Column("verifier", String(128), nullable=False),     # the PKCE code_verifier
    Column("next_path", String(1024), nullable=False),   # the local path to land on once signed in
    Column("expires", DateTime(timezone=True), nullable=False),
    Index("ix_portal_login_expires", "expires"),
)

LOGIN_TTL = 600          # seconds a sign-in may take between /portal/login and /portal/callback
_SEEN_EVERY = 60         # seconds between two writes of a session's last_seen
_PURGE_EVERY = 200       # sessions and sign-ins begun between deletions of the expired ones
_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")   # 32 random bytes, base64url
_CSRF_LABEL = b"xds portal csrf v1"


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def well_formed(token: object) -> bool:
    """A token this module could have made (32 bytes, base64url); anything else is not looked up."""
    return isinstance(token, str) and _TOKEN.fullmatch(token) is not None


def csrf_token_of(session_token: str) -> str:
    return b64url_encode(hmac.new(session_token.encode("utf-8"), _CSRF_LABEL, hashlib.sha256).digest())


@dataclass(frozen=True)
class Session:
    """A signed-in patient. csrf_token is for the forms rendered to this patient (check_csrf)."""

    id: str                     # the SHA-256 of the cookie's token: fine in a log line, useless to sign in
    patient_id: str
    subject: str
    issuer: str
    created: _dt.datetime
    expires: _dt.datetime
    last_seen: _dt.datetime
    csrf_hash: str = field(repr=False)
    csrf_token: str = field(repr=False)


@dataclass(frozen=True)
class PendingLogin:
    browser_hash: str
    nonce: str = field(repr=False)
    verifier: str = field(repr=False)
    next_path: str
    expires: _dt.datetime


def _aware(t: _dt.datetime) -> _dt.datetime:
    # SQLite hands DateTime(timezone=True) back naive; every time written here is UTC.
    return t if t.tzinfo is not None else t.replace(tzinfo=_dt.timezone.utc)


class SessionStore:
    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time):
        self.engine = engine
        self.clock = clock
        self._begun = 0
        self._lock = threading.Lock()

    def migrate(self) -> None:
        from xds import migrate

        migrate.upgrade(self.engine, "portal")

    def _now(self) -> _dt.datetime:
        return _dt.datetime.fromtimestamp(self.clock(), _dt.timezone.utc)

    def _maybe_purge(self) -> None:
        with self._lock:
            self._begun += 1
            due = self._begun % _PURGE_EVERY == 1
        if due:
            self.purge()

    # -- sessions
    def create(self, token: str, patient_id: str, subject: str, issuer: str, ttl: int) -> Session:
        """Record the session of token (made by the caller, given to the browser only)."""
        if not well_formed(token):
            raise ValueError("a session token is 32 random bytes in base64url")
        self._maybe_purge()
        now = self._now()
        csrf = csrf_token_of(token)
        row = {"id": digest(token), "patient_id": patient_id, "subject": subject, "issuer": issuer,
               "csrf_hash": digest(csrf), "created": now, "expires": now + _dt.timedelta(seconds=ttl),
               "last_seen": now}
        with self.engine.begin() as conn:
            conn.execute(insert(portal_session).values(**row))
        return Session(**row, csrf_token=csrf)

    def get(self, token: object) -> Session | None:
        """The live session of token; None when there is none (an expired one is deleted)."""
        if not well_formed(token):
            return None
        sid = digest(token)

        def read():
            with self.engine.connect().execution_options(xds_read_only=True) as conn:
                return conn.execute(select(portal_session).where(portal_session.c.id == sid)).mappings().first()

        row = retry_read(read, "portal session")
        if row is None:
            return None
        now = self._now()
        expires, last_seen = _aware(row["expires"]), _aware(row["last_seen"])
        if now >= expires:
            with self.engine.begin() as conn:
                conn.execute(delete(portal_session).where(portal_session.c.id == sid))
            return None
        if (now - last_seen).total_seconds() >= _SEEN_EVERY:
            with self.engine.begin() as conn:
                conn.execute(update(portal_session).where(portal_session.c.id == sid).values(last_seen=now))
            last_seen = now
        return Session(id=sid, patient_id=row["patient_id"], subject=row["subject"], issuer=row["issuer"],
                       created=_aware(row["created"]), expires=expires, last_seen=last_seen,
                       csrf_hash=row["csrf_hash"], csrf_token=csrf_token_of(token))

    def delete(self, session_id: str) -> bool:
        """End a session (logout), by its id (Session.id); True if there was one."""
        with self.engine.begin() as conn:
            return conn.execute(delete(portal_session).where(portal_session.c.id == session_id)).rowcount > 0

    def purge(self) -> int:
        """Delete the expired sessions and sign-ins; how many."""
        now = self._now()
        with self.engine.begin() as conn:
            n = conn.execute(delete(portal_session).where(portal_session.c.expires <= now)).rowcount
            n += conn.execute(delete(portal_login).where(portal_login.c.expires <= now)).rowcount
        return n

    # -- pending sign-ins
    def add_login(self, state: str, browser: str, nonce: str, verifier: str, next_path: str,
                  ttl: int = LOGIN_TTL) -> None:
        self._maybe_purge()
        with self.engine.begin() as conn:
            conn.execute(insert(portal_login).values(
                state_hash=digest(state), browser_hash=digest(browser), nonce=nonce, verifier=verifier,
                next_path=next_path, expires=self._now() + _dt.timedelta(seconds=ttl)))

    def take_login(self, state: object) -> PendingLogin | None:
        """The pending sign-in of state, deleted as it is read: a second callback with the same state
        finds nothing, even from another process at the same moment. None if unknown or expired."""
        if not isinstance(state, str) or not state or len(state) > 512:
            return None
        key = digest(state)
        with self.engine.begin() as conn:
            row = conn.execute(select(portal_login).where(portal_login.c.state_hash == key)).mappings().first()
            if row is None:
                return None
            # Whoever deletes the row owns the sign-in; a concurrent taker deletes nothing.
            if conn.execute(delete(portal_login).where(portal_login.c.state_hash == key)).rowcount != 1:
                return None
        expires = _aware(row["expires"])
        if self._now() >= expires:
            return None
        return PendingLogin(browser_hash=row["browser_hash"], nonce=row["nonce"], verifier=row["verifier"],
                            next_path=row["next_path"], expires=expires)

    # -- for tests and administrators
    def count(self) -> int:
        with self.engine.connect().execution_options(xds_read_only=True) as conn:
            return len(conn.execute(select(portal_session.c.id)).all())
