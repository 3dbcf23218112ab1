"""XUA tests: which STS user each step speaks as, and the SAML assertions fetched for those users.

The NIST kit names the assertion a test needs by its id's suffix, which is a Gazelle STS user name
(11966_expired: user "expired"); the toolkit asks the STS for that user's assertion and sends it in
wsse:Security with the test's transactions. Any WS-Trust 1.3 STS that answers as the Gazelle one
does will do: the Gazelle STS itself, or ours (`xds sts serve`, node/sts.py).
"""
from __future__ import annotations

import http.client
from dataclasses import dataclass

from lxml import etree

from xds.client import TransportError
from xds.security import issue

from . import orchestration
from .context import EngineError
from .testkit import TestCase


@dataclass
class StsConfig:
    url: str
    user: str = "valid"                 # for tests without a variant, setup tests and supporting steps
    password: str = issue.DEFAULT_PASSWORD
    audience: str | None = issue.DEFAULT_AUDIENCE   # wsp:AppliesTo; None: let the STS choose
    every_test: bool = False            # also the tests outside the XUA collections
    timeout: float = 30.0


class TokenUnavailable(EngineError):
    """The STS gave no assertion for a user: every step that needed it fails with this reason."""


def variant_user(case: TestCase, default: str) -> str:
    head, sep, tail = case.id.rpartition("_")
    return tail if sep and head and tail else default


def user_for(case: TestCase, sts: StsConfig | None, supporting: bool = False) -> str | None:
    """The STS user whose assertion a SOAP step of case carries, or None for no wsse:Security.

    Setup tests (feeds, data loads) carry the default user's: a registry that enforces XUA refuses
    them otherwise, and their data is what the XUA tests read. supporting: the step goes to the
    registry that supports a repository test (its eval query); under the toolkit that is a
    simulator that is not under test, so the variant, meant for the repository, is not sent there."""
    if sts is None:
        return None
    xua = orchestration.is_xua(case)
    if not (xua or sts.every_test or case.id in orchestration.SETUP):
        return None
    if supporting or not xua:
        return sts.user
    return variant_user(case, sts.user)


class Assertions:
    """One test's assertions, each user's asked for once, on its first use (a test of feeds only
    asks for none). A refusal is remembered too, so that every later step needing it fails with
    the same reason at once instead of asking the STS again."""

    def __init__(self, sts: StsConfig):
        self.sts = sts
        self._got: dict[str, etree._Element | str] = {}

    def get(self, user: str) -> etree._Element:
        if user not in self._got:
            self._got[user] = self._request(user)
        got = self._got[user]
        if isinstance(got, str):
            raise TokenUnavailable(got)
        return got

    def _request(self, user: str) -> etree._Element | str:
        try:
            return issue.request_token(self.sts.url, user, self.sts.password, audience=self.sts.audience,
                                       timeout=self.sts.timeout)
        except (issue.StsError, TransportError, ValueError, OSError, http.client.HTTPException) as exc:
            return (f"no SAML assertion for STS user {user!r} from {self.sts.url}: {exc} "
                    "(the step was not sent)")
