"""``replytrack proxy``: run the outbound SMTP proxy until SIGTERM or SIGINT."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable

import click

from replytrack import metrics, notify
from replytrack.cli.common import State, cli, pass_state, setup_logging
from replytrack.config import (
    MAX_PROXY_WORKERS,
    Config,
    ConfigError,
    check_notify,
    parse_hostport,
)
from replytrack.tokens import load_keyring

log = logging.getLogger("replytrack.proxy")


@cli.command("proxy")
@click.option(
    "--listen", metavar="HOST:PORT", help="Address to accept mail on [default: 127.0.0.1:10025]."
)
@click.option(
    "--upstream", metavar="HOST:PORT", help="Upstream MTA to relay to [default: 127.0.0.1:10026]."
)
@click.option(
    "--workers",
    type=click.IntRange(0, MAX_PROXY_WORKERS),
    metavar="N",
    help="Proxy processes sharing the listening socket [default: 0, one per CPU].",
)
@pass_state
def proxy_command(
    state: State, listen: str | None, upstream: str | None, workers: int | None
) -> None:
    """Run the outbound proxy: stamp a signed Message-ID, record, relay in lockstep.

    The client gets 250 only once the upstream accepted the mail and the record is
    committed; anything else is the upstream's own refusal or a 451. TLS, AUTH, pool size,
    timeouts, size limit and client allowlist come from the [proxy] table of the config.
    With [notify] webhooks configured, events (suppressions, and whatever else the store
    has queued) are POSTed from this process too. Runs until SIGTERM or SIGINT, then
    finishes open transactions and exits 0.

    One process uses one CPU at most; by default one worker process per CPU accepts from
    the same socket, watched by this one, which replaces a worker that dies.

    \b
    Example:
      replytrack --domain mail.example.com proxy --listen 127.0.0.1:10025 \\
          --upstream 127.0.0.1:10026
    """
    from replytrack.proxy import daemon

    daemon.exit_if_stopped_while_starting(signal.SIGTERM)
    config = state.config(proxy_listen=listen, proxy_upstream=upstream, proxy_workers=workers)
    setup_logging(config.log_level)
    from replytrack.proxy.server import ProxyServer, check_bind

    try:
        # Refuse an unsafe listen address before anything is created.
        host, port = parse_hostport(config.proxy_listen, setting="proxy.listen")
        check_bind(config, host)
        daemon.loop_factory(config)
        # The settings every worker will use are checked here, once, with a clear message.
        ProxyServer._client_security(config)
        # The proxy sends webhooks too (one sender, in the first worker).
        check_notify(config)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    daemon.quiet_aiosmtpd(config)
    store = state.store()
    keyring = load_keyring(config.secret_path)
    count = daemon.worker_count(config)

    if count == 1:
        if config.proxy_metrics_listen:
            listen = config.proxy_metrics_listen
            _serve_metrics(lambda: metrics.serve(listen, metrics.PROXY), config)
        # Webhooks go out from the daemon that queues the events; several senders on one
        # store share the outbox safely (rows are leased).
        sender = notify.start_sender_thread(config, store)
        try:
            daemon.serve(config, store=store, keyring=keyring)
        except OSError as exc:
            raise click.ClickException(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}"
            ) from None
        finally:
            if sender is not None:
                sender.stop(timeout=5)
        return

    try:
        sockets = daemon.bind(host, port)
    except OSError as exc:
        raise click.ClickException(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}"
        ) from None
    bound = sockets[0].getsockname()
    log.info(
        "proxy listening on %s:%d with %d workers, relaying to %s",
        host,
        bound[1],
        count,
        config.proxy_upstream,
    )
    directory = daemon.metrics_dir() if config.proxy_metrics_listen else None
    try:
        if directory:
            listen_at = config.proxy_metrics_listen
            _serve_metrics(lambda: daemon.serve_metrics(listen_at, directory), config)
        # The workers open their own connections; this process keeps none while it waits.
        store.close()
        status = daemon.Supervisor(config, sockets, count, metrics_dir=directory).run()
    finally:
        if directory:
            daemon.cleanup_metrics(directory)
    if status:
        raise SystemExit(status)


def _serve_metrics(start: Callable[[], None], config: Config) -> None:
    try:
        start()
    except OSError as exc:
        raise click.ClickException(
            f"proxy.metrics_listen: {exc.strerror or exc}"
        ) from None
