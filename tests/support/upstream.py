"""Upstream SMTP servers for proxy tests: a recording aiosmtpd server that can misbehave on
request, and Postfix's ``smtp-sink`` with its own fault options.

The recording upstream keeps every transaction exactly as it arrived (envelope, MAIL
options and the raw DATA bytes after de-dot-stuffing), so tests assert on bytes, not on
what the proxy believes it sent.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from replytrack.config import Config
from replytrack.proxy.protocol import NULL_SENDER, NullSenderSMTP, reverse_path
from replytrack.proxy.testing import ThreadedProxy, cancel_other_tasks
from replytrack.store import Store
from replytrack.store.sqlite import SQLiteStore
from replytrack.tokens import Keyring

DOMAIN = "track.example.com"
SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"


@dataclass
class Received:
    """One transaction the upstream accepted."""

    mail_from: str
    mail_options: list[str]
    rcpt_tos: list[str]
    data: bytes
    tls: bool
    auth: str | None


@dataclass
class Faults:
    """What the upstream should do wrong. Replies are complete SMTP reply lines."""

    mail_reply: str | None = None
    # Wait this long before answering MAIL.
    mail_delay: float = 0.0
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    data_reply: str | None = None
    # Refuse the DATA command itself (before 354), leaving the transaction open, as
    # Postfix does with smtpd_data_restrictions.
    data_command_reply: str | None = None
    # Close the connection after reading DATA, without answering.
    drop_after_data: bool = False
    # Wait this long before answering DATA (longer than the proxy's timeout to test it).
    data_delay: float = 0.0
    # Close every connection once it has been idle after a transaction (pool staleness).
    drop_idle: bool = False


class RecordingHandler:
    """aiosmtpd handler that records what arrived and injects the configured faults."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.faults = Faults()
        self.connections = 0
        # Connections the other side (the proxy) closed or dropped.
        self.closed = 0
        self.commands: list[str] = []
        self.lock = threading.Lock()

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list
    ) -> list:
        self.commands.append("EHLO")
        session.host_name = hostname
        return responses

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list
    ) -> str:
        self.commands.append("MAIL")
        if self.faults.mail_delay:
            await asyncio.sleep(self.faults.mail_delay)
        if self.faults.mail_reply:
            return self.faults.mail_reply
        # Like Postfix, take the null reverse-path (only a literal MAIL FROM:<> sets it).
        null = getattr(server, "null_reverse_path", False)
        self.commands[-1] = "MAIL <>" if null else "MAIL"
        envelope.mail_from = NULL_SENDER if null else address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list
    ) -> str:
        self.commands.append("RCPT")
        reply = self.faults.rcpt_replies.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.commands.append("RSET")
        return "250 2.0.0 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.commands.append("DATA")
        if self.faults.drop_after_data:
            assert server.transport is not None
            server.transport.abort()
            return "250 2.0.0 never seen"
        if self.faults.data_delay:
            await asyncio.sleep(self.faults.data_delay)
        if self.faults.data_reply:
            return self.faults.data_reply
        with self.lock:
            self.received.append(
                Received(
                    mail_from=reverse_path(envelope),
                    mail_options=list(envelope.mail_options),
                    rcpt_tos=list(envelope.rcpt_tos),
                    data=bytes(envelope.original_content or b""),
                    tls=server.transport is not None
                    and server.transport.get_extra_info("sslcontext") is not None,
                    auth=session.auth_data.decode()
                    if isinstance(session.auth_data, bytes)
                    else None,
                )
            )
            number = len(self.received)
        if self.faults.drop_idle:
            loop = asyncio.get_running_loop()
            transport = server.transport
            loop.call_later(0.05, lambda: transport and transport.close())
        return f"250 2.0.0 Ok: queued as UP{number}"


class LongLineSMTP(NullSenderSMTP):
    """aiosmtpd accepting long lines and MAIL FROM:<>, like Postfix does (the proxy passes
    them through)."""

    line_length_limit = 64 * 1024

    async def smtp_DATA(self, arg: str) -> None:
        """DATA, or the configured refusal of the command itself (the envelope stays)."""
        faults = getattr(self.event_handler, "faults", None)
        reply = faults.data_command_reply if faults is not None else None
        if reply and self.envelope is not None and self.envelope.rcpt_tos:
            self.event_handler.commands.append("DATA refused")
            await self.push(reply)
            return
        await super().smtp_DATA(arg)

    def connection_lost(self, error: Exception | None) -> None:
        handler = self.event_handler
        if isinstance(handler, RecordingHandler):
            with handler.lock:
                handler.closed += 1
        super().connection_lost(error)


class RecordingUpstream:
    """An aiosmtpd upstream on 127.0.0.1 (random port) in its own thread.

    ``tls_context`` offers STARTTLS; ``implicit_tls`` wraps the socket in TLS from the
    start; ``auth`` (user, password) requires AUTH (over TLS) before MAIL.
    """

    def __init__(
        self,
        *,
        tls_context: ssl.SSLContext | None = None,
        implicit_tls: bool = False,
        auth: tuple[str, str] | None = None,
        smtputf8: bool = True,
    ) -> None:
        self.handler = RecordingHandler()
        self.tls_context = tls_context
        self.implicit_tls = implicit_tls
        self.auth = auth
        self.smtputf8 = smtputf8
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self.port = 0

    @property
    def received(self) -> list[Received]:
        """Transactions accepted so far."""
        return self.handler.received

    @property
    def faults(self) -> Faults:
        """The faults to inject (mutable)."""
        return self.handler.faults

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port}"

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (
            isinstance(data, LoginPassword)
            and self.auth is not None
            and (data.login.decode(), data.password.decode()) == self.auth
        )
        return AuthResult(success=ok, handled=False, auth_data=data.login if ok else None)

    def _protocol(self) -> SMTP:
        self.handler.connections += 1
        kwargs: dict[str, Any] = {}
        if self.tls_context is not None and not self.implicit_tls:
            kwargs.update(tls_context=self.tls_context, require_starttls=True)
        if self.auth is not None:
            kwargs.update(
                authenticator=self._authenticate,
                auth_required=True,
                auth_require_tls=self.tls_context is not None,
            )
        return LongLineSMTP(
            self.handler,
            hostname="upstream.test",
            enable_SMTPUTF8=self.smtputf8,
            data_size_limit=None,
            **kwargs,
        )

    async def _start(self) -> None:
        ssl_ctx = self.tls_context if self.implicit_tls else None
        self._server = await self.loop.create_server(self._protocol, "127.0.0.1", 0, ssl=ssl_ctx)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        # Sessions still open (a proxy's pooled connections) end here, not at exit as
        # "Task was destroyed but it is pending".
        await cancel_other_tasks()

    def start(self) -> RecordingUpstream:
        """Start serving; returns self."""
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=10)
        return self

    def stop(self) -> None:
        """Stop serving and end the thread."""
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)

    def __enter__(self) -> RecordingUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def make_certificate(directory: Path, name: str = "upstream.test") -> tuple[Path, Path]:
    """A self-signed certificate and key for ``name`` (and 127.0.0.1), via ``openssl req``."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            f"/CN={name}",
            "-addext",
            f"subjectAltName=DNS:{name},IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def server_tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server-side TLS context for the recording upstream."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


class SmtpSink:
    """Postfix's ``smtp-sink`` on 127.0.0.1 (a free port), with its fault options.

    ``hard`` / ``soft`` / ``disconnect`` name commands (e.g. ``"rcpt"``, ``"data"``,
    ``"."`` for end of data) answered with 5xx / 4xx / a dropped connection; ``delay``
    waits that many seconds before answering DATA.
    """

    def __init__(
        self,
        *,
        hard: str = "",
        soft: str = "",
        disconnect: str = "",
        delay: float = 0.0,
        count: bool = False,
    ) -> None:
        self.args = [SMTP_SINK]
        if os.geteuid() == 0:
            # smtp-sink refuses to run as root without dropping privileges.
            self.args += ["-u", "postfix" if _user_exists("postfix") else "nobody"]
        if hard:
            self.args += ["-f", hard]
        if soft:
            self.args += ["-r", soft]
        if disconnect:
            self.args += ["-q", disconnect]
        if delay:
            self.args += ["-w", str(int(delay))]
        if count:
            self.args += ["-c"]
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> SmtpSink:
        """Start on a free port and wait until it accepts connections."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.process = subprocess.Popen(
            [*self.args, "-h", "sink.test", f"127.0.0.1:{self.port}", "256"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read() if self.process.stderr else b""
                raise RuntimeError(f"smtp-sink exited: {err.decode(errors='replace')}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("smtp-sink did not start")

    def stop(self) -> None:
        """Stop the sink (by its own process id)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- fixtures (import them into a test module to use them) -----------------------------------


@pytest.fixture
def upstream() -> Iterator[RecordingUpstream]:
    """A recording aiosmtpd upstream (no TLS, no AUTH)."""
    with RecordingUpstream() as server:
        yield server


@pytest.fixture
def start_proxy(
    tmp_path: Path, store: SQLiteStore, keyring: Keyring
) -> Iterator[Callable[..., ThreadedProxy]]:
    """Start a proxy in front of an upstream address: ``start_proxy(address, **settings)``.

    The proxy uses the test's ``store`` and ``keyring``; settings override Config fields.
    """
    running: list[ThreadedProxy] = []

    def start(upstream_address: str, *, proxy_store: Store | None = None, **settings: Any):
        values: dict[str, Any] = {
            "db": str(tmp_path / "replytrack.db"),
            "domain": DOMAIN,
            "proxy_listen": "127.0.0.1:0",
            "proxy_upstream": upstream_address,
            "proxy_timeout": 5.0,
        }
        values.update(settings)
        proxy = ThreadedProxy(Config(**values), store=proxy_store or store, keyring=keyring)
        running.append(proxy.start())
        return proxy

    yield start
    for proxy in running:
        proxy.stop()


@pytest.fixture
def proxy(upstream: RecordingUpstream, start_proxy: Callable[..., ThreadedProxy]) -> ThreadedProxy:
    """A proxy relaying to the recording ``upstream``."""
    return start_proxy(upstream.address)
