"""The outbound proxy: aiosmtpd in front, the upstream pool behind, the store beside.

One client transaction maps onto one upstream transaction, command by command, as in
Postfix's before-queue proxy: MAIL FROM opens the upstream transaction, each RCPT TO gets
the upstream's own reply, and at the end of DATA the mail is stamped, recorded (status
``relaying``, recipients enrolled: from here on replies match it and suppression honours
it), sent upstream, then settled as ``relayed`` or ``failed``. The client hears ``250``
only after the upstream took the mail and the record was committed; every failure on our
side before the upstream's answer is a ``451`` (the client keeps the mail and retries),
never a ``500``. After the upstream's ``250`` the client gets that ``250`` even if settling
fails (a ``451`` would make it send the mail twice); the sweep marks such a record
``unconfirmed`` later.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import ipaddress
import itertools
import logging
import re
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from aiosmtpd.smtp import (
    MISSING,
    SMTP,
    AuthResult,
    Envelope,
    Session,
    _AuthMechAttr,
    syntax,
)

from replytrack import metrics
from replytrack.config import Config, ConfigError, parse_hostport
from replytrack.headers import PLAIN_ADDR_SPEC, normalize_address
from replytrack.proxy.auth import ClientAuth, PasswordFile, load_auth_file, settle_auth
from replytrack.proxy.auth_limit import AuthLimiter
from replytrack.proxy.relay import RelayError, Upstream, UpstreamPool, UpstreamSettings
from replytrack.proxy.replies import with_enhanced_code
from replytrack.proxy.stamp import MetadataError, Stamped, stamp
from replytrack.store import (
    CAMPAIGN_STOPPED,
    FAILED,
    UNCONFIRMED,
    Enrollment,
    OutboundRecipient,
    OutboundRecord,
    Store,
    StoreWouldWait,
)
from replytrack.tokens import Keyring, mint

log = logging.getLogger("replytrack.proxy")
T = TypeVar("T")

# Replies, code first, each with an enhanced status code (RFC 3463).
S250_MAIL_OK = "250 2.1.0 OK"
S451_INTERNAL = "451 4.3.0 internal error; the mail was not relayed, try again later"
S451_STORE = "451 4.3.0 cannot record the mail right now; it was not relayed, try again later"
S451_NO_TRANSACTION = "451 4.4.2 the upstream transaction was lost; start again with MAIL"
S451_REPLAY = "451 4.4.2 the upstream answered differently on the second pass; try again later"
S501_SENDER = "501 5.1.7 bad sender address syntax (control characters)"
S501_RECIPIENT = "501 5.1.3 bad recipient address syntax (control characters)"
S501_SENDER_SYNTAX = "501 5.1.7 bad sender address syntax: use MAIL FROM:<address>"
S501_RECIPIENT_SYNTAX = "501 5.1.3 bad recipient address syntax: use RCPT TO:<address>"
S553_NEEDS_UTF8 = "553 5.6.7 a non-ASCII address needs the SMTPUTF8 parameter"
# Bytes that are not UTF-8 in a path can never be relayed (SMTPUTF8 paths are UTF-8, RFC
# 6531 3.3): a permanent refusal, not the 451 of an encoding error further on.
S553_SENDER_UTF8 = "553 5.1.7 bad sender address: not valid UTF-8"
S553_RECIPIENT_UTF8 = "553 5.1.3 bad recipient address: not valid UTF-8"
# NUL has no place in mail data: RFC 5322 2.3/3.5 leave it out of message text, and RFC
# 2045 2.7/2.8 out of 7bit and 8bit data alike (only BINARYMIME, RFC 3030, allows it, and
# we offer neither it nor CHUNKING). A next server that drops NUL before looking for the
# end of data would read "<CR><LF><NUL>.<CR><LF>" as one (SMTP smuggling), so such mail is
# refused, not passed on or altered. 554 is RFC 5321's "transaction failed" after DATA;
# 5.6.0 is RFC 3463's "other or undefined media error" (the content, not the envelope).
S554_NUL = "554 5.6.0 mail data contains NUL bytes; the mail was not relayed"
S421_STOPPING = "421 4.3.2 the proxy is shutting down; try again shortly"
S554_NOT_ALLOWED = "554 5.7.1 relaying denied: client address not allowed (authenticate first)"

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Mail up to this size is stamped on the event loop (cheaper than a hop to a thread); larger
# mail, whose header block may be large too, is stamped in the executor.
_STAMP_INLINE_BYTES = 64 * 1024
# How often each proxy process looks for mails left "relaying" (proxy.unconfirmed_after).
SWEEP_SECONDS = 60.0
# AUTH attempts allowed per client connection (aiosmtpd answers 421 and closes after);
# failures per client address across connections are limited by proxy.auth_* settings.
AUTH_TRIES = 5
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
_conn_ids = itertools.count(1)
# What connection ids in the log start with; a worker process sets its own ("w1c").
CONNECTION_PREFIX = "c"


def is_loopback_host(host: str) -> bool:
    """True when ``host`` (a literal or a name, resolved once) only means this machine."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def allowed_networks(config: Config) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The client networks of ``proxy_allow``; a bad entry is a ConfigError."""
    networks = []
    for entry in config.proxy_allow:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ConfigError(f"proxy.allow: {entry!r} is not an address or network") from None
    return networks


def check_bind(config: Config, host: str) -> None:
    """Refuse to listen beyond loopback unless clients are restricted.

    Anything but a loopback address needs an allowlist (``proxy.allow``) or SMTP AUTH over
    TLS (``proxy.auth_file`` with ``proxy.tls_cert``/``tls_key``): an open relay that stamps
    our Message-IDs on anybody's mail must never be possible by accident.
    """
    if is_loopback_host(host):
        return
    allowlist = bool(config.proxy_allow)
    auth = bool(config.proxy_auth_file and config.proxy_tls_cert and config.proxy_tls_key)
    if not (allowlist or auth):
        raise ConfigError(
            f"proxy.listen: refusing to listen on {host} (not loopback) without proxy.allow"
            " (client networks) or proxy.auth_file with proxy.tls_cert and proxy.tls_key;"
            " the proxy must never be an open relay"
        )


def client_allowed(
    peer: Any, networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> bool:
    """Whether a client at ``peer`` (aiosmtpd's ``session.peer``) may submit mail.

    Loopback is always allowed; anything else must be in ``networks``. A peer we cannot read
    (a Unix socket, a missing address) is refused.
    """
    host = peer[0] if isinstance(peer, tuple) and peer else peer
    if not isinstance(host, str):
        return False
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback or any(address in net for net in networks)


def build_recipients(
    stamped: Stamped,
    envelope: Sequence[str],
    blocked: dict[str, Enrollment],
    refused: dict[str, str],
) -> tuple[OutboundRecipient, ...]:
    """Recipients to record: header To/Cc and envelope, with role, envelope flag and status.

    An envelope recipient not named in To or Cc is a Bcc. Blocked envelope recipients are
    ``suppressed`` with their enrollment's state as reason; recipients the upstream refused
    at RCPT are ``refused`` with its reply.
    """
    entries: dict[str, list[Any]] = {}
    for address in stamped.to:
        entries.setdefault(address, ["to", False])
    for address in stamped.cc:
        entries.setdefault(address, ["cc", False])
    for address in [*envelope, *refused]:
        entries.setdefault(address, ["bcc", True])[1] = True
    result = []
    for address, (role, on_envelope) in entries.items():
        status, reason = "sent", None
        if address in refused:
            status, reason = "refused", refused[address]
        elif on_envelope and address in blocked:
            enrollment = blocked[address]
            status = "suppressed"
            reason = enrollment.status + (f": {enrollment.reason}" if enrollment.reason else "")
        result.append(OutboundRecipient(address, role, on_envelope, status, reason))
    return tuple(result)


def reverse_path(envelope: Envelope) -> str:
    """The envelope sender as it goes upstream and into the record: "" for MAIL FROM:<>."""
    sender = envelope.mail_from or ""
    return "" if sender == NULL_SENDER else sender


# A plain path, "<local@domain>" with a dot-atom local part and a dot-separated domain of
# letters, digits and hyphens, then optional spaces and parameters. aiosmtpd parses every
# path with the RFC 5322 header parser and builds a typing.Protocol class on each call
# (ABCMeta.__new__): 12 % of the proxy's event loop under load (py-spy). Such a path is
# read here with the result aiosmtpd's parser gives (tests compare both); every other
# form (quotes, comments, routes, literals, odd dots) still goes to aiosmtpd.
_PLAIN_PATH = re.compile(rf"[ \t]*<({PLAIN_ADDR_SPEC})>(?>[ \t]*)(?!\()")


class NullSenderSMTP(SMTP):
    """aiosmtpd's SMTP that also accepts the null reverse-path, ``MAIL FROM:<>``.

    aiosmtpd refuses an empty sender at MAIL and treats an empty ``envelope.mail_from`` as
    "no MAIL yet" at RCPT. Rather than copy its MAIL handling, its own checks (HELO first,
    AUTH required, nested MAIL, BODY, SMTPUTF8, SIZE and unknown parameters) run on a
    stand-in address while ``null_reverse_path`` is True. The handler's ``handle_MAIL``
    must then take the sender as "" and set ``envelope.mail_from`` to ``NULL_SENDER``.
    """

    # True only while aiosmtpd handles a MAIL FROM:<>; the hook's address is a stand-in.
    null_reverse_path = False

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        plain = _PLAIN_PATH.match(arg) if arg else None
        if plain is None:
            return SMTP._getaddr(self, arg)
        address = plain.group(1)
        if self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return address, arg[plain.end() :]

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


_MARK = b"\r\n.\r\n"  # the end of DATA: a line that is a lone "."
_TOO_LONG = "500 Line too long (see RFC5321 4.5.3.1.6)"  # aiosmtpd's words, remapped in push


async def read_data(
    reader: asyncio.StreamReader, *, size_limit: int | None, line_limit: int
) -> tuple[bytearray, str | None] | None:
    """The mail of one DATA command from ``reader``, as (content, refusal).

    RFC 5321 4.1.1.4 / 4.5.2: lines end at CRLF only (a bare LF or CR is data), the mail
    ends at a line that is a lone ".", and one leading "." is removed from every other
    line. A mail over ``size_limit`` bytes, holding a NUL byte or with a line over
    ``line_limit`` bytes is still read to its end (RFC 5321 4.2.5: the reply waits for that)
    but not kept: the refusal is the reply (aiosmtpd's wording for size and line length). When
    more than one applies, too big comes first, then NUL, then the long line. None when the
    connection ended first. Nothing after the end is read from ``reader`` (the client's
    next command stays).

    The mail is taken in blocks up to its end marker, searched for in C by
    ``StreamReader.readuntil``, not line by line: a line-by-line loop cost ~9 % of the
    proxy's CPU for a 4 KB mail (80 reads), and far more for a 25 MB one.
    """
    content = bytearray()
    refusal: str | None = None
    received = 0
    # The line in progress (bytes since the last CRLF, a CR at the end included), to find
    # an overlong line across blocks, and whether the last block ended in CR.
    partial = 0
    after_cr = False

    def too_long(block: bytes) -> bool:
        nonlocal partial, after_cr
        start, over = 0, False
        if after_cr and block[:1] == b"\n":
            # The CRLF was split between two blocks: the line ended there.
            over = partial + 1 > line_limit
            partial, start = 0, 1
        first = block.find(b"\r\n", start)
        if first < 0:
            partial += len(block) - start
        else:
            over = over or partial + first - start + 2 > line_limit
            if len(block) - first - 2 > line_limit:
                # Room for a whole overlong line inside the block: measure them all.
                rest = block[first + 2 :].split(b"\r\n")[:-1]
                over = over or any(len(line) + 2 > line_limit for line in rest)
            partial = len(block) - block.rfind(b"\r\n") - 2
        after_cr = block.endswith(b"\r")
        return over or partial > line_limit

    def keep(block: bytes) -> None:
        nonlocal content, refusal, received
        received += len(block)
        if size_limit and received > size_limit:
            # Too big outranks a long line seen before: the mail is refused for its size.
            refusal = "552 Error: Too much mail data"
        elif refusal in (None, _TOO_LONG) and b"\x00" in block:
            refusal = S554_NUL
        elif refusal is None and too_long(block):
            refusal = _TOO_LONG
        if refusal is None:
            content += block
        elif content:
            content = bytearray()  # drop what we have (memory); read on to the end

    try:
        # The start: the DATA command's own CRLF ends the line before the mail, so the mail
        # may end at once (".<CRLF>") or after a few bytes that readuntil below would take
        # without seeing the end marker they begin. Until no end marker can have begun in
        # the last bytes read, just enough is read to tell (one read for almost every mail;
        # a line at a time for a mail of very short lines, as a line-by-line reader would).
        pending, virtual = b"\r\n", 2  # pending[:virtual] is that CRLF, not mail
        while True:
            # How much of an end marker the last bytes read may already be (0: none).
            begun = next(
                (j for j in range(min(4, len(pending)), 0, -1) if pending.endswith(_MARK[:j])), 0
            )
            if not begun:
                keep(pending[virtual:])
                break
            if begun == 1:
                # A CR, which only an LF could go on: read to the next LF.
                try:
                    more = await reader.readuntil(b"\n")
                except asyncio.LimitOverrunError as exc:
                    more = await reader.readexactly(exc.consumed)
            else:
                more = await reader.readexactly(len(_MARK) - begun)
                if more == _MARK[begun:]:
                    # The end: what came before it, with the CRLF ending the last line.
                    keep(pending[virtual : len(pending) - begun + 2])
                    return _unstuffed(content, refusal)
            pending += more
            if len(pending) > 8:
                # Only the last 4 bytes can still begin an end marker.
                keep(pending[virtual:-4])
                pending, virtual = pending[-4:], 0
        while True:
            try:
                block = await reader.readuntil(_MARK)
            except asyncio.LimitOverrunError as exc:
                # No end within the reader's limit: take what cannot be part of the end
                # marker (readuntil leaves its last bytes in the buffer) and look again.
                keep(await reader.readexactly(exc.consumed))
                continue
            keep(block[:-3])  # up to the CRLF that ends the last line
            break
    except asyncio.IncompleteReadError:
        return None
    return _unstuffed(content, refusal)


def _unstuffed(content: bytearray, refusal: str | None) -> tuple[bytearray, str | None]:
    """One leading "." off every line (the first one, then each after a CRLF)."""
    if refusal is None:
        if content.startswith(b"."):
            del content[0]
        if b"\r\n." in content:
            content = content.replace(b"\r\n.", b"\r\n")
    return content, refusal


class ProxySession(Session):
    """aiosmtpd's per-connection session plus our transaction state."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.rt_id = f"{CONNECTION_PREFIX}{next(_conn_ids):x}"
        # The upstream connection holding this client's open transaction, if any.
        self.rt_upstream: Upstream | None = None
        # Recipients of the open transaction the upstream refused at RCPT, with its reply.
        self.rt_refused: dict[str, str] = {}


@dataclasses.dataclass
class _InitPlan:
    """What aiosmtpd's SMTP.__init__ computes that is the same for every connection."""

    shared: dict[str, Any]
    auth: list[tuple[str, str | None, Any]]  # mechanism, our method name or None, handler's
    smtp: list[tuple[str, str]]  # command, method name


class ProxySMTP(NullSenderSMTP):
    """aiosmtpd's SMTP with the null reverse-path, enhanced status codes on its own
    replies, clean teardown, and a cheaper start per connection.

    aiosmtpd's ``SMTP.__init__`` runs ``inspect.getmembers`` and ``dir`` over itself and the
    handler on every connection to find hooks and AUTH mechanisms, though the answer never
    changes. The first connection runs it as written and its result is kept (a plan); later
    connections build the protocol state and bind the same methods from the plan. The plan
    is checked once against a stock instance: if a future aiosmtpd sets attributes we do not
    know, the stock ``__init__`` is used for every connection.
    """

    handler: ProxyHandler

    def __init__(self, handler: ProxyHandler, **kwargs: Any) -> None:
        plan = handler.smtp_plan
        if not plan:
            super().__init__(handler, **kwargs)
            if plan is None:
                handler.smtp_plan = self._make_plan(handler, kwargs)
        else:
            assert isinstance(plan, _InitPlan)
            self._init_from_plan(plan)
        self.handler = handler

    def _init_from_plan(self, plan: _InitPlan) -> None:
        loop = plan.shared["loop"]
        asyncio.StreamReaderProtocol.__init__(
            self,
            asyncio.StreamReader(loop=loop, limit=self.line_length_limit),
            client_connected_cb=self._cb_client_connected,
            loop=loop,
        )
        self.__dict__.update(plan.shared)
        self.command_size_limits.clear()
        self._auth_methods = {
            name: _AuthMechAttr(getattr(self, own) if own else theirs, own is not None)
            for name, own, theirs in plan.auth
        }
        self._smtp_methods = {name: getattr(self, attr) for name, attr in plan.smtp}

    def _make_plan(self, handler: ProxyHandler, kwargs: dict[str, Any]) -> _InitPlan | bool:
        # Attributes holding per-connection objects are rebuilt each time, never shared.
        bare = asyncio.StreamReaderProtocol(
            asyncio.StreamReader(loop=self.loop), client_connected_cb=lambda r, w: None
        )
        fresh = set(vars(bare))
        rebuilt = {"_auth_methods", "_smtp_methods", "handler"}
        auth = []
        for name, attr in self._auth_methods.items():
            method = attr.method
            own = getattr(method, "__name__", None) if attr.is_builtin else None
            auth.append((name, own, None if attr.is_builtin else method))
        plan = _InitPlan(
            shared={k: v for k, v in vars(self).items() if k not in fresh | rebuilt},
            auth=auth,
            smtp=[(name, method.__name__) for name, method in self._smtp_methods.items()],
        )
        # Check the plan against the stock constructor once.
        stock = SMTP(handler, loop=self.loop, **kwargs)
        probe = ProxySMTP.__new__(ProxySMTP)
        probe._init_from_plan(plan)
        same = set(vars(probe)) == set(vars(stock)) and set(probe._auth_methods) == set(
            stock._auth_methods
        )
        if not same:
            log.warning("aiosmtpd's SMTP changed; using its own __init__ per connection")
            return False
        return plan

    session: ProxySession | None
    # RFC 5321 limits lines to 1000 octets, but campaign engines send HTML with far longer
    # lines and Postfix accepts them; refusing them here would bounce real mail, so they
    # are passed through unchanged (bounded, so memory stays bounded) and the upstream
    # applies its own policy.
    line_length_limit = 64 * 1024

    # True while aiosmtpd answers HELO or EHLO: its 250 lines there are the greeting and the
    # extension list, which RFC 2034 leaves without enhanced codes (see push).
    helo_reply = False

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
        """DATA, received into one growing buffer instead of a list of lines.

        aiosmtpd keeps every line of the mail as its own bytearray and joins them at the
        end, so a 25 MB mail of short lines briefly costs about three times its size. This
        reads it the same way (lines end at CRLF only, the end is a lone ".<CRLF>", a
        leading "." is removed, the size and line limits answered only after the end) into
        a single bytearray, handed to handle_DATA as ``envelope.original_content``.
        """
        if self._decode_data or "DATA" not in self._handle_hooks:
            await super().smtp_DATA(arg)
            return
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            received = await read_data(
                self._reader, size_limit=self.data_size_limit, line_limit=self.line_length_limit
            )
        except asyncio.CancelledError:
            log.info("connection lost during DATA")
            self._writer.close()
            raise
        if received is None:
            # The connection went away before the end of the mail: nothing to answer.
            return
        content, refusal = received
        if refusal is not None:
            assert self.session is not None
            log.info("[%s] mail refused at the end of DATA: %s", self.session.rt_id, refusal)
            metrics.PROXY_MAILS.labels("rejected").inc()
            await self.push(refusal)
            self._set_post_data_state()
            # The upstream transaction opened at MAIL ends too (RSET): nothing of this mail
            # goes anywhere, and the next MAIL on this connection starts clean.
            await self.handler.end_transaction(self.session)
            return
        # A bytearray where aiosmtpd puts bytes: ours is the only handler, and it reads the
        # mail through the buffer protocol, so the received mail is never copied to bytes.
        self.envelope.content = self.envelope.original_content = content  # type: ignore[assignment]
        del content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)

    def _create_session(self) -> ProxySession:
        return ProxySession(self.loop)

    def connection_made(self, transport: Any) -> None:
        # aiosmtpd calls this again after STARTTLS and starts a new session (RFC 3207 4.2);
        # a transaction opened upstream before it would be lost with the old session, so
        # its connection is closed here (it is half open: never pooled).
        old = getattr(self, "session", None)
        if old is not None and old.rt_upstream is not None:
            old.rt_upstream.close()
            old.rt_upstream = None
        super().connection_made(transport)
        self.handler.connections.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        self.handler.connections.discard(self)
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

    # aiosmtpd reads the credentials and hands them to our authenticator, which can only
    # answer synchronously; the password is checked here, awaiting a thread (ClientAuth).
    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        return await settle_auth(await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        return await settle_auth(await super().auth_LOGIN(_, args))


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
        # Set by ProxyServer.start once the loop's store connection does not wait.
        self.store_inline = False
        self.connections: set[ProxySMTP] = set()
        self.in_flight = 0
        # Set at shutdown: open transactions finish, new ones are turned away with 421.
        self.stopping = False
        # ProxySMTP's cached constructor work: None until the first connection, False when
        # the running aiosmtpd does not match what the cache expects.
        self.smtp_plan: _InitPlan | bool | None = None

    async def _in_thread(self, func: Callable[..., T], *args: Any) -> T:
        """Run ``func`` off the event loop (it may wait or take long)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, func, *args)

    async def _store_call(self, func: Callable[..., T], *args: Any) -> T:
        """A store call: on the event loop when it need not wait, else in a thread.

        Store waits must never stall other clients, but on SQLite most calls do not wait: the
        loop's thread never waits (``Store.prepare_for_event_loop``), so a call that would
        raises StoreWouldWait having written nothing, and goes to a thread to wait there.
        A store whose every call may wait (PostgreSQL) always goes to a thread. Measured
        against always using a thread (2 workers): 10 sessions 614 -> 764 mails/s, machine
        CPU 2.73 -> 2.13 ms a mail; in a thread each store trip had taken ~5 ms (p99 55-80
        ms, SQLite's busy-handler sleeps) for ~0.25 ms of work.
        """
        if self.store_inline:
            try:
                return func(*args)
            except StoreWouldWait:
                pass  # another writer holds the store: wait for it in a thread
        return await self._in_thread(func, *args)

    async def _end(self, session: ProxySession, *, reset: bool = True) -> None:
        upstream = session.rt_upstream
        session.rt_upstream = None
        if upstream is not None:
            await self.pool.end(upstream, reset=reset)

    async def end_transaction(self, session: ProxySession) -> None:
        """End the client's open transaction: RSET upstream, refused recipients forgotten."""
        await self._end(session)
        session.rt_refused = {}

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
            if _CONTROL.search(address):
                return S501_SENDER
            if not _is_utf8(address):
                return S553_SENDER_UTF8
            utf8 = "SMTPUTF8" in mail_options
            if not utf8 and not address.isascii():
                return S553_NEEDS_UTF8
            # A transaction left open (EHLO in the middle resets aiosmtpd's envelope) ends here.
            await self._end(session)
            session.rt_refused = {}
            options = [o for o in mail_options if o == "BODY=8BITMIME" or o == "SMTPUTF8"]
            try:
                session.rt_upstream = await self.pool.begin(address, options, utf8=utf8)
            except RelayError as exc:
                log.info("[%s] MAIL FROM:<%s> not taken upstream: %s", cid, address, exc.reply)
                return exc.reply
            envelope.mail_from = NULL_SENDER if null else address
            envelope.mail_options.extend(mail_options)
            return S250_MAIL_OK
        except Exception:
            log.exception("[%s] error in MAIL", cid)
            await self._end(session)
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
            if _CONTROL.search(address):
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
            await self._end(session)
            return S451_INTERNAL

    async def handle_RSET(self, server: SMTP, session: ProxySession, envelope: Envelope) -> str:
        await self._end(session)
        session.rt_refused = {}
        return "250 2.0.0 OK"

    async def handle_QUIT(self, server: SMTP, session: ProxySession, envelope: Envelope) -> str:
        await self._end(session)
        return "221 2.0.0 Bye"

    async def handle_DATA(self, server: SMTP, session: ProxySession, envelope: Envelope) -> str:
        upstream = session.rt_upstream
        session.rt_upstream = None
        refused = session.rt_refused
        session.rt_refused = {}
        # Once the client sent the whole mail, stamping, recording and relaying run to the
        # end even if the client goes away meanwhile (aiosmtpd cancels this hook then):
        # otherwise a record could stay "relaying" and an upstream connection be left
        # mid-command. Shutdown waits for these (in_flight).
        self.in_flight += 1
        task = asyncio.ensure_future(self._handle_mail(session.rt_id, envelope, upstream, refused))
        task.add_done_callback(self._mail_done)
        return await asyncio.shield(task)

    def _mail_done(self, task: asyncio.Future[str]) -> None:
        self.in_flight -= 1

    async def _handle_mail(
        self,
        cid: str,
        envelope: Envelope,
        upstream: Upstream | None,
        refused: dict[str, str],
    ) -> str:
        started = time.monotonic()
        info: dict[str, Any] = {}
        result = "tempfail"
        try:
            if upstream is None:
                reply = S451_NO_TRANSACTION
            else:
                reply, result = await self._deliver(cid, envelope, upstream, refused, info)
        except Exception:
            log.exception("[%s] error in DATA", cid)
            reply, result = S451_INTERNAL, "tempfail"
            if upstream is not None:
                upstream.close()
        elapsed = time.monotonic() - started
        metrics.PROXY_MAILS.labels(result).inc()
        metrics.PROXY_LATENCY.observe(elapsed)
        log.info(
            "[%s] mail message_id=<%s> original=%s campaign=%s step=%s sender=<%s>"
            " recipients=%d suppressed=%d size=%d result=%s reply=%r ms=%.1f",
            cid,
            info.get("message_id", ""),
            f"<{info['original']}>" if info.get("original") else "-",
            info.get("campaign") or "-",
            info.get("step") if info.get("step") is not None else "-",
            reverse_path(envelope),
            len(envelope.rcpt_tos),
            info.get("suppressed", 0),
            len(envelope.original_content or b""),
            result,
            reply.splitlines()[-1],
            elapsed * 1000,
        )
        return reply

    # --- the mail ---------------------------------------------------------------------------
    async def _deliver(
        self,
        cid: str,
        envelope: Envelope,
        upstream: Upstream,
        refused: dict[str, str],
        info: dict[str, Any],
    ) -> tuple[str, str]:
        """Stamp, check suppression, record, relay, settle. Returns (reply, metric result)."""
        data = envelope.original_content or b""
        message_id = mint(self.keyring, self.config.domain)
        info["message_id"] = message_id
        try:
            # Reading a header block is quick for ordinary mail, but a client may send
            # megabytes of header; that is read off the event loop so other clients are
            # not held up meanwhile. Small mail skips the hop to a thread.
            if len(data) > _STAMP_INLINE_BYTES:
                stamped = await self._in_thread(stamp, data, message_id)
            else:
                stamped = stamp(data, message_id)
        except MetadataError as exc:
            await self.pool.end(upstream, reset=True)
            return f"550 5.6.0 {exc}", "rejected"
        info.update(original=stamped.original_message_id, campaign=stamped.campaign)
        info["step"] = stamped.step
        envelope_rcpts = list(dict.fromkeys(normalize_address(r) for r in envelope.rcpt_tos))

        sender = normalize_address(reverse_path(envelope))

        def make_record(blocked: dict[str, Enrollment]) -> OutboundRecord:
            return OutboundRecord(
                message_id=message_id,
                original_message_id=stamped.original_message_id,
                campaign=stamped.campaign,
                step=stamped.step,
                sender=sender,
                from_address=stamped.from_address,
                subject=stamped.subject,
                size=stamped.size,
                status="relaying",
                recipients=build_recipients(stamped, envelope_rcpts, blocked, refused),
                created_at=time.time(),
            )

        # One trip to a store thread in the common case: read the recipients' enrollments
        # and, when nobody is blocked, record the mail in the same call.
        try:
            blocked, pk = await self._store_call(
                self._record_unless_blocked, stamped.campaign, envelope_rcpts, make_record
            )
        except _EnrollmentsUnreadable as exc:
            log.error("[%s] cannot read enrollments", cid, exc_info=exc.__cause__)
            metrics.STORE_ERRORS.labels("proxy").inc()
            await self.pool.end(upstream, reset=True)
            return S451_STORE, "tempfail"
        except Exception:
            log.exception("[%s] cannot record the mail; not relaying it", cid)
            metrics.STORE_ERRORS.labels("proxy").inc()
            await self.pool.end(upstream, reset=True)
            return S451_STORE, "tempfail"
        send_to = [r for r in envelope.rcpt_tos if normalize_address(r) not in blocked]
        info["suppressed"] = len(envelope.rcpt_tos) - len(send_to)

        if pk is None:
            pk_or_reply = await self._record_with_suppressions(
                cid, envelope, upstream, make_record(blocked), blocked, send_to
            )
            if isinstance(pk_or_reply, tuple):
                return pk_or_reply
            pk = pk_or_reply

        try:
            upstream_reply = await upstream.data(stamped.head, stamped.source, stamped.body_start)
        except RelayError as exc:
            if exc.broken:
                upstream.close()
            else:
                # A refusal after the dot ends the transaction, but one of the DATA command
                # itself (before 354, e.g. Postfix's smtpd_data_restrictions) leaves it
                # open: without RSET the next client's MAIL would get "nested MAIL".
                await self.pool.end(upstream, reset=True)
            # A refusal is an answer: the mail did not go. A lost connection or a timeout is
            # none: the upstream may have queued the mail before we heard it (RFC 1047), so
            # the record stays in matching and suppression as "unconfirmed"; the client
            # still gets a 4xx and sends it again (a duplicate at worst, never a loss).
            await self._settle(cid, pk, UNCONFIRMED if exc.broken else FAILED, exc.reply)
            result = "tempfail" if exc.broken else "upstream_refused"
            return exc.reply, result
        self.pool.release(upstream)
        await self._settle(cid, pk, "relayed", upstream_reply)
        if blocked:
            metrics.PROXY_RECIPIENTS_SUPPRESSED.inc(info["suppressed"])
        said = upstream_reply.splitlines()[-1][4:]
        return _one_line(f"250 2.0.0 <{message_id}> relayed: {said}"), "relayed"

    def _record_unless_blocked(
        self,
        campaign: str | None,
        recipients: list[str],
        make_record: Callable[[dict[str, Enrollment]], OutboundRecord],
    ) -> tuple[dict[str, Enrollment], int | None]:
        """In a store thread: the blocked recipients, and the record's key when there are
        none (None when some are: the caller records the mail once it knows who gets it)."""
        blocked: dict[str, Enrollment] = {}
        if campaign is not None:
            try:
                blocked = self.store.blocked_enrollments(campaign, recipients)
            except StoreWouldWait:
                raise  # not unreadable: the call is tried again in a thread
            except Exception as exc:
                raise _EnrollmentsUnreadable from exc
        if blocked:
            return blocked, None
        return blocked, self.store.record_outbound(make_record(blocked))

    async def _record_with_suppressions(
        self,
        cid: str,
        envelope: Envelope,
        upstream: Upstream,
        record: OutboundRecord,
        blocked: dict[str, Enrollment],
        send_to: list[str],
    ) -> int | tuple[str, str]:
        """Some recipients may not get the mail: record it without them and start the
        upstream transaction again, or record the suppression when nobody is left.
        Returns the record's key, or (reply, metric result) when the mail ends here."""
        if not send_to:
            # Nobody left: nothing goes upstream; the suppression itself is recorded.
            await self.pool.end(upstream, reset=True)
            reply = _suppressed_reply(record.campaign, blocked)
            suppressed = dataclasses.replace(record, status="suppressed", upstream_reply=reply)
            try:
                await self._store_call(self.store.record_outbound, suppressed)
            except Exception:
                log.exception("[%s] cannot record the suppression", cid)
                metrics.STORE_ERRORS.labels("proxy").inc()
                return S451_STORE, "tempfail"
            metrics.PROXY_RECIPIENTS_SUPPRESSED.inc(len(envelope.rcpt_tos))
            return _one_line(reply), "suppressed"
        # The upstream already holds every RCPT; start its transaction again with only the
        # recipients that may get the mail. Nothing was sent, so this is safe, and any
        # different answer the second time makes the whole mail a 451.
        try:
            await self._replay(upstream, envelope, send_to)
        except RelayError as exc:
            log.warning("[%s] replay without suppressed recipients failed: %s", cid, exc)
            if exc.broken:
                upstream.close()
            else:
                await self.pool.end(upstream, reset=True)
            return S451_REPLAY, "tempfail"
        try:
            return await self._store_call(self.store.record_outbound, record)
        except Exception:
            log.exception("[%s] cannot record the mail; not relaying it", cid)
            metrics.STORE_ERRORS.labels("proxy").inc()
            await self.pool.end(upstream, reset=True)
            return S451_STORE, "tempfail"

    async def _replay(self, upstream: Upstream, envelope: Envelope, send_to: Iterable[str]) -> None:
        if not await upstream.rset():
            raise RelayError("451 4.4.2 upstream lost at RSET", broken=True)
        utf8 = bool(envelope.smtp_utf8)
        options = [o for o in envelope.mail_options if o in ("BODY=8BITMIME", "SMTPUTF8")]
        if not upstream.supports("8bitmime"):
            options = [o for o in options if o != "BODY=8BITMIME"]
        await upstream.mail(reverse_path(envelope), options, utf8=utf8)
        for recipient in send_to:
            await upstream.rcpt(recipient, utf8=utf8)

    async def _settle(self, cid: str, pk: int, status: str, reply: str) -> None:
        """Mark the record relayed or failed. The record exists either way, so a failure
        here is logged, not turned into a different answer to the client."""
        try:
            await self._store_call(self.store.set_message_status, pk, status, _one_line(reply))
        except Exception:
            log.exception("[%s] cannot mark mail %d %s", cid, pk, status)
            metrics.STORE_ERRORS.labels("proxy").inc()


def _is_utf8(text: str) -> bool:
    """False when ``text`` holds bytes that were not UTF-8 (aiosmtpd's surrogate escapes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _EnrollmentsUnreadable(Exception):
    """The store could not say which recipients are blocked (the cause is chained)."""


def _suppressed_reply(campaign: str | None, blocked: dict[str, Enrollment]) -> str:
    """The 550 for a mail none of whose recipients may get it: a stopped campaign, or each
    recipient's own state."""
    reasons = [e.reason or "" for e in blocked.values()]
    if reasons and all(r.startswith(CAMPAIGN_STOPPED) for r in reasons):
        why = reasons[0][len(CAMPAIGN_STOPPED) :].lstrip(": ")
        return f"550 5.7.1 not sent: campaign {campaign} is stopped" + (f" ({why})" if why else "")
    listed = "; ".join(
        f"{a} {e.status}" + (f" ({e.reason})" if e.reason else "")
        for a, e in sorted(blocked.items())
    )
    return f"550 5.7.1 not sent: campaign {campaign} is over for {listed}"


def _one_line(reply: str) -> str:
    return " ".join(line[4:] if i else line for i, line in enumerate(reply.splitlines()))[:500]


class ProxyServer:
    """The listening proxy: start, serve, and stop gracefully."""

    def __init__(
        self,
        config: Config,
        *,
        store: Store,
        keyring: Keyring,
        listen: str | None = None,
    ) -> None:
        self.config = config
        self.host, self.port = parse_hostport(listen or config.proxy_listen, setting="listen")
        check_bind(config, self.host)
        self._smtp_options = self._client_security(config)
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=4, thread_name_prefix="replytrack-store"
        )
        self.pool = UpstreamPool(UpstreamSettings.from_config(config))
        self.handler = ProxyHandler(
            config=config, store=store, keyring=keyring, pool=self.pool, executor=self.executor
        )
        self._servers: list[asyncio.base_events.Server] = []
        self._upkeep: asyncio.Future[None] | None = None
        self._sweeps: asyncio.Future[None] | None = None

    @staticmethod
    def _client_security(config: Config) -> dict[str, Any]:
        """STARTTLS and SMTP AUTH offered to clients, from ``proxy.tls_*`` / ``auth_file``."""
        options: dict[str, Any] = {}
        if bool(config.proxy_tls_cert) != bool(config.proxy_tls_key):
            raise ConfigError("proxy.tls_cert and proxy.tls_key must be given together")
        if config.proxy_tls_cert:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            try:
                context.load_cert_chain(config.proxy_tls_cert, config.proxy_tls_key)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"proxy.tls_cert / proxy.tls_key: {exc}") from None
            options["tls_context"] = context
        if config.proxy_auth_file:
            if not config.proxy_tls_cert:
                raise ConfigError(
                    "proxy.auth_file needs proxy.tls_cert and proxy.tls_key: AUTH is only"
                    " offered over TLS"
                )
            users = PasswordFile(load_auth_file(config.proxy_auth_file))
            authenticate = ClientAuth(users, AuthLimiter.from_config(config))

            options.update(
                authenticator=authenticate,
                auth_require_tls=True,
                # Clients on loopback or the allowlist need no AUTH; the rest are refused at
                # MAIL unless they authenticated (see ProxyHandler.handle_MAIL).
                auth_required=False,
                auth_exclude_mechanism=["CRAM-MD5"],
                # A client gets a few tries per connection (and per address, in
                # ClientAuth). aiosmtpd counts per connection, so every other command is
                # left unlimited.
                command_call_limit={"AUTH": AUTH_TRIES, "*": sys.maxsize},
            )
        return options

    def _protocol(self) -> ProxySMTP:
        return ProxySMTP(
            self.handler,
            hostname=self.config.hostname,
            data_size_limit=self.config.proxy_max_size,
            enable_SMTPUTF8=True,
            ident="replytrack",
            timeout=max(self.config.proxy_timeout * 5, 300),
            **self._smtp_options,
        )

    async def start(self, sockets: Sequence[socket.socket] | None = None) -> None:
        """Bind and start accepting; ``self.port`` is the bound port (for port 0).

        With ``sockets`` (listening sockets a supervisor bound) it accepts on those instead.
        """
        loop = asyncio.get_running_loop()
        store = self.handler.store
        if self.config.proxy_store_inline:
            # Store calls on this loop's thread, where the store can make them never wait
            # (see ProxyHandler._store_call); otherwise each goes to a thread.
            self.handler.store_inline = store.prepare_for_event_loop()
        if store.upkeep_interval is not None:
            self._upkeep = asyncio.ensure_future(self._upkeep_every(store.upkeep_interval))
        if sockets:
            for sock in sockets:
                self._servers.append(await loop.create_server(self._protocol, sock=sock))
        else:
            self._servers.append(
                await loop.create_server(
                    self._protocol, self.host, self.port, backlog=1024, reuse_address=True
                )
            )
        self.port = self._servers[0].sockets[0].getsockname()[1]
        self._sweeps = asyncio.ensure_future(self._sweep_every(SWEEP_SECONDS))
        log.info(
            "proxy listening on %s:%d, relaying to %s",
            self.host,
            self.port,
            self.config.proxy_upstream,
        )

    async def _upkeep_every(self, seconds: float) -> None:
        store, loop = self.handler.store, asyncio.get_running_loop()
        while True:
            await asyncio.sleep(seconds)
            try:
                await loop.run_in_executor(self.executor, store.upkeep)
            except Exception as exc:
                log.warning("store upkeep failed: %s", exc)

    async def sweep_relaying(self) -> int:
        """Mark mails left ``relaying`` past ``proxy.unconfirmed_after`` as ``unconfirmed``.

        Such a mail lost its proxy between recording and settling (a kill, or the store
        failing when the upstream answered); it is already enrolled and matched, so this only
        says honestly that the upstream may have taken it.
        """
        cutoff = time.time() - self.config.proxy_unconfirmed_after
        loop = asyncio.get_running_loop()
        marked = await loop.run_in_executor(
            self.executor, self.handler.store.reconcile_relaying, cutoff
        )
        if marked:
            log.warning(
                "marked %d mail(s) unconfirmed: still relaying %.0f s after they were recorded,"
                " so the upstream may have taken them (see replytrack messages --status"
                " unconfirmed)",
                marked,
                self.config.proxy_unconfirmed_after,
            )
        return marked

    async def _sweep_every(self, seconds: float) -> None:
        # The first sweep runs at start: what a killed proxy left behind is settled then.
        while True:
            try:
                await self.sweep_relaying()
            except Exception as exc:
                log.warning("cannot sweep mails left relaying: %s", exc)
            await asyncio.sleep(seconds)

    def busy(self) -> bool:
        """Whether any client is in the middle of a transaction."""
        if self.handler.in_flight:
            return True
        return any(
            c.session is not None and c.session.rt_upstream is not None
            for c in self.handler.connections
        )

    async def stop(self, grace: float = 30.0) -> None:
        """Stop accepting, let open transactions finish (at most ``grace`` s), close."""
        self.handler.stopping = True
        for server in self._servers:
            server.close()
        deadline = time.monotonic() + grace
        while self.busy() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.busy():
            log.warning("stopping with transactions still open after %.0f s", grace)
        for connection in list(self.handler.connections):
            if connection.transport is not None:
                connection.transport.close()
        await asyncio.sleep(0)
        await self.pool.close()
        for task in (self._upkeep, self._sweeps):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self.executor.shutdown(wait=True)
        auth = self._smtp_options.get("authenticator")
        if isinstance(auth, ClientAuth):
            auth.close()


async def cancel_other_tasks() -> None:
    """Cancel every task of the running loop but this one, and wait for them to end."""
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)


class ThreadedProxy:
    """A proxy on its own event loop in a thread (tests, benchmarks, embedding)."""

    def __init__(self, config: Config, *, store: Store, keyring: Keyring) -> None:
        from replytrack.proxy.daemon import loop_factory

        self.server = ProxyServer(config, store=store, keyring=keyring)
        # The loop the daemon would run (uvloop unless proxy.event_loop says asyncio).
        self.loop = loop_factory(config)()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    @property
    def port(self) -> int:
        """The bound port."""
        return self.server.port

    def start(self) -> ThreadedProxy:
        """Start the loop and the server; returns self."""
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(timeout=10)
        return self

    def stop(self, grace: float = 5.0) -> None:
        """Stop the server and the loop (a second call does nothing)."""
        if self.loop.is_closed():
            return
        future = asyncio.run_coroutine_threadsafe(self.server.stop(grace), self.loop)
        future.result(timeout=grace + 10)
        # Sessions of clients that never hung up end here, not as "Task was destroyed".
        asyncio.run_coroutine_threadsafe(cancel_other_tasks(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()

    def __enter__(self) -> ThreadedProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
