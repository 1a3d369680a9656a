"""``replytrack proxy``: run the outbound SMTP proxy until SIGTERM or SIGINT."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable

import click

from replytrack import logs, metrics, notify
from replytrack.cli.common import State, cli, pass_state
from replytrack.config import (
    MAX_PROXY_WORKERS,
    Config,
    ConfigError,
    load_config,
    parse_hostport,
)
from replytrack.reload import say_mode
from replytrack.store import Store
from replytrack.tokens import KeyFileError, Keyring, load_keyring

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
    flags = {"proxy_listen": listen, "proxy_upstream": upstream, "proxy_workers": workers}
    config = state.config(**flags)

    def load() -> Config:
        # A reload reads what a start would: the same file, environment and flags.
        return load_config(state.config_path, overrides={**state.overrides, **flags})

    try:
        config = daemon.check_settings(config)
        logs.setup_from(config)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"log.target = syslog: {logs.SYSLOG_SOCKET}: {exc}") from None
    host, port = parse_hostport(config.proxy_listen, setting="proxy.listen")
    daemon.quiet_aiosmtpd(config)
    store = state.store()
    keyring = load_keyring(config.secret_path)
    count = daemon.worker_count(config)
    say_mode(config)

    if count == 1:
        _serve_alone(config, store, keyring, load, f"{host}:{port}")
        return

    from replytrack.proxy import supervisor

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
    directory = supervisor.metrics_dir() if config.proxy_metrics_listen else None
    try:
        if directory:
            listen_at = config.proxy_metrics_listen
            _serve_metrics(lambda: supervisor.serve_metrics(listen_at, directory), config)
        # The workers open their own connections; this process keeps none while it waits.
        store.close()
        status = supervisor.Supervisor(
            config, sockets, count, metrics_dir=directory, load=load
        ).run()
    finally:
        if directory:
            supervisor.cleanup_metrics(directory)
    if status:
        raise SystemExit(status)


def _serve_alone(
    config: Config, store: Store, keyring: Keyring, load: Callable[[], Config], address: str
) -> None:
    """One process, no workers: it serves, sends webhooks and reloads itself."""
    from replytrack.proxy import daemon

    if config.proxy_metrics_listen:
        listen = config.proxy_metrics_listen
        _serve_metrics(lambda: metrics.serve(listen, metrics.PROXY), config)
    # Webhooks go out from the daemon that queues the events; several senders on one
    # store share the outbox safely (rows are leased).
    senders = [notify.start_sender_thread(config, store)]

    def reload() -> tuple[Config, Keyring] | None:
        nonlocal config
        new = daemon.reread(config, load)
        if new is None:
            return None
        try:
            # A new first line in the key file (a rotation) signs from now on.
            new_keyring = load_keyring(new.secret_path, create=False)
        except (KeyFileError, ConfigError) as exc:
            log.error("reload refused, still serving with the earlier configuration: %s", exc)
            return None
        config = new
        # The sender takes the new webhooks and secret; rows it had leased go back on the
        # lease's expiry, so none is lost and none sent twice.
        old = senders.pop()
        if old is not None:
            old.stop(timeout=5)
        senders.append(notify.start_sender_thread(new, store))
        return new, new_keyring

    try:
        daemon.serve(config, store=store, keyring=keyring, reload=reload)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {address}: {exc.strerror or exc}") from None
    finally:
        sender = senders.pop()
        if sender is not None:
            sender.stop(timeout=5)


def _serve_metrics(start: Callable[[], None], config: Config) -> None:
    try:
        start()
    except OSError as exc:
        raise click.ClickException(f"proxy.metrics_listen: {exc.strerror or exc}") from None
