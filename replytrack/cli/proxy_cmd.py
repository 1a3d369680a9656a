"""``replytrack proxy``: run the outbound SMTP proxy until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal

import click

from replytrack import metrics, notify
from replytrack.cli.common import State, cli, pass_state, setup_logging
from replytrack.config import ConfigError, parse_hostport
from replytrack.tokens import load_keyring

log = logging.getLogger("replytrack.proxy")

# How long open transactions may take to finish after SIGTERM before connections are cut.
SHUTDOWN_GRACE = 30.0


@cli.command("proxy")
@click.option(
    "--listen", metavar="HOST:PORT", help="Address to accept mail on [default: 127.0.0.1:10025]."
)
@click.option(
    "--upstream", metavar="HOST:PORT", help="Upstream MTA to relay to [default: 127.0.0.1:10026]."
)
@pass_state
def proxy_command(state: State, listen: str | None, upstream: str | None) -> None:
    """Run the outbound proxy: stamp a signed Message-ID, record, relay in lockstep.

    The client gets 250 only once the upstream accepted the mail and the record is
    committed; anything else is the upstream's own refusal or a 451. TLS, AUTH, pool size,
    timeouts, size limit and client allowlist come from the [proxy] table of the config.
    With [notify] webhooks configured, events (suppressions, and whatever else the store
    has queued) are POSTed from this process too. Runs until SIGTERM or SIGINT, then
    finishes open transactions and exits 0.

    \b
    Example:
      replytrack --domain mail.example.com proxy --listen 127.0.0.1:10025 \\
          --upstream 127.0.0.1:10026
    """
    config = state.config(proxy_listen=listen, proxy_upstream=upstream)
    setup_logging(config.log_level)
    from replytrack.proxy.server import ProxyServer, check_bind

    try:
        # Refuse an unsafe listen address before anything is created.
        check_bind(config, parse_hostport(config.proxy_listen, setting="proxy.listen")[0])
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if config.log_level.lower() != "debug":
        # aiosmtpd logs every command line at INFO: per mail that is a dozen log records,
        # a measurable share of the proxy's CPU. Our own line per mail says what matters.
        logging.getLogger("mail.log").setLevel(logging.WARNING)
    store = state.store(create=True)
    keyring = load_keyring(config.secret_path)

    try:
        server = ProxyServer(config, store=store, keyring=keyring)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if config.proxy_metrics_listen:
        try:
            metrics.serve(config.proxy_metrics_listen)
        except OSError as exc:
            raise click.ClickException(
                f"proxy.metrics_listen {config.proxy_metrics_listen}: {exc.strerror or exc}"
            ) from None

    async def run() -> None:
        try:
            await server.start()
        except OSError as exc:
            raise click.ClickException(
                f"cannot listen on {server.host}:{server.port}: {exc.strerror or exc}"
            ) from None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        log.info("stopping: no new connections, finishing open transactions")
        await server.stop(grace=SHUTDOWN_GRACE)
        log.info("stopped")

    # Webhooks go out from the daemon that queues the events; several senders on one store
    # share the outbox safely (rows are leased).
    sender = notify.start_sender_thread(config, store)
    try:
        asyncio.run(run())
    finally:
        if sender is not None:
            sender.stop(timeout=5)
