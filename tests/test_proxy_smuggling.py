# ruff: noqa: F811  (pytest fixtures imported from tests.support.upstream are parameters)
"""SMTP smuggling: a non-standard end-of-data sequence inside DATA must never let a second,
smuggled message reach the upstream (CVE-2023-51764 and friends). Raw sockets, because
smtplib would normalise the very bytes under test."""

from __future__ import annotations

import pytest

from replytrack.proxy.testing import ThreadedProxy
from replytrack.store.sqlite import SQLiteStore
from tests.support.rawsmtp import open_data
from tests.support.upstream import (  # noqa: F401  (fixtures)
    RecordingUpstream,
    proxy,
    start_proxy,
    upstream,
)

pytestmark = pytest.mark.timeout(60)

SMUGGLED = (
    b"MAIL FROM:<evil@attacker.test>\r\n"
    b"RCPT TO:<victim@example.net>\r\n"
    b"DATA\r\n"
    b"From: ceo@example.org\r\nSubject: smuggled\r\n\r\nsmuggled\r\n"
)


def session(port: int, payload: bytes) -> bytes:
    sock, reader = open_data(port, check=False)
    with sock:
        sock.sendall(payload + b"QUIT\r\n")
        return reader.read()


@pytest.mark.parametrize("end", [b"\n.\r\n", b"\r.\r\n", b"\n.\n", b"\r\n.\r", b"\r\n.\n"])
def test_non_standard_end_of_data_smuggles_nothing(
    proxy: ThreadedProxy, upstream: RecordingUpstream, store: SQLiteStore, end: bytes
) -> None:
    payload = b"From: a@example.org\r\nSubject: first\r\n\r\nhello" + end + SMUGGLED + b".\r\n"
    replies = session(proxy.port, payload)
    # The whole payload is one message from the real sender; the smuggled commands are
    # lines of its body (dot-stuffed on the way out, so the upstream sees no end either).
    [got] = upstream.received
    assert (got.mail_from, got.rcpt_tos) == ("a@example.org", ["b@example.net"])
    assert b"MAIL FROM:<evil@attacker.test>" in got.data
    assert replies.count(b"250 2.0.0") == 1
    assert [m.sender for m in store.messages()] == ["a@example.org"]


@pytest.mark.parametrize(
    "header",
    [
        # A bare CR is a line end upstream (the relay sends it as CRLF): a second Message-ID
        # and campaign metadata hidden from our LF-based parsing.
        b"From: a@example.org\r\nX-Foo: 1\rMessage-ID: <evil@attacker.test>\r"
        b"X-ReplyTrack-Campaign: leaked\r\nSubject: s\r\n",
        # A first line starting with white space would continue our own Message-ID.
        b" Message-ID: <evil@attacker.test>\r\nFrom: a@example.org\r\n",
    ],
)
def test_header_block_the_upstream_would_read_differently_is_refused(
    proxy: ThreadedProxy, upstream: RecordingUpstream, store: SQLiteStore, header: bytes
) -> None:
    replies = session(proxy.port, header + b"\r\nbody\r\n.\r\n")
    # The reply to the end of data (after the 220, EHLO, MAIL, RCPT and 354 ones).
    assert b"550 5.6.0 the header block" in replies
    assert b"250 2.0.0" not in replies
    assert upstream.received == []
    assert store.messages() == []
