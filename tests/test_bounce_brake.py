# ruff: noqa: F811  (pytest fixtures imported from tests.support.upstream are parameters)
"""The bounce brake, on each store backend: hard bounces among a campaign's last sends
brake it (the proxy defers its mail with a 4xx saying why, a ``braked`` event is notified),
soft bounces and out-of-office replies never count, ``replytrack resume --campaign``
releases it and its count starts again."""

from __future__ import annotations

import smtplib
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from replytrack.cli import cli
from replytrack.store import BOUNCED, PAUSED, Event, StatusChange
from replytrack.store.rules import BrakeRule
from replytrack.store.sqlite import SQLiteStore
from tests.support.upstream import (  # noqa: F401  (fixtures)
    DOMAIN,
    RecordingUpstream,
    start_proxy,
    upstream,
)

pytestmark = pytest.mark.timeout(180)


def mail(campaign: str = "spring") -> bytes:
    return (
        f"From: sam@seller.test\r\nSubject: hello\r\nX-ReplyTrack-Campaign: {campaign}\r\n"
        "\r\nbody\r\n"
    ).encode()


def send_all(port: int, recipients: list[str], campaign: str = "spring") -> list[int]:
    """One mail per recipient on one connection; each DATA reply's code."""
    codes = []
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("engine.test")
        for rcpt in recipients:
            client.mail("sam@seller.test")
            client.rcpt(rcpt)
            codes.append(client.data(mail(campaign))[0])
    return codes


def bounce(store: Any, address: str, *, hard: bool = True, campaign: str = "spring") -> None:
    """A delivery report as the milter records it: a permanent one marks the enrollment
    bounced, a temporary one changes nothing."""
    store.record_event(
        Event(
            kind="bounce",
            created_at=time.time(),
            campaign=campaign,
            sender="mailer-daemon@prospect.test",
            recipient=address,
            detail={"permanent": hard, "failed_recipients": [address]},
            actor="milter",
        ),
        set_status=[StatusChange(campaign, address, BOUNCED, "bounced permanently")]
        if hard
        else [],
    )


RESUME = ("resume", "--campaign", "spring")


def status(store: Any, campaign: str = "spring") -> str:
    (stats,) = store.campaign_stats(campaign)
    return stats.status


def db_of(store: Any, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if isinstance(store, SQLiteStore):
        return str(tmp_path / "replytrack.db")
    return str(request.getfixturevalue("pg_url"))


def test_eleven_hard_bounces_in_fifty_brake_the_campaign_until_resumed(
    start_proxy,
    upstream: RecordingUpstream,
    any_store: Any,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    # 20 % of 50: ten hard bounces are the most the window may hold.
    any_store.use_brake(BrakeRule(window=50, ratio=0.2))
    proxy = start_proxy(upstream.address, proxy_store=any_store)
    prospects = [f"p{n:02d}@prospect.test" for n in range(50)]
    assert send_all(proxy.port, prospects) == [250] * 50
    # Soft bounces and out-of-office replies never count.
    for address in prospects[20:40]:
        bounce(any_store, address, hard=False)
    for address in prospects[40:]:
        any_store.record_event(
            Event(kind="auto_reply", created_at=time.time(), campaign="spring", sender=address),
            set_status=[StatusChange("spring", address, PAUSED, "out of office", None)],
        )
    for address in prospects[1:11]:
        bounce(any_store, address)
    assert status(any_store) == "active"
    assert send_all(proxy.port, ["new1@prospect.test"]) == [250]
    # The window is the last 50 sends: p00 left it, p01 to p10 are still in.
    bounce(any_store, prospects[11])  # the eleventh
    assert status(any_store) == "braked"
    (braked,) = any_store.events(kind="braked")
    assert braked.campaign == "spring" and braked.detail["hard_bounces"] == 11
    assert braked.detail["sends"] == 50  # the last 50 of 51 sends
    assert any_store.outbox_counts()["pending"] >= 1  # the webhook is queued
    # The proxy defers the campaign's mail, to new and enrolled recipients alike.
    arrived, recorded = len(upstream.received), len(any_store.messages(campaign="spring"))
    with smtplib.SMTP("127.0.0.1", proxy.port, timeout=30) as client:
        client.ehlo("engine.test")
        client.mail("sam@seller.test")
        client.rcpt("new2@prospect.test")
        client.rcpt(prospects[15])
        code, text = client.data(mail())
    assert code == 450
    assert text.decode().startswith("4.7.1 not sent now: campaign spring is braked (11 hard")
    assert "replytrack resume --campaign spring" in text.decode()
    assert len(upstream.received) == arrived
    assert len(any_store.messages(campaign="spring")) == recorded
    assert send_all(proxy.port, ["x@other.test"], campaign="autumn") == [250]
    # A later hard bounce records no second brake.
    bounce(any_store, prospects[12])
    assert len(any_store.events(kind="braked")) == 1

    result = CliRunner().invoke(
        cli,
        ["--config", "none", "--db", db_of(any_store, tmp_path, request), *RESUME],
    )
    assert result.exit_code == 0, result.output
    assert "resumed campaign spring" in result.output
    assert status(any_store) == "active"
    assert send_all(proxy.port, ["new2@prospect.test"]) == [250]
    # The count starts again from the resume: the old bounces do not brake it again.
    bounce(any_store, prospects[13])
    assert status(any_store) == "active"


def test_the_default_brake_is_more_than_five_percent_of_fifty(any_store: Any) -> None:
    from replytrack.store import OutboundRecipient, OutboundRecord

    now = time.time()
    prospects = [f"p{n}@prospect.test" for n in range(10)]
    for n, address in enumerate(prospects):
        any_store.record_outbound(
            OutboundRecord(
                message_id=f"m{n}@{DOMAIN}",
                original_message_id=None,
                campaign="spring",
                step=1,
                sender="sam@seller.test",
                from_address=None,
                subject="hi",
                size=10,
                status="relayed",
                recipients=(OutboundRecipient(address, "to", True),),
                created_at=now + n,
            )
        )
    # A young campaign: 2 of 10 bounced is under 2.5 bounces; the third brakes it.
    bounce(any_store, prospects[0])
    bounce(any_store, prospects[1])
    assert status(any_store) == "active"
    bounce(any_store, prospects[2])
    assert status(any_store) == "braked"
    assert "3 hard bounces in its last 10 sends" in (
        any_store.campaign_stats("spring")[0].reason or ""
    )
