# ruff: noqa: F811  (pytest fixtures imported from tests.support.upstream are parameters)
"""Campaign sequences through the real proxy: threaded follow-ups (In-Reply-To, References,
Outlook Thread-Topic / Thread-Index), honest deferrals for paused prospects, the 250 that
says who was left out, and ``proxy.stamp`` keeping a person's own Message-ID. Each store
backend in turn where the store decides."""

from __future__ import annotations

import base64
import datetime as dt
import smtplib
import time
from typing import Any

import pytest
from click.testing import CliRunner

from replytrack.cli import cli
from replytrack.headers import extract_msgids, parse_fields, split_message
from replytrack.milter import match as matching
from replytrack.proxy import threading
from replytrack.store import PAUSED, STOPPED, Event, StatusChange
from replytrack.tokens import Keyring
from tests.support.upstream import (  # noqa: F401  (fixtures)
    DOMAIN,
    RecordingUpstream,
    start_proxy,
    upstream,
)

pytestmark = pytest.mark.timeout(120)

PAT = "pat@prospect.test"


def step(n: int, *extra: str, campaign: str = "spring", to: str = PAT) -> bytes:
    head = [
        "From: Sam Seller <sam@seller.test>",
        f"To: {to}",
        f"Subject: {'Re: ' if n > 1 else ''}Quick question about Acme",
        f"X-ReplyTrack-Campaign: {campaign}",
        f"X-ReplyTrack-Step: {n}",
        *extra,
    ]
    return ("\r\n".join(head) + f"\r\n\r\nStep {n} body.\r\n").encode()


def send(port: int, recipients: list[str], data: bytes) -> tuple[int, str]:
    """Send one mail; the DATA reply's code and text (also for a refusal)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("engine.test")
        client.mail("sam@seller.test")
        for rcpt in recipients:
            client.rcpt(rcpt)
        code, text = client.data(data)
    return code, text.decode()


def header(data: bytes) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for f in parse_fields(split_message(data)[0]):
        found.setdefault(f.name.lower(), []).append(" ".join(f.value.split()))
    return found


def one(data: bytes, name: str) -> str:
    values = header(data).get(name.lower(), [])
    assert len(values) == 1, (name, values)
    return values[0]


# --- threaded follow-ups ------------------------------------------------------------------------
def test_a_three_step_sequence_arrives_as_one_thread(
    start_proxy, upstream: RecordingUpstream, any_store: Any
) -> None:
    proxy = start_proxy(upstream.address, proxy_store=any_store)
    for n in (1, 2, 3):
        code, _ = send(proxy.port, [PAT], step(n, "X-ReplyTrack-Thread: previous"))
        assert code == 250
    first, second, third = (r.data for r in upstream.received)
    ids = [extract_msgids(one(d, "Message-ID"))[0] for d in (first, second, third)]
    assert all(i.endswith(f"@{DOMAIN}") for i in ids) and len(set(ids)) == 3
    # The first step starts the thread; each later one answers the one before it.
    assert "in-reply-to" not in header(first) and "references" not in header(first)
    assert one(second, "In-Reply-To") == f"<{ids[0]}>"
    assert one(second, "References") == f"<{ids[0]}>"
    assert one(third, "In-Reply-To") == f"<{ids[1]}>"
    assert one(third, "References") == f"<{ids[0]}> <{ids[1]}>"
    # Outlook: one topic (the first subject, no Re:), an index extended by 5 bytes a step.
    assert {one(d, "Thread-Topic") for d in (first, second, third)} == {"Quick question about Acme"}
    index = [base64.b64decode(one(d, "Thread-Index")) for d in (first, second, third)]
    assert [len(i) for i in index] == [22, 27, 32]
    assert index[0][0] == 0x01
    assert index[1].startswith(index[0]) and index[2].startswith(index[1])
    # The metadata header never leaves; the index root is kept on the enrollment.
    assert all("x-replytrack-thread" not in header(d) for d in (first, second, third))
    history = any_store.thread_history("spring", PAT)
    assert history.message_ids == tuple(ids)
    assert history.index == base64.b64encode(index[0]).decode()


def test_threading_follows_the_first_to_recipient_and_keeps_the_clients_own_fields(
    start_proxy, upstream: RecordingUpstream, store: Any
) -> None:
    proxy = start_proxy(upstream.address)
    send(proxy.port, [PAT], step(1))
    lee = "lee@prospect.test"
    # Lee is new to the campaign; the mail is threaded by Pat, its first To address.
    code, _ = send(
        proxy.port,
        [lee, PAT],
        step(2, "X-ReplyTrack-Thread: previous", "Thread-Topic: Ours", to=f"{PAT}, {lee}"),
    )
    assert code == 250
    first, second = (r.data for r in upstream.received)
    assert one(second, "In-Reply-To") == one(first, "Message-ID")
    assert one(second, "Thread-Topic") == "Ours"
    # The first step asked for nothing, so the root starts at its time, now.
    assert len(base64.b64decode(one(second, "Thread-Index"))) == 27


def test_the_site_default_threads_unless_a_mail_declines(
    start_proxy, upstream: RecordingUpstream
) -> None:
    proxy = start_proxy(upstream.address, proxy_thread_followups=True)
    for n in (1, 2):
        send(proxy.port, [PAT], step(n))
    send(proxy.port, [PAT], step(3, "X-ReplyTrack-Thread: new"))
    _, second, third = (r.data for r in upstream.received)
    assert "in-reply-to" in header(second)
    assert "in-reply-to" not in header(third) and "thread-index" not in header(third)


def test_a_bad_thread_value_is_refused(start_proxy, upstream: RecordingUpstream) -> None:
    proxy = start_proxy(upstream.address)
    code, text = send(proxy.port, [PAT], step(1, "X-ReplyTrack-Thread: yes please"))
    assert code == 550 and text.startswith("5.6.0 X-ReplyTrack-Thread")
    assert upstream.received == []


def test_thread_index_blocks_follow_the_format() -> None:
    guid = bytes(range(16))
    started = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC).timestamp()
    root = threading.index_root(started, guid)
    assert len(root) == 22 and root[0] == 0x01 and root[6:] == guid
    later = started + 3 * 86400
    block = threading.child_block(root, later, b"x")
    value = int.from_bytes(block, "big")
    assert value >> 39 == 0  # under ~1.1 years: delta code 0, units of 2^18 ticks
    delta = threading.filetime(later) - (int.from_bytes(root[:6], "big") << 16)
    assert (value >> 8) & 0x7FFF_FFFF == delta >> 18
    far = threading.child_block(root, started + 3 * 365 * 86400, b"x")
    assert int.from_bytes(far, "big") >> 39 == 1


# --- honest answers -----------------------------------------------------------------------------
def pause(store: Any, address: str, until: float, campaign: str = "spring") -> None:
    store.record_event(
        Event(kind="auto_reply", created_at=time.time(), campaign=campaign, sender=address),
        set_status=[StatusChange(campaign, address, PAUSED, "out of office", until)],
    )


def stop(store: Any, address: str, campaign: str = "spring") -> None:
    store.record_event(
        Event(kind="reply", created_at=time.time(), campaign=campaign, sender=address),
        set_status=[StatusChange(campaign, address, STOPPED, f"reply from {address}")],
    )


def test_a_paused_prospects_step_is_deferred_with_the_return_date(
    start_proxy, upstream: RecordingUpstream, any_store: Any
) -> None:
    proxy = start_proxy(upstream.address, proxy_store=any_store)
    send(proxy.port, [PAT], step(1))
    back = dt.datetime(2026, 12, 10, tzinfo=dt.UTC).timestamp()
    pause(any_store, PAT, back)
    code, text = send(proxy.port, [PAT], step(2))
    # A 4xx: the engine keeps the step and sends it again; never a permanent 5xx.
    assert code == 450
    assert text.startswith("4.2.1 ") and "paused until 2026-12-10" in text
    assert len(upstream.received) == 1
    assert len(any_store.messages(campaign="spring")) == 1  # nothing recorded per retry


def test_mixed_recipients_go_to_the_active_ones_and_the_250_says_who_did_not(
    start_proxy, upstream: RecordingUpstream, any_store: Any
) -> None:
    proxy = start_proxy(upstream.address, proxy_store=any_store)
    lee, kim = "lee@prospect.test", "kim@prospect.test"
    send(proxy.port, [PAT, lee, kim], step(1, to=f"{PAT}, {lee}, {kim}"))
    pause(any_store, PAT, dt.datetime(2026, 12, 10, tzinfo=dt.UTC).timestamp())
    stop(any_store, kim)
    code, text = send(proxy.port, [PAT, lee, kim], step(2, to=f"{PAT}, {lee}, {kim}"))
    assert code == 250
    assert "relayed to 1 of 3 recipients (1 suppressed: stopped;" in text
    assert "1 paused until 2026-12-10, not sent)" in text
    assert upstream.received[-1].rcpt_tos == [lee]


def test_with_only_stopped_recipients_the_refusal_stays_permanent(
    start_proxy, upstream: RecordingUpstream, store: Any
) -> None:
    proxy = start_proxy(upstream.address)
    send(proxy.port, [PAT], step(1))
    stop(store, PAT)
    code, text = send(proxy.port, [PAT], step(2))
    assert code == 550 and text.startswith("5.7.1")
    assert len(upstream.received) == 1  # only step 1 went out
    assert [m.status for m in store.messages()] == ["suppressed", "relayed"]


# --- proxy.stamp --------------------------------------------------------------------------------
PERSONAL = (
    b"From: Sam Seller <sam@seller.test>\r\nTo: ann@customer.test\r\nSubject: lunch?\r\n"
    b"Message-ID: <9f1c2e@laptop.seller.test>\r\n\r\nTuesday?\r\n"
)


def test_stamp_campaign_keeps_a_one_to_one_message_id_and_a_reply_still_matches(
    start_proxy, upstream: RecordingUpstream, any_store: Any, keyring: Keyring
) -> None:
    proxy = start_proxy(upstream.address, proxy_store=any_store)  # the default: campaign
    code, text = send(proxy.port, ["ann@customer.test"], PERSONAL)
    assert code == 250 and text.startswith("2.0.0 <9f1c2e@laptop.seller.test> relayed")
    got = header(upstream.received[0].data)
    assert got["message-id"] == ["<9f1c2e@laptop.seller.test>"]
    assert "x-original-message-id" not in got
    (sent,) = any_store.messages()
    assert sent.message_id == "9f1c2e@laptop.seller.test" and sent.original_message_id is None
    # The milter's matching finds it like one of ours: by a store lookup of the ID.
    reply = [("In-Reply-To", "<9f1c2e@laptop.seller.test>")]
    found = matching.match(
        matching.screen(reply, keyring=keyring, domain=DOMAIN), any_store.find_sent
    )
    assert found is not None and found.primary.message_id == "9f1c2e@laptop.seller.test"
    # Campaign mail still leaves with ours.
    send(proxy.port, [PAT], step(1))
    assert one(upstream.received[-1].data, "Message-ID").endswith(f"@{DOMAIN}>")


def test_a_kept_message_id_sent_again_gets_ours(start_proxy, upstream, store: Any) -> None:
    proxy = start_proxy(upstream.address)
    send(proxy.port, ["ann@customer.test"], PERSONAL)
    code, _ = send(proxy.port, ["ann@customer.test"], PERSONAL)
    assert code == 250
    again = header(upstream.received[1].data)
    assert again["message-id"][0].endswith(f"@{DOMAIN}>")
    assert again["x-original-message-id"] == ["<9f1c2e@laptop.seller.test>"]
    assert len(store.messages()) == 2


def test_stamp_always_puts_ours_on_every_mail(start_proxy, upstream: RecordingUpstream) -> None:
    proxy = start_proxy(upstream.address, proxy_stamp="always")
    send(proxy.port, ["ann@customer.test"], PERSONAL)
    got = header(upstream.received[0].data)
    assert got["message-id"][0].endswith(f"@{DOMAIN}>")
    assert got["x-original-message-id"] == ["<9f1c2e@laptop.seller.test>"]


def test_proxy_stamp_takes_only_its_three_values(tmp_path) -> None:
    result = CliRunner().invoke(
        cli,
        ["--config", "none", "--db", str(tmp_path / "x.db"), "messages"],
        env={"REPLYTRACK_PROXY_STAMP": "sometimes"},
    )
    assert result.exit_code != 0 and "proxy.stamp" in result.output
