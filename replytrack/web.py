"""``replytrack web``: the one-click unsubscribe service (RFC 8058), on aiohttp.

It listens on loopback and is meant to sit behind the site's TLS reverse proxy, which
serves ``unsubscribe.url_base``. Two answers only:

- ``POST /u/TOKEN`` (what mailbox providers send for one click, and what the page's button
  sends): the recipients of the mail the token came from go on the do-not-contact list,
  are stopped in every campaign, and an ``unsubscribe`` event is queued for the webhooks.
  ``200`` with a short page, never a redirect (RFC 8058 forbids them).
- ``GET /u/TOKEN``: a confirmation page whose button posts. Nothing changes on a GET, so
  the link scanners of mail filters, which fetch every link, unsubscribe nobody.

A token that does not verify (altered, forged, another site's) gets ``404`` and changes
nothing; so does a mail the store no longer holds. A store that cannot be reached gets
``503`` with ``Retry-After``, so the provider tries again.

aiohttp because it is the asyncio HTTP server the ecosystem keeps best (HTTP/1.1 parsing
in C, request size limits, graceful shutdown), runs on the same event loop family as the
proxy, and needs no separate ASGI server.
"""

from __future__ import annotations

import asyncio
import html
import logging
from functools import partial

from aiohttp import web

from replytrack import unsubscribe
from replytrack.store.base import Store
from replytrack.store.errors import StoreError
from replytrack.tokens import Keyring

log = logging.getLogger(__name__)

# RFC 8058's body is 26 bytes; a form post is no bigger. Anything large is not for us.
MAX_BODY = 4096
STORE_KEY: web.AppKey[Store] = web.AppKey("store", Store)
KEYRING_KEY: web.AppKey[Keyring] = web.AppKey("keyring", Keyring)
DOMAIN_KEY: web.AppKey[str] = web.AppKey("domain", str)

# The token in the URL is a capability: it must not leak to other sites through the
# Referer, nor be cached or indexed.
_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex, nofollow",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; form-action 'self'; frame-ancestors 'none'",
}


def _page(title: str, text: str, *, button: bool = False, status: int = 200) -> web.Response:
    form = (
        '<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click">'
        '<button type="submit">Unsubscribe</button></form>'
        if button
        else ""
    )
    body = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title></head><body><h1>{html.escape(title)}</h1>"
        f"<p>{html.escape(text)}</p>{form}</body></html>"
    )
    return web.Response(
        text=body, status=status, content_type="text/html", charset="utf-8", headers=_HEADERS
    )


def _not_found() -> web.Response:
    return _page(
        "Link not valid",
        "This unsubscribe link is not valid or has expired. To stop receiving our mail,"
        " reply to it and say so.",
        status=404,
    )


def _message_id(request: web.Request) -> str | None:
    app = request.app
    return unsubscribe.message_id_for(
        app[KEYRING_KEY], request.match_info["token"], app[DOMAIN_KEY]
    )


async def confirm_page(request: web.Request) -> web.Response:
    """GET: ask; change nothing."""
    if _message_id(request) is None:
        return _not_found()
    return _page(
        "Unsubscribe",
        "Press the button to stop receiving these mails, in this and every other campaign.",
        button=True,
    )


async def one_click(request: web.Request) -> web.Response:
    """POST: unsubscribe (RFC 8058 one-click, or the confirmation page's button)."""
    message_id = _message_id(request)
    if message_id is None:
        log.info("unsubscribe refused: a token that does not verify")
        return _not_found()
    await request.read()  # the body says nothing we need; read it so the connection is clean
    store = request.app[STORE_KEY]
    loop = asyncio.get_running_loop()
    try:
        outcome = await loop.run_in_executor(
            None, partial(unsubscribe.apply, store, message_id, via="one-click")
        )
    except StoreError as exc:
        log.error("unsubscribe from %s not recorded: %s", message_id, exc)
        response = _page("Try again", "We could not record this just now.", status=503)
        response.headers["Retry-After"] = "60"
        return response
    if outcome is None:
        log.info("unsubscribe from %s: the mail is not recorded (pruned?)", message_id)
        return _not_found()
    return _page("Unsubscribed", "You will not get these mails again.")


def make_app(*, store: Store, keyring: Keyring, domain: str) -> web.Application:
    """The service's aiohttp application. ``domain`` is the Message-ID domain."""
    app = web.Application(client_max_size=MAX_BODY)
    app[STORE_KEY] = store
    app[KEYRING_KEY] = keyring
    app[DOMAIN_KEY] = domain.lower()
    app.router.add_get(unsubscribe.URL_PATH + "{token}", confirm_page, allow_head=False)
    app.router.add_post(unsubscribe.URL_PATH + "{token}", one_click)
    return app


def serve(app: web.Application, host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT. The access log stays off: each URL carries a token."""
    web.run_app(app, host=host, port=port, access_log=None, print=None, handle_signals=True)
