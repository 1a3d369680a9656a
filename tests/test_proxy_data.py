# ruff: noqa: F811  (pytest fixtures imported from tests.support.upstream are parameters)
"""DATA on both sides of the proxy: transparency (dot-stuffing) and line ends.

The proxy reads DATA into one buffer and writes it upstream in pieces, adding the dots and
normalising line ends as it goes. These tests hold it to what the user sees: the body that
arrives upstream is the body the client meant, byte for byte, whatever dots, bare LFs and
bare CRs it holds and wherever the pieces are cut; an end of DATA can never be forged.
"""

from __future__ import annotations

import pytest
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from hypothesis import given, settings
from hypothesis import strategies as st

from replytrack.headers import split_message
from replytrack.proxy.relay import data_chunks
from replytrack.proxy.stamp import MetadataError, stamp
from replytrack.proxy.testing import ThreadedProxy
from replytrack.store.sqlite import SQLiteStore
from tests.support.rawsmtp import open_data, read_reply
from tests.support.upstream import (  # noqa: F401  (fixtures)
    RecordingUpstream,
    proxy,
    start_proxy,
    upstream,
)

pytestmark = pytest.mark.timeout(60)

HEADER = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: dots\r\n\r\n"


def raw_data(port: int, wire_body: bytes) -> bytes:
    """One transaction over a raw socket (smtplib would rewrite the bytes under test);
    ``wire_body`` is sent as is, dot-stuffing included. Returns the reply to DATA."""
    sock, reader = open_data(port)
    with sock:
        sock.sendall(wire_body + b".\r\n")
        reply = read_reply(reader)
        sock.sendall(b"QUIT\r\n")
        return reply


def test_leading_dots_and_bare_line_ends_arrive_as_meant(
    proxy: ThreadedProxy, upstream: RecordingUpstream, store: SQLiteStore
) -> None:
    # On the wire, the client stuffed every line starting with "."; bare LF and bare CR
    # are not line ends in SMTP, but the proxy sends them upstream as CRLF (never bare,
    # which some upstreams would read as line ends: smuggling), so a "." after them starts
    # a line there and must be stuffed too.
    wire = HEADER + (
        b"..leading dot\r\n"
        b"..\r\n"
        b"....two dots\r\n"
        b"middle . dot\r\n"
        b"bare lf\n.after lf\r\n"
        b"bare cr\r.after cr\r\n"
        b"lf then dot line\n.\r\n"
        b"cr then dot line\r.\r\n"
        b"\r\n"
        b"last\r\n"
    )
    meant = HEADER + (
        b".leading dot\r\n"
        b".\r\n"
        b"...two dots\r\n"
        b"middle . dot\r\n"
        b"bare lf\r\n.after lf\r\n"
        b"bare cr\r\n.after cr\r\n"
        b"lf then dot line\r\n.\r\n"
        b"cr then dot line\r\n.\r\n"
        b"\r\n"
        b"last\r\n"
    )
    assert raw_data(proxy.port, wire).startswith(b"250 2.0.0")
    [got] = upstream.received
    assert split_message(got.data)[1] == split_message(meant)[1]
    assert [m.status for m in store.messages()] == ["relayed"]


def test_big_body_cut_into_pieces_arrives_byte_identical(
    proxy: ThreadedProxy, upstream: RecordingUpstream
) -> None:
    # Several pieces' worth (256 KiB each), with dotted lines, a line far longer than a
    # piece, and 8-bit bytes, so that cuts fall everywhere.
    lines = []
    for i in range(12000):
        if i % 7 == 0:
            lines.append(b"." + b"d" * (i % 90) + b"\r\n")
        elif i == 5000:
            lines.append(b"L" * 60000 + b"\r\n")
        else:
            lines.append(b"caf\xc3\xa9 line %d " % i + b"x" * (i % 80) + b"\r\n")
    body = b"".join(lines)
    wire = (HEADER + body).replace(b"\r\n.", b"\r\n..")
    assert raw_data(proxy.port, wire).startswith(b"250 2.0.0")
    [got] = upstream.received
    assert split_message(got.data)[1] == b"\r\n" + body


def test_overlong_line_is_refused_after_the_end_and_the_session_goes_on(
    proxy: ThreadedProxy, upstream: RecordingUpstream, store: SQLiteStore
) -> None:
    # Past the proxy's 64 KiB line limit: 500 5.5.2, once the client finished sending.
    wire = HEADER + b"y" * (70 * 1024) + b"\r\nafter\r\n"
    assert raw_data(proxy.port, wire).startswith(b"500 5.5.2")
    assert upstream.received == []
    assert store.messages() == []
    assert raw_data(proxy.port, HEADER + b"fine\r\n").startswith(b"250 2.0.0")
    [got] = upstream.received
    assert got.data.endswith(b"\r\n\r\nfine\r\n")


def reference(message: bytes) -> bytes:
    """What aiosmtplib's SMTP.data() sends for ``message``: the encoding we must match."""
    return PERIOD_REGEX.sub(b"..", normalize_message_line_endings(message)) + b".\r\n"


messages = st.lists(
    st.sampled_from([b"\r\n", b"\n", b"\r", b".", b"..", b"x", b"Subject: y", b"\xff", b" "]),
    max_size=60,
).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(message=messages, chunk=st.integers(min_value=1, max_value=40))
def test_data_chunks_match_whole_message_encoding(message: bytes, chunk: int) -> None:
    try:
        stamped = stamp(message, "token@track.example.com")
        head, start, whole = stamped.head, stamped.body_start, stamped.data
    except MetadataError:
        # stamp() refuses a header block with a bare CR or leading white space; the
        # encoding must still hold for such bytes sent as they are.
        head, start, whole = b"", 0, message
    got = b"".join(data_chunks(head, message, start, chunk=chunk))
    assert got == reference(whole)
    # The end of DATA appears once, at the very end.
    assert got.endswith(b"\r\n.\r\n")
    assert b"\r\n.\r\n" not in got[:-3]
