"""Settings: embedded defaults, overridden by a TOML file, then XDS_* variables, then flags."""
from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field, fields

ROLES = ("all", "registry", "repository")


@dataclass
class Settings:
    role: str = "all"
    host: str = "127.0.0.1"
    port: int = 8080
    data: str = "./xds-data"
    db: str | None = None                # default: SQLite file in the data folder
    mllp_port: int | None = None         # ITI-8 feed listener; off unless set
    # The ITI-8 feed (README, "The patient feed"): MLLP over mutual TLS whenever tls_cert is set.
    feed_sources: str | None = None      # TOML file of [[source]] tables: who may feed which assigning authorities
    allow_plain_mllp: bool = False       # without TLS, listen for MLLP on a non-loopback address anyway
    mllp_max_frame: int = 1024 * 1024    # bytes of one HL7 message; a longer frame closes the connection
    mllp_frame_timeout: float = 30       # seconds from a message's start block to its end block
    mllp_idle_timeout: float = 300       # seconds a connection may wait for its next message
    mllp_max_connections: int = 64       # open feed connections at most (each source: its max_connections, default 4)
    check_patients: bool = True
    # PostgreSQL: hash partitions of the registry's tables by patient (docs/scaling.md, "Partitions"), made so
    # in a new database and required of an existing one (`xds db partition` converts); 0: plain tables;
    # unset: whatever the database has.
    registry_partitions: int | None = None
    max_query_results: int = 1000
    keep_extra_metadata: bool = True
    profile: str = "ihe"                 # metadata validation profile: ihe, dmp
    lenient: bool = False                # profile dmp: metadata-versus-CDA mismatches are warnings, not refusals
    repository_id: str = "1.2.250.1.999.3.1"
    registry_url: str | None = None      # remote registry for a repository-only process
    registry_timeout: int = 30           # seconds the repository waits for the registry's ITI-42 answer (its CommitDeadline)
    settle_interval: float = 30          # repository: seconds between settlements of pending ITI-41 documents; 0: start-up only
    check_interval: float = 86400        # repository: seconds between report-only checks against the registry; 0: never
    repository_db: str | None = None     # default: the same database as db (tables are prefixed repo_)
    document_fsync: bool = True          # fsync each stored document; off only where the storage is made durable otherwise
    tls_cert: str | None = None          # serve HTTPS with this certificate (PEM)
    tls_key: str | None = None
    tls_ca: str | None = None            # require client certificates signed by this CA; also trusted for outbound calls
    require_known_repositories: bool = False  # registry: ITI-42 only from certificate subjects in the directory
    route_retrieve: bool = True          # registry: answer ITI-43 by forwarding to repository hosts
    forward_timeout: int = 30            # registry: seconds to wait for a repository host
    max_request_bytes: int = 64 * 1024 * 1024
    max_document_bytes: int = 4 * 1024 ** 3
    implied_references: bool = False     # nested Classification/ExternalIdentifier may omit classifiedObject/registryObject
    mime_bare_lf: bool = False           # accept MTOM framing (boundary lines, part headers) in bare LF, not CRLF
    require_ws_addressing: bool = False  # refuse SOAP requests without wsa:Action and wsa:MessageID headers
    threads: int = 16                    # HTTP workers; a connection takes one only from its complete request head to its answer
    workers: int = 0                     # processes of `xds serve` on one port (node/workers.py); 0: one per core
    max_header_bytes: int = 64 * 1024    # bound on the request line and on the header block (414 / 413 beyond)
    # Slow and many clients (README, "Slow and many clients"):
    head_timeout: float = 10             # seconds for the TLS handshake and the request head to arrive (else 408, closed)
    body_grace: float = 10               # seconds of waiting for a request body before body_min_rate applies
    body_min_rate: int = 1024            # bytes/s a body must then bring over each body_window of waiting (0: no minimum)
    body_window: float = 10              # seconds of waiting over which body_min_rate is measured
    max_connections: int = 1024          # open connections at most (idle, reading their head, or in a worker)
    listen_backlog: int = 1024           # connections the kernel queues for accepting (capped by net.core.somaxconn)
    # Who is calling (README, "Authentication: XUA and VIHF"): none | xua | vihf.
    security: str = "none"
    allow_anonymous: bool = False        # with security = none, listen on a non-loopback address anyway
    xua_trust: list = field(default_factory=list)      # PEM files: STS certificates (pinned) or their issuing CAs
    xua_audiences: list = field(default_factory=list)  # this service's names an AudienceRestriction may use
    xua_clock_skew: int = 60             # seconds allowed either way on NotBefore/NotOnOrAfter/IssueInstant
    xua_roles: list = field(default_factory=list)           # accepted role codes; empty: any
    xua_purposes: list = field(default_factory=list)        # accepted purpose-of-use codes; empty: any
    xua_authn_contexts: list = field(default_factory=list)  # accepted AuthnContextClassRefs; empty: any
    xua_refuse_replay: bool = False      # refuse a second use of one Assertion/@ID (XUA lets clients reuse)
    xua_systems: list = field(default_factory=list)  # TLS subjects that may call without an assertion
    vihf_allow_sha1: bool = False        # accept RSA-SHA1 signatures (older French tokens)
    vihf_directory: str | None = None    # TOML file of [[structure]] tables: structures and their professionals (C-6)
    vihf_proxy_same_subject: bool = False  # API proxies: the TLS client certificate must be the VIHF's signer
    vihf_freshness: int = 600            # seconds a token without Conditions stays valid after IssueInstant/AuthnInstant
    # What each caller may see and do (README, "Access policy").
    admin_roles: list = field(default_factory=list)     # role codes (code or code^system) that make a caller an administrator
    admin_subjects: list = field(default_factory=list)  # TLS subjects that are administrators without an assertion
    patient_roles: list = field(default_factory=lambda: ["116154003"])  # role codes of a patient acting for themselves (SNOMED CT "patient")
    registry_subjects: list = field(default_factory=list)  # repository host: its registry's TLS subjects (ITI-86, routed ITI-43)
    habilitation_matrix: str | None = None  # TOML file: which document types each profession consults (dmp)
    # Every access recorded (README, "Audit"): ATNA records, the patients' access log, notifications.
    audit: bool = True                   # record; off only to measure what recording costs (bench/)
    audit_repository: str | None = None  # tls://host[:6514] (RFC 5425) or udp://host[:514] (RFC 5426)
    audit_tls_ca: str | None = None      # CA of the audit repository's certificate (default: tls_ca)
    audit_source_id: str | None = None   # AuditSourceID of this node (default: xds@<host name>)
    audit_enterprise_site: str | None = None  # AuditEnterpriseSiteID
    audit_interval: float = 1.0          # seconds between delivery rounds when nothing new was recorded
    audit_keep_days: float = 90          # sent records are kept this long in the outbox (0: for ever)
    notification_webhook: str | None = None  # URL that break-the-glass / centre 15 notifications are POSTed to
    # The patients' sign-in (README, "The patient's access log"): OpenID Connect against this provider.
    portal_issuer: str | None = None     # the provider (https, or http on loopback); None: no sign-in
    portal_client_id: str | None = None
    portal_client_secret: str | None = None  # better from XDS_PORTAL_CLIENT_SECRET than from a file
    portal_scopes: str = "openid"
    portal_patient_claim: str = "patient_id"   # the id_token claim carrying the patient's identifier
    portal_patient_id_format: str | None = None  # e.g. "{}^^^&1.2.250.1.213.1.4.10&ISO" (default: a CX already)
    portal_ca: str | None = None         # CA of the provider's TLS certificate
    portal_session_ttl: int = 1800       # seconds a sign-in lasts
    portal_secure_cookies: bool = True   # off only for plain http on loopback (development)
    # Asynchronous WS-Addressing replies (README, "Asynchronous replies"): the http(s) address prefixes a
    # non-anonymous ReplyTo/FaultTo may name; empty (the default): every request is answered on its HTTP response.
    async_reply_to: list = field(default_factory=list)
    log_level: str = "INFO"
    log_format: str = "json"             # json (one object a line, with the request id) or text
    metrics: bool = True                 # GET /metrics (Prometheus, unauthenticated, no patient data); off: 404
    base_url: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def worker_count(self) -> int:
        return self.workers or os.cpu_count() or 1

    @property
    def db_url(self) -> str:
        if self.db:
            return self.db
        return f"sqlite:///{os.path.abspath(os.path.join(self.data, 'registry.db'))}"

    @property
    def tls(self):
        from .tls import TlsFiles

        return TlsFiles(self.tls_cert, self.tls_key, self.tls_ca) if self.tls_cert else None

    def client_ssl_context(self):
        """The context for outbound HTTPS: our certificate as client identity, tls_ca as trust."""
        from .tls import client_context

        if not (self.tls_cert or self.tls_ca):
            return None
        return client_context(self.tls, ca=self.tls_ca)

    def validate(self) -> None:
        if not 0 <= self.workers <= 256:
            raise ValueError(f"workers must be between 0 (one per core) and 256, not {self.workers}")
        if self.registry_partitions is not None:
            if not 0 <= self.registry_partitions <= 1024:
                raise ValueError(f"registry_partitions must be between 0 (plain tables) and 1024, not "
                                 f"{self.registry_partitions}")
            if self.registry_partitions and not self.db_url.startswith("postgresql"):
                raise ValueError("registry_partitions needs PostgreSQL (--db postgresql://...): SQLite has no "
                                 "partitioned tables")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together")
        if self.require_known_repositories and not self.tls_ca:
            raise ValueError("require_known_repositories needs tls_ca: repositories are known by their "
                             "client certificates")
        if self.security not in ("none", "xua", "vihf"):
            raise ValueError(f"security must be none, xua or vihf, not {self.security!r}")
        if self.security != "none" and not self.xua_trust:
            raise ValueError(f"security = {self.security} needs xua_trust (--xua-trust FILE): the certificates "
                             "of the assertion issuers to trust")
        if self.security == "none" and not self.allow_anonymous and not _loopback(self.host):
            raise ValueError(f"security = none would serve {self.host} without authenticating anyone: use "
                             "--security xua|vihf, listen on 127.0.0.1, or say --allow-anonymous")
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, not {self.role!r}")
        from .validation import profile_names

        if self.profile not in profile_names():
            raise ValueError(f"profile must be one of {', '.join(profile_names())}, not {self.profile!r}")
        if not (0 <= self.port < 65536):
            raise ValueError(f"port {self.port} is out of range")
        self._validate_feed()
        self._validate_policy()
        from .async_reply import check_allow_list

        check_allow_list(self.async_reply_to)
        self._validate_audit()
        if self.role == "repository" and not self.registry_url:
            raise ValueError("role repository needs registry_url (--registry-url http://host:port/xds/registry): "
                             "the repository registers every document it stores there")


    def _validate_policy(self) -> None:
        if self.profile == "dmp" and self.security == "xua":
            raise ValueError("profile dmp with security xua: the DMP's rules need the VIHF token; use --security vihf "
                             "(or security none for metadata-only tests and replays)")
        if self.profile == "dmp" and self.role != "repository" and not self.habilitation_matrix:
            raise ValueError("profile dmp needs habilitation_matrix (--habilitation-matrix FILE): which document "
                             "types each profession may consult")

    def _validate_audit(self) -> None:
        if self.audit_repository:
            from .audit.syslog import parse_destination

            destination = parse_destination(self.audit_repository)
            if not self.audit:
                raise ValueError("audit_repository is set but audit is off: nothing would be sent")
            if destination.transport == "tls" and not (self.audit_tls_ca or self.tls_ca):
                raise ValueError("audit_repository over TLS needs audit_tls_ca (or tls_ca): the CA of the audit "
                                 "repository's certificate")
        if self.notification_webhook and not self.notification_webhook.startswith(("https://", "http://")):
            raise ValueError(f"notification_webhook must be an http(s) URL, not {self.notification_webhook!r}")
        if self.portal_issuer:
            if self.role == "repository":
                raise ValueError("portal_issuer: the patients sign in to the registry, not to a repository host")
            if not (self.portal_client_id and self.portal_client_secret):
                raise ValueError("portal_issuer needs portal_client_id and portal_client_secret "
                                 "(XDS_PORTAL_CLIENT_SECRET): the server's registration at the provider")
            if not self.base_url:
                raise ValueError("portal_issuer needs base_url: the provider sends the patient back to "
                                 "<base_url>/portal/callback")
        if self.audit_interval <= 0:
            raise ValueError("audit_interval must be a positive number of seconds")

    def audit_ssl_context(self):
        """The context for the audit repository: our certificate as client identity, its CA as trust."""
        from .tls import TlsFiles, client_context

        ca = self.audit_tls_ca or self.tls_ca
        if not ca:
            return None
        files = TlsFiles(self.tls_cert, self.tls_key, ca) if self.tls_cert else None
        return client_context(files, ca=ca)

    def _validate_feed(self) -> None:
        if self.mllp_port is None or self.role == "repository":
            return
        for name in ("mllp_max_frame", "mllp_max_connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("mllp_frame_timeout", "mllp_idle_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive number of seconds")
        if self.tls_cert:
            if not self.tls_ca:
                raise ValueError("the ITI-8 feed over TLS needs tls_ca: its sources are known by their client "
                                 "certificates")
            if not self.feed_sources:
                raise ValueError("the ITI-8 feed over TLS needs feed_sources (--feed-sources FILE): the list of "
                                 "the certificate subjects that may feed, and what each may feed")
            return
        if not _loopback(self.host):
            if not self.allow_plain_mllp:
                raise ValueError(f"the ITI-8 feed would take plain MLLP (no TLS) on {self.host}, from anyone who can "
                                 "reach the port: set tls_cert, tls_key and tls_ca (MLLP over mutual TLS), listen "
                                 "on 127.0.0.1, or say --allow-plain-mllp")
            if not self.feed_sources:
                raise ValueError(f"plain MLLP on {self.host} needs feed_sources (--feed-sources FILE) with "
                                 "plain = true sources: without TLS the list is the only check of who feeds")


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _coerce(f: dataclasses.Field, raw):
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    if raw is None:
        return None
    if "bool" in kind and isinstance(raw, str):
        low = raw.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{f.name}: {raw!r} is not a boolean")
    if kind == "float" and not isinstance(raw, bool):
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise ValueError(f"{f.name}: {raw!r} is not a number") from None
    if kind.startswith("list"):
        if isinstance(raw, str):
            # From the environment: items separated by ";" (certificate subjects hold commas).
            return [x.strip() for x in raw.split(";") if x.strip()]
        if not isinstance(raw, list):
            raise ValueError(f"{f.name}: {raw!r} is not a list")
        return [str(x) for x in raw]
    if "int" in kind and not isinstance(raw, bool):
        try:
            return int(raw)
        except (TypeError, ValueError):
            raise ValueError(f"{f.name}: {raw!r} is not a whole number") from None
    return raw


def load(config_file: str | None = None, env: dict | None = None, overrides: dict | None = None) -> Settings:
    env = os.environ if env is None else env
    values: dict = {}
    path = config_file or env.get("XDS_CONFIG")
    known = {f.name: f for f in fields(Settings)}
    if path:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
        data = data.get("xds", data)
        for k, v in data.items():
            key = k.replace("-", "_")
            if key not in known:
                raise ValueError(f"{path}: unknown setting {k!r}")
            values[key] = _coerce(known[key], v)
    for name, f in known.items():
        v = env.get("XDS_" + name.upper())
        if v is not None and name != "extra":
            values[name] = _coerce(f, v)
    for k, v in (overrides or {}).items():
        if v is not None:
            values[k] = _coerce(known[k], v)
    s = Settings(**values)
    s.validate()
    return s
