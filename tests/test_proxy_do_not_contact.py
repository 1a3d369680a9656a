# ruff: noqa: F811  (pytest fixtures imported from tests.support.upstream are parameters)
"""The do-not-contact list through the real proxy: campaign mail to a listed address or
domain is refused (550 5.7.1 naming the list) or the address is left out, in every campaign;
one-to-one mail is not affected. The proxy's store is opened without a hasher, as it is
today: plain entries need none."""

from __future__ import annotations

import smtplib

import pytest

from replytrack.proxy.testing import ThreadedProxy
from replytrack.store.records import Suppression
from replytrack.store.sqlite import SQLiteStore
from tests.support.upstream import (  # noqa: F401  (fixtures)
    RecordingUpstream,
    proxy,
    start_proxy,
    upstream,
)

pytestmark = pytest.mark.timeout(60)


def mail(campaign: str | None) -> bytes:
    meta = f"X-ReplyTrack-Campaign: {campaign}\r\n" if campaign else ""
    return (
        "From: s@example.org\r\nTo: pat@prospect.test, lee@prospect.test\r\n"
        f"Subject: hi\r\n{meta}\r\nbody\r\n"
    ).encode()


def listed(store: SQLiteStore, *values: str) -> None:
    store.add_suppressions(
        [
            Suppression(
                kind="address" if "@" in v else "domain",
                value=v,
                reason="unsubscribed",
                actor="ops",
                created_at=1.0,
            )
            for v in values
        ]
    )


def test_campaign_mail_to_a_listed_address_is_refused_in_every_campaign(
    proxy: ThreadedProxy, upstream: RecordingUpstream, store: SQLiteStore
) -> None:
    listed(store, "pat@prospect.test")
    for campaign in ("spring", "autumn"):
        with (
            smtplib.SMTP("127.0.0.1", proxy.port) as client,
            pytest.raises(smtplib.SMTPDataError) as refused,
        ):
            client.sendmail("s@example.org", ["pat@prospect.test"], mail(campaign))
        assert refused.value.smtp_code == 550
        text = refused.value.smtp_error.decode()
        assert text.startswith("5.7.1") and "do-not-contact" in text
    assert upstream.received == []
    assert {m.status for m in store.messages()} == {"suppressed"}


def test_a_listed_domain_is_left_out_and_the_rest_get_the_mail(
    proxy: ThreadedProxy, upstream: RecordingUpstream, store: SQLiteStore
) -> None:
    listed(store, "example.net")
    with smtplib.SMTP("127.0.0.1", proxy.port) as client:
        client.sendmail("s@example.org", ["joe@sales.example.net", "lee@prospect.test"], mail("x"))
    [got] = upstream.received
    assert got.rcpt_tos == ["lee@prospect.test"]
    [msg] = store.messages()
    reasons = {r.address: (r.status, r.reason) for r in msg.recipients}
    status, reason = reasons["joe@sales.example.net"]
    assert status == "suppressed" and "do-not-contact (domain example.net)" in (reason or "")


def test_one_to_one_mail_to_a_listed_address_goes_out(
    proxy: ThreadedProxy, upstream: RecordingUpstream, store: SQLiteStore
) -> None:
    listed(store, "pat@prospect.test")
    with smtplib.SMTP("127.0.0.1", proxy.port) as client:
        client.sendmail("s@example.org", ["pat@prospect.test"], mail(None))
    [got] = upstream.received
    assert got.rcpt_tos == ["pat@prospect.test"]
    [msg] = store.messages()
    assert msg.status == "relayed" and msg.campaign is None


def test_campaign_mail_leaves_with_working_unsubscribe_headers(
    proxy: ThreadedProxy, upstream: RecordingUpstream, store: SQLiteStore
) -> None:
    """Campaign mail gets List-Unsubscribe through the real proxy; its token leads back to
    the mail it came from. One-to-one mail gets none."""
    from email.parser import BytesHeaderParser

    from replytrack.unsubscribe import message_id_for

    with smtplib.SMTP("127.0.0.1", proxy.port) as client:
        client.sendmail("s@example.org", ["lee@prospect.test"], mail("spring"))
        client.sendmail("s@example.org", ["lee@prospect.test"], mail(None))
    campaign, personal = (BytesHeaderParser().parsebytes(r.data) for r in upstream.received)
    value = campaign["List-Unsubscribe"]
    assert value is not None and value.startswith("<mailto:unsubscribe+")
    token = value.split("+", 1)[1].split("@", 1)[0]
    stamped = campaign["Message-ID"].strip("<>")
    handler = proxy.server.handler
    assert message_id_for(handler.keyring, token, handler.config.domain) == stamped
    assert personal["List-Unsubscribe"] is None
