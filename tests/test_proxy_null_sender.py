"""The null reverse-path, MAIL FROM:<> (delivery reports, Postfix's own bounces in the
content_filter mode): accepted, relayed as <> and recorded like any mail, with the same
command checks as any other sender."""

# ruff: noqa: F811  (pytest fixtures imported from tests.support.upstream are parameters)

from __future__ import annotations

import smtplib

import pytest

from replytrack.headers import parse_fields, split_message
from replytrack.proxy.testing import ThreadedProxy
from replytrack.store.sqlite import SQLiteStore
from tests.support.upstream import (  # noqa: F401  (fixtures)
    DOMAIN,
    RecordingUpstream,
    proxy,
    start_proxy,
    upstream,
)
from tests.test_proxy import raw_session

pytestmark = pytest.mark.timeout(60)

REPORT = (
    b"From: Mail Delivery System <MAILER-DAEMON@example.org>\r\n"
    b"To: seller@example.org\r\n"
    b"Subject: Undelivered Mail Returned to Sender\r\n"
    b"Message-ID: <bounce-1@example.org>\r\n"
    b"Content-Type: text/plain\r\n"
    b"\r\n"
    b"This is the mail system at host example.org.\r\n"
)


def test_null_sender_is_relayed_as_null_and_recorded(
    start_proxy, upstream: RecordingUpstream, store: SQLiteStore
) -> None:
    # proxy.stamp = always: our Message-ID on every mail, a report's own kept beside it.
    proxy = start_proxy(upstream.address, proxy_stamp="always")
    with smtplib.SMTP("127.0.0.1", proxy.port, timeout=30) as client:
        client.ehlo("client.test")
        assert client.mail("", ["BODY=8BITMIME", "SIZE=300"]) == (250, b"2.1.0 OK")
        code, text = client.rcpt("seller@example.org")
        assert code == 250
        code, text = client.data(REPORT)
        assert code == 250 and text.startswith(b"2.0.0 <")
    (received,) = upstream.received
    # The upstream saw a literal MAIL FROM:<> (not a stand-in address).
    assert upstream.handler.commands.count("MAIL <>") == 1
    assert received.mail_from == ""
    assert received.mail_options == ["BODY=8BITMIME"]
    assert received.rcpt_tos == ["seller@example.org"]
    header, body = split_message(received.data)
    ids = [f.value.strip() for f in parse_fields(header) if f.name.lower() == "message-id"]
    assert len(ids) == 1 and ids[0].endswith(f"@{DOMAIN}>")
    assert body.endswith(b"This is the mail system at host example.org.\r\n")
    (message,) = store.messages()
    assert message.sender == ""
    assert message.status == "relayed"
    assert f"<{message.message_id}>" == ids[0]
    assert message.original_message_id == "bounce-1@example.org"


def test_null_sender_keeps_the_command_checks(
    proxy: ThreadedProxy, upstream: RecordingUpstream, store: SQLiteStore
) -> None:
    # Before HELO/EHLO: refused as for any sender.
    assert raw_session(proxy.port, [b"MAIL FROM:<>\r\n"])[0].startswith(b"503 5.5.1")
    replies = raw_session(
        proxy.port,
        [
            b"EHLO client.test\r\n",
            b"MAIL FROM:<> BODY=9BIT\r\n",
            b"MAIL FROM:<> SMTPUTF8=yes\r\n",
            b"MAIL FROM:<> SIZE=999999999999\r\n",
            b"MAIL FROM:<> SIZE=big\r\n",
            b"MAIL FROM:<> FROBNICATE=1\r\n",
            b"MAIL FROM:<>x\r\n",
            b"MAIL FROM:<> SIZE=10\r\n",
            b"MAIL FROM:<>\r\n",
            b"MAIL FROM:<a@example.org>\r\n",
            b"RCPT TO:<>\r\n",
            b"RCPT TO:<b@example.net>\r\n",
            b"RSET\r\n",
            b"QUIT\r\n",
        ],
    )
    codes = [r[:9] for r in replies[1:]]
    assert codes == [
        b"501 5.5.4",  # BODY
        b"501 5.5.4",  # SMTPUTF8 with an argument
        b"552 5.3.4",  # SIZE over the limit
        b"501 5.5.4",  # SIZE not a number
        b"555 5.5.4",  # unknown parameter
        b"501 5.1.7",  # not a path
        b"250 2.1.0",  # accepted
        b"503 5.5.1",  # nested MAIL
        b"503 5.5.1",  # nested MAIL
        b"553 5.1.3",  # the null path is no recipient
        b"250 2.1.5",  # recipient, after MAIL FROM:<>
        b"250 2.0.0",
        b"221 2.0.0",
    ], replies
    # Only the accepted MAIL FROM:<> went upstream, and nothing was recorded.
    assert upstream.handler.commands.count("MAIL <>") == 1
    assert upstream.handler.commands.count("MAIL") == 0
    assert upstream.received == [] and store.messages() == []


def test_rcpt_before_any_mail_is_still_refused(proxy: ThreadedProxy) -> None:
    replies = raw_session(proxy.port, [b"EHLO client.test\r\n", b"RCPT TO:<b@example.net>\r\n"])
    assert replies[1].startswith(b"503 5.5.1")
