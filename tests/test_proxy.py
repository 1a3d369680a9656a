# ruff: noqa: F811  (pytest fixtures imported from tests.support.upstream are parameters)
"""The outbound proxy end to end: smtplib client -> proxy -> recording aiosmtpd upstream.

Every test asserts what arrived upstream (bytes) and what the store holds, not only the
reply the client got.
"""

from __future__ import annotations

import smtplib
import socket
import time

import pytest

from replytrack.headers import parse_fields, split_message
from replytrack.proxy.internals import InitPlan
from replytrack.proxy.testing import ThreadedProxy
from replytrack.store import Event, StatusChange
from replytrack.store.sqlite import SQLiteStore
from replytrack.tokens import Keyring, verify
from tests.support.upstream import (  # noqa: F401  (fixtures)
    DOMAIN,
    RecordingUpstream,
    proxy,
    start_proxy,
    upstream,
)

pytestmark = pytest.mark.timeout(60)

BODY = (
    b"Hello,\r\n"
    b"caf\xc3\xa9 cr\xc3\xa8me 8-bit line\r\n" + b"x" * 5000 + b"\r\n"
    b".leading dot line\r\n"
    b"trailing spaces   \r\n"
    b"\r\n"
    b"-- \r\nsig\r\n"
)


def message(*headers: str, body: bytes = BODY) -> bytes:
    return "".join(h + "\r\n" for h in headers).encode() + b"\r\n" + body


CAMPAIGN_MAIL = message(
    "From: Seller <seller@example.org>",
    "To: Pat <pat@prospect.test>",
    "Cc: lee@prospect.test",
    "Subject: Quick question",
    "Message-ID: <client-1@engine.example.org>",
    "X-ReplyTrack-Campaign: spring-2026",
    "X-ReplyTrack-Step: 2",
    "X-Original-Message-ID: <planted@evil.test>",
    "X-ReplyTrack: reply; campaign=forged",
)


def fields(data: bytes) -> list[tuple[str, str]]:
    header, _ = split_message(data)
    return [(f.name.lower(), f.value) for f in parse_fields(header)]


def send(port: int, sender: str, recipients: list[str], data: bytes, **kw) -> dict:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        return client.sendmail(sender, recipients, data, **kw)


def rows(store: SQLiteStore, sql: str, *params: object) -> list[dict]:
    return [dict(r) for r in store.conn.execute(sql, params).fetchall()]


def test_campaign_mail_is_stamped_recorded_and_relayed(
    proxy: ThreadedProxy, upstream: RecordingUpstream, store: SQLiteStore, keyring: Keyring
) -> None:
    with smtplib.SMTP("127.0.0.1", proxy.port) as client:
        client.ehlo()
        assert client.has_extn("8bitmime") and client.has_extn("smtputf8")
        client.mail("seller@example.org", ["BODY=8BITMIME"])
        client.rcpt("pat@prospect.test")
        client.rcpt("lee@prospect.test")
        client.rcpt("boss@example.org")
        code, text = client.data(CAMPAIGN_MAIL)
    assert code == 250

    [got] = upstream.received
    assert got.mail_from == "seller@example.org"
    assert "BODY=8BITMIME" in got.mail_options
    assert got.rcpt_tos == ["pat@prospect.test", "lee@prospect.test", "boss@example.org"]
    header = fields(got.data)
    msgids = [v for n, v in header if n == "message-id"]
    assert len(msgids) == 1
    ours = msgids[0].strip("<>")
    assert ours.endswith("@" + DOMAIN) and verify(keyring, ours)
    assert ours.encode() in text
    assert [v for n, v in header if n == "x-original-message-id"] == [
        "<client-1@engine.example.org>"
    ]
    assert not [n for n, _ in header if n.startswith("x-replytrack")]
    # The body (everything after the header block) arrives byte for byte.
    assert split_message(got.data)[1] == split_message(CAMPAIGN_MAIL)[1]
    # Untouched header fields keep their bytes and order.
    assert b"From: Seller <seller@example.org>\r\nTo: Pat <pat@prospect.test>\r\n" in got.data

    [msg] = store.messages()
    assert msg.message_id == ours
    assert msg.original_message_id == "client-1@engine.example.org"
    assert (msg.campaign, msg.step, msg.status) == ("spring-2026", 2, "relayed")
    assert msg.sender == "seller@example.org"
    assert msg.subject == "Quick question"
    roles = {r.address: (r.role, r.envelope, r.status) for r in msg.recipients}
    assert roles == {
        "pat@prospect.test": ("to", True, "sent"),
        "lee@prospect.test": ("cc", True, "sent"),
        "boss@example.org": ("bcc", True, "sent"),
    }
    # The reply is matched by either ID.
    assert [m.message_id for m in store.find_sent(["client-1@engine.example.org"])] == [ours]
    # The first campaign mail enrolled every recipient.
    enrolled = {(e.recipient, e.status) for e in store.enrollments(campaign="spring-2026")}
    assert enrolled == {
        ("pat@prospect.test", "active"),
        ("lee@prospect.test", "active"),
        ("boss@example.org", "active"),
    }
    [row] = rows(store, "SELECT upstream_reply FROM messages")
    assert "queued as UP1" in row["upstream_reply"]


def test_mail_without_metadata_or_message_id_is_still_stamped(
    proxy: ThreadedProxy, upstream: RecordingUpstream, store: SQLiteStore
) -> None:
    data = message("From: a@example.org", "To: b@example.net", "Subject: hi", body=b"one\r\n")
    assert send(proxy.port, "a@example.org", ["b@example.net"], data) == {}
    [got] = upstream.received
    header = fields(got.data)
    assert len([1 for n, _ in header if n == "message-id"]) == 1
    assert not [1 for n, _ in header if n == "x-original-message-id"]
    [msg] = store.messages()
    assert msg.campaign is None and msg.step is None and msg.original_message_id is None
    assert msg.status == "relayed"
    assert store.enrollments() == []


@pytest.mark.parametrize("mode", ["always", "campaign"])
def test_duplicate_client_message_ids_leave_as_one(
    start_proxy, upstream: RecordingUpstream, mode: str
) -> None:
    proxy = start_proxy(upstream.address, proxy_stamp=mode)
    data = message("Message-ID: <a@x.test>", "message-id: <b@x.test>", "To: b@example.net")
    send(proxy.port, "a@example.org", ["b@example.net"], data)
    header = fields(upstream.received[0].data)
    assert len([1 for n, _ in header if n == "message-id"]) == 1
    originals = [v for n, v in header if n == "x-original-message-id"]
    if mode == "always":
        assert originals == ["<a@x.test>"]
    else:
        # One-to-one mail keeps the client's first ID, and only that one leaves.
        assert originals == [] and [v for n, v in header if n == "message-id"] == ["<a@x.test>"]


def test_smtputf8_passes_through(
    proxy: ThreadedProxy, upstream: RecordingUpstream, store: SQLiteStore
) -> None:
    data = message("To: jöran@exämple.test", "Subject: grüße").replace(b"\xc3\xb6", b"\xc3\xb6")
    with smtplib.SMTP("127.0.0.1", proxy.port) as client:
        client.ehlo()
        client.mail("sälj@example.org", ["SMTPUTF8", "BODY=8BITMIME"])
        client.rcpt("jöran@exämple.test")
        code, _ = client.data(data)
    assert code == 250
    [got] = upstream.received
    assert "SMTPUTF8" in got.mail_options
    assert got.mail_from == "sälj@example.org"
    assert got.rcpt_tos == ["jöran@exämple.test"]
    assert store.messages()[0].recipients[0].address == "jöran@exämple.test"


def test_smtputf8_refused_when_upstream_lacks_it(start_proxy, store: SQLiteStore) -> None:
    with RecordingUpstream(smtputf8=False) as plain:
        proxy = start_proxy(plain.address)
        with smtplib.SMTP("127.0.0.1", proxy.port) as client:
            client.ehlo()
            code, text = client.mail("sälj@example.org", ["SMTPUTF8"])
            assert (code, text[:5]) == (553, b"5.6.7")
        assert plain.received == []
    assert store.messages() == []


def test_non_ascii_address_without_smtputf8_is_refused(
    proxy: ThreadedProxy, upstream: RecordingUpstream
) -> None:
    with smtplib.SMTP("127.0.0.1", proxy.port) as client:
        client.ehlo()
        client.command_encoding = "utf-8"
        code, text = client.docmd("MAIL FROM:<sälj@example.org>")
    assert (code, text[:5]) == (553, b"5.6.7")
    assert upstream.handler.commands.count("MAIL") == 0


def test_size_limit(start_proxy, upstream: RecordingUpstream, store: SQLiteStore) -> None:
    proxy = start_proxy(upstream.address, proxy_max_size=2000)
    big = message("To: b@example.net", body=b"y" * 70 + b"\r\n") * 40
    with smtplib.SMTP("127.0.0.1", proxy.port) as client:
        client.ehlo()
        # Announced size over the limit: refused at MAIL.
        code, text = client.mail("a@example.org", ["SIZE=5000"])
        assert (code, text[:5]) == (552, b"5.3.4")
        # Not announced: refused at the end of DATA.
        client.rset()
        assert client.mail("a@example.org")[0] == 250
        assert client.rcpt("b@example.net")[0] == 250
        code, text = client.data(big)
        assert (code, text[:5]) == (552, b"5.3.4")
    assert upstream.received == []
    assert store.messages() == []


def raw_session(port: int, lines: list[bytes]) -> list[bytes]:
    """Send raw command lines one by one; return the reply to each."""
    replies = []
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        for line in lines:
            sock.sendall(line)
            reply = reader.readline()
            while reply[3:4] == b"-":
                reply = reader.readline()
            replies.append(reply)
    return replies


@pytest.mark.parametrize("bad", [b"\r", b"\x00"])
def test_control_characters_in_envelope_addresses_are_refused(
    proxy: ThreadedProxy, upstream: RecordingUpstream, bad: bytes
) -> None:
    replies = raw_session(
        proxy.port,
        [
            b"EHLO client.test\r\n",
            b"MAIL FROM:<a" + bad + b"b@example.org>\r\n",
            b"MAIL FROM:<a@example.org>\r\n",
            b"RCPT TO:<b" + bad + b"c@example.net>\r\n",
            b"QUIT\r\n",
        ],
    )
    assert replies[1].startswith(b"501 5.1.7")
    assert replies[2].startswith(b"250")
    assert replies[3].startswith(b"501 5.1.3")
    assert upstream.handler.commands.count("RCPT") == 0


def test_bare_lf_in_envelope_address_never_opens_a_transaction(
    proxy: ThreadedProxy, upstream: RecordingUpstream
) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=20) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(b"EHLO client.test\r\n")
        while reader.readline()[3:4] == b"-":
            pass
        sock.sendall(b"MAIL FROM:<a\nb@example.org>\r\nQUIT\r\n")
        replies = reader.read()
    assert replies.startswith(b"501 5.1.7")
    assert b"\n250 2.1.0" not in b"\n" + replies
    assert upstream.handler.commands.count("MAIL") == 0


def test_upstream_connections_are_reused(
    proxy: ThreadedProxy, upstream: RecordingUpstream, store: SQLiteStore
) -> None:
    for n in range(5):
        send(proxy.port, "a@example.org", ["b@example.net"], message(f"Subject: {n}"))
    assert len(upstream.received) == 5
    # Client connections after the first were set up from the cached constructor plan.
    assert isinstance(proxy.server.smtp_plans.plan, InitPlan)
    assert upstream.handler.connections == 1
    assert upstream.handler.commands.count("EHLO") == 1
    assert len(store.messages()) == 5


def test_rset_ends_the_upstream_transaction(
    proxy: ThreadedProxy, upstream: RecordingUpstream
) -> None:
    with smtplib.SMTP("127.0.0.1", proxy.port) as client:
        client.ehlo()
        client.mail("a@example.org")
        client.rcpt("first@example.net")
        client.rset()
        client.sendmail("a@example.org", ["second@example.net"], message("Subject: 2"))
    assert "RSET" in upstream.handler.commands
    [got] = upstream.received
    assert got.rcpt_tos == ["second@example.net"]
    assert upstream.handler.connections == 1


def test_dead_pooled_connection_is_replaced_without_failing_the_mail(
    proxy: ThreadedProxy, upstream: RecordingUpstream, store: SQLiteStore
) -> None:
    # The upstream closes each connection shortly after a transaction, while it idles in
    # the pool; the next MAIL finds it dead and must go out on a fresh connection.
    upstream.faults.drop_idle = True
    for n in range(3):
        assert send(proxy.port, "a@example.org", ["b@example.net"], message(f"Subject: {n}")) == {}
        time.sleep(0.3)
    assert len(upstream.received) == 3
    assert upstream.handler.connections == 3
    assert [m.status for m in store.messages()] == ["relayed"] * 3


def stop_enrollment(store: SQLiteStore, campaign: str, address: str, reason: str) -> None:
    store.record_event(
        Event(kind="stopped", created_at=time.time(), campaign=campaign, recipient=address),
        set_status=[StatusChange(campaign, address, "stopped", reason)],
        notify=False,
    )


def test_stopped_recipient_is_suppressed_and_others_get_the_mail(
    proxy: ThreadedProxy, upstream: RecordingUpstream, store: SQLiteStore
) -> None:
    send(
        proxy.port, "seller@example.org", ["pat@prospect.test", "lee@prospect.test"], CAMPAIGN_MAIL
    )
    stop_enrollment(store, "spring-2026", "pat@prospect.test", "replied")
    step3 = CAMPAIGN_MAIL.replace(b"X-ReplyTrack-Step: 2", b"X-ReplyTrack-Step: 3")
    refused = send(
        proxy.port, "seller@example.org", ["pat@prospect.test", "lee@prospect.test"], step3
    )
    assert refused == {}
    assert len(upstream.received) == 2
    assert upstream.received[1].rcpt_tos == ["lee@prospect.test"]
    latest = store.messages()[0]
    assert latest.step == 3 and latest.status == "relayed"
    statuses = {r.address: (r.status, r.reason) for r in latest.recipients}
    assert statuses["pat@prospect.test"] == ("suppressed", "stopped: replied")
    assert statuses["lee@prospect.test"] == ("sent", None)
    events = store.events(kind="suppressed")
    assert [(e.recipient, e.campaign) for e in events] == [("pat@prospect.test", "spring-2026")]


def test_the_transaction_opened_again_without_a_suppressed_recipient_keeps_mail_from(
    proxy: ThreadedProxy, upstream: RecordingUpstream, store: SQLiteStore
) -> None:
    """Without the stopped recipient, the upstream sees the same MAIL FROM as before the
    RSET: the UTF-8 sender, SMTPUTF8 and 8BITMIME, never the proxy's own SIZE."""
    stop_enrollment(store, "spring-2026", "pat@prospect.test", "replied")
    with smtplib.SMTP("127.0.0.1", proxy.port, timeout=30) as client:
        client.ehlo()
        assert client.mail("sälj@example.org", ["SMTPUTF8", "BODY=8BITMIME", "SIZE=9000"])[0] == 250
        assert client.rcpt("pat@prospect.test")[0] == 250
        assert client.rcpt("jöran@prospect.test")[0] == 250
        code, _ = client.data(CAMPAIGN_MAIL)
    assert code == 250
    [got] = upstream.received
    assert got.mail_from == "sälj@example.org"
    assert got.mail_options == ["SMTPUTF8", "BODY=8BITMIME"]
    assert got.rcpt_tos == ["jöran@prospect.test"]
    [mail] = store.messages()
    statuses = {r.address: r.status for r in mail.recipients}
    assert statuses["pat@prospect.test"] == "suppressed"
    assert statuses["jöran@prospect.test"] == "sent"


def test_all_recipients_suppressed_gives_550_and_nothing_upstream(
    proxy: ThreadedProxy, upstream: RecordingUpstream, store: SQLiteStore
) -> None:
    send(proxy.port, "seller@example.org", ["pat@prospect.test"], CAMPAIGN_MAIL)
    stop_enrollment(store, "spring-2026", "pat@prospect.test", "replied")
    with pytest.raises(smtplib.SMTPDataError) as err:
        send(proxy.port, "seller@example.org", ["pat@prospect.test"], CAMPAIGN_MAIL)
    assert err.value.smtp_code == 550
    text = err.value.smtp_error.decode()
    assert text.startswith("5.7.1") and "pat@prospect.test stopped" in text and "replied" in text
    assert len(upstream.received) == 1
    latest = store.messages()[0]
    assert latest.status == "suppressed"
    assert [r.status for r in latest.recipients if r.envelope] == ["suppressed"]
    assert len(store.events(kind="suppressed")) == 1


def test_suppression_is_per_campaign(
    proxy: ThreadedProxy, upstream: RecordingUpstream, store: SQLiteStore
) -> None:
    stop_enrollment(store, "other-campaign", "pat@prospect.test", "replied")
    send(proxy.port, "seller@example.org", ["pat@prospect.test"], CAMPAIGN_MAIL)
    assert upstream.received[0].rcpt_tos == ["pat@prospect.test"]


@pytest.mark.parametrize(
    ("header", "why"),
    [
        ("X-ReplyTrack-Campaign: " + "c" * 201, "longer than 200"),
        ("X-ReplyTrack-Campaign: bad\x01id", "ASCII letters, digits"),
        ("X-ReplyTrack-Step: two", "integer"),
    ],
)
def test_bad_metadata_is_refused_with_550_5_6_0(
    proxy: ThreadedProxy, upstream: RecordingUpstream, store: SQLiteStore, header: str, why: str
) -> None:
    headers = ["To: b@example.net", header]
    if "Step" in header:
        headers.append("X-ReplyTrack-Campaign: c1")
    with pytest.raises(smtplib.SMTPDataError) as err:
        send(proxy.port, "a@example.org", ["b@example.net"], message(*headers))
    assert err.value.smtp_code == 550
    assert err.value.smtp_error.startswith(b"5.6.0") and why in err.value.smtp_error.decode()
    assert upstream.received == []
    assert store.messages() == []


def test_many_messages_on_one_client_connection(
    proxy: ThreadedProxy, upstream: RecordingUpstream, store: SQLiteStore
) -> None:
    with smtplib.SMTP("127.0.0.1", proxy.port) as client:
        for n in range(4):
            client.sendmail("a@example.org", [f"r{n}@example.net"], message(f"Subject: {n}"))
    assert [r.rcpt_tos for r in upstream.received] == [[f"r{n}@example.net"] for n in range(4)]
    assert len({m.message_id for m in store.messages()}) == 4


def test_stopped_campaign_suppresses_every_recipient_until_resumed(
    proxy: ThreadedProxy, upstream: RecordingUpstream, store: SQLiteStore, tmp_path
) -> None:
    from click.testing import CliRunner

    from replytrack.cli import cli

    def run(*args: str) -> str:
        db = str(tmp_path / "replytrack.db")
        result = CliRunner().invoke(cli, ["--db", db, "--domain", DOMAIN, *args])
        assert result.exit_code == 0, (result.output, result.exception)
        return result.output

    send(proxy.port, "seller@example.org", ["pat@prospect.test"], CAMPAIGN_MAIL)
    run("stop", "--campaign", "spring-2026", "--reason", "pricing changed")
    # A recipient never mailed before is not sent the campaign's mail either.
    with pytest.raises(smtplib.SMTPDataError) as err:
        send(
            proxy.port,
            "seller@example.org",
            ["new@prospect.test", "pat@prospect.test"],
            CAMPAIGN_MAIL,
        )
    assert err.value.smtp_code == 550
    text = err.value.smtp_error.decode()
    assert text == "5.7.1 not sent: campaign spring-2026 is stopped (pricing changed)"
    assert len(upstream.received) == 1
    latest = store.messages()[0]
    assert latest.status == "suppressed"
    assert {r.address: r.status for r in latest.recipients if r.envelope} == {
        "new@prospect.test": "suppressed",
        "pat@prospect.test": "suppressed",
    }
    assert store.enrollments(recipient="new@prospect.test") == []
    assert {e.recipient for e in store.events(kind="suppressed")} == {
        "new@prospect.test",
        "pat@prospect.test",
    }
    # Other campaigns and one-to-one mail are not affected.
    other = CAMPAIGN_MAIL.replace(b"spring-2026", b"autumn-2026")
    send(proxy.port, "seller@example.org", ["new@prospect.test"], other)
    assert upstream.received[-1].rcpt_tos == ["new@prospect.test"]

    run("resume", "--campaign", "spring-2026")
    send(proxy.port, "seller@example.org", ["new@prospect.test"], CAMPAIGN_MAIL)
    assert upstream.received[-1].rcpt_tos == ["new@prospect.test"]
    (enrollment,) = store.enrollments(campaign="spring-2026", recipient="new@prospect.test")
    assert enrollment.status == "active"


@pytest.mark.parametrize("reply", ["550 5.7.1 content refused", "451 4.3.0 try later"])
def test_mail_the_upstream_refuses_enrolls_and_suppresses_nobody(
    proxy: ThreadedProxy, upstream: RecordingUpstream, store: SQLiteStore, reply: str
) -> None:
    # Pat is stopped in the campaign already; Lee is new to it.
    stop_enrollment(store, "spring-2026", "pat@prospect.test", "replied")
    recipients = ["pat@prospect.test", "lee@prospect.test"]
    upstream.faults.data_reply = reply
    for _ in range(2):
        # The client tries again after a refusal, as it would after a 4xx.
        with pytest.raises(smtplib.SMTPDataError) as err:
            send(proxy.port, "seller@example.org", recipients, CAMPAIGN_MAIL)
        assert err.value.smtp_code == int(reply[:3])
    assert upstream.received == []
    assert [e.recipient for e in store.enrollments(campaign="spring-2026")] == ["pat@prospect.test"]
    assert store.events(kind="suppressed") == []
    # Accepted at last: Lee is enrolled, Pat's suppression recorded, each once.
    upstream.faults.data_reply = None
    assert send(proxy.port, "seller@example.org", recipients, CAMPAIGN_MAIL) == {}
    [got] = upstream.received
    assert got.rcpt_tos == ["lee@prospect.test"]
    enrolled = {e.recipient: e.status for e in store.enrollments(campaign="spring-2026")}
    assert enrolled == {"pat@prospect.test": "stopped", "lee@prospect.test": "active"}
    events = store.events(kind="suppressed")
    assert [(e.recipient, e.campaign) for e in events] == [("pat@prospect.test", "spring-2026")]
    assert [m.status for m in store.messages()] == ["relayed", "failed", "failed"]
