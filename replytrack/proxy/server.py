"""The proxy's lifecycle: listen, serve, look after the store, stop gracefully.

The server wires the parts together (the protocol per connection, the handler, the upstream
pool, the store's threads) and runs what is not one client's: the store's upkeep and the
sweep of mails left ``relaying``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import socket
import ssl
import sys
import time
from collections.abc import Sequence
from typing import Any

from replytrack.config import Config, ConfigError, parse_hostport
from replytrack.proxy.access import check_bind
from replytrack.proxy.auth import ClientAuth, PasswordFile, load_auth_file
from replytrack.proxy.auth_limit import AuthLimiter
from replytrack.proxy.handler import ProxyHandler
from replytrack.proxy.internals import InitPlans
from replytrack.proxy.protocol import ProxySMTP
from replytrack.proxy.relay import UpstreamPool, UpstreamSettings
from replytrack.store import Store
from replytrack.tokens import Keyring

log = logging.getLogger("replytrack.proxy")

# How often each proxy process looks for mails left "relaying" (proxy.unconfirmed_after).
SWEEP_SECONDS = 60.0
# AUTH attempts allowed per client connection (aiosmtpd answers 421 and closes after);
# failures per client address across connections are limited by proxy.auth_* settings.
AUTH_TRIES = 5


def client_security(config: Config) -> dict[str, Any]:
    """STARTTLS and SMTP AUTH offered to clients, from ``proxy.tls_*`` / ``auth_file``, as
    aiosmtpd's SMTP options; a bad setting is a ConfigError."""
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
        options.update(
            authenticator=ClientAuth(users, AuthLimiter.from_config(config)),
            auth_require_tls=True,
            # Clients on loopback or the allowlist need no AUTH; the rest are refused at
            # MAIL unless they authenticated (see ProxyHandler.handle_MAIL).
            auth_required=False,
            auth_exclude_mechanism=["CRAM-MD5"],
            # aiosmtpd counts per connection, and only AUTH is to be limited.
            command_call_limit={"AUTH": AUTH_TRIES, "*": sys.maxsize},
        )
    return options


class ProxyServer:
    """The listening proxy: start, serve, and stop gracefully."""

    def __init__(
        self,
        config: Config,
        *,
        store: Store,
        keyring: Keyring,
        listen: str | None = None,
        connection_prefix: str = "c",
    ) -> None:
        """``connection_prefix`` starts every connection id in the log (a worker's: "w1c")."""
        self.config = config
        self.host, self.port = parse_hostport(listen or config.proxy_listen, setting="listen")
        check_bind(config, self.host)
        self._smtp_options = client_security(config)
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=4, thread_name_prefix="replytrack-store"
        )
        self.pool = UpstreamPool(UpstreamSettings.from_config(config))
        self.handler = ProxyHandler(
            config=config, store=store, keyring=keyring, pool=self.pool, executor=self.executor
        )
        # The open client connections, and what they share (see ProxySMTP).
        self.connections: set[ProxySMTP] = set()
        self.smtp_plans = InitPlans()
        ids = itertools.count(1)
        self._connection_id = lambda: f"{connection_prefix}{next(ids):x}"
        self._servers: list[asyncio.base_events.Server] = []
        self._upkeep: asyncio.Future[None] | None = None
        self._sweeps: asyncio.Future[None] | None = None

    def _protocol(self) -> ProxySMTP:
        return ProxySMTP(
            self.handler,
            plans=self.smtp_plans,
            connections=self.connections,
            connection_id=self._connection_id,
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
            c.session is not None and c.session.rt_upstream is not None for c in self.connections
        )

    def stop_accepting(self) -> None:
        """Accept no new connections; the open ones go on (a reload's graceful drain)."""
        for server in self._servers:
            server.close()

    async def stop(self, grace: float = 30.0) -> None:
        """Stop accepting, let open transactions finish (at most ``grace`` s), close."""
        self.handler.stopping = True
        self.stop_accepting()
        deadline = time.monotonic() + grace
        while self.busy() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.busy():
            log.warning("stopping with transactions still open after %.0f s", grace)
        for connection in list(self.connections):
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
