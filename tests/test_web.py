"""``replytrack web``, the one-click unsubscribe service, over a real loopback socket: a
POST unsubscribes (RFC 8058: 200, no redirect), a GET alone does not, forged tokens change
nothing. Store behaviour on both backends (``any_store``)."""

from __future__ import annotations

import asyncio
import http.client
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiohttp import web as aioweb

from replytrack import unsubscribe, web
from replytrack.do_not_contact import address_hasher
from replytrack.tokens import Keyring, mint
from tests.support.milter_records import record_mail

pytestmark = pytest.mark.timeout(60)
DOMAIN = "track.example.com"
NOW = 1_760_000_000.0


class ThreadedWeb:
    """The service's app on 127.0.0.1 (a free port), its event loop in a thread."""

    def __init__(self, app: aioweb.Application) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.runner = aioweb.AppRunner(app, access_log=None)
        self.port = 0
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> ThreadedWeb:
        self._thread.start()

        async def begin() -> int:
            await self.runner.setup()
            site = aioweb.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            return int(self.runner.addresses[0][1])

        self.port = asyncio.run_coroutine_threadsafe(begin(), self.loop).result(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read().decode()
        finally:
            conn.close()


@pytest.fixture
def keys() -> Keyring:
    return Keyring.generate()


@pytest.fixture
def service(any_store: Any, keys: Keyring) -> Iterator[ThreadedWeb]:
    any_store.use_hasher(address_hasher(keys))
    server = ThreadedWeb(web.make_app(store=any_store, keyring=keys, domain=DOMAIN)).start()
    yield server
    server.stop()


@pytest.fixture
def campaign_mail(any_store: Any, keys: Keyring) -> Callable[..., str]:
    def send(campaign: str, *names: str) -> str:
        to = (f"{n}@example.com" for n in names)
        return record_mail(
            any_store, mint(keys, DOMAIN), campaign, *to, sender="sales@ours.example", at=NOW
        )

    return send


ONE_CLICK = b"List-Unsubscribe=One-Click"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def link(keys: Keyring, message_id: str) -> str:
    return unsubscribe.URL_PATH + (unsubscribe.token_for(keys, message_id) or "")


def test_one_click_post_unsubscribes_in_every_campaign(
    service: ThreadedWeb, any_store: Any, keys: Keyring, campaign_mail: Callable[..., str]
) -> None:
    first = campaign_mail("spring", "ann")
    campaign_mail("autumn", "ann", "bob")
    status, headers, body = service.request("POST", link(keys, first), ONE_CLICK, FORM)
    assert status == 200 and "Location" not in headers
    assert "Unsubscribed" in body
    assert headers["Cache-Control"] == "no-store"
    states = {(e.campaign, e.recipient): e.status for e in any_store.enrollments()}
    assert states == {
        ("spring", "ann@example.com"): "stopped",
        ("autumn", "ann@example.com"): "stopped",
        ("autumn", "bob@example.com"): "active",
    }
    [event] = any_store.events(kind="unsubscribe")
    assert event.recipient == "ann@example.com" and event.detail["via"] == "one-click"
    assert any_store.outbox_counts(NOW + 10)["pending"] == 1  # the webhook is queued
    assert [s.value for s in any_store.suppressions()] == ["ann@example.com"]
    blocked = any_store.blocked_enrollments("next-year", ["ann@example.com", "bob@example.com"])
    assert set(blocked) == {"ann@example.com"}
    # A second click is answered the same and records nothing more.
    assert service.request("POST", link(keys, first), ONE_CLICK, FORM)[0] == 200
    assert len(any_store.events(kind="unsubscribe")) == 1


def test_get_only_shows_a_page_whose_button_posts(
    service: ThreadedWeb, any_store: Any, keys: Keyring, campaign_mail: Callable[..., str]
) -> None:
    path = link(keys, campaign_mail("spring", "ann"))
    status, headers, body = service.request("GET", path)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert '<form method="post">' in body and "<button" in body
    assert headers["Referrer-Policy"] == "no-referrer"
    # A link scanner fetching the link unsubscribed nobody.
    assert any_store.suppressions() == [] and any_store.events(kind="unsubscribe") == []
    assert {e.status for e in any_store.enrollments()} == {"active"}
    # The button's form post does.
    status, _, _ = service.request("POST", path, b"List-Unsubscribe=One-Click", FORM)
    assert status == 200 and len(any_store.events(kind="unsubscribe")) == 1


def test_forged_and_altered_tokens_change_nothing(
    service: ThreadedWeb, any_store: Any, keys: Keyring, campaign_mail: Callable[..., str]
) -> None:
    message_id = campaign_mail("spring", "ann")
    token = unsubscribe.token_for(keys, message_id) or ""
    altered = token[:-1] + ("a" if token[-1] != "a" else "b")
    other = unsubscribe.token_for(Keyring.generate(), mint(Keyring.generate(), DOMAIN))
    for path in (
        f"/u/{altered}",
        f"/u/{other}",
        f"/u/{message_id.partition('@')[0]}",  # the Message-ID's own token
        "/u/x",
        f"/u/{token}extra",
    ):
        for method in ("GET", "POST"):
            status, headers, _ = service.request(method, path, ONE_CLICK, FORM)
            assert status == 404 and "Location" not in headers, (method, path)
    assert service.request("GET", "/")[0] == 404
    assert any_store.suppressions() == [] and any_store.events() == []
    # A valid token of a mail the store no longer holds changes nothing either.
    gone = mint(keys, DOMAIN)
    assert service.request("POST", link(keys, gone), ONE_CLICK, FORM)[0] == 404
    assert any_store.events() == []


def test_oversized_posts_are_refused(
    service: ThreadedWeb, keys: Keyring, any_store: Any, campaign_mail: Callable[..., str]
) -> None:
    # A link of a recorded mail: only the size refusal keeps it from unsubscribing.
    target = link(keys, campaign_mail("spring", "ann"))
    status, _, _ = service.request("POST", target, b"x" * (web.MAX_BODY + 1), FORM)
    assert status == 413
    assert any_store.events() == [] and any_store.suppressions() == []
    assert {e.status for e in any_store.enrollments()} == {"active"}
