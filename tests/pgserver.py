"""A throwaway PostgreSQL server for tests and benchmarks: a real server, started from the
machine's PostgreSQL binaries in a temporary folder on a free 127.0.0.1 port.

Set XDS_TEST_POSTGRES_URL to use an existing server instead.
"""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time


def _bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    cands = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return cands[-1] if cands else None


def available() -> bool:
    return bool(os.environ.get("XDS_TEST_POSTGRES_URL") or (_bin("initdb") and _bin("pg_ctl")))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    def __init__(self):
        self.dir = None
        self.url = os.environ.get("XDS_TEST_POSTGRES_URL")
        self.port = None
        self._started = False

    def _run(self, args: list[str]) -> None:
        # initdb refuses to run as root, so the cluster belongs to the postgres user when we are root.
        if os.geteuid() == 0:
            args = ["runuser", "-u", "postgres", "--"] + args
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def start(self) -> str:
        if self.url:
            return self.url
        self.dir = tempfile.mkdtemp(prefix="xds-pg-")
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self.port = _free_port()
        self._run([_bin("initdb"), "-D", self._data, "-U", "xds", "--auth=trust", "-E", "UTF8", "--no-sync"])
        self._pg_start()
        self.url = f"postgresql+psycopg2://xds@127.0.0.1:{self.port}/postgres"
        return self.url

    @property
    def _data(self) -> str:
        return os.path.join(self.dir, "data")

    def _pg_start(self) -> None:
        self._run([_bin("pg_ctl"), "-D", self._data, "-l", os.path.join(self.dir, "log"), "-w", "-o",
                   f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                   f"-c synchronous_commit=off -c full_page_writes=off", "start"])
        self._started = True

    def _pg_stop(self, mode: str) -> None:
        self._run([_bin("pg_ctl"), "-D", self._data, "-m", mode, "-w", "stop"])
        self._started = False

    def restart(self, mode: str = "fast") -> None:
        """Stop the server (ending every client connection) and start it again on the same port and
        data folder, as an operator's restart would; mode is pg_ctl's shutdown mode."""
        if not self._started:
            raise RuntimeError("only a server this object started can be restarted")
        self._pg_stop(mode)
        self._pg_start()

    def stop(self) -> None:
        if self._started:
            self._pg_stop("immediate")
            shutil.rmtree(self.dir, ignore_errors=True)


def create_database(admin_url: str, name: str) -> str:
    import sqlalchemy as sa

    eng = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with eng.connect() as c:
        c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
        c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    eng.dispose()
    return admin_url.rsplit("/", 1)[0] + "/" + name


def drop_database(admin_url: str, name: str) -> None:
    """Drop a test's database, ending the connections still open to it first: a pool the test forgot to
    dispose of must not hold server slots for the rest of the run (max_connections is 100)."""
    import sqlalchemy as sa

    eng = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with eng.connect() as c:
            c.exec_driver_sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = %(name)s AND pid <> pg_backend_pid()", {"name": name})
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
    finally:
        eng.dispose()


if __name__ == "__main__":
    s = PgServer()
    print(s.start())
    time.sleep(1)
    s.stop()
