"""`xds serve --workers N`: N processes serving one port, so that every core runs Python.

One process's threads share one core's worth of Python (the GIL); a node with N cores runs N workers. Each
worker is a whole server (node/server.py Services: its own pools, HTTP threads, caches) listening on the same
port with SO_REUSEPORT, and the kernel spreads the connections between them. The parent only supervises:
it claims the port, starts the workers, starts again one that dies, and stops them all on SIGTERM/SIGINT.

What must happen once per node runs in the primary worker alone (Services.WorkerRole): the ITI-8 listener,
audit delivery, the repository's settlement job, and, before any other worker starts, the clean-up of what a
crash left. What the workers share lives in the database, which serialises them: the XUA replay cache and
the audit outbox (PostgreSQL, or SQLite's single writer through its file lock and busy timeout); the
metrics through prometheus_client's multiprocess files (PROMETHEUS_MULTIPROC_DIR), so /metrics counts the
whole node whichever worker answers the scrape.
"""
from __future__ import annotations

import dataclasses
import errno
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time

from xds.settings import Settings

log = logging.getLogger("xds.server")

READY_TIMEOUT = 120.0        # seconds a worker may take to migrate, bind and answer
STOP_TIMEOUT = 30.0          # seconds workers get to finish their requests on shutdown
RESTART_WINDOW = 10.0        # a worker that dies this soon after starting, RESTART_LIMIT times, stops the node
RESTART_LIMIT = 3


class WorkerFailed(RuntimeError):
    """A worker could not start (its reason), or kept dying."""


def claim_port(host: str, port: int) -> tuple[int, socket.socket]:
    """The port the workers will share, and a socket that holds it for the node's life.

    A plain bind first: it fails when anyone holds the port, a reuse-port group included, so that a second
    node on the same port is refused instead of silently joining the first (SO_REUSEPORT lets any process of
    the same user join). Port 0 gets its number from that bind. The holder is bound with SO_REUSEPORT and
    never listens: the kernel hands connections only to listening sockets."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.bind((host, port))
        port = probe.getsockname()[1]
    finally:
        probe.close()
    holder = socket.socket(family, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind((host, port))
    return port, holder


def _die_with_parent() -> None:
    """A worker whose supervisor is killed goes with it (Linux): a node stopped with SIGKILL is stopped."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Supervisor:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.count = settings.worker_count
        self.children: dict[int, int] = {}       # pid -> worker index
        self.started: dict[int, float] = {}      # worker index -> when it last started
        self.quick_deaths: dict[int, int] = {}
        self.stopping = False
        self.metrics_dir: str | None = None
        self.holder: socket.socket | None = None

    # --- the parent -------------------------------------------------------------------------------------
    def run(self) -> None:
        s = self.settings
        try:
            port, self.holder = claim_port(s.host, s.port)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                from .server import PortInUse

                raise PortInUse(f"cannot listen on {s.host}:{s.port}: the address is already in use (another "
                                "server, or an earlier xds serve still running); choose another with --port") from None
            raise
        self.settings = dataclasses.replace(s, port=port)
        if s.metrics:
            # Read by prometheus_client in each worker (values are written to files there, summed at scrape).
            self.metrics_dir = tempfile.mkdtemp(prefix="xds-metrics-")
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_stop)
        try:
            # The primary first and alone: it migrates the schema and cleans what a crash left, which no
            # other worker may do while requests are in flight.
            self._start(0, first_start=True)
            for index in range(1, self.count):
                self._start(index, first_start=False)
            scheme = "https" if self.settings.tls is not None else "http"
            url = f"{scheme}://{self.settings.host}:{port}"
            log.info("serving role=%s on %s with %d worker processes", s.role, url, self.count)
            print(f"xds: {s.role} on {url}", flush=True)  # the line scripts wait for, as with one process
            self._watch()
        finally:
            self._stop_all()
            if self.holder is not None:
                self.holder.close()
            if self.metrics_dir:
                shutil.rmtree(self.metrics_dir, ignore_errors=True)

    def _on_stop(self, *_):
        self.stopping = True

    def _start(self, index: int, first_start: bool) -> None:
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker
            os.close(read_end)
            code = 1
            try:
                code = self._worker(index, first_start, write_end)
            except BaseException:  # noqa: B036 — a worker never returns into the parent's code
                log.exception("worker %d failed", index)
            finally:
                os._exit(code)
        os.close(write_end)
        self.children[pid] = index
        self.started[index] = time.monotonic()
        answer = _read_line(read_end, READY_TIMEOUT)
        os.close(read_end)
        if answer != "ready":
            self._reap(pid, wait=True)
            raise WorkerFailed(answer or f"worker {index} did not start within {READY_TIMEOUT:.0f} s")

    def _watch(self) -> None:
        while not self.stopping:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                time.sleep(0.2)
                continue
            index = self.children.pop(pid, None)
            self._forget(pid)
            if index is None or self.stopping:
                continue
            how = f"signal {-os.waitstatus_to_exitcode(status)}" if os.WIFSIGNALED(status) else \
                f"exit code {os.waitstatus_to_exitcode(status)}"
            quick = time.monotonic() - self.started.get(index, 0.0) < RESTART_WINDOW
            self.quick_deaths[index] = self.quick_deaths.get(index, 0) + 1 if quick else 0
            if self.quick_deaths[index] >= RESTART_LIMIT:
                raise WorkerFailed(f"worker {index} died {RESTART_LIMIT} times within {RESTART_WINDOW:.0f} s of "
                                   f"starting (last: {how}); stopping")
            log.error("worker %d (pid %d) ended with %s; starting it again", index, pid, how)
            self._start(index, first_start=False)

    def _stop_all(self) -> None:
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + STOP_TIMEOUT
        while self.children and time.monotonic() < deadline:
            for pid in list(self.children):
                self._reap(pid, wait=False)
            time.sleep(0.1)
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._reap(pid, wait=True)

    def _reap(self, pid: int, wait: bool) -> None:
        try:
            done, _ = os.waitpid(pid, 0 if wait else os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            self.children.pop(pid, None)
            self._forget(pid)

    def _forget(self, pid: int) -> None:
        if self.metrics_dir:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid, self.metrics_dir)

    # --- a worker -------------------------------------------------------------------------------------
    def _worker(self, index: int, first_start: bool, ready_fd: int) -> int:
        import threading

        from .server import PortInUse, Services, WorkerRole

        _die_with_parent()
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        if self.holder is not None:
            self.holder.close()  # the parent's
        if self.metrics_dir:
            from prometheus_client import values

            # prometheus_client chose its value store when it was imported, before the folder was named.
            values.ValueClass = values.get_value_class()
        role = WorkerRole(index=index, count=self.count, first_start=first_start, reuse_port=True)
        try:
            services = Services(self.settings, role).start()
        except (PortInUse, ValueError, OSError) as exc:
            os.write(ready_fd, f"worker {index}: {exc}\n".encode()[:4000])
            os.close(ready_fd)
            return 2
        os.write(ready_fd, b"ready\n")
        os.close(ready_fd)
        stop.wait()
        services.stop()
        return 0


def _read_line(fd: int, timeout: float) -> str:
    import select

    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode("utf-8", "replace").strip()


def serve_workers(settings: Settings) -> None:
    try:
        Supervisor(settings).run()
    except WorkerFailed as exc:
        print(f"xds: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
