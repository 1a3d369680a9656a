"""``replytrack proxy`` as a daemon: one process, or a supervisor and worker processes.

The proxy does its work on one asyncio event loop, so one process uses one core at most.
With ``proxy.workers`` above 1 (the default is one per CPU) the command binds the listening
socket itself, then starts that many worker processes (``python -m
replytrack.proxy.daemon``) that inherit it and accept from it side by side; each has its own
event loop, store connections and upstream pool, and the store (SQLite in WAL mode) is
shared as by any two writers. The supervisor only watches: a worker that dies is logged and
replaced (backing off when it keeps dying at once), SIGTERM or SIGINT is passed on so every
worker finishes its open transactions and exits, and with ``proxy.metrics_listen`` it serves
the workers' metrics summed (``prometheus_client``'s multiprocess mode).

A worker gets its settings on stdin (so passwords never show in its environment or command
line) and asks the kernel for SIGTERM when the supervisor dies (``PR_SET_PDEATHSIG``): a
killed supervisor leaves no orphan accepting mail nobody watches. Webhooks are sent by
worker 0 only, as one sender per proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from replytrack.config import Config, ConfigError

if TYPE_CHECKING:
    from replytrack.store import Store
    from replytrack.tokens import Keyring

log = logging.getLogger("replytrack.proxy")

# How long open transactions may take to finish after SIGTERM before connections are cut.
SHUTDOWN_GRACE = 30.0
# A worker that dies sooner than this after it started is restarted after a growing pause
# (1 s, 2 s, 4 s ... at most RESTART_BACKOFF_MAX) instead of at once.
QUICK_DEATH = 10.0
RESTART_BACKOFF_MIN = 1.0
RESTART_BACKOFF_MAX = 30.0
# A worker that died this many times in a row that quickly is given up on, and so is the
# proxy (exit 1, for systemd or the admin to see) rather than restart it forever.
QUICK_DEATHS_MAX = 6
_PR_SET_PDEATHSIG = 1


def worker_count(config: Config) -> int:
    """Processes to run: ``proxy.workers``, or one per CPU this process may run on."""
    if config.proxy_workers:
        return config.proxy_workers
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def loop_factory(config: Config) -> Callable[[], asyncio.AbstractEventLoop]:
    """The event loop ``proxy.event_loop`` asks for; ``auto`` takes uvloop when installed
    (the same asyncio code, with its I/O in C: less CPU per mail)."""
    choice = config.proxy_event_loop
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise ConfigError(
                    "proxy.event_loop: uvloop is not installed (pip install uvloop)"
                ) from None
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


def bind(host: str, port: int, *, backlog: int = 1024) -> list[socket.socket]:
    """Listening sockets for ``host:port``, as ``loop.create_server`` would make them (one
    per address the name has; port 0 takes a free port, the same for every address)."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    seen = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
            sock.listen(backlog)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def quiet_aiosmtpd(config: Config) -> None:
    """aiosmtpd logs every command line at INFO: per mail that is a dozen log records, a
    measurable share of the proxy's CPU. Our own line per mail says what matters."""
    if config.log_level.lower() != "debug":
        logging.getLogger("mail.log").setLevel(logging.WARNING)


def serve(
    config: Config,
    *,
    store: Store,
    keyring: Keyring,
    sockets: list[socket.socket] | None = None,
    connection_prefix: str = "c",
) -> None:
    """Run one proxy until SIGTERM or SIGINT, then finish open transactions and return.

    With ``sockets`` it accepts on those (a worker); otherwise it binds ``proxy.listen``.
    Raises OSError when it cannot listen.
    """
    # Imported here, not at the top: a worker takes over SIGTERM before its slow imports.
    from replytrack.proxy.server import ProxyServer

    server = ProxyServer(config, store=store, keyring=keyring, connection_prefix=connection_prefix)

    async def run() -> None:
        await server.start(sockets=sockets)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        log.info("stopping: no new connections, finishing open transactions")
        await server.stop(grace=SHUTDOWN_GRACE)
        log.info("stopped")

    with asyncio.Runner(loop_factory=loop_factory(config)) as runner:
        runner.run(run())


# --- the supervisor --------------------------------------------------------------------------
@dataclasses.dataclass
class _Slot:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    # When the next start is due (after a worker died), and the pause after a quick death.
    due: float = 0.0
    pause: float = 0.0
    quick_deaths: int = 0


class Supervisor:
    """Start ``count`` workers on ``sockets``, replace the ones that die, stop them all on
    SIGTERM/SIGINT. ``run()`` returns the exit status for the command."""

    def __init__(
        self,
        config: Config,
        sockets: list[socket.socket],
        count: int,
        *,
        metrics_dir: str | None = None,
    ) -> None:
        self.config = config
        self.sockets = sockets
        self.slots = [_Slot(i) for i in range(count)]
        self.metrics_dir = metrics_dir
        self._stop = threading.Event()
        self._wake = threading.Event()
        # Set when a worker kept dying at once: the command then exits 1.
        self.failed = False

    def _spec(self, index: int) -> bytes:
        return json.dumps(
            {
                "config": dataclasses.asdict(self.config),
                "fds": [s.fileno() for s in self.sockets],
                "index": index,
                "supervisor": os.getpid(),
                "notify": index == 0,
            }
        ).encode()

    def _spawn(self, slot: _Slot) -> None:
        env = dict(os.environ)
        if self.metrics_dir:
            env["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir
        # Started from the main thread: PR_SET_PDEATHSIG fires when the thread that started
        # the child ends, which must be the supervisor itself.
        proc = subprocess.Popen(
            [sys.executable, "-m", "replytrack.proxy.daemon"],
            stdin=subprocess.PIPE,
            pass_fds=[s.fileno() for s in self.sockets],
            env=env,
        )
        assert proc.stdin is not None
        try:
            proc.stdin.write(self._spec(slot.index))
            proc.stdin.close()
        except OSError:
            log.warning("worker %d (pid %d) did not take its settings", slot.index, proc.pid)
        slot.proc, slot.started = proc, time.monotonic()
        log.info("worker %d started (pid %d)", slot.index, proc.pid)

    def _reap(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            proc = slot.proc
            if proc is None or proc.poll() is None:
                continue
            slot.proc = None
            self._mark_dead(proc.pid)
            lived = now - slot.started
            if lived < QUICK_DEATH:
                slot.quick_deaths += 1
                slot.pause = min(RESTART_BACKOFF_MAX, max(RESTART_BACKOFF_MIN, slot.pause * 2))
            else:
                slot.quick_deaths, slot.pause = 0, 0.0
            slot.due = now + slot.pause
            if slot.quick_deaths >= QUICK_DEATHS_MAX:
                log.error(
                    "worker %d (pid %d) exited with status %s, %d times in a row within %.0f s"
                    " of starting; giving up (see its errors above)",
                    slot.index,
                    proc.pid,
                    proc.returncode,
                    slot.quick_deaths,
                    QUICK_DEATH,
                )
                self.failed = True
                self._stop.set()
                continue
            log.error(
                "worker %d (pid %d) exited with status %s after %.1f s; starting another%s",
                slot.index,
                proc.pid,
                proc.returncode,
                lived,
                f" in {slot.pause:.0f} s" if slot.pause else "",
            )

    def _mark_dead(self, pid: int) -> None:
        if self.metrics_dir:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid, self.metrics_dir)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._stop.set()
        self._wake.set()

    def _on_child(self, signum: int, frame: Any) -> None:
        self._wake.set()

    def run(self) -> int:
        """Supervise until SIGTERM or SIGINT, then stop the workers; returns 0, or 1 when
        a worker did not stop cleanly or kept dying as it started."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        previous[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, self._on_child)
        try:
            for slot in self.slots:
                self._spawn(slot)
            while not self._stop.is_set():
                self._wake.wait(1.0)
                self._wake.clear()
                self._reap()
                now = time.monotonic()
                for slot in self.slots:
                    if slot.proc is None and slot.due <= now and not self._stop.is_set():
                        self._spawn(slot)
            status = self._shutdown()
            return 1 if self.failed else status
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _shutdown(self) -> int:
        log.info(
            "stopping %d workers: no new connections, finishing open transactions",
            sum(1 for s in self.slots if s.proc is not None),
        )
        # The workers hold the listening socket too; each closes its copy on SIGTERM.
        for sock in self.sockets:
            sock.close()
        running = [s.proc for s in self.slots if s.proc is not None]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + SHUTDOWN_GRACE + 10
        status = 0
        for proc in running:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker pid %d did not stop in time; killing it", proc.pid)
                proc.kill()
                proc.wait()
                status = 1
            else:
                # -SIGTERM: it was still starting (no handler yet), so nothing was open.
                if proc.returncode not in (0, -signal.SIGTERM):
                    log.error("worker pid %d exited with status %s", proc.pid, proc.returncode)
                    status = 1
        log.info("stopped")
        return status


def metrics_dir() -> str:
    """A fresh directory for the workers' metric files (removed by ``cleanup_metrics``)."""
    return tempfile.mkdtemp(prefix="replytrack-proxy-metrics-")


def serve_metrics(listen: str, directory: str) -> None:
    """``/metrics`` on ``listen`` with the workers' metrics summed (raises OSError)."""
    from replytrack import metrics

    metrics.serve_workers(listen, directory)


def cleanup_metrics(directory: str) -> None:
    shutil.rmtree(directory, ignore_errors=True)


# --- a worker --------------------------------------------------------------------------------
def _die_with_supervisor(supervisor: int) -> None:
    """Ask for SIGTERM when the supervisor ends; exit now if it already has."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        log.warning("cannot ask to be stopped with the supervisor (no prctl)")
    if os.getppid() != supervisor:
        # It died before the request took effect.
        sys.exit(0)


def _exit_while_starting(signum: int, frame: Any) -> None:
    log.info("stopped while starting")
    sys.exit(0)


def exit_if_stopped_while_starting(*signals: signal.Signals) -> None:
    """Until the event loop or the supervisor takes these signals over, one of them means
    a stop asked for while starting: nothing is open yet, so the process exits 0."""
    for signum in signals:
        signal.signal(signum, _exit_while_starting)


def worker_main() -> int:
    """Entry point of a worker process (``python -m replytrack.proxy.daemon``)."""
    exit_if_stopped_while_starting(signal.SIGTERM, signal.SIGINT)
    spec = json.loads(sys.stdin.buffer.read())
    _die_with_supervisor(spec["supervisor"])
    from replytrack import notify
    from replytrack.logs import setup_logging
    from replytrack.store import StoreError, open_store
    from replytrack.tokens import KeyFileError, load_keyring

    config = Config(**spec["config"])
    setup_logging(config.log_level)
    quiet_aiosmtpd(config)
    index = spec["index"]
    sockets = [socket.socket(fileno=fd) for fd in spec["fds"]]
    try:
        store = open_store(config.db, busy_timeout_ms=round(config.db_timeout * 1000))
        keyring = load_keyring(config.secret_path, create=False)
    except (StoreError, KeyFileError) as exc:
        log.error("worker %d cannot start: %s", index, exc)
        return 1
    sender = notify.start_sender_thread(config, store) if spec["notify"] else None
    try:
        # Connection ids in the log say which worker: "w1c2f" is worker 1's connection 0x2f.
        serve(config, store=store, keyring=keyring, sockets=sockets, connection_prefix=f"w{index}c")
    finally:
        if sender is not None:
            sender.stop(timeout=5)
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
