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

SIGHUP reloads the configuration without dropping a session. The supervisor re-reads and
checks it (a bad one is logged and the running one kept), then replaces the workers one at
a time: the new worker accepts from the socket before the old one is told (SIGUSR1) to stop
accepting, finish its sessions and exit. A single process does the same within itself: a
new server on the same socket, the old one drained. What cannot change under open sessions
(the listening address, the store, the number of workers) is kept, and the log says so.
systemd hears READY=1 once every worker serves, RELOADING=1/READY=1 around a reload and
STOPPING=1 at the end (``Type=notify``).
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from replytrack import systemd
from replytrack.config import Config, ConfigError, check_notify, load_secret_files, parse_hostport
from replytrack.reload import PROXY_RESTART_ONLY, changed_settings, keep_restart_only

if TYPE_CHECKING:
    from replytrack.proxy.server import ProxyServer
    from replytrack.store import Store
    from replytrack.tokens import Keyring

log = logging.getLogger("replytrack.proxy")

# How long open transactions may take to finish after SIGTERM before connections are cut.
SHUTDOWN_GRACE = 30.0
# How long a server replaced at a reload waits for its clients to end their sessions; then
# the next MAIL is answered 421 (the client retries) and open transactions get SHUTDOWN_GRACE.
DRAIN_GRACE = 60.0
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
    debug = config.log_level.lower() == "debug"
    logging.getLogger("mail.log").setLevel(logging.NOTSET if debug else logging.WARNING)


def check_settings(config: Config) -> Config:
    """Check what every worker will use, once, with a clear message (ConfigError), and
    return ``config`` with its secrets read from their files. At start and at each reload."""
    from replytrack.proxy.access import check_bind
    from replytrack.proxy.server import client_security

    host, _ = parse_hostport(config.proxy_listen, setting="proxy.listen")
    # Refuse an unsafe listen address before anything is created.
    check_bind(config, host)
    loop_factory(config)
    client_security(config)
    # The proxy sends webhooks too (one sender, in the first worker).
    check_notify(config)
    return load_secret_files(config)


def reread(running: Config, load: Callable[[], Config]) -> Config | None:
    """The configuration ``load`` gives now, checked, with what takes a restart kept as
    running; None (logged) when it is unusable: the proxy goes on with ``running``."""
    from replytrack import logs

    try:
        new = keep_restart_only(running, check_settings(load()), PROXY_RESTART_ONLY)
        logs.setup_from(new)
    except (ConfigError, OSError) as exc:
        log.error("reload refused, still serving with the earlier configuration: %s", exc)
        return None
    quiet_aiosmtpd(new)
    log.info(
        "configuration re-read; changed: %s", ", ".join(changed_settings(running, new)) or "nothing"
    )
    return new


# What a new server is given: the configuration and key file to use, re-read at a reload.
Reloaded = tuple[Config, "Keyring"]


def serve(
    config: Config,
    *,
    store: Store,
    keyring: Keyring,
    sockets: list[socket.socket] | None = None,
    connection_prefix: str = "c",
    reload: Callable[[], Reloaded | None] | None = None,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Run one proxy until SIGTERM or SIGINT, then finish open transactions and return.

    With ``sockets`` it accepts on those (a worker); otherwise it binds ``proxy.listen``.
    SIGUSR1 retires it: no new connections, open sessions end as their clients end them.
    With ``reload``, SIGHUP calls it and serves with what it returns (None: as before).
    ``on_ready`` is called once it accepts. Raises OSError when it cannot listen.
    """
    if sockets is None:
        host, port = parse_hostport(config.proxy_listen, setting="proxy.listen")
        sockets = bind(host, port)
    listening = sockets
    try:
        with asyncio.Runner(loop_factory=loop_factory(config)) as runner:
            runner.run(
                _serve(config, store, keyring, listening, connection_prefix, reload, on_ready)
            )
    finally:
        for sock in listening:
            sock.close()


async def _serve(
    config: Config,
    store: Store,
    keyring: Keyring,
    sockets: list[socket.socket],
    prefix: str,
    reload: Callable[[], Reloaded | None] | None,
    on_ready: Callable[[], None] | None,
) -> None:
    # Imported here, not at the top: a worker takes over SIGTERM before its slow imports.
    from replytrack.proxy.server import ProxyServer

    generation = 1

    async def started(config: Config, keyring: Keyring) -> ProxyServer:
        # Each server gets its own copies of the listening sockets: closing them when it
        # is drained leaves the socket open for the server that replaced it.
        # Connection ids stay unique across reloads: "c1f", then "g2c1f".
        server = ProxyServer(
            config,
            store=store,
            keyring=keyring,
            connection_prefix=prefix if generation == 1 else f"g{generation}{prefix}",
        )
        await server.start(sockets=[sock.dup() for sock in sockets])
        return server

    server = await started(config, keyring)
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[str] = asyncio.Queue()
    for signum, event in (
        (signal.SIGTERM, "stop"),
        (signal.SIGINT, "stop"),
        (signal.SIGUSR1, "retire"),
        (signal.SIGHUP, "reload"),
    ):
        loop.add_signal_handler(signum, events.put_nowait, event)
    if on_ready is not None:
        on_ready()
    systemd.ready("serving")
    # Set by SIGTERM: drains in progress stop waiting for clients and finish now.
    cut = asyncio.Event()
    draining: list[asyncio.Task[None]] = []
    while True:
        event = await events.get()
        if event != "reload":
            break
        if reload is None:
            log.info("SIGHUP: the supervisor reloads, not a worker; ignored")
            continue
        systemd.reloading()
        log.info("reloading the configuration")
        settings = reload()
        if settings is not None:
            generation += 1
            try:
                replacement = await started(*settings)
            except (ConfigError, OSError) as exc:
                log.error("reload refused, still serving with the earlier configuration: %s", exc)
            else:
                draining.append(asyncio.ensure_future(_retire(server, cut)))
                server = replacement
                log.info("reloaded: new sessions use the new configuration")
        systemd.ready("serving")
    if event == "stop":
        systemd.stopping()
        cut.set()
        log.info("stopping: no new connections, finishing open transactions")
    else:
        log.info("retiring: no new connections, open sessions end as their clients end them")
    draining.append(asyncio.ensure_future(_retire(server, cut)))
    done: asyncio.Future[Any] = asyncio.gather(*draining)
    while not done.done():
        # A SIGTERM while retiring cuts the wait for the clients short.
        next_event: asyncio.Future[Any] = asyncio.ensure_future(events.get())
        await asyncio.wait([done, next_event], return_when=asyncio.FIRST_COMPLETED)
        if next_event.done() and next_event.result() == "stop":
            cut.set()
        next_event.cancel()
    await done
    log.info("stopped")


async def _retire(server: ProxyServer, cut: asyncio.Event) -> None:
    """Stop ``server`` accepting, wait (at most DRAIN_GRACE, or until ``cut``) for its
    clients to end their sessions, then stop it as for SIGTERM."""
    server.stop_accepting()
    deadline = time.monotonic() + DRAIN_GRACE
    while server.connections and not cut.is_set() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await server.stop(grace=SHUTDOWN_GRACE)


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
    # `systemctl kill -s HUP` reaches every process of the unit: only the supervisor reloads.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    spec = json.loads(sys.stdin.buffer.read())
    _die_with_supervisor(spec["supervisor"])
    from replytrack import logs, notify
    from replytrack.store import StoreError, open_store
    from replytrack.tokens import KeyFileError, load_keyring

    config = Config(**spec["config"])
    try:
        logs.setup_from(config)
    except OSError as exc:
        logs.setup_logging(config.log_level)
        log.error("worker %d cannot log to syslog (%s); logging to stderr", spec["index"], exc)
    quiet_aiosmtpd(config)
    ready_fd = spec["ready_fd"]

    def ready() -> None:
        os.write(ready_fd, b"1")
        os.close(ready_fd)

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
        serve(
            config,
            store=store,
            keyring=keyring,
            sockets=sockets,
            connection_prefix=f"w{index}c",
            on_ready=ready,
        )
    finally:
        if sender is not None:
            sender.stop(timeout=5)
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
