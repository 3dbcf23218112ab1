"""The `xds` command."""
from __future__ import annotations

import argparse
import sys

from xds import settings as settings_mod


def _settings(args) -> settings_mod.Settings:
    overrides = {k: getattr(args, k, None) for k in ("role", "host", "port", "db", "data", "mllp_port",
                                                      "repository_id", "registry_url", "profile", "tls_cert", "tls_key", "tls_ca", "registry_timeout",
                                                      "require_known_repositories", "mime_bare_lf")}
    if getattr(args, "no_patient_check", False):
        overrides["check_patients"] = False
    return settings_mod.load(getattr(args, "config", None), overrides=overrides)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML settings file (also XDS_CONFIG)")
    p.add_argument("--db", help="SQLAlchemy URL, e.g. postgresql+psycopg2://user@host/db (default: SQLite in --data)")
    p.add_argument("--data", help="data folder (default ./xds-data)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xds", description="IHE XDS.b Document Registry and Repository")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the server")
    _add_common(p)
    p.add_argument("--role", choices=settings_mod.ROLES)
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--mllp-port", type=int, help="listen for the ITI-8 patient identity feed (HL7 v2 over MLLP)")
    p.add_argument("--no-patient-check", action="store_true",
                   help="accept submissions for patients the feed has not announced")
    p.add_argument("--profile", help="metadata validation profile: ihe (default) or dmp (French DMP)")
    p.add_argument("--repository-id", help="this repository's repositoryUniqueId (OID)")
    p.add_argument("--registry-url", help="remote registry endpoint for --role repository")
    p.add_argument("--registry-timeout", type=int, help="seconds a repository waits for the registry (default 30)")
    p.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM); also the client identity outbound")
    p.add_argument("--tls-key", help="the certificate's private key (PEM)")
    p.add_argument("--tls-ca", help="CA (PEM) that client certificates must chain to (mutual TLS); also trusted "
                                    "for outbound HTTPS")
    p.add_argument("--require-known-repositories", action="store_true", default=None,
                   help="registry: accept ITI-42 only from repositories in the directory (needs --tls-ca)")
    p.add_argument("--mime-bare-lf", action="store_true", default=None,
                   help="accept MTOM bodies whose MIME boundary lines and part headers end in bare LF, not CRLF")

    p = sub.add_parser("patient", help="manage the patient ids the registry accepts")
    _add_common(p)
    psub = p.add_subparsers(dest="patient_command", required=True)
    pa = psub.add_parser("add", help="accept a patient id (CX: id^^^&OID&ISO)")
    pa.add_argument("patient_id", nargs="+")
    pm = psub.add_parser("merge", help="merge SUBSUMED into SURVIVING")
    pm.add_argument("subsumed")
    pm.add_argument("surviving")
    psub.add_parser("list", help="list known patient ids")

    p = sub.add_parser("submit", help="send files to a repository (ITI-41 Provide and Register, MTOM)")
    p.add_argument("--config", help="TOML settings file (also XDS_CONFIG)")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--patient", required=True, help="patient id (CX: id^^^&OID&ISO)")
    p.add_argument("--url", help="server or repository endpoint (default http://HOST:PORT of the settings)")
    p.add_argument("--mime", help="mimeType of every file (default: guessed from the file name)")

    p = sub.add_parser("retrieve", help="fetch a document from a repository (ITI-43)")
    p.add_argument("--config", help="TOML settings file (also XDS_CONFIG)")
    p.add_argument("unique_id", metavar="UNIQUEID")
    p.add_argument("--url", help="server or repository endpoint (default http://HOST:PORT of the settings)")
    p.add_argument("--repository-id", help="the repositoryUniqueId holding the document")
    p.add_argument("-o", "--output", help="output file, '-' for stdout (default: the uniqueId)")

    p = sub.add_parser("repository", help="manage the registry's directory of repository hosts")
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

    p = sub.add_parser("db", help="database schema migrations (Alembic) for this process's actors")
    _add_common(p)
    p.add_argument("--role", choices=settings_mod.ROLES)
    dsub = p.add_subparsers(dest="db_command", required=True)
    dsub.add_parser("upgrade", help="bring the schema to the latest revision (xds serve also does this)")
    dsub.add_parser("current", help="print the schema revision of each actor")

    p = sub.add_parser("conformance", help="run NIST XDS test kit plans against any registry/repository")
    from conformance.cli import add_arguments as conformance_arguments

    conformance_arguments(p.add_subparsers(dest="conformance_command", required=True)
                          .add_parser("run", help="run test plans and write JUnit and HTML reports"))

    args = parser.parse_args(argv)
    if args.command == "conformance":
        from conformance.cli import run_command

        return run_command(args)
    try:
        s = _settings(args)
    except (ValueError, OSError) as exc:
        print(f"xds: {exc}", file=sys.stderr)
        return 2
    from xds import logs

    logs.setup(s.log_level, s.log_format if args.command == "serve" else "text")
    if args.command == "serve":
        from .server import serve

        serve(s)
        return 0
    if args.command == "patient":
        return _patient(args, s)
    if args.command == "repository":
        return _repository(args, s)
    if args.command == "db":
        return _db(args, s)
    if args.command in ("submit", "retrieve"):
        from . import transfer

        return (transfer.submit_command if args.command == "submit" else transfer.retrieve_command)(args, s)
    return 2


def _registry_store(s):
    """The registry's store in the settings' database, its schema brought up to date."""
    import os

    from registry.store import RegistryStore

    os.makedirs(s.data, exist_ok=True)
    store = RegistryStore(s.db_url)
    store.migrate()
    return store


def _patient(args, s) -> int:
    from xds import hl7

    store = _registry_store(s)
    if args.patient_command == "add":
        for pid in args.patient_id:
            problems = hl7.check_cx(pid)
            if problems:
                print(f"xds: {pid} is not an XDS patient id: {'; '.join(problems)}", file=sys.stderr)
                return 2
        for pid in args.patient_id:
            store.add_patient(pid)
            print(f"added {pid}")
    elif args.patient_command == "merge":
        store.merge_patient(args.subsumed, args.surviving)
        print(f"merged {args.subsumed} into {args.surviving}")
    else:
        for pid, active, merged in store.list_patients():
            print(pid + ("" if active else f"  (merged into {merged})" if merged else "  (inactive)"))
    return 0


def _db(args, s) -> int:
    import os

    from xds import migrate
    from xds.db import make_engine

    os.makedirs(s.data, exist_ok=True)
    targets = []
    if s.role in ("all", "registry"):
        targets.append(("registry", s.db_url))
    if s.role in ("all", "repository"):
        targets.append(("repository", s.repository_db or s.db_url))
    for tree, url in targets:
        engine = make_engine(url)
        if args.db_command == "upgrade":
            migrate.upgrade(engine, tree)
        print(f"{tree}: {migrate.current(engine, tree) or '(empty)'} (head {', '.join(migrate.heads(tree))})")
        engine.dispose()
    return 0


def _repository(args, s) -> int:
    from urllib.parse import urlsplit

    from xds import hl7

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


if __name__ == "__main__":
    sys.exit(main())
