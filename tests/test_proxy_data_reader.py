"""The proxy's DATA reader (``read_data``) against a plain line-by-line reading of RFC 5321:
same mail, same refusal, and nothing after the end taken from the stream, however the bytes
arrive."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from replytrack.proxy.data_reader import read_data
from replytrack.proxy.replies import S554_NUL

TOO_BIG = "552 Error: Too much mail data"
TOO_LONG = "500 Line too long (see RFC5321 4.5.3.1.6)"


def by_lines(
    stream: bytes, size_limit: int | None, line_limit: int
) -> tuple[bytes, str | None, int] | None:
    """(mail, refusal, where the next command starts), reading line by line (CRLF only).

    None when the stream ends before the end of the mail.
    """
    pos, received, long_line, nul = 0, 0, False, False
    mail = bytearray()
    while True:
        end = stream.find(b"\r\n", pos)
        if end < 0:
            return None
        line, pos = stream[pos : end + 2], end + 2
        if line == b".\r\n":
            break
        received += len(line)
        long_line = long_line or len(line) > line_limit
        nul = nul or b"\x00" in line
        mail += line[1:] if line.startswith(b".") else line
    # Too big outranks a NUL byte, which outranks a long line.
    if size_limit and received > size_limit:
        return b"", TOO_BIG, pos
    if nul:
        return b"", S554_NUL, pos
    if long_line:
        return b"", TOO_LONG, pos
    return bytes(mail), None, pos


async def via_reader(
    stream: bytes, cuts: list[int], size_limit: int | None, line_limit: int
) -> tuple[tuple[bytes, str | None] | None, bytes]:
    """read_data over ``stream`` arriving in pieces; also what is left in the reader."""
    reader = asyncio.StreamReader(limit=line_limit)

    async def feed() -> None:
        start = 0
        for cut in [*sorted(set(cuts)), len(stream)]:
            if cut > start:
                reader.feed_data(stream[start:cut])
                start = cut
            await asyncio.sleep(0)
        reader.feed_eof()

    feeder = asyncio.ensure_future(feed())
    got = await read_data(reader, size_limit=size_limit, line_limit=line_limit)
    await feeder
    left = await reader.read()
    return (None if got is None else (bytes(got[0]), got[1])), left


pieces = st.sampled_from(
    [
        *(b"\r\n", b"\r", b"\n", b".", b"..", b"x", b"ab", b"\r\n.\r\n", b".\r\n", b"\r\n."),
        *(b"QUIT", b"\x00", b"\r\n\x00.\r\n"),
    ]
)


@settings(max_examples=600, deadline=None)
@given(
    stream=st.lists(pieces, max_size=40).map(b"".join),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=8),
    size_limit=st.one_of(st.none(), st.integers(min_value=1, max_value=60)),
    line_limit=st.integers(min_value=4, max_value=24),
)
def test_read_data_matches_reading_line_by_line(
    stream: bytes, cuts: list[int], size_limit: int | None, line_limit: int
) -> None:
    expected = by_lines(stream, size_limit, line_limit)
    got, left = asyncio.run(via_reader(stream, cuts, size_limit, line_limit))
    if expected is None:
        assert got is None
        return
    mail, refusal, next_command = expected
    assert got == (mail, refusal)
    # The client's next command (pipelined, or a smuggling attempt) is left to be read as
    # a command, never swallowed into the mail or lost.
    assert left == stream[next_command:]


def test_long_mail_of_short_lines_and_long_lines() -> None:
    body = b"".join(b"line %d\r\n" % i for i in range(5000)) + b"y" * 300 + b"\r\n"
    stream = body + b".\r\nQUIT\r\n"
    got, left = asyncio.run(via_reader(stream, [7, 4096, 65536], None, 1000))
    assert got == (body, None) and left == b"QUIT\r\n"
    got, left = asyncio.run(via_reader(stream, [7, 4096, 65536], None, 200))
    assert got == (b"", TOO_LONG) and left == b"QUIT\r\n"


def test_nul_anywhere_refuses_the_mail_and_reads_to_its_end() -> None:
    """Issue 13 item 10: "<CR><LF><NUL>.<CR><LF>" is no end of data here, and the mail that
    holds it is refused whole (a NUL in its first, middle or last block alike)."""
    body = b"".join(b"line %d\r\n" % i for i in range(5000))
    for at in (0, 3, len(body) // 2, len(body) - 2):
        mail = body[:at] + b"\r\n\x00.\r\n" + body[at:]
        got, left = asyncio.run(via_reader(mail + b".\r\nQUIT\r\n", [5, 4096], None, 1000))
        assert got == (b"", S554_NUL) and left == b"QUIT\r\n"
    # The size limit still comes first (the client learns what to fix first).
    got, _ = asyncio.run(via_reader(body + b"\x00\r\n.\r\n", [], 100, 1000))
    assert got == (b"", TOO_BIG)
