"""What happens to one client transaction: aiosmtpd's handler hooks, business only.

One client transaction maps onto one upstream transaction, command by command, as in
Postfix's before-queue proxy: MAIL FROM opens the upstream transaction, each RCPT TO gets
the upstream's own reply, and at the end of DATA the mail is stamped, recorded (status
``relaying``, recipients enrolled: from here on replies match it and suppression honours
it), sent upstream, then settled as ``relayed`` or ``failed``. The client hears ``250``
only after the upstream took the mail and the record was committed; every failure on our
side before the upstream's answer is a ``451`` (the client keeps the mail and retries),
never a ``500``. After the upstream's ``250`` the client gets that ``250`` even if settling
fails (a ``451`` would make it send the mail twice); the server's sweep marks such a record
``unconfirmed`` later.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from aiosmtpd.smtp import SMTP, Envelope

from replytrack import metrics, unsubscribe
from replytrack.config import Config
from replytrack.do_not_contact import address_hasher
from replytrack.headers import normalize_address
from replytrack.proxy import lookups
from replytrack.proxy.access import allowed_networks, client_allowed
from replytrack.proxy.deferral import deferral, relayed_note
from replytrack.proxy.protocol import NULL_SENDER, ProxySession, reverse_path
from replytrack.proxy.recipients import build_recipients, let_through, one_line, suppressed_reply
from replytrack.proxy.relay import RelayError, Upstream, UpstreamPool
from replytrack.proxy.replies import (
    CONTROL_CHARS,
    S221_BYE,
    S250_MAIL_OK,
    S250_OK,
    S421_STOPPING,
    S451_INTERNAL,
    S451_NO_TRANSACTION,
    S451_REPLAY,
    S451_STORE,
    S501_RECIPIENT,
    S501_SENDER,
    S553_NEEDS_UTF8,
    S553_RECIPIENT_UTF8,
    S553_SENDER_UTF8,
    S554_NOT_ALLOWED,
    ProxyError,
)
from replytrack.proxy.stamp import MetadataError, Stamped, stamp
from replytrack.store import (
    FAILED,
    UNCONFIRMED,
    Enrollment,
    OutboundRecord,
    Store,
    StoreWouldWait,
)
from replytrack.tokens import Keyring, mint

log = logging.getLogger("replytrack.proxy")
T = TypeVar("T")

# Mail up to this size is stamped on the event loop (cheaper than a hop to a thread); larger
# mail, whose header block may be large too, is stamped in a thread so other clients are not
# held up meanwhile.
_STAMP_INLINE_BYTES = 64 * 1024


@dataclasses.dataclass(frozen=True)
class MailOutcome:
    """How one mail ended: the client's reply, the metric result, and what is logged."""

    reply: str
    # relayed | suppressed | rejected | upstream_refused | tempfail
    result: str
    message_id: str = ""
    stamped: Stamped | None = None
    suppressed: int = 0


class MailEnded(ProxyError):
    """The mail ends here without being relayed; ``result`` is the metric result."""

    def __init__(self, reply: str, result: str) -> None:
        super().__init__(reply)
        self.result = result


def _is_utf8(text: str) -> bool:
    """False when ``text`` holds bytes that were not UTF-8 (aiosmtpd's surrogate escapes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class ProxyHandler:
    """The aiosmtpd handler: each hook answers with the upstream's reply or ours."""

    def __init__(
        self,
        *,
        config: Config,
        store: Store,
        keyring: Keyring,
        pool: UpstreamPool,
        executor: concurrent.futures.Executor | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.keyring = keyring
        self.pool = pool
        self.executor = executor
        self.networks = allowed_networks(config)
        # List-Unsubscribe on campaign mail (None: off).
        self.unsubscribe = unsubscribe.Options.from_config(config, keyring)
        # Do-not-contact entries erased by `replytrack forget` are matched by their hash.
        store.use_hasher(address_hasher(keyring))
        # Set by ProxyServer.start once the loop's store connection does not wait.
        self.store_inline = False
        # Mails past DATA, being recorded and relayed; shutdown waits for them.
        self.in_flight = 0
        # Set at shutdown: open transactions finish, new ones are turned away with 421.
        self.stopping = False

    async def _in_thread(self, func: Callable[..., T], *args: Any) -> T:
        """Run ``func`` off the event loop (it may wait or take long)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, func, *args)

    async def _store_call(self, func: Callable[..., T], *args: Any) -> T:
        """A store call: on the event loop when it need not wait, else in a thread.

        A store wait must never stall other clients, yet a hop to a thread costs more than
        most calls. So with ``store_inline`` (``Store.prepare_for_event_loop``) the call is
        made here, where the store never waits: one that would raises StoreWouldWait having
        written nothing, and is made again in a thread, to wait there.
        """
        if self.store_inline:
            try:
                return func(*args)
            except StoreWouldWait:
                pass
        return await self._in_thread(func, *args)

    async def end_transaction(self, session: ProxySession) -> None:
        """End the client's open transaction: RSET upstream, refused recipients forgotten."""
        upstream, session.rt_upstream = session.rt_upstream, None
        session.rt_refused = {}
        if upstream is not None:
            await self.pool.end(upstream, reset=True)

    # --- hooks -----------------------------------------------------------------------------
    async def handle_EHLO(
        self,
        server: SMTP,
        session: ProxySession,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        """aiosmtpd's EHLO reply, also offering ENHANCEDSTATUSCODES (RFC 2034): every
        reply we send carries one (ProxySMTP.push makes sure)."""
        session.host_name = hostname
        return [*responses[:-1], "250-ENHANCEDSTATUSCODES", responses[-1]]

    async def handle_exception(self, error: Exception) -> str:
        """aiosmtpd's fallback for errors outside our hooks: a 451, never its 500."""
        log.error("unhandled error in the SMTP session: %r", error, exc_info=error)
        return S451_INTERNAL

    async def handle_MAIL(
        self,
        server: SMTP,
        session: ProxySession,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        cid = session.rt_id
        null = getattr(server, "null_reverse_path", False)
        if null:
            address = ""
        try:
            if self.stopping:
                return S421_STOPPING
            if not (session.authenticated or client_allowed(session.peer, self.networks)):
                log.warning("[%s] MAIL refused: client %s not allowed", cid, session.peer)
                metrics.PROXY_MAILS.labels("rejected").inc()
                return S554_NOT_ALLOWED
            if CONTROL_CHARS.search(address):
                return S501_SENDER
            if not _is_utf8(address):
                return S553_SENDER_UTF8
            utf8 = "SMTPUTF8" in mail_options
            if not utf8 and not address.isascii():
                return S553_NEEDS_UTF8
            # A transaction left open (EHLO in the middle resets aiosmtpd's envelope) ends here.
            await self.end_transaction(session)
            try:
                session.rt_upstream = await self.pool.begin(address, mail_options, utf8=utf8)
            except RelayError as exc:
                log.info("[%s] MAIL FROM:<%s> not taken upstream: %s", cid, address, exc.reply)
                return exc.reply
            envelope.mail_from = NULL_SENDER if null else address
            envelope.mail_options.extend(mail_options)
            return S250_MAIL_OK
        except Exception:
            log.exception("[%s] error in MAIL", cid)
            await self.end_transaction(session)
            return S451_INTERNAL

    async def handle_RCPT(
        self,
        server: SMTP,
        session: ProxySession,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        cid = session.rt_id
        try:
            if CONTROL_CHARS.search(address):
                return S501_RECIPIENT
            if not _is_utf8(address):
                return S553_RECIPIENT_UTF8
            if not envelope.smtp_utf8 and not address.isascii():
                return S553_NEEDS_UTF8
            upstream = session.rt_upstream
            if upstream is None:
                return S451_NO_TRANSACTION
            try:
                reply = await upstream.rcpt(address, utf8=bool(envelope.smtp_utf8))
            except RelayError as exc:
                if exc.broken:
                    session.rt_upstream = None
                    upstream.close()
                else:
                    session.rt_refused[normalize_address(address)] = exc.reply
                log.info("[%s] RCPT TO:<%s> refused upstream: %s", cid, address, exc.reply)
                return exc.reply
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
            return reply
        except Exception:
            log.exception("[%s] error in RCPT", cid)
            await self.end_transaction(session)
            return S451_INTERNAL

    async def handle_RSET(self, server: SMTP, session: ProxySession, envelope: Envelope) -> str:
        await self.end_transaction(session)
        return S250_OK

    async def handle_QUIT(self, server: SMTP, session: ProxySession, envelope: Envelope) -> str:
        await self.end_transaction(session)
        return S221_BYE

    async def handle_DATA(self, server: SMTP, session: ProxySession, envelope: Envelope) -> str:
        upstream, session.rt_upstream = session.rt_upstream, None
        refused, session.rt_refused = session.rt_refused, {}
        # Once the client sent the whole mail, stamping, recording and relaying run to the
        # end even if the client goes away meanwhile (aiosmtpd cancels this hook then):
        # otherwise a record could stay "relaying" and an upstream connection be left
        # mid-command.
        self.in_flight += 1
        task = asyncio.ensure_future(self._handle_mail(session.rt_id, envelope, upstream, refused))
        task.add_done_callback(self._mail_done)
        return await asyncio.shield(task)

    def _mail_done(self, task: asyncio.Future[str]) -> None:
        self.in_flight -= 1

    # --- the mail ---------------------------------------------------------------------------
    async def _handle_mail(
        self,
        cid: str,
        envelope: Envelope,
        upstream: Upstream | None,
        refused: dict[str, str],
    ) -> str:
        started = time.monotonic()
        if upstream is None:
            outcome = MailOutcome(S451_NO_TRANSACTION, "tempfail")
        else:
            try:
                outcome = await self._deliver(cid, envelope, upstream, refused)
            except Exception:
                log.exception("[%s] error in DATA", cid)
                upstream.close()
                outcome = MailOutcome(S451_INTERNAL, "tempfail")
        elapsed = time.monotonic() - started
        metrics.PROXY_MAILS.labels(outcome.result).inc()
        metrics.PROXY_LATENCY.observe(elapsed)
        stamped = outcome.stamped
        log.info(
            "[%s] mail message_id=<%s> original=%s campaign=%s step=%s sender=<%s>"
            " recipients=%d suppressed=%d size=%d result=%s reply=%r ms=%.1f",
            cid,
            outcome.message_id,
            f"<{stamped.original_message_id}>" if stamped and stamped.original_message_id else "-",
            (stamped and stamped.campaign) or "-",
            stamped.step if stamped and stamped.step is not None else "-",
            reverse_path(envelope),
            len(envelope.rcpt_tos),
            outcome.suppressed,
            len(envelope.original_content or b""),
            outcome.result,
            outcome.reply.splitlines()[-1],
            elapsed * 1000,
        )
        return outcome.reply

    async def _deliver(
        self,
        cid: str,
        envelope: Envelope,
        upstream: Upstream,
        refused: dict[str, str],
    ) -> MailOutcome:
        """Stamp, check suppression, record, relay, settle."""
        # One time for the record and the thread index built from it: a step's child block
        # is rebuilt later from the recorded time and must come out the same.
        now = time.time()
        message_id = mint(self.keyring, self.config.domain)
        try:
            stamped = await self._stamp(envelope.original_content or b"", message_id)
        except MetadataError as exc:
            await self.pool.end(upstream, reset=True)
            return MailOutcome(exc.reply, "rejected", message_id)
        recipients = list(dict.fromkeys(normalize_address(r) for r in envelope.rcpt_tos))
        sender = normalize_address(reverse_path(envelope))

        def make_record(blocked: dict[str, Enrollment]) -> OutboundRecord:
            return OutboundRecord(
                message_id=stamped.message_id,
                original_message_id=stamped.original_message_id,
                campaign=stamped.campaign,
                step=stamped.step,
                sender=sender,
                from_address=stamped.from_address,
                subject=stamped.subject,
                size=stamped.size,
                status="relaying",
                recipients=build_recipients(stamped, recipients, blocked, refused),
                created_at=now,
                thread=stamped.thread_root,
            )

        suppressed = 0
        try:
            try:
                # A kept client ID recorded already gets ours; a follow-up, its thread.
                stamped = await lookups.prepare(
                    stamped,
                    recipients,
                    self.config,
                    self.store,
                    self.keyring,
                    self._store_call,
                    self._stamp,
                    now=now,
                )
            except Exception as exc:
                raise await self._store_failed(cid, upstream, "cannot read the store") from exc
            # One store call in the common case: read the recipients' enrollments and, when
            # nobody is blocked, record the mail in the same call.
            try:
                blocked, pk = await self._store_call(
                    self._record_unless_blocked, cid, stamped.campaign, recipients, make_record
                )
            except Exception as exc:
                raise await self._store_failed(cid, upstream, "cannot record the mail") from exc
            send_to = [r for r in envelope.rcpt_tos if normalize_address(r) not in blocked]
            suppressed = len(envelope.rcpt_tos) - len(send_to)
            if pk is None:
                pk = await self._record_without_blocked(
                    cid, upstream, make_record(blocked), blocked, send_to
                )
            note = relayed_note(len(envelope.rcpt_tos), send_to, blocked)
            reply = await self._relay(cid, upstream, stamped, pk, note)
        except MailEnded as end:
            outcome = MailOutcome(end.reply, end.result, stamped.message_id, stamped, suppressed)
        else:
            outcome = MailOutcome(reply, "relayed", stamped.message_id, stamped, suppressed)
        if suppressed and outcome.result in ("relayed", "suppressed"):
            metrics.PROXY_RECIPIENTS_SUPPRESSED.inc(suppressed)
        return outcome

    async def _stamp(self, data: bytes | bytearray, message_id: str, mode: str = "") -> Stamped:
        mode = mode or self.config.proxy_stamp
        do = functools.partial(stamp, unsubscribe=self.unsubscribe, mode=mode)
        if len(data) > _STAMP_INLINE_BYTES:
            return await self._in_thread(do, data, message_id)
        return do(data, message_id)

    def _record_unless_blocked(
        self,
        cid: str,
        campaign: str | None,
        recipients: list[str],
        make_record: Callable[[dict[str, Enrollment]], OutboundRecord],
    ) -> tuple[dict[str, Enrollment], int | None]:
        """The blocked recipients, and the record's key when there are none (None when
        some are: the caller records the mail once it knows who gets it)."""
        blocked = (
            self.store.blocked_enrollments(campaign, recipients) if campaign is not None else {}
        )
        blocked = let_through(self.config, blocked, campaign, cid=cid)  # monitor: relay them
        if blocked:
            return blocked, None
        return blocked, self.store.record_outbound(make_record(blocked))

    async def _record_without_blocked(
        self,
        cid: str,
        upstream: Upstream,
        record: OutboundRecord,
        blocked: dict[str, Enrollment],
        send_to: list[str],
    ) -> int:
        """Record the mail without the blocked recipients and start the upstream transaction
        again with the rest; returns the record's key. When nobody is left, the suppression
        is recorded and the mail ends here (MailEnded with the 550), unless some are only
        paused: then nothing is recorded and the mail ends with proxy.deferral's 450."""
        if not send_to:
            await self.pool.end(upstream, reset=True)
            if later := deferral(record.campaign, blocked):
                raise MailEnded(later, "tempfail")
            reply = suppressed_reply(record.campaign, blocked)
            suppression = dataclasses.replace(record, status="suppressed", upstream_reply=reply)
            try:
                await self._store_call(self.store.record_outbound, suppression)
            except Exception as exc:
                raise await self._store_failed(cid, None, "cannot record the suppression") from exc
            raise MailEnded(one_line(reply), "suppressed")
        # The upstream already holds every RCPT; start its transaction again with only the
        # recipients that may get the mail. Nothing was sent, so this is safe, and any
        # different answer the second time makes the whole mail a 451.
        try:
            await upstream.replay(send_to)
        except RelayError as exc:
            log.warning("[%s] replay without suppressed recipients failed: %s", cid, exc)
            await self.pool.end_after(upstream, exc)
            raise MailEnded(S451_REPLAY, "tempfail") from exc
        try:
            return await self._store_call(self.store.record_outbound, record)
        except Exception as exc:
            raise await self._store_failed(cid, upstream, "cannot record the mail") from exc

    async def _relay(
        self, cid: str, upstream: Upstream, stamped: Stamped, pk: int, note: str
    ) -> str:
        """Send the recorded mail upstream and settle its record; returns our 250, with
        ``note`` saying who did not get it (proxy.deferral.relayed_note)."""
        try:
            upstream_reply = await upstream.data(stamped.head, stamped.source, stamped.body_start)
        except RelayError as exc:
            # A refusal after the dot ends the transaction, but one of the DATA command
            # itself (before 354, e.g. Postfix's smtpd_data_restrictions) leaves it open:
            # without RSET the next client's MAIL would get "nested MAIL".
            await self.pool.end_after(upstream, exc)
            # A refusal is an answer: the mail did not go. A lost connection or a timeout is
            # none: the upstream may have queued the mail before we heard it (RFC 1047), so
            # the record stays in matching and suppression as "unconfirmed"; the client
            # still gets a 4xx and sends it again (a duplicate at worst, never a loss).
            await self._settle(cid, pk, UNCONFIRMED if exc.broken else FAILED, exc.reply)
            raise MailEnded(exc.reply, "tempfail" if exc.broken else "upstream_refused") from exc
        self.pool.release(upstream)
        await self._settle(cid, pk, "relayed", upstream_reply)
        said = upstream_reply.splitlines()[-1][4:]
        return one_line(f"250 2.0.0 <{stamped.message_id}> relayed{note}: {said}")

    async def _store_failed(self, cid: str, upstream: Upstream | None, what: str) -> MailEnded:
        """After a store call failed (called in its ``except``): log it, end the upstream
        transaction, and return the 451 the mail ends with (it was not relayed)."""
        log.exception("[%s] %s; not relaying it", cid, what)
        metrics.STORE_ERRORS.labels("proxy").inc()
        if upstream is not None:
            await self.pool.end(upstream, reset=True)
        return MailEnded(S451_STORE, "tempfail")

    async def _settle(self, cid: str, pk: int, status: str, reply: str) -> None:
        """Mark the record relayed or failed. The record exists either way, so a failure
        here is logged, not turned into a different answer to the client."""
        try:
            await self._store_call(self.store.set_message_status, pk, status, one_line(reply))
        except Exception:
            log.exception("[%s] cannot mark mail %d %s", cid, pk, status)
            metrics.STORE_ERRORS.labels("proxy").inc()
