"""The `xds` command."""
from __future__ import annotations

import argparse
import sys

from xds import settings as settings_mod


def _settings(args) -> settings_mod.Settings:
    overrides = {k: getattr(args, k, None) for k in ("role", "host", "port", "db", "data", "mllp_port",
                                                      "repository_id", "registry_url", "profile", "tls_cert", "tls_key", "tls_ca", "registry_timeout",
                                                      "require_known_repositories", "mime_bare_lf", "require_ws_addressing", "workers", "lenient", "implied_references",
                                                      "security", "allow_anonymous", "xua_trust", "xua_audiences",
                                                      "feed_sources", "allow_plain_mllp", "habilitation_matrix",
                                                      "admin_subjects", "registry_subjects", "audit_repository",
                                                      "audit_tls_ca", "audit_source_id", "notification_webhook",
                                                      "async_reply_to", "registry_partitions")}
    if getattr(args, "no_patient_check", False):
        overrides["check_patients"] = False
    if getattr(args, "no_metrics", False):
        overrides["metrics"] = False
    return settings_mod.load(getattr(args, "config", None), overrides=overrides)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML settings file (also XDS_CONFIG)")
    p.add_argument("--db", help="SQLAlchemy URL, e.g. postgresql+psycopg2://user@host/db (default: SQLite in --data)")
    p.add_argument("--data", help="data folder (default ./xds-data)")


def options_anywhere(parent: argparse.ArgumentParser, sub) -> None:
    """Let the options of `parent` also come after its subcommand (`xds repository add X Y --db URL` as well
    as `xds repository --db URL add X Y`). The copies default to SUPPRESS so that a value given before the
    subcommand is not overwritten by the subcommand's default."""
    import copy

    for leaf in sub.choices.values():
        taken = {o for a in leaf._actions for o in a.option_strings}
        for action in parent._actions:
            if not action.option_strings or action.dest == "help" or taken & set(action.option_strings):
                continue
            twin = copy.copy(action)
            twin.default = argparse.SUPPRESS
            twin.container = leaf
            leaf._add_action(twin)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xds", description="IHE XDS.b Document Registry and Repository")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the server")
    _add_common(p)
    p.add_argument("--role", choices=settings_mod.ROLES)
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--workers", type=int, metavar="N",
                   help="worker processes serving the port (default: one per core; 1: a single process)")
    p.add_argument("--mllp-port", type=int, help="listen for the ITI-8 patient identity feed (HL7 v2 over MLLP; "
                                                 "over mutual TLS when --tls-cert is given)")
    p.add_argument("--feed-sources", metavar="FILE",
                   help="TOML list of the systems that may feed patients, and what each may feed (README)")
    p.add_argument("--allow-plain-mllp", action="store_true", default=None,
                   help="without TLS, take the feed on a non-loopback address anyway (needs --feed-sources)")
    p.add_argument("--registry-partitions", type=int, metavar="N",
                   help="PostgreSQL: the registry's tables hash-partitioned by patient into N partitions (made so in "
                        "a new database, required of an existing one; 0: plain)")
    p.add_argument("--no-patient-check", action="store_true",
                   help="accept submissions for patients the feed has not announced")
    p.add_argument("--no-metrics", action="store_true", help="do not serve GET /metrics (Prometheus); it answers 404")
    p.add_argument("--profile", help="metadata validation profile: ihe (default) or dmp (French DMP)")
    p.add_argument("--lenient", action="store_true", default=None,
                   help="profile dmp: report metadata that contradicts the CDA header as warnings (test platforms "
                        "replaying the official examples, which contradict themselves)")
    p.add_argument("--repository-id", help="this repository's repositoryUniqueId (OID)")
    p.add_argument("--registry-url", help="remote registry endpoint for --role repository")
    p.add_argument("--registry-timeout", type=int, help="seconds a repository waits for the registry (default 30)")
    p.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM); also the client identity outbound")
    p.add_argument("--tls-key", help="the certificate's private key (PEM)")
    p.add_argument("--tls-ca", help="CA (PEM) that client certificates must chain to (mutual TLS); also trusted "
                                    "for outbound HTTPS")
    p.add_argument("--require-known-repositories", action="store_true", default=None,
                   help="registry: accept ITI-42 only from repositories in the directory (needs --tls-ca)")
    p.add_argument("--security", choices=("none", "xua", "vihf"),
                   help="authenticate callers by a SAML assertion: xua (IHE XUA) or vihf (French DMP); default none")
    p.add_argument("--allow-anonymous", action="store_true", default=None,
                   help="with --security none, listen on a non-loopback address anyway")
    p.add_argument("--xua-trust", action="append", metavar="PEM",
                   help="certificates of the assertion issuers to trust, or of their CAs (repeatable)")
    p.add_argument("--xua-audience", dest="xua_audiences", action="append", metavar="URI",
                   help="a name of this service that an AudienceRestriction may carry (repeatable)")
    p.add_argument("--mime-bare-lf", action="store_true", default=None,
                   help="accept MTOM bodies whose MIME boundary lines and part headers end in bare LF, not CRLF")
    p.add_argument("--require-ws-addressing", action="store_true", default=None,
                   help="refuse SOAP requests without wsa:Action and wsa:MessageID headers (the WSDLs require "
                        "them; by default an action in the Content-Type is enough)")
    p.add_argument("--implied-references", action="store_true", default=None,
                   help="accept a nested Classification or ExternalIdentifier without classifiedObject / "
                        "registryObject as its enclosing object's (with a warning), as the DMP's examples send them")
    p.add_argument("--habilitation-matrix", metavar="FILE",
                   help="TOML file: the document types each profession may consult (needed by --profile dmp)")
    p.add_argument("--admin-subject", dest="admin_subjects", action="append", metavar="DN",
                   help="a TLS client certificate subject that is an administrator (repeatable)")
    p.add_argument("--registry-subject", dest="registry_subjects", action="append", metavar="DN",
                   help="repository host: its registry's certificate subject, the caller of ITI-86 and routed "
                        "ITI-43 (repeatable)")

    p.add_argument("--async-reply-to", dest="async_reply_to", action="append", metavar="URL",
                   help="answer requests whose wsa:ReplyTo is under this http(s) address prefix asynchronously "
                        "(repeatable; default: none, every non-anonymous ReplyTo is refused)")

    p.add_argument("--audit-repository", metavar="URL",
                   help="send ATNA audit records to tls://host[:6514] (syslog over TLS) or udp://host[:514]")
    p.add_argument("--audit-tls-ca", metavar="PEM", help="CA of the audit repository's certificate (default --tls-ca)")
    p.add_argument("--audit-source-id", metavar="ID", help="AuditSourceID of this node (default xds@<host name>)")
    p.add_argument("--notification-webhook", metavar="URL",
                   help="POST break-the-glass and centre 15 notifications (JSON) to this URL")

    p = sub.add_parser("patient", help="the patient ids the registry accepts: add, merge, list, show (through "
                                       "the server: its administration endpoint, or --mllp its ITI-8 feed)")
    from .patient import add_arguments as patient_arguments

    patient_arguments(p)

    from .transfer import add_client_arguments

    p = sub.add_parser("submit", help="send files to a repository (ITI-41 Provide and Register, MTOM)")
    p.add_argument("--config", help="TOML settings file (also XDS_CONFIG)")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--patient", required=True, help="patient id (CX: id^^^&OID&ISO)")
    p.add_argument("--url", help="server or repository endpoint (default http://HOST:PORT of the settings; "
                                 "https when they name tls_cert)")
    p.add_argument("--mime", help="mimeType of every file (default: guessed from the file name)")
    p.add_argument("--json", action="store_true", help="print the uniqueIds, entryUUIDs, SubmissionSet and "
                                                       "repository as JSON")
    p.add_argument("--registry", dest="query_registry", metavar="URL",
                   help="with --json: the registry to ask for the repositoryUniqueId (default: the server of --url)")
    from .submit_metadata import add_metadata_arguments

    add_metadata_arguments(p)
    add_client_arguments(p)

    p = sub.add_parser("retrieve", help="fetch a document from a repository (ITI-43)")
    p.add_argument("--config", help="TOML settings file (also XDS_CONFIG)")
    p.add_argument("unique_id", metavar="UNIQUEID")
    p.add_argument("--url", help="server or repository endpoint (default http://HOST:PORT of the settings; "
                                 "https when they name tls_cert)")
    p.add_argument("--repository-id", help="the repositoryUniqueId holding the document")
    p.add_argument("-o", "--output", help="output file, '-' for stdout (default: the uniqueId)")
    add_client_arguments(p)

    p = sub.add_parser("query", help="run an ITI-18 stored query against any registry (find-documents, "
                                     "get-documents, ...; `xds query -h` lists all fourteen)")
    from .query import add_arguments as query_arguments

    query_arguments(p)

    p = sub.add_parser("validate", help="check messages offline (ITI-41, -42, -57, -18, ...) against the "
                                        "server's own rules, each problem with its code and location")
    from .validate import add_arguments as validate_arguments

    validate_arguments(p)

    p = sub.add_parser("access", help="the registry's access states of patients: authorise, block, treating "
                                      "doctor, objections, ... (`xds access -h`)")
    from .access import add_arguments as access_arguments

    access_arguments(p)

    p = sub.add_parser("audit", help="the audit records and the patients' access logs: status, log, "
                                     "notifications, records (`xds audit -h`)")
    from .audit import add_arguments as audit_arguments

    audit_arguments(p)

    p = sub.add_parser("repository", help="the registry's directory of repository hosts; check a repository "
                                         "against its registry")
    _add_common(p)
    rsub = p.add_subparsers(dest="repository_command", required=True)
    ra = rsub.add_parser("add", help="add or replace a repository host")
    ra.add_argument("repository_id", help="its repositoryUniqueId (OID)")
    ra.add_argument("retrieve_url", help="its ITI-43 endpoint, e.g. https://host-a:8443/xds/repository")
    ra.add_argument("--subject", help="the subject of its TLS client certificate, as the registry sees it "
                                      "(e.g. CN=host-a,O=Example)")
    rr = rsub.add_parser("remove", help="remove a repository host")
    rr.add_argument("repository_id")
    rsub.add_parser("list", help="list repository hosts")
    rc = rsub.add_parser("check", help="compare this repository's documents with its registry's entries "
                         "(exit 1 when something is wrong)")
    rc.add_argument("--repair", action="store_true",
                    help="fix what can be fixed; quarantine documents and files nothing describes")
    rc.add_argument("--hashes", action="store_true", help="read every document back and check its SHA-1")
    rc.add_argument("--registry-url", help="the registry of a repository-only host (default: its settings)")
    rc.add_argument("--repository-id", help="this repository's repositoryUniqueId (default: its settings)")
    options_anywhere(p, rsub)

    p = sub.add_parser("db", help="database schema migrations (Alembic) for this process's actors")
    _add_common(p)
    p.add_argument("--role", choices=settings_mod.ROLES)
    dsub = p.add_subparsers(dest="db_command", required=True)
    dsub.add_parser("upgrade", help="bring the schema to the latest revision (xds serve also does this)")
    dsub.add_parser("current", help="print the schema revision of each actor")
    dp = dsub.add_parser("partition", help="rebuild the registry's tables (PostgreSQL) hash-partitioned by patient "
                                           "into registry_partitions partitions, or plain with 0; every row is "
                                           "rewritten, the tables locked meanwhile")
    dp.add_argument("--partitions", type=int, help="the number of partitions (default: the registry_partitions setting)")
    options_anywhere(p, dsub)

    p = sub.add_parser("conformance", help="run NIST XDS test kit plans against any registry/repository")
    from conformance.cli import add_arguments as conformance_arguments

    conformance_arguments(p.add_subparsers(dest="conformance_command", required=True)
                          .add_parser("run", help="run test plans and write JUnit and HTML reports"))

    p = sub.add_parser("sts", help="a local STS: WS-Trust 1.3 Issue of XUA and VIHF assertions, for tests "
                                   "and labs without the Gazelle STS")
    from .sts import add_arguments as sts_arguments

    sts_arguments(p)

    p = sub.add_parser("dev-idp", help="a development OpenID Provider for the patients' sign-in (not for real "
                                       "patients): users from a TOML file")
    from .dev_idp import add_arguments as dev_idp_arguments

    dev_idp_arguments(p)

    args = parser.parse_args(argv)
    if args.command == "dev-idp":
        from .dev_idp import command as dev_idp_command

        return dev_idp_command(args)
    if args.command == "conformance":
        from conformance.cli import run_command

        return run_command(args)
    if args.command == "validate":
        from .validate import command as validate_command

        return validate_command(args)
    if args.command == "sts":
        from .sts import command as sts_command

        return sts_command(args)
    try:
        s = _settings(args)
    except (ValueError, OSError) as exc:
        print(f"xds: {exc}", file=sys.stderr)
        return 2
    from xds import logs

    logs.setup(s.log_level, s.log_format if args.command == "serve" else "text")
    if args.command == "serve":
        from .server import serve

        try:
            serve(s)
        except ValueError as exc:  # e.g. a feed source list that cannot be read
            print(f"xds: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.command == "patient":
        from .patient import command as patient_command

        return patient_command(args, s)
    if args.command == "repository":
        try:
            return _repository(args, s)
        except NoDatabase as exc:
            print(f"xds: {exc}", file=sys.stderr)
            return 2
    if args.command == "db":
        return _db(args, s)
    if args.command in ("submit", "retrieve"):
        from . import transfer

        return (transfer.submit_command if args.command == "submit" else transfer.retrieve_command)(args, s)
    if args.command == "query":
        from .query import command as query_command

        return query_command(args, s)
    if args.command == "audit":
        from .audit import command as audit_command

        return audit_command(args, s)
    if args.command == "access":
        from .access import command as access_command

        return access_command(args, s)
    return 2


class NoDatabase(Exception):
    """The settings name no database that `xds serve` or `xds db upgrade` made (or not at this code's schema)."""


def existing_engine(url: str, tree: str):
    """An engine on the settings' database, which must exist at the current schema: only `xds serve` and
    `xds db upgrade` create or change one, so that a command run in the wrong folder says so instead of
    working on a new, empty registry."""
    import os

    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from xds import migrate
    from xds.db import make_engine

    parsed = make_url(url)
    shown = parsed.render_as_string(hide_password=True)
    if parsed.get_backend_name() == "sqlite":
        path = parsed.database or ""
        if not path or path == ":memory:" or not os.path.isfile(path):
            raise NoDatabase(f"no {tree} database at {path or shown} (`xds serve` or `xds db upgrade` creates it; "
                             "--data or --db names another)")
    engine = make_engine(url)
    try:
        revision = migrate.current(engine, tree)
    except SQLAlchemyError as exc:
        engine.dispose()
        raise NoDatabase(f"cannot open the {tree} database {shown}: {exc.__class__.__name__}: "
                         f"{str(exc.orig if getattr(exc, 'orig', None) else exc).splitlines()[0]}") from None
    heads = migrate.heads(tree)
    if revision not in heads:
        engine.dispose()
        raise NoDatabase(f"the {tree} database {shown} is " + (f"at schema revision {revision}, this version needs "
                         f"{', '.join(heads)}: run `xds db upgrade`" if revision else
                         "not an xds database (no schema): `xds serve` or `xds db upgrade` makes one"))
    return engine


def _registry_store(s):
    """The registry's store in the settings' existing database."""
    from registry.store import RegistryStore

    return RegistryStore(existing_engine(s.db_url, "registry"))


def _partition(args, s) -> int:
    import time

    n = args.partitions if args.partitions is not None else s.registry_partitions
    if n is None:
        print("say how many partitions: --partitions N (0: plain tables), or set registry_partitions", file=sys.stderr)
        return 2
    if s.role == "repository":
        print("the registry's tables are partitioned on the registry's host (role all or registry)", file=sys.stderr)
        return 2
    store = _registry_store(s)
    before = store.partitions
    t0 = time.monotonic()
    try:
        store.repartition(n)
        after = store.partitions
    except ValueError as exc:
        print(f"registry: {exc}", file=sys.stderr)
        return 1
    finally:
        store.engine.dispose()
    print(f"registry: {before} -> {after} partitions ({time.monotonic() - t0:.1f} s)")
    return 0


def _db(args, s) -> int:
    import os

    from xds import migrate
    from xds.db import make_engine

    if args.db_command == "upgrade":
        os.makedirs(s.data, exist_ok=True)
    if args.db_command == "partition":
        return _partition(args, s)
    targets = []
    if s.role in ("all", "registry"):
        targets.append(("registry", s.db_url))
    if s.role in ("all", "repository"):
        targets.append(("repository", s.repository_db or s.db_url))
    for tree, url in targets:
        if args.db_command != "upgrade":
            try:
                engine = existing_engine(url, tree)
            except NoDatabase as exc:
                print(f"{tree}: {exc}")
                continue
        else:
            engine = make_engine(url)
            migrate.upgrade(engine, tree, attributes={"registry_partitions": s.registry_partitions or 0}
                            if tree == "registry" else None)
        layout = ""
        if tree == "registry" and migrate.current(engine, tree):
            from registry.store import RegistryStore

            n = RegistryStore(engine).partitions
            layout = f", {n} partitions by patient" if n else ", plain tables"
        print(f"{tree}: {migrate.current(engine, tree) or '(empty)'} (head {', '.join(migrate.heads(tree))}){layout}")
        engine.dispose()
    return 0


def _repository(args, s) -> int:
    from urllib.parse import urlsplit

    from xds import hl7

    if args.repository_command == "check":
        return _repository_check(args, s)
    store = _registry_store(s)
    if args.repository_command == "add":
        if not hl7.is_oid(args.repository_id):
            print(f"xds: {args.repository_id} is not an OID", file=sys.stderr)
            return 2
        if urlsplit(args.retrieve_url).scheme not in ("http", "https"):
            print(f"xds: {args.retrieve_url} is not an http(s) URL", file=sys.stderr)
            return 2
        store.add_repository(args.repository_id, args.retrieve_url, args.subject)
        print(f"added {args.repository_id} -> {args.retrieve_url}" + (f" ({args.subject})" if args.subject else ""))
    elif args.repository_command == "remove":
        if not store.remove_repository(args.repository_id):
            print(f"xds: no repository {args.repository_id} in the directory", file=sys.stderr)
            return 1
        print(f"removed {args.repository_id}")
    else:
        for uid, (url, subject) in store.repositories().items():
            print(f"{uid}\t{url}\t{subject or '-'}")
    return 0


def _repository_check(args, s) -> int:
    from registry.service import RegistryActor
    from registry.store import RegistryStore
    from repository.service import RepositoryActor

    if not s.registry_url:
        existing_engine(s.db_url, "registry").dispose()
    existing_engine(s.repository_db or s.db_url, "repository").dispose()
    registry = None if s.registry_url else RegistryActor(RegistryStore(s.db_url))
    actor = RepositoryActor.from_settings(s, registry)
    report = actor.check(repair=args.repair, hashes=args.hashes)
    for finding in report.findings:
        print(finding.line())
    left = report.unresolved
    print(f"checked {report.documents} stored documents and {report.entries} registry entries of repository "
          f"{s.repository_id}; {report.pending} pending settlement; {len(report.findings)} problems, "
          f"{len(left)} unresolved")
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())
