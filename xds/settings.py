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
    check_patients: bool = True
    max_query_results: int = 1000
    keep_extra_metadata: bool = True
    profile: str = "ihe"                 # metadata validation profile: ihe, dmp
    repository_id: str = "1.2.250.1.999.3.1"
    registry_url: str | None = None      # remote registry for a repository-only process
    registry_timeout: int = 30           # seconds the repository waits for the registry's ITI-42 answer
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
    mime_bare_lf: bool = False           # accept MTOM framing (boundary lines, part headers) in bare LF, not CRLF
    threads: int = 16
    max_header_bytes: int = 64 * 1024    # bound on the request line and on the header block (414 / 413 beyond)
    log_level: str = "INFO"
    log_format: str = "json"             # json (one object a line, with the request id) or text
    base_url: str | None = None
    extra: dict = field(default_factory=dict)

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
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together")
        if self.require_known_repositories and not self.tls_ca:
            raise ValueError("require_known_repositories needs tls_ca: repositories are known by their "
                             "client certificates")
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, not {self.role!r}")
        from .validation import profile_names

        if self.profile not in profile_names():
            raise ValueError(f"profile must be one of {', '.join(profile_names())}, not {self.profile!r}")
        if not (0 <= self.port < 65536):
            raise ValueError(f"port {self.port} is out of range")
        if self.role == "repository" and not self.registry_url:
            raise ValueError("role repository needs registry_url (--registry-url http://host:port/xds/registry): "
                             "the repository registers every document it stores there")


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
