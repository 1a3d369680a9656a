"""``replytrack milter`` (the inbound milter daemon) and ``replytrack check`` (its verdict on
.eml files, with no side effects)."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from replytrack import logs, notify, systemd
from replytrack.cli.common import State, cli, emit, pass_state
from replytrack.config import (
    Config,
    ConfigError,
    check_notify,
    load_config,
    load_secret_files,
    shown_db,
)
from replytrack.headers import extract_addresses, normalize_address, parse_fields, split_message
from replytrack.milter.engine import Engine
from replytrack.milter.inbound import BODY_LIMIT, Inbound
from replytrack.reload import MILTER_RESTART_ONLY, changed_settings, keep_restart_only, say_mode
from replytrack.tokens import KeyFileError, load_keyring
from replytrack.wakeup import Wakeup

log = logging.getLogger("replytrack.milter")

_SOCKET = re.compile(
    r"^(inet:\d{1,5}@[\w.\-:\[\]]+|inet6:\d{1,5}@[\w.\-:\[\]]+|unix:/.+|local:/.+)$"
)
# The milter's store waits at most this long for a lock: a busy database must never hold a
# mail in Postfix longer than that; what cannot be written is journaled instead.
MILTER_BUSY_TIMEOUT_MS = 500


def parse_eml(data: bytes) -> tuple[list[tuple[str, str]], bytes]:
    """Headers (name, unfolded value) and the body of a raw message file."""
    if data.startswith(b"From ") and b"\n" in data:
        first, _, rest = data.partition(b"\n")
        if b":" not in first.split(b" ", 2)[1]:
            data = rest  # an mbox "From " line
    header, rest = split_message(data)
    headers = [(f.name, f.value) for f in parse_fields(header) if f.name]
    body = rest.lstrip(b"\r\n")[:BODY_LIMIT] if rest else b""
    return headers, body


def inbound_from_file(data: bytes, envelope_from: str | None = None) -> Inbound:
    """An :class:`Inbound` as the milter would see the message in ``data``.

    The envelope sender is ``envelope_from`` when given, else the Return-Path header
    (``<>`` is the null sender), else unknown.
    """
    headers, body = parse_eml(data)
    if envelope_from is None:
        for name, value in headers:
            if name.lower() == "return-path":
                envelope_from = normalize_address(value)
                break
    recipients = extract_addresses(
        [v for n, v in headers if n.lower() in ("delivered-to", "x-original-to")], limit=100
    )
    return Inbound(envelope_from=envelope_from, recipients=recipients, headers=headers, body=body)


@cli.command("check")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "--envelope-from",
    metavar="ADDR",
    help="MAIL FROM to assume (default: the Return-Path header; '<>' for the null sender).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (a list of objects).")
@pass_state
def check_command(
    state: State, files: tuple[str, ...], envelope_from: str | None, as_json: bool
) -> None:
    """Show the verdict the milter would give on FILE.eml (no side effects).

    Reads the store without writing: matches are looked up, nothing is recorded, stopped
    or notified. Keys of --json: kind, matched, evidence, match, campaign, sender,
    relation, return_date, stops (what the milter would stop), header.

    \b
    Example:
      replytrack check reply.eml
      replytrack check --json inbox/*.eml | jq '.[] | {file, kind}'
    """
    config = state.config()
    keyring = load_keyring(config.secret_path, create=False)
    store = state.store(readonly=True)
    engine = Engine(config, keyring, store)
    rows: list[dict[str, Any]] = []
    for name in files:
        path = Path(name)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise click.ClickException(f"cannot read {name}: {exc.strerror or exc}") from None
        msg = inbound_from_file(
            data, None if envelope_from is None else normalize_address(envelope_from)
        )
        screening = engine.screen(msg, strict=True)
        verdict = engine.decide(msg, screening)
        rows.append({"file": name, **verdict.to_json()})
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    emit(rows, "table", columns=["file", "kind", "match", "campaign", "matched", "return_date"])
    for row in rows:
        click.echo(f"{row['file']}: evidence: {', '.join(row['evidence']) or '-'}")


@cli.command("milter")
@click.option(
    "--socket",
    "socket_spec",
    metavar="SPEC",
    help="inet:PORT@HOST or unix:PATH [default: milter.socket, inet:8894@127.0.0.1].",
)
@click.option(
    "--journal",
    metavar="PATH",
    help="Fail-open journal [default: milter.journal, /var/spool/replytrack/journal].",
)
@pass_state
def milter_command(state: State, socket_spec: str | None, journal: str | None) -> None:
    """Serve the inbound milter for Postfix's smtpd_milters.

    Classifies inbound mail, matches replies to recorded Message-IDs, stops campaigns, adds
    X-ReplyTrack to replies. Fails open: set default_action=accept for it in Postfix.
    SIGHUP re-reads the configuration while serving (the socket and the store take a
    restart); SIGTERM stops it.

    \b
    Example:
      replytrack milter --socket inet:8894@127.0.0.1
      # main.cf: smtpd_milters = { inet:127.0.0.1:8894, default_action=accept }
    """
    from replytrack import metrics
    from replytrack.do_not_contact import address_hasher
    from replytrack.milter import adapter
    from replytrack.milter.journal import JournalChain, Replayer
    from replytrack.milter.journal import probe as journal_probe
    from replytrack.store import open_store
    from replytrack.store.rules import BrakeRule

    flags = {"milter_socket": socket_spec, "milter_journal": journal}
    config = state.config(**flags)
    if not _SOCKET.match(config.milter_socket):
        raise click.ClickException(
            f"--socket {config.milter_socket!r}: expected inet:PORT@HOST or unix:/PATH"
        )
    try:
        # The milter sends webhooks itself: refuse unusable webhook settings (a bad URL, no
        # secret) now, before anything is opened, not at the first reply.
        config = _checked(config)
        logs.setup_from(config)
    except ConfigError as exc:
        raise click.ClickException(f"configuration: {exc}") from None
    except OSError as exc:
        raise click.ClickException(f"log.target = syslog: {logs.SYSLOG_SOCKET}: {exc}") from None
    keyring = load_keyring(config.secret_path)
    timeout_ms = min(MILTER_BUSY_TIMEOUT_MS, round(config.db_timeout * 1000))
    store = open_store(config.db, busy_timeout_ms=timeout_ms)
    # Bounces recorded here brake campaigns by the site's rule; do-not-contact entries the
    # milter adds get their keyed hash at once.
    store.use_brake(BrakeRule(config.campaign_brake_window, config.campaign_brake_ratio))
    store.use_hasher(address_hasher(keyring))
    engine = Engine(config, keyring, store)
    tcp = config.milter_socket.startswith("inet")
    # The configured journal, then a second location, then the log: verdicts the store
    # cannot take survive the store's filesystem; the replayer empties every location.
    journal_file = JournalChain.for_config(config)
    problem = journal_probe(config.journal_path)
    if problem:
        # Not fatal (mail must flow: inbound fails open), but said at once, not at the first
        # store failure: until fixed, the fallback location and then the log take the entries.
        log.warning("%s; journal entries go to the fallback location, then the log", problem)
    adapter.install(engine, journal_file, tcp=tcp)
    if config.milter_metrics_listen:
        metrics.serve(config.milter_metrics_listen, metrics.MILTER)
    replayer = Replayer(
        journal_file, engine.process, reactivate=lambda: _reactivate(engine), interval=5.0
    )
    replayer.start()
    # Webhooks go out from the milter process itself: replies, bounces and stops are
    # recorded here, and the outbox lease keeps a second sender (proxy, `replytrack notify`)
    # from delivering the same row twice.
    senders = [notify.start_sender_thread(config, store)]
    # dateparser loads its language data on first use; do that now, off the mail path.
    from replytrack.classify import dates

    threading.Thread(target=dates.warm_up, name="replytrack-warmup", daemon=True).start()
    if config.milter_socket.startswith(("unix:", "local:")):
        path = Path(config.milter_socket.partition(":")[2])
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a stale socket of an earlier run
        threading.Thread(
            target=_open_socket_to_postfix, args=(path,), name="replytrack-socket", daemon=True
        ).start()

    def reload() -> None:
        nonlocal config, engine
        try:
            new = _checked(load_config(state.config_path, overrides={**state.overrides, **flags}))
            new = keep_restart_only(config, new, MILTER_RESTART_ONLY)
            new_keyring = load_keyring(new.secret_path, create=False)
            logs.setup_from(new)
        except (ConfigError, KeyFileError, OSError) as exc:
            log.error("reload refused, still serving with the earlier configuration: %s", exc)
            return
        changed = changed_settings(config, new)
        store.use_brake(BrakeRule(new.campaign_brake_window, new.campaign_brake_ratio))
        store.use_hasher(address_hasher(new_keyring))
        config, engine = new, Engine(new, new_keyring, store)
        writing = JournalChain.for_config(new)
        # Callbacks from now on (also of mails under way) take the new engine and journal.
        adapter.install(engine, writing, tcp=tcp)
        # Entries still waiting in a journal location that is no longer configured are
        # replayed from it all the same: none is left behind.
        kept = [loc.journal for loc in writing.locations]
        paths = {j.path for j in kept}
        old = replayer.journal.locations if isinstance(replayer.journal, JournalChain) else []
        kept += [loc.journal for loc in old if loc.journal.path not in paths]
        replayer.journal, replayer.process = JournalChain(kept), engine.process
        old_sender = senders.pop()
        if old_sender is not None:
            old_sender.stop(timeout=5)
        senders.append(notify.start_sender_thread(new, store))
        log.info("reloaded the configuration; changed: %s", ", ".join(changed) or "nothing")

    say_mode(config)
    log.info("milter listening on %s (store %s)", config.milter_socket, shown_db(config.db))
    try:
        _serve(config.milter_socket, config.milter_timeout, reload)
    finally:
        replayer.stop()
        sender = senders.pop()
        if sender is not None:
            sender.stop(timeout=5)
        log.info("milter stopped")


def _checked(config: Config) -> Config:
    """What the milter needs of the configuration beyond what every command checks; with
    its secrets read from their files. At start and at each reload."""
    check_notify(config)
    return load_secret_files(config)


def _serve(socket_spec: str, timeout: int, reload: Callable[[], None]) -> None:
    """Run libmilter on ``socket_spec`` until SIGTERM or SIGINT; SIGHUP calls ``reload``.

    libmilter would take SIGHUP as a stop: the thread that calls its main loop blocks
    SIGHUP, SIGTERM and SIGINT, and a thread of its own waits for them. So the main loop
    runs in another thread, and this one, which keeps them unblocked, handles all three
    itself. The kernel may still hand a signal sent to the process to libmilter's waiting
    thread (seen in storms of SIGHUP), which then ends the main loop: a stop
    nobody asked for is an error, so the service manager starts the milter again (its unit
    restarts it on failure) instead of leaving inbound mail unread.
    """
    import Milter

    from replytrack.milter import adapter

    # The handler takes no lock (see replytrack.wakeup): it sets a flag and nudges. Flags,
    # not a queue of requests: SIGHUPs that come while one reload runs make one more reload,
    # which reads the file as it is by then, not one each.
    wakeup = Wakeup()
    stop_asked = reload_asked = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stop_asked, reload_asked
        if signum == signal.SIGHUP:
            reload_asked = True
        else:
            stop_asked = True
        wakeup.nudge()

    listening = threading.Event()
    real_opensocket = Milter.milter.opensocket

    def opensocket(*args: Any) -> Any:
        # libmilter listens once this returns: Postfix's connections wait in the backlog
        # until its main loop accepts them, a moment later.
        result = real_opensocket(*args)
        listening.set()
        wakeup.nudge()
        return result

    failed: list[BaseException] = []

    def run() -> None:
        try:
            adapter.run(socket_spec, timeout=timeout)
        except BaseException as exc:
            failed.append(exc)
        finally:
            wakeup.nudge()

    previous = {s: signal.signal(s, on_signal) for s in _SIGNALS}
    Milter.milter.opensocket = opensocket
    libmilter = threading.Thread(target=run, name="replytrack-libmilter")
    try:
        libmilter.start()
        announced = stopping = False
        while libmilter.is_alive():
            wakeup.sleep(1.0)
            if listening.is_set() and not announced:
                announced = True
                systemd.ready("serving")
            if stop_asked and not stopping:
                stopping = True
                systemd.stopping()
                log.info("stopping: finishing the mails under way")
                Milter.milter.stop()
            if reload_asked and not stopping:
                # Cleared before the file is read: a SIGHUP from now on reloads once more.
                reload_asked = False
                systemd.reloading()
                log.info("reloading the configuration")
                reload()
                systemd.ready("serving")
    finally:
        Milter.milter.opensocket = real_opensocket
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        wakeup.close()
    libmilter.join()
    if not stopping and not failed:
        raise click.ClickException(
            "libmilter stopped without being asked to (a signal reached its own thread?):"
            " exiting with an error so that the service manager starts the milter again"
        )
    for exc in failed:
        if isinstance(exc, Milter.milter.error):
            # libmilter says only "cannot opensocket": name the likely causes, no traceback.
            raise click.ClickException(
                f"cannot listen on {socket_spec} ({exc}): address in use, directory"
                " missing or not writable?"
            ) from None
        raise exc


_SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)


def _open_socket_to_postfix(path: Path, timeout: float = 30.0) -> None:
    """Let Postfix's smtpd (user postfix) connect to our unix socket: mode 0660, and group
    ``postfix`` when we run as root and that group exists."""
    import grp
    import os
    import time

    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            log.warning("milter socket %s did not appear; not changing its mode", path)
            return
        time.sleep(0.05)
    try:
        if os.geteuid() == 0:
            with contextlib.suppress(KeyError):
                os.chown(path, -1, grp.getgrnam("postfix").gr_gid)
        os.chmod(path, 0o660)
    except OSError as exc:
        log.warning("cannot open milter socket %s to Postfix: %s", path, exc)


def _reactivate(engine: Engine) -> None:
    import time

    if engine.store is not None:
        count = engine.store.reactivate_due(time.time())
        if count:
            log.info("reactivated %d paused enrollment(s) whose date has passed", count)
