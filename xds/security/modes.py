"""security = none | xua | vihf: the authenticator each mode puts at the front of the pipeline."""
from __future__ import annotations

import logging
from typing import Callable

from .xua import NoSecurity, TrustStore, XuaAuthenticator, XuaConfig

log = logging.getLogger("xds.security")


def authenticator(settings, is_system: Callable[[str], bool] | None = None, engine=None):
    """is_system: the composition's word on TLS subjects that may call without an assertion (the
    registry's directory of repositories); settings.xua_systems adds to it. engine: the database
    that holds the replay cache, shared by every process using it (migrated here)."""
    if settings.security == "none":
        return NoSecurity()
    replays = None
    if engine is not None:
        from xds import migrate

        from .replay import DatabaseReplayCache

        migrate.upgrade(engine, "security")
        replays = DatabaseReplayCache(engine)
    listed = set(settings.xua_systems)
    known = is_system or (lambda subject: False)
    config = XuaConfig(
        trust=TrustStore(settings.xua_trust), audiences=tuple(settings.xua_audiences),
        clock_skew=settings.xua_clock_skew,
        roles=frozenset(settings.xua_roles) or None, purposes=frozenset(settings.xua_purposes) or None,
        authn_contexts=frozenset(settings.xua_authn_contexts) or None,
        refuse_replay=settings.xua_refuse_replay,
        is_system=lambda subject: subject in listed or known(subject),
        alone=frozenset(settings.admin_subjects) | frozenset(settings.registry_subjects),
        card_relays=frozenset(settings.registry_subjects))
    if settings.security == "vihf":
        from .vihf import VihfAuthenticator

        config.allow_sha1 = settings.vihf_allow_sha1
        from .directory import Directory

        directory = Directory.load(settings.vihf_directory) if settings.vihf_directory else None
        if directory is None:
            log.warning("security = vihf without vihf_directory: structures and professionals (check C-6) "
                        "are not checked against a directory")
        return VihfAuthenticator(config, freshness=settings.vihf_freshness,
                                 proxy_same_subject=settings.vihf_proxy_same_subject, directory=directory,
                                 replays=replays)
    return XuaAuthenticator(config, replays=replays)
