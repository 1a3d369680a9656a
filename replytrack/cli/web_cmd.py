"""``replytrack web``: the one-click unsubscribe service (see :mod:`replytrack.web`)."""

from __future__ import annotations

import ipaddress
import logging

import click

from replytrack.cli.common import State, cli, pass_state, setup_logging
from replytrack.config import ConfigError, parse_hostport
from replytrack.do_not_contact import address_hasher
from replytrack.tokens import load_keyring

log = logging.getLogger(__name__)


@cli.command("web")
@click.option("--listen", metavar="HOST:PORT", help="Listen here [unsubscribe.listen].")
@pass_state
def web_command(state: State, listen: str | None) -> None:
    """Serve one-click unsubscribe links (RFC 8058) behind the site's TLS reverse proxy.

    Campaign mail carries https links to it when unsubscribe.url_base is set; the reverse
    proxy serving that URL forwards /u/ to this service. A POST unsubscribes (the
    do-not-contact list, every campaign stopped, an "unsubscribe" event for the webhooks);
    a GET only shows a page whose button posts.

    \b
    Example:
      replytrack web --listen 127.0.0.1:8895
    """
    config = state.config(unsubscribe_listen=listen)
    setup_logging(config.log_level)
    try:
        host, port = parse_hostport(config.unsubscribe_listen, setting="unsubscribe.listen")
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if not _loopback(host):
        log.warning(
            "web: listening on %s, not loopback: put the TLS reverse proxy in front of it", host
        )
    keyring = load_keyring(config.secret_path)
    store = state.store()
    store.use_hasher(address_hasher(keyring))
    from replytrack import web

    try:
        web.serve(web.make_app(store=store, keyring=keyring, domain=config.domain), host, port)
    except OSError as exc:
        raise click.ClickException(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}"
        ) from None


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
