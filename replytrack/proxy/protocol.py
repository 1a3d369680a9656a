"""The SMTP protocol as the proxy speaks it: aiosmtpd's, with a few adjustments.

aiosmtpd parses commands and calls the handler's hooks (``handle_MAIL`` and so on), found by
name on whatever handler it is handed; this layer never imports the handler. What it adds:
the null reverse-path ``MAIL FROM:<>``, angle brackets required around paths, DATA read into
one buffer (``data_reader``) with NUL refused, an enhanced status code on every reply
(``replies``), passwords checked off the event loop (``auth``), and the upstream connection
of a client's open transaction closed when the client goes. aiosmtpd's private internals
are touched only in ``internals``.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from typing import Any, Protocol

from aiosmtpd.smtp import MISSING, AuthResult, Envelope, Session, syntax

from replytrack import metrics
from replytrack.proxy.auth import settle_auth
from replytrack.proxy.data_reader import read_data
from replytrack.proxy.internals import InitPlans, PlannedSMTP
from replytrack.proxy.relay import Upstream
from replytrack.proxy.replies import (
    S501_RECIPIENT_SYNTAX,
    S501_SENDER_SYNTAX,
    with_enhanced_code,
)

log = logging.getLogger("replytrack.proxy")

# MAIL FROM:<path> / RCPT TO:<path> with the angle brackets RFC 5321 requires. Requiring
# them also catches a bare LF inside an address: aiosmtpd ends a command line at LF, so
# "MAIL FROM:<a\nb@x>" reaches us as "FROM:<a", which it would otherwise accept as "a".
_PATH_ARG = re.compile(r"(?i)^(FROM|TO):\s*<[^<>]*>(\s.*)?$")
# The null reverse-path, MAIL FROM:<> (RFC 5321 4.5.5), used by delivery reports and, in
# the content_filter mode of postfix-example/, by Postfix's own bounces.
_NULL_PATH = re.compile(r"(?i)^FROM:\s*<>(?=\s|$)")
# What aiosmtpd is given to parse in place of <>, which it refuses as a syntax error.
_NULL_STAND_IN = "null-reverse-path@replytrack.invalid"
# envelope.mail_from of a transaction with the null reverse-path. aiosmtpd tests
# mail_from for truth (nested MAIL, RCPT before MAIL), so "" cannot stand for it.
NULL_SENDER = "<>"


def reverse_path(envelope: Envelope) -> str:
    """The envelope sender as it goes upstream and into the record: "" for MAIL FROM:<>."""
    sender = envelope.mail_from or ""
    return "" if sender == NULL_SENDER else sender


class NullSenderSMTP(PlannedSMTP):
    """aiosmtpd's SMTP that also accepts the null reverse-path, ``MAIL FROM:<>``.

    aiosmtpd refuses an empty sender at MAIL and treats an empty ``envelope.mail_from`` as
    "no MAIL yet" at RCPT. Rather than copy its MAIL handling, its own checks (HELO first,
    AUTH required, nested MAIL, BODY, SMTPUTF8, SIZE and unknown parameters) run on a
    stand-in address while ``null_reverse_path`` is True. The handler's ``handle_MAIL``
    must then take the sender as "" and set ``envelope.mail_from`` to ``NULL_SENDER``.
    """

    # True only while aiosmtpd handles a MAIL FROM:<>; the hook's address is a stand-in.
    null_reverse_path = False

    async def smtp_MAIL(self, arg: str | None) -> None:
        match = _NULL_PATH.match(arg) if arg is not None else None
        if match is None or arg is None:
            await super().smtp_MAIL(arg)
            return
        self.null_reverse_path = True
        try:
            await super().smtp_MAIL(f"FROM:<{_NULL_STAND_IN}>{arg[match.end() :]}")
        finally:
            self.null_reverse_path = False


class ProxySession(Session):
    """aiosmtpd's per-connection session plus our transaction state."""

    def __init__(self, loop: asyncio.AbstractEventLoop, rt_id: str) -> None:
        super().__init__(loop)
        # The connection's id in the log.
        self.rt_id = rt_id
        # The upstream connection holding this client's open transaction, if any.
        self.rt_upstream: Upstream | None = None
        # Recipients of the open transaction the upstream refused at RCPT, with its reply.
        self.rt_refused: dict[str, str] = {}


class TransactionHandler(Protocol):
    """What the protocol asks of its handler besides aiosmtpd's hooks."""

    async def end_transaction(self, session: ProxySession) -> None: ...


class ProxySMTP(NullSenderSMTP):
    """The proxy's SMTP protocol, one per client connection.

    ``connections`` is the server's set of open connections (this one joins it while open),
    ``connection_id`` names each new session, and ``plans`` is the server's shared
    constructor plan (see ``internals``).
    """

    session: ProxySession | None
    # RFC 5321 limits lines to 1000 octets, but campaign engines send HTML with far longer
    # lines and Postfix accepts them; refusing them here would bounce real mail, so they
    # are passed through unchanged (bounded, so memory stays bounded) and the upstream
    # applies its own policy.
    line_length_limit = 64 * 1024

    # True while aiosmtpd answers HELO or EHLO: its 250 lines there are the greeting and the
    # extension list, which RFC 2034 leaves without enhanced codes (see push).
    helo_reply = False

    def __init__(
        self,
        handler: TransactionHandler,
        *,
        plans: InitPlans,
        connections: set[ProxySMTP],
        connection_id: Callable[[], str],
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, plans=plans, **kwargs)
        self.handler = handler
        self.connections = connections
        self.connection_id = connection_id

    def new_session(self) -> ProxySession:
        return ProxySession(self.loop, self.connection_id())

    # The overrides keep aiosmtpd's @syntax, which HELP lists and explains.
    @syntax("HELO hostname")
    async def smtp_HELO(self, hostname: str) -> None:
        self.helo_reply = True
        try:
            await super().smtp_HELO(hostname)
        finally:
            self.helo_reply = False

    @syntax("EHLO hostname")
    async def smtp_EHLO(self, hostname: str) -> None:
        self.helo_reply = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self.helo_reply = False

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:
        if arg is not None and not _PATH_ARG.match(arg):
            await self.push(S501_SENDER_SYNTAX)
            return
        await super().smtp_MAIL(arg)

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg: str | None) -> None:
        if arg is not None and not _PATH_ARG.match(arg):
            await self.push(S501_RECIPIENT_SYNTAX)
            return
        await super().smtp_RCPT(arg)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """DATA as aiosmtpd answers it, the mail read by ``read_data`` into one buffer and
        handed to handle_DATA as ``envelope.original_content``."""
        if not self.reads_raw_data():
            await super().smtp_DATA(arg)
            return
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None and self.session is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            received = await read_data(
                self.reader, size_limit=self.data_size_limit, line_limit=self.line_length_limit
            )
        except asyncio.CancelledError:
            log.info("[%s] connection lost during DATA", self.session.rt_id)
            self.writer.close()
            raise
        if received is None:
            # The connection went away before the end of the mail: nothing to answer.
            return
        content, refusal = received
        if refusal is not None:
            log.info("[%s] mail refused at the end of DATA: %s", self.session.rt_id, refusal)
            metrics.PROXY_MAILS.labels("rejected").inc()
            await self.push(refusal)
            self.end_data()
            # The upstream transaction opened at MAIL ends too (RSET): nothing of this mail
            # goes anywhere, and the next MAIL on this connection starts clean.
            await self.handler.end_transaction(self.session)
            return
        # A bytearray where aiosmtpd puts bytes: ours is the only handler, and it reads the
        # mail through the buffer protocol, so the received mail is never copied to bytes.
        self.envelope.content = self.envelope.original_content = content  # type: ignore[assignment]
        del content
        status = await self.call_data_hook()
        self.end_data()
        await self.push("250 OK" if status is MISSING else status)

    def connection_made(self, transport: Any) -> None:
        # aiosmtpd calls this again after STARTTLS and starts a new session (RFC 3207 4.2);
        # a transaction opened upstream before it would be lost with the old session, so
        # its connection is closed here (it is half open: never pooled).
        old = getattr(self, "session", None)
        if old is not None and old.rt_upstream is not None:
            old.rt_upstream.close()
            old.rt_upstream = None
        super().connection_made(transport)
        self.connections.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        self.connections.discard(self)
        session = self.session
        if session is not None and session.rt_upstream is not None:
            # The client left in the middle of a transaction: the upstream transaction is
            # half open, so that connection is not reused.
            session.rt_upstream.close()
            session.rt_upstream = None
        super().connection_lost(error)

    async def push(self, status: Any) -> None:
        if isinstance(status, str):
            exempt = (self.helo_reply and status.startswith("250")) or (
                status == f"220 {self.hostname} {self.__ident__}"  # the greeting
            )
            if not exempt:
                status = with_enhanced_code(status)
            # A reply that quotes the client may hold its undecodable bytes (surrogate
            # escapes), which would fail the encoding mid-session; they go out as "?".
            status = status.encode("utf-8", "replace")
        await super().push(status)

    # The password is checked here, off the event loop (see ClientAuth).
    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        return await settle_auth(await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        return await settle_auth(await super().auth_LOGIN(_, args))
