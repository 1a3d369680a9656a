"""The upstream side of the proxy: a pool of aiosmtplib connections, used in lockstep.

A client transaction borrows one upstream connection at MAIL FROM and gives it back when
the transaction ends, so every MAIL, RCPT and DATA reply the client sees is the upstream's
own answer to the same command. Connections are kept open between transactions (no new TCP
connection, TLS handshake and EHLO per mail); one that died while idle is noticed at the
next MAIL and replaced, which is safe because nothing of the mail was sent yet.

Every failure becomes a :class:`RelayError` carrying the complete reply the client must get:
the upstream's own code and text when it refused, ``451 4.4.x`` when it could not be reached
or stopped answering, ``451 4.7.0`` when required TLS or AUTH could not be had.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import ssl
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiosmtplib
from aiosmtplib.protocol import SMTPProtocol

from replytrack.config import Config, parse_hostport
from replytrack.proxy.replies import CONTROL_CHARS, ENHANCED_CODE, ProxyError

log = logging.getLogger(__name__)

# How long an idle upstream connection is kept. Postfix's own connection cache keeps them
# for seconds, not minutes; an upstream's idle timeout is usually 300 s, far above this.
IDLE_SECONDS = 20.0
# Every line ending the wire may carry: CRLF, and a bare LF or a bare CR, which go out as
# CRLF (as aiosmtplib does). Sending them bare would let a client smuggle an end of DATA
# ("<LF>.<LF>", "<CR>.<CR>") past an upstream that reads them as line ends.
_LINE_ENDS = re.compile(rb"\r\n|\n|\r(?!\n)")
_LEADING_DOT = re.compile(rb"(?m)^\.")
# How much of the body is encoded and handed to the transport at a time.
DATA_CHUNK = 256 * 1024
# Writing the message ourselves uses two things aiosmtplib keeps private: the flag that
# makes its protocol keep a reply arriving while we write, and its drain. Without them
# (a future aiosmtplib), the whole message goes through SMTP.data() as one value.
_CAN_STREAM = hasattr(SMTPProtocol, "_drain_helper")


def data_chunks(
    head: bytes, source: bytes | bytearray, body_start: int, *, chunk: int = DATA_CHUNK
) -> Iterator[bytes]:
    """The DATA payload for ``head`` + ``source[body_start:]``, in pieces of about ``chunk``.

    Joined, the pieces are exactly what RFC 5321 transparency asks for: every line end
    (CRLF, bare LF, bare CR) sent as CRLF, a "." added before each line starting with ".",
    a final CRLF if the message lacks one, then the ending ".<CRLF>". The body is cut just
    after an LF, so each piece starts at a line start and no CR/LF pair is split: encoding
    the pieces one by one gives the same bytes as encoding the whole message at once.
    Small pieces are sent together (a 4 KB mail is one write).
    """
    if head and not head.endswith(b"\n"):
        # stamp() always ends the header block with a line end; anything else could put a
        # CR at the end of the head and an LF at the start of the body, encoded apart.
        raise ValueError("the header block must end with a line end")
    pending: list[bytes] = []
    size = 0
    last = b""
    for piece in _line_cut(head, source, body_start, chunk):
        encoded = _transparent(piece)
        if not encoded:
            continue
        last = encoded
        pending.append(encoded)
        size += len(encoded)
        if size >= chunk:
            yield b"".join(pending)
            pending, size = [], 0
    pending.append(b".\r\n" if last.endswith(b"\r\n") else b"\r\n.\r\n")
    yield b"".join(pending)


def _transparent(piece: bytes | memoryview) -> bytes:
    """``piece`` with every line end as CRLF and a "." added before each leading ".".

    Most mail already ends every line with CRLF and has no line starting with "."; a few
    counts in C find that out, so the two rewriting passes run only when they change something.
    """
    data = bytes(piece)
    crlf = data.count(b"\r\n")
    if data.count(b"\n") != crlf or data.count(b"\r") != crlf:
        data = _LINE_ENDS.sub(b"\r\n", data)
    if data.startswith(b".") or b"\n." in data:
        data = _LEADING_DOT.sub(b"..", data)
    return data


def _line_cut(
    head: bytes, source: bytes | bytearray, body_start: int, chunk: int
) -> Iterator[bytes | memoryview]:
    """``head``, then the body in views of about ``chunk`` bytes, each ending after an LF."""
    if head:
        yield head
    view = memoryview(source)
    start, end = body_start, len(source)
    while start < end:
        stop = min(start + chunk, end)
        if stop < end:
            cut = source.rfind(b"\n", start, stop)
            if cut < 0:
                # A line longer than a piece goes out whole.
                cut = source.find(b"\n", stop, end)
            stop = end if cut < 0 else cut + 1
        yield view[start:stop]
        start = stop


def format_reply(code: int, message: str) -> str:
    """An upstream reply, made safe to pass on: one or more ``code[- ]text`` lines.

    Control characters are dropped (an upstream must not be able to inject lines into our
    client's stream), and an enhanced status code is added when the upstream gave none.
    """
    lines = [CONTROL_CHARS.sub("", line)[:400] for line in message.splitlines()][:20] or [""]
    if not ENHANCED_CODE.match(lines[0]) and code // 100 in (2, 4, 5):
        lines[0] = f"{code // 100}.0.0 {lines[0]}".rstrip()
    last = len(lines) - 1
    return "\r\n".join(f"{code}{' ' if i == last else '-'}{line}" for i, line in enumerate(lines))


class RelayError(ProxyError):
    """The upstream did not take a command; ``reply`` is what the client is told."""

    def __init__(self, reply: str, *, broken: bool = False) -> None:
        super().__init__(reply)
        # The connection is unusable after this (lost, timed out, TLS or AUTH failed).
        self.broken = broken

    @property
    def code(self) -> int:
        """The SMTP code of the reply."""
        return int(self.reply[:3])


def _translate(exc: BaseException, what: str) -> RelayError:
    """Map an aiosmtplib (or socket) failure to the reply the client gets."""
    # Order matters: timeouts and disconnects are OSErrors too (TimeoutError,
    # ConnectionError), and only a failed connect means "unreachable".
    if isinstance(exc, aiosmtplib.SMTPConnectError) and not isinstance(
        exc, aiosmtplib.SMTPResponseException
    ):
        return RelayError(f"451 4.4.1 upstream unreachable ({what})", broken=True)
    if isinstance(exc, TimeoutError):
        return RelayError(f"451 4.4.2 upstream timed out ({what})", broken=True)
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected | ConnectionError):
        return RelayError(f"451 4.4.2 upstream closed the connection ({what})", broken=True)
    if isinstance(exc, aiosmtplib.SMTPConnectError | OSError):
        return RelayError(f"451 4.4.1 upstream unreachable ({what})", broken=True)
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return RelayError("451 4.7.0 upstream refused our AUTH credentials", broken=True)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        # 421 means the upstream is closing the connection, whatever command it answered.
        return RelayError(format_reply(exc.code, exc.message), broken=exc.code == 421)
    if isinstance(exc, aiosmtplib.SMTPException):
        return RelayError(f"451 4.7.0 upstream: {exc.message}", broken=True)
    return RelayError(f"451 4.3.0 relay failed ({what}: {type(exc).__name__})", broken=True)


@dataclass
class UpstreamSettings:
    """How to reach the upstream; built once from the configuration."""

    host: str
    port: int
    local_hostname: str
    timeout: float
    tls: str = "none"  # none | starttls | tls
    tls_context: ssl.SSLContext | None = None
    username: str | None = None
    password: str | None = None
    pool_size: int = 32

    @classmethod
    def from_config(cls, config: Config) -> UpstreamSettings:
        """Settings from ``proxy_upstream*``; reads the password file if one is named."""
        host, port = parse_hostport(config.proxy_upstream, setting="proxy.upstream")
        context: ssl.SSLContext | None = None
        if config.proxy_upstream_tls != "none":
            context = ssl.create_default_context(cafile=config.proxy_upstream_ca_file or None)
            if not config.proxy_upstream_tls_verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
        password = config.proxy_upstream_password or None
        if config.proxy_upstream_password_file:
            password = Path(config.proxy_upstream_password_file).read_text().strip()
        return cls(
            host=host,
            port=port,
            local_hostname=config.hostname,
            timeout=config.proxy_timeout,
            tls=config.proxy_upstream_tls,
            tls_context=context,
            username=config.proxy_upstream_user or None,
            password=password,
            pool_size=config.proxy_pool_size,
        )


@dataclass
class Upstream:
    """One connection to the upstream and what we know about it."""

    client: aiosmtplib.SMTP
    reused: bool = False
    idle_since: float = field(default_factory=time.monotonic)
    transactions: int = 0
    # The MAIL FROM that opened the transaction (sender, options sent, SMTPUTF8): replay()
    # opens it again the same way.
    opened_by: tuple[str, tuple[str, ...], bool] | None = None

    def supports(self, extension: str) -> bool:
        """Whether the upstream announced ``extension`` in its EHLO reply."""
        return self.client.supports_extension(extension)

    async def _command(
        self, verb: bytes, arg: bytes, options: list[str], ok: tuple[int, ...]
    ) -> aiosmtplib.SMTPResponse:
        # The address was parsed and checked by the SMTP server side already (no control
        # characters, angle brackets required); aiosmtplib's mail()/rcpt() would parse it
        # again with the email package on every command. execute_command still refuses
        # control characters in what it sends.
        try:
            response = await self.client.execute_command(
                verb, arg, *(o.encode("ascii") for o in options)
            )
        except Exception as exc:
            raise _translate(exc, verb.decode()) from exc
        if response.code not in ok:
            raise RelayError(
                format_reply(response.code, response.message), broken=response.code == 421
            )
        return response

    async def mail(self, sender: str, options: list[str], *, utf8: bool) -> None:
        """MAIL FROM; raises RelayError with the reply for the client."""
        path = b"FROM:<" + sender.encode("utf-8" if utf8 else "ascii") + b">"
        await self._command(b"MAIL", path, options, (250,))
        self.opened_by = (sender, tuple(options), utf8)

    async def replay(self, recipients: Iterable[str]) -> None:
        """Open the transaction again for ``recipients`` only: RSET, the MAIL FROM that
        opened it, then RCPT for each. Raises RelayError (broken when RSET failed)."""
        if self.opened_by is None:
            raise RelayError("451 4.3.0 no upstream transaction to replay")
        sender, options, utf8 = self.opened_by
        if not await self.rset():
            raise RelayError("451 4.4.2 upstream lost at RSET", broken=True)
        await self.mail(sender, list(options), utf8=utf8)
        for recipient in recipients:
            await self.rcpt(recipient, utf8=utf8)

    async def rcpt(self, recipient: str, *, utf8: bool) -> str:
        """RCPT TO; returns the upstream's reply, raises RelayError when refused."""
        path = b"TO:<" + recipient.encode("utf-8" if utf8 else "ascii") + b">"
        response = await self._command(b"RCPT", path, [], (250, 251))
        return format_reply(response.code, response.message)

    async def data(self, head: bytes, source: bytes | bytearray, body_start: int) -> str:
        """DATA with ``head`` + ``source[body_start:]``; returns the upstream's reply.

        The message is encoded and written a piece at a time, waiting for the transport to
        drain between pieces, so at most a piece or two of it exist twice in memory; the
        timeout applies to each wait. Raises RelayError with the reply for the client.
        """
        try:
            if _CAN_STREAM and hasattr(self.client.protocol, "_response_pending"):
                response = await self._stream_data(head, source, body_start)
            else:  # pragma: no cover - only with an aiosmtplib lacking what we use
                response = await self.client.data(head + bytes(memoryview(source)[body_start:]))
        except Exception as exc:
            raise _translate(exc, "DATA") from exc
        self.transactions += 1
        return format_reply(response.code, response.message)

    async def _stream_data(
        self, head: bytes, source: bytes | bytearray, body_start: int
    ) -> aiosmtplib.SMTPResponse:
        client = self.client
        timeout = client.timeout
        try:
            start = await client.execute_command(b"DATA")
            if start.code != 354:
                raise aiosmtplib.SMTPDataError(start.code, start.message)
            protocol = client.protocol
            if protocol is None:
                raise aiosmtplib.SMTPServerDisconnected("Connection lost")
            # A reply the upstream sends before we finish (a refusal, then a close) is kept
            # for read_response below instead of being dropped as unsolicited.
            protocol._response_pending = True
            for piece in data_chunks(head, source, body_start):
                protocol.write(piece)
                if getattr(protocol, "_paused", True):
                    # The transport's buffer is full: wait for it to drain (a task and a
                    # timer, skipped for the usual mail that fits in the socket at once).
                    await asyncio.wait_for(protocol._drain_helper(), timeout)
            response = await protocol.read_response(timeout=timeout)
        except aiosmtplib.SMTPDataError:
            # The upstream refused DATA itself; the connection is fit for the next mail.
            raise
        except BaseException:
            # Lost, timed out or cancelled part way: what was written of the message cannot
            # be taken back, so this connection is done.
            client.close()
            raise
        if response.code != 250:
            raise aiosmtplib.SMTPDataError(response.code, response.message)
        return response

    async def rset(self) -> bool:
        """RSET; False when the connection is not fit for another transaction."""
        try:
            await self.client.rset()
        except Exception:
            return False
        return True

    def close(self) -> None:
        """Drop the connection without QUIT (it is broken or we are in a hurry)."""
        try:
            self.client.close()
        except Exception:  # pragma: no cover - closing a dead transport
            log.debug("closing an upstream connection failed", exc_info=True)


class UpstreamPool:
    """Idle upstream connections, reused across client transactions (LIFO, bounded)."""

    def __init__(self, settings: UpstreamSettings) -> None:
        self.settings = settings
        self._idle: collections.deque[Upstream] = collections.deque()
        self.connects = 0
        self._closed = False

    async def _connect(self) -> Upstream:
        s = self.settings
        client = aiosmtplib.SMTP(
            hostname=s.host,
            port=s.port,
            local_hostname=s.local_hostname,
            timeout=s.timeout,
            use_tls=s.tls == "tls",
            # True makes STARTTLS required: aiosmtplib raises when it is not offered.
            start_tls=s.tls == "starttls",
            tls_context=s.tls_context,
            username=s.username,
            password=s.password,
        )
        try:
            await client.connect()
            if s.username is None:
                # Without AUTH, connect() returns before EHLO; do it now so the pool holds
                # ready connections and extensions are known before MAIL.
                await client.ehlo()
        except aiosmtplib.SMTPAuthenticationError as exc:
            client.close()
            raise _translate(exc, "connect") from exc
        except aiosmtplib.SMTPResponseException as exc:
            # A refusing banner or EHLO says nothing about this mail: the client keeps it.
            client.close()
            text = CONTROL_CHARS.sub("", exc.message)[:200]
            raise RelayError(
                f"451 4.4.1 upstream refused the connection ({exc.code} {text})", broken=True
            ) from exc
        except Exception as exc:
            client.close()
            raise _translate(exc, "connect") from exc
        except BaseException:
            # Cancelled (the client left while we connected): the connection is nobody's.
            client.close()
            raise
        if s.tls != "none" and client.get_transport_info("sslcontext") is None:
            client.close()
            raise RelayError("451 4.7.0 upstream connection is not encrypted", broken=True)
        self.connects += 1
        return Upstream(client=client)

    async def acquire(self) -> Upstream:
        """An idle connection (newest first) or a new one; raises RelayError."""
        now = time.monotonic()
        while self._idle:
            upstream = self._idle.pop()
            if now - upstream.idle_since < IDLE_SECONDS and upstream.client.is_connected:
                upstream.reused = True
                return upstream
            upstream.close()
        return await self._connect()

    def release(self, upstream: Upstream) -> None:
        """Give back a connection whose transaction is over (completed or reset)."""
        if self._closed or not upstream.client.is_connected:
            upstream.close()
            return
        upstream.idle_since = time.monotonic()
        self._idle.append(upstream)
        while len(self._idle) > self.settings.pool_size:
            self._idle.popleft().close()

    async def begin(self, sender: str, options: list[str], *, utf8: bool) -> Upstream:
        """Open a transaction upstream (MAIL FROM) on a pooled or new connection.

        A pooled connection found dead at MAIL is replaced once: nothing of the mail was
        sent, so trying again is safe. Raises RelayError with the reply for the client.
        """
        for attempt in (1, 2):
            upstream = await self.acquire()
            if utf8 and not upstream.supports("smtputf8"):
                self.release(upstream)
                raise RelayError("553 5.6.7 the upstream does not support SMTPUTF8")
            wanted = [o for o in options if self._forwarded(upstream, o)]
            try:
                await upstream.mail(sender, wanted, utf8=utf8)
            except RelayError as exc:
                if exc.broken:
                    upstream.close()
                    if upstream.reused and attempt == 1:
                        log.info("pooled upstream connection was dead (%s); reconnecting", exc)
                        continue
                else:
                    self.release(upstream)
                raise
            except BaseException:
                # Cancelled while MAIL was in flight (the client left): the upstream may yet
                # open the transaction, so the connection is closed, never pooled or leaked.
                upstream.close()
                raise
            return upstream
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _forwarded(upstream: Upstream, option: str) -> bool:
        """Whether a client's MAIL option goes upstream (the one place that decides):
        BODY=8BITMIME when the upstream announced 8BITMIME, and SMTPUTF8 (begin() refused
        the mail already when the upstream lacks it). The rest (SIZE, other BODY values)
        concern the proxy's side only."""
        if option == "BODY=8BITMIME":
            return upstream.supports("8bitmime")
        return option == "SMTPUTF8"

    async def end(self, upstream: Upstream, *, reset: bool) -> None:
        """End a transaction: RSET when it was left open, then back to the pool."""
        if reset and not await upstream.rset():
            upstream.close()
            return
        self.release(upstream)

    async def end_after(self, upstream: Upstream, error: RelayError) -> None:
        """End a transaction after ``error``: a broken connection is closed; a live one is
        reset (a refused command may leave the transaction open) and pooled."""
        if error.broken:
            upstream.close()
        else:
            await self.end(upstream, reset=True)

    async def close(self) -> None:
        """QUIT every idle connection (briefly) and refuse to pool more."""
        self._closed = True
        idle, self._idle = list(self._idle), collections.deque()
        for upstream in idle:
            try:
                await asyncio.wait_for(upstream.client.quit(), timeout=2)
            except Exception:
                upstream.close()
