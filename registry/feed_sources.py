"""Who may feed the registry patient identities (ITI-8), read from a TOML file of ``[[source]]`` tables.

A source is a known system: the subject of its TLS client certificate (or, on a
listener without TLS, ``plain = true`` and optionally the addresses it sends
from), the sending applications and facilities it may name in MSH-3 and MSH-4,
the assigning authorities (CX.4 universal ids) whose patients it may create and
update, and those in which it may also merge. The README ("The patient feed")
shows the format.

Without a list the feed is open: that is only allowed on a loopback listener
without TLS (``xds.settings`` refuses the other cases at start-up), where the
sender is a process of this machine.
"""
from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass
from typing import Iterable

from xds.hl7 import is_oid
from xds.mllp import Peer

DEFAULT_MAX_CONNECTIONS = 4

# HL7 table 0357 codes of the refusals made here, with the ERR-5 application error code that
# says which rule refused (a local code, coding system "L").
ERR_TABLE_VALUE_NOT_FOUND = 103
ERR_INTERNAL = 207

UNKNOWN_SOURCE = "UNKNOWN_SOURCE"
SENDER_NOT_ALLOWED = "SENDER_NOT_ALLOWED"
AUTHORITY_NOT_ALLOWED = "AUTHORITY_NOT_ALLOWED"
MERGE_NOT_ALLOWED = "MERGE_NOT_ALLOWED"
APP_CODE_TEXT = {
    UNKNOWN_SOURCE: "Not a patient identity source of this registry",
    SENDER_NOT_ALLOWED: "Sending application or facility not allowed for this source",
    AUTHORITY_NOT_ALLOWED: "Assigning authority not allowed for this source",
    MERGE_NOT_ALLOWED: "Merge not allowed for this source",
    "XPID_CONFLICT": "The link change would leave linked objects with different patients",  # registry.xadpid
}

_KEYS = {"name", "subject", "plain", "application", "facility", "authorities", "merge", "addresses",
         "max_connections"}


@dataclass(frozen=True)
class Refusal:
    """Why a message is refused: the ACK's text, table 0357 code, ERR-2 location and ERR-5 code."""

    text: str
    error_code: int
    location: str
    app_code: str


def hd_key(value: str, component: str = "^") -> tuple[str, ...]:
    """An HD (MSH-3, MSH-4) as compared: its components, trailing empty ones dropped."""
    parts = value.split(component)
    while parts and not parts[-1]:
        parts.pop()
    return tuple(parts)


@dataclass(frozen=True)
class FeedSource:
    name: str
    subject: str | None                  # None: a plain source, for connections without TLS
    applications: frozenset[tuple[str, ...]]
    facilities: frozenset[tuple[str, ...]]
    authorities: frozenset[str]
    merge: frozenset[str]
    addresses: tuple = ()                # ip_network objects; empty: any address
    max_connections: int = DEFAULT_MAX_CONNECTIONS

    def may_feed(self, authority: str) -> bool:
        return authority in self.authorities

    def may_merge(self, authority: str) -> bool:
        return authority in self.merge

    def sends_from(self, address: str) -> bool:
        if not self.addresses:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.addresses)


class OpenSource:
    """The grant of an open feed (no list, loopback without TLS): any authority, merges included."""

    name = "open feed"
    subject = None

    def may_feed(self, authority: str) -> bool:
        return True

    def may_merge(self, authority: str) -> bool:
        return True


OPEN = OpenSource()


class FeedSources:
    """The configured sources, or an open feed (``FeedSources.open()``)."""

    def __init__(self, sources: Iterable[FeedSource], *, is_open: bool = False):
        self.sources = tuple(sources)
        self.is_open = is_open

    @classmethod
    def open(cls) -> "FeedSources":
        return cls((), is_open=True)

    @classmethod
    def load(cls, path: str) -> "FeedSources":
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"feed_sources {path}: {exc}") from None
        except OSError as exc:
            raise ValueError(f"feed_sources {path}: {exc.strerror or exc}") from None
        return cls.from_dict(data, path)

    @classmethod
    def from_dict(cls, data: dict, where: str = "feed_sources") -> "FeedSources":
        unknown = set(data) - {"source"}
        if unknown:
            raise ValueError(f"{where}: unknown key {sorted(unknown)[0]!r}; sources are [[source]] tables")
        tables = data.get("source", [])
        if not isinstance(tables, list):
            raise ValueError(f"{where}: 'source' must be [[source]] tables")
        sources = [_source(table, f"{where}: source {number}") for number, table in enumerate(tables, start=1)]
        _refuse_overlaps(sources, where)
        return cls(sources)

    # --- questions the feed and the listener ask ------------------------------------------

    def identify(self, peer: Peer | None, application: tuple[str, ...],
                 facility: tuple[str, ...]) -> FeedSource | OpenSource | Refusal:
        """The source a message comes from, or why it may not feed: by the connection (certificate
        subject, or plain and address), then by what MSH-3 and MSH-4 claim."""
        if self.is_open:
            return OPEN
        if peer is not None and peer.tls and peer.subject is None:
            # TLS without a verified certificate proves nothing; it must not pass for a plain source.
            return Refusal("the TLS connection presented no verified client certificate", ERR_INTERNAL, "",
                           UNKNOWN_SOURCE)
        if peer is not None and peer.subject is not None:
            candidates = [s for s in self.sources if s.subject == peer.subject]
            if not candidates:
                return Refusal(f"certificate subject '{peer.subject}' is not a patient identity source of this "
                               "registry", ERR_INTERNAL, "", UNKNOWN_SOURCE)
            who = f"certificate subject '{peer.subject}'"
        else:
            candidates = [s for s in self.sources if s.subject is None]
            if not candidates:
                return Refusal("this registry takes patient identities only over TLS from known certificate "
                               "subjects", ERR_INTERNAL, "", UNKNOWN_SOURCE)
            who = "a sender without TLS"
        address = peer.address if peer is not None else ""
        candidates = [s for s in candidates if s.sends_from(address)]
        if not candidates:
            return Refusal(f"{who} at {address or 'an unknown address'} is not a patient identity source of this "
                           "registry", ERR_INTERNAL, "", UNKNOWN_SOURCE)
        if peer is None or peer.subject is None:
            who = f"{who} at {address or 'an unknown address'}"
        by_application = [s for s in candidates if application in s.applications]
        if not by_application:
            return Refusal(f"sending application '{'^'.join(application)}' (MSH-3) is not one {who} may claim",
                           ERR_TABLE_VALUE_NOT_FOUND, "MSH^1^3", SENDER_NOT_ALLOWED)
        by_facility = [s for s in by_application if facility in s.facilities]
        if not by_facility:
            return Refusal(f"sending facility '{'^'.join(facility)}' (MSH-4) is not one {who} may claim with "
                           f"sending application '{'^'.join(application)}'",
                           ERR_TABLE_VALUE_NOT_FOUND, "MSH^1^4", SENDER_NOT_ALLOWED)
        return by_facility[0]  # load() refused lists where two entries could both match

    def identify_certificate(self, subject: str | None, address: str = "") -> "FeedSource | Refusal":
        """The source an HL7 v3 feed (ITI-44 over SOAP) comes from, by the verified TLS client certificate
        alone: v3 messages carry no MSH-3/MSH-4 to choose between entries of one subject, so the grant is
        what all that subject's entries allow (what its holder could claim over ITI-8 anyway). An open
        feed (no list) and plain sources admit nobody here."""
        if subject is None:
            return Refusal("the request presented no verified TLS client certificate; HL7 v3 feed sources are "
                           "known by their certificates", ERR_INTERNAL, "", UNKNOWN_SOURCE)
        candidates = [s for s in self.sources if s.subject == subject and s.sends_from(address)]
        if not candidates:
            return Refusal(f"certificate subject '{subject}' is not a patient identity source of this registry",
                           ERR_INTERNAL, "", UNKNOWN_SOURCE)
        if len(candidates) == 1:
            return candidates[0]
        first = candidates[0]
        return FeedSource(name=" + ".join(s.name for s in candidates), subject=subject,
                          applications=first.applications, facilities=first.facilities,
                          authorities=frozenset().union(*(s.authorities for s in candidates)),
                          merge=frozenset().union(*(s.merge for s in candidates)),
                          max_connections=first.max_connections)

    def connection_limit(self, peer: Peer, default: int = DEFAULT_MAX_CONNECTIONS) -> tuple[str, int]:
        """For ``MllpServer(source_limit=...)``: the key a connection counts under, and its cap."""
        if peer.subject is not None:
            caps = [s.max_connections for s in self.sources if s.subject == peer.subject]
            return "subject:" + peer.subject, max(caps, default=default)
        caps = [s.max_connections for s in self.sources if s.subject is None and s.sends_from(peer.address)]
        return "address:" + peer.address, max(caps, default=default)


# --- reading the file -----------------------------------------------------------------------------

def _source(table, where: str) -> FeedSource:
    if not isinstance(table, dict):
        raise ValueError(f"{where} is not a table")
    unknown = set(table) - _KEYS
    if unknown:
        raise ValueError(f"{where}: unknown key {sorted(unknown)[0]!r} (known: {', '.join(sorted(_KEYS))})")
    subject = table.get("subject")
    plain = table.get("plain", False)
    if not isinstance(plain, bool):
        raise ValueError(f"{where}: plain must be true or false")
    if subject is not None and (not isinstance(subject, str) or not subject.strip()):
        raise ValueError(f"{where}: subject must be a certificate subject such as 'O=Example,CN=adt.example'")
    if bool(subject) == plain:
        raise ValueError(f"{where}: give either subject (a TLS client certificate subject) or plain = true "
                         "(a sender on a listener without TLS)")
    name = table.get("name") or subject or where.split(": ", 1)[-1]
    if not isinstance(name, str):
        raise ValueError(f"{where}: name must be a string")
    applications = _hds(table, "application", where)
    facilities = _hds(table, "facility", where)
    authorities = _strings(table, "authorities", where)
    if not authorities:
        raise ValueError(f"{where}: authorities must list the assigning authority OIDs it may feed")
    for oid in authorities:
        if not is_oid(oid):
            raise ValueError(f"{where}: authority {oid!r} is not an OID")
    merge_raw = table.get("merge", False)
    if merge_raw is True:
        merge = set(authorities)
    elif merge_raw is False:
        merge = set()
    else:
        merge = set(_strings(table, "merge", where))
        outside = sorted(merge - set(authorities))
        if outside:
            raise ValueError(f"{where}: merge names {outside[0]!r}, which is not among its authorities")
    addresses = []
    for text in _strings(table, "addresses", where):
        try:
            addresses.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ValueError(f"{where}: address {text!r} is not an IP address or network") from None
    cap = table.get("max_connections", DEFAULT_MAX_CONNECTIONS)
    if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
        raise ValueError(f"{where}: max_connections must be a whole number of at least 1")
    return FeedSource(name=name, subject=subject.strip() if subject else None,
                      applications=frozenset(applications), facilities=frozenset(facilities),
                      authorities=frozenset(authorities), merge=frozenset(merge), addresses=tuple(addresses),
                      max_connections=cap)


def _strings(table: dict, key: str, where: str) -> list[str]:
    value = table.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(f"{where}: {key} must be a string or a list of strings")
    return [v.strip() for v in value]


def _hds(table: dict, key: str, where: str) -> set[tuple[str, ...]]:
    values = _strings(table, key, where)
    if not values:
        raise ValueError(f"{where}: {key} is required: the MSH-{3 if key == 'application' else 4} value(s) it "
                         "sends, e.g. 'HIS_NORD' or 'HIS_NORD^1.2.250.1.999.1^ISO'")
    return {hd_key(v) for v in values}


def _refuse_overlaps(sources: list[FeedSource], where: str) -> None:
    # Two entries that could both match one message would make its rights depend on the file's order.
    for i, a in enumerate(sources):
        for b in sources[i + 1:]:
            if a.subject == b.subject and a.applications & b.applications and a.facilities & b.facilities:
                raise ValueError(f"{where}: sources '{a.name}' and '{b.name}' both match the same connection, "
                                 "sending application and facility; merge them into one")
