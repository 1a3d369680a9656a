"""The pymilter shell around the engine: the only module that imports ``Milter``.

Round trips are what a milter costs Postfix, so this one asks for as few as it can:

- connect, HELO, DATA and unknown commands are not negotiated at all (``nocallback`` is the
  default of ``Milter.Base`` for every callback we do not override);
- MAIL FROM, RCPT TO and every header are ``noreply``: Postfix sends them and goes on
  without waiting for an answer;
- end of headers is the one answer per mail. Mail that references nothing of ours, is not
  from an enrolled sender, carries no ``X-ReplyTrack`` to strip and whose headers do not
  call for the body gets ACCEPT there, which skips body and end of message entirely;
- the body is read (at most ``BODY_LIMIT`` bytes, then SKIP) only for mail that matched or
  whose headers say a delivery report or auto-reply must be read.

Over TCP two kernel delays would add 40 ms a mail: see :class:`ReplyTrackMilterTCP` and
:func:`set_listener_nodelay`. Store work runs within bounds (:mod:`.store_calls`).

Every callback fails open: an exception is logged and the mail accepted, and pymilter's
own exception policy is ACCEPT as a second net. What the store cannot take is journaled.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import socket as pysocket
import time
from collections.abc import Callable
from typing import Any, TypeVar

import Milter

from replytrack import metrics
from replytrack.headers import normalize_address
from replytrack.milter import monitor, store_calls
from replytrack.milter.decision import Verdict
from replytrack.milter.engine import Engine, Screening
from replytrack.milter.inbound import (
    BODY_LIMIT,
    HEADER,
    MAX_HEADER_BYTES,
    MAX_HEADERS,
    Inbound,
    outside_copies,
)
from replytrack.milter.journal import Journal, JournalChain
from replytrack.milter.socket_spec import parse_socket_spec
from replytrack.store.errors import StoreError

log = logging.getLogger("replytrack.milter")

F = TypeVar("F", bound=Callable[..., Any])
MAX_RECIPIENTS = 1000
_HEADER_KEY = HEADER.lower()
FLAGS = Milter.ADDHDRS | Milter.CHGHDRS
def _fail_open(result: int) -> Callable[[F], F]:
    """Turn any exception in a callback into a logged ``result`` (ACCEPT or CONTINUE)."""

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(self: ReplyTrackMilter, *args: Any) -> Any:
            try:
                return func(self, *args)
            except Exception:
                log.exception("qid=%s %s failed; accepting the mail", self.qid(), func.__name__)
                self.failed = True
                return result

        return wrapper  # type: ignore[return-value]

    return decorate


class ReplyTrackMilter(Milter.Base):
    """One instance per SMTP connection Postfix opens to us; state is per message.

    libmilter calls us from its own C threads (Debian's libmilter runs a worker pool, and
    one connection's callbacks may run on different threads). pymilter gives each milter
    connection a Python thread state of its own and moves it between those threads, so a
    ``threading.local`` lives as long as one SMTP connection: a per-thread store connection
    would be opened for every connection and never closed. Store work therefore runs
    inside ``Store.session``, which lends the callback a pooled connection and takes it
    back.
    """

    engine: Engine
    journal: JournalChain

    def __init__(self) -> None:
        self.msg: Inbound | None = None
        self.screening: Screening | None = None
        self.header_bytes_seen = 0
        self.body_parts: list[bytes] = []
        self.body_size = 0
        self.failed = False
        self.started = 0.0

    def qid(self) -> str:
        """The Postfix queue id for log lines ("-" before Postfix assigned one)."""
        if self.msg is not None and self.msg.queue_id:
            return self.msg.queue_id
        try:
            value = self.getsymval("i")
        except Exception:
            value = None
        if value and self.msg is not None:
            self.msg.queue_id = value
        return value or "-"

    # --- envelope and headers: no reply expected ---------------------------------------------
    @Milter.noreply
    @_fail_open(Milter.CONTINUE)
    def envfrom(self, mailfrom: str, *params: str) -> int:
        self.started = time.perf_counter()
        self.msg = Inbound(
            envelope_from=normalize_address(mailfrom),
            authenticated=self.getsymval("{auth_authen}") or None,
            mode=self.engine.config.mode,
        )
        self.screening = None
        self.header_bytes_seen = 0
        self.body_parts = []
        self.body_size = 0
        self.failed = False
        return Milter.CONTINUE

    @Milter.noreply
    @_fail_open(Milter.CONTINUE)
    def envrcpt(self, to: str, *params: str) -> int:
        if self.msg is not None and len(self.msg.recipients) < MAX_RECIPIENTS:
            self.msg.recipients.append(normalize_address(to))
        return Milter.CONTINUE

    @Milter.noreply
    @_fail_open(Milter.CONTINUE)
    def header(self, name: str, value: str) -> int:
        msg = self.msg
        if msg is None:
            return Milter.CONTINUE
        size = len(name) + len(value)
        if name.lower() == _HEADER_KEY:
            # Always kept (whatever the bounds) so every copy from outside can be removed.
            msg.headers.append((name, value[:1000]))
        elif len(msg.headers) < MAX_HEADERS and self.header_bytes_seen + size <= MAX_HEADER_BYTES:
            msg.headers.append((name, value))
            self.header_bytes_seen += size
        return Milter.CONTINUE

    # --- the one answer per mail ------------------------------------------------------------
    @_fail_open(Milter.ACCEPT)
    def eoh(self) -> int:
        msg = self.msg
        if msg is None or self.failed:
            return Milter.ACCEPT
        self.qid()
        try:
            # Store errors (locked, interrupted at the deadline) come back as a screening
            # with store_failed set: journaled at end of message.
            screening = store_calls.with_store(self.engine, self.engine.screen, msg)
        except store_calls.StoreBusy:
            screening = self._unscreened(msg, "store-busy")
        except Exception:
            # Whatever went wrong, copies of our header from outside must still be removed
            # at end of message, and the mail journaled for replay.
            log.exception("qid=%s screening failed; journaling the mail", msg.queue_id)
            screening = self._unscreened(msg, "screening-error")
        self.screening = screening
        if screening.unsubscribes:
            try:
                store_calls.with_store(
                    self.engine, self.engine.record_unsubscribes, msg, screening.unsubscribes
                )
            except Exception as exc:
                self._journal(msg, f"unsubscribe not recorded: {exc}")
        if screening.accept_now:
            metrics.MILTER_VERDICTS.labels("unrelated").inc()
            metrics.MILTER_LATENCY.observe(time.perf_counter() - self.started)
            return Milter.ACCEPT
        return Milter.CONTINUE

    def _unscreened(self, msg: Inbound, why: str) -> Screening:
        """A screening for mail the store could not screen: strip, then journal at the end."""
        try:
            skip = self.engine.prescreen(msg)
        except Exception:
            log.exception("qid=%s prescreen failed", msg.queue_id)
            skip = None
        if skip is None:
            skip = Screening(strip_count=outside_copies(msg.headers))
        return dataclasses.replace(skip, store_failed=True, evidence=(why,))

    @_fail_open(Milter.ACCEPT)
    def body(self, chunk: bytes) -> int:
        screening = self.screening
        if screening is None or not screening.wants_body or self.body_size >= BODY_LIMIT:
            return self._skip()
        room = BODY_LIMIT - self.body_size
        self.body_parts.append(chunk[:room])
        self.body_size += min(len(chunk), room)
        if self.body_size >= BODY_LIMIT:
            return self._skip()
        return Milter.CONTINUE

    def _skip(self) -> int:
        # SKIP ends the body early when Postfix offered it; otherwise we ignore the rest.
        if self._protocol & Milter.P_SKIP:
            return Milter.SKIP
        return Milter.CONTINUE

    @_fail_open(Milter.ACCEPT)
    def eom(self) -> int:
        msg, screening = self.msg, self.screening
        if msg is None or screening is None or self.failed:
            return Milter.ACCEPT
        qid = self.qid()
        if screening.wants_body:
            msg.body = b"".join(self.body_parts)
        # Copies of our header from outside go first, whatever else happens: a reply must
        # never look flagged by someone else. Deleting from the last copy backwards keeps
        # the indexes of the remaining ones valid.
        for index in range(screening.strip_count, 0, -1):
            self.chgheader(HEADER, index, "")
        if screening.strip_count:
            log.info(
                "qid=%s removed %d %s header(s) from outside", qid, screening.strip_count, HEADER
            )
        if screening.skip_reason:
            metrics.MILTER_VERDICTS.labels("unrelated").inc()
            return Milter.ACCEPT
        if screening.store_failed:
            self._journal(msg, "store unavailable at end of headers")
            return Milter.ACCEPT
        try:
            verdict, recorded, write_error = store_calls.with_store(
                self.engine, self._decide_and_record, msg, screening
            )
        except StoreError as exc:
            self._journal(msg, str(exc))
            return Milter.ACCEPT
        except Exception as exc:
            # An unexpected fault must not lose the verdict: journal it for replay.
            log.exception("qid=%s deciding failed; journaling the mail", qid)
            self._journal(msg, f"{type(exc).__name__}: {exc}")
            return Milter.ACCEPT
        # Monitor mode: no header, no stops counted or logged (milter/monitor.py).
        verdict = monitor.as_applied(verdict, self.engine.config, msg.mode)
        # The verdict rests on reads that worked: the reply is flagged even when recording
        # it failed (the record follows from the journal).
        if verdict.add_header:
            self.addheader(HEADER, verdict.add_header)
        if write_error is not None:
            self._journal(msg, write_error, verdict)
        metrics.MILTER_VERDICTS.labels(verdict.kind).inc()
        if recorded and verdict.kind == "reply" and verdict.stopped:
            metrics.MILTER_STOPS.labels("reply").inc(len(verdict.stopped))
        if recorded and verdict.bounced:
            metrics.MILTER_STOPS.labels("bounce").inc(len(verdict.bounced))
        metrics.MILTER_LATENCY.observe(time.perf_counter() - self.started)
        if not log.isEnabledFor(logging.INFO):
            return Milter.ACCEPT  # the line's fields cost more than its formatting
        log.info(
            "qid=%s verdict=%s sender=%s campaign=%s match=%s relation=%s stopped=%d%s",
            qid,
            verdict.kind,
            verdict.sender,
            verdict.campaign,
            verdict.method,
            verdict.relation,
            len(verdict.stopped),
            _record_note(recorded, verdict, write_error),
        )
        return Milter.ACCEPT

    def _decide_and_record(
        self, msg: Inbound, screening: Screening
    ) -> tuple[Verdict, bool, str | None]:
        """The verdict, whether it was recorded, and why recording failed (None if it did not).

        A failed write is returned, not raised: the verdict still decides the header.
        """
        verdict = self.engine.decide(msg, screening)
        try:
            return verdict, self.engine.apply(verdict, msg.mode), None
        except StoreError as exc:
            return verdict, False, str(exc)
        except Exception as exc:
            log.exception("qid=%s recording the verdict failed", msg.queue_id)
            return verdict, False, f"{type(exc).__name__}: {exc}"

    def _journal(self, msg: Inbound, reason: str, verdict: Verdict | None = None) -> None:
        metrics.STORE_ERRORS.labels("milter").inc()
        # The chain never raises: what no journal location takes goes whole to the log.
        where = self.journal.append(msg, reason, verdict)
        if where is not None:
            log.warning(
                "qid=%s store unavailable (%s); journaled for replay in %s",
                msg.queue_id,
                reason,
                where,
            )

    @_fail_open(Milter.CONTINUE)
    def abort(self) -> int:
        self.msg = None
        self.screening = None
        self.body_parts = []
        return Milter.CONTINUE


def _record_note(recorded: bool, verdict: Verdict, write_error: str | None) -> str:
    """What the verdict's log line says about its record."""
    if write_error is not None:
        return " (not recorded: journaled)"
    if recorded or verdict.event is None:
        return ""
    return " (already recorded)"


class ReplyTrackMilterTCP(ReplyTrackMilter):
    """The milter for TCP sockets: also asks for DATA, with a reply.

    Over TCP, Postfix's smtpd sends the DATA-stage macros without waiting for an answer,
    then hands the milter connection to cleanup, which writes the headers. With nothing to
    answer, the milter's kernel delays its ACK (40 ms on Linux) and Nagle's algorithm holds
    cleanup's first write until that ACK comes. Answering DATA carries the ACK at once.
    Over a unix socket there is no Nagle and no delayed ACK, so the plain class skips DATA.
    Every other callback stays as in the plain class: answering more of them only adds
    round trips (measured: bench/README.md).
    """

    def data(self) -> int:
        return Milter.CONTINUE


# pymilter caches the negotiated mask on the class it first computes it for, and a
# subclass would inherit a parent's cached mask: compute the subclass's first.
ReplyTrackMilterTCP.protocol_mask()
ReplyTrackMilter.protocol_mask()


def install(engine: Engine, journal: Journal | JournalChain, *, tcp: bool = False) -> None:
    """Wire the engine into pymilter: factory, flags, fail-open exception policy.

    ``journal`` is the chain of journal locations (a single journal becomes a chain of
    one, ending in the log). ``tcp`` picks the class for inet sockets (see
    :class:`ReplyTrackMilterTCP`).
    """
    ReplyTrackMilter.engine = engine
    if not isinstance(journal, JournalChain):
        journal = JournalChain([journal])
    ReplyTrackMilter.journal = journal
    Milter.factory = ReplyTrackMilterTCP if tcp else ReplyTrackMilter
    Milter.set_flags(FLAGS)
    Milter.set_exception_policy(Milter.ACCEPT)


def set_listener_nodelay(port: int) -> bool:
    """Set TCP_NODELAY on this process's listening socket bound to ``port``.

    libmilter owns the listening socket and the connections it accepts, but on Linux an
    accepted socket inherits TCP_NODELAY from its listener. Without it, end of message
    costs 40 ms over TCP: libmilter writes each modification (ADDHEADER, CHGHEADER) and
    then ACCEPT as separate small packets, Nagle's algorithm holds ACCEPT until Postfix
    ACKs the first packet, and Postfix, waiting for the final answer, delays that ACK.
    Returns whether a listener was found and set; never raises (the milter runs without
    it, only slower).
    """
    found = False
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        log.warning("qid=- cannot list /proc/self/fd; TCP_NODELAY not set", exc_info=True)
        return False
    for name in fds:
        fd = int(name)
        try:
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                continue
            # A duplicate shares the socket: options set on it apply to libmilter's fd, and
            # closing it leaves libmilter's fd open.
            with pysocket.socket(fileno=os.dup(fd)) as sock:
                if sock.family not in (pysocket.AF_INET, pysocket.AF_INET6):
                    continue
                if not sock.getsockopt(pysocket.SOL_SOCKET, pysocket.SO_ACCEPTCONN):
                    continue
                if sock.getsockname()[1] != port:
                    continue
                sock.setsockopt(pysocket.IPPROTO_TCP, pysocket.TCP_NODELAY, 1)
                found = True
        except OSError:
            continue
    if not found:
        log.warning("qid=- no listening socket on port %d found; TCP_NODELAY not set", port)
    return found


def run(socket: str, *, timeout: int) -> None:
    """Serve the milter protocol on ``socket`` until SIGTERM/SIGINT (blocks).

    For TCP sockets, TCP_NODELAY is set on the listener right after libmilter opens it.
    """
    try:
        port = parse_socket_spec(socket).port
    except ValueError:
        port = None  # libmilter says what is wrong with it
    if port is None:
        Milter.runmilter("replytrack", socket, timeout)
        return
    # Milter.runmilter opens the socket and serves in one call: hook the opening to set
    # the option between the two.
    real_opensocket = Milter.milter.opensocket

    def opensocket(*args: Any) -> Any:
        result = real_opensocket(*args)
        try:
            set_listener_nodelay(port)
        except Exception:  # a slower milter, never none
            log.exception("qid=- setting TCP_NODELAY failed; serving without it")
        return result

    Milter.milter.opensocket = opensocket
    try:
        Milter.runmilter("replytrack", socket, timeout)
    finally:
        Milter.milter.opensocket = real_opensocket
