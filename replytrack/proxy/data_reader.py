"""The mail of one DATA command, read off the client's stream. No SMTP state here.

The mail goes into one growing buffer, taken in blocks up to its end marker (searched for in
C by ``StreamReader.readuntil``), not line by line as aiosmtpd reads it: aiosmtpd keeps
every line as its own bytearray and joins them at the end, so a 25 MB mail of short lines
briefly costs about three times its size, and a loop per line costs CPU on every mail.
"""

from __future__ import annotations

import asyncio

from replytrack.proxy.replies import S554_NUL, STOCK_LINE_TOO_LONG, STOCK_TOO_BIG

_MARK = b"\r\n.\r\n"  # the end of DATA: a line that is a lone "."


async def read_data(
    reader: asyncio.StreamReader, *, size_limit: int | None, line_limit: int
) -> tuple[bytearray, str | None] | None:
    """The mail of one DATA command from ``reader``, as (content, refusal).

    RFC 5321 4.1.1.4 / 4.5.2: lines end at CRLF only (a bare LF or CR is data), the mail
    ends at a line that is a lone ".", and one leading "." is removed from every other
    line. A mail over ``size_limit`` bytes, holding a NUL byte or with a line over
    ``line_limit`` bytes is still read to its end (RFC 5321 4.2.5: the reply waits for that)
    but not kept: the refusal is the reply (aiosmtpd's wording for size and line length). When
    more than one applies, too big comes first, then NUL, then the long line. None when the
    connection ended first. Nothing after the end is read from ``reader`` (the client's
    next command stays).
    """
    content = bytearray()
    refusal: str | None = None
    received = 0
    # The line in progress (bytes since the last CRLF, a CR at the end included), to find
    # an overlong line across blocks, and whether the last block ended in CR.
    partial = 0
    after_cr = False

    def too_long(block: bytes) -> bool:
        nonlocal partial, after_cr
        start, over = 0, False
        if after_cr and block[:1] == b"\n":
            # The CRLF was split between two blocks: the line ended there.
            over = partial + 1 > line_limit
            partial, start = 0, 1
        first = block.find(b"\r\n", start)
        if first < 0:
            partial += len(block) - start
        else:
            over = over or partial + first - start + 2 > line_limit
            if len(block) - first - 2 > line_limit:
                # Room for a whole overlong line inside the block: measure them all.
                rest = block[first + 2 :].split(b"\r\n")[:-1]
                over = over or any(len(line) + 2 > line_limit for line in rest)
            partial = len(block) - block.rfind(b"\r\n") - 2
        after_cr = block.endswith(b"\r")
        return over or partial > line_limit

    def keep(block: bytes) -> None:
        nonlocal content, refusal, received
        received += len(block)
        if size_limit and received > size_limit:
            # Too big outranks a long line seen before: the mail is refused for its size.
            refusal = STOCK_TOO_BIG
        elif refusal in (None, STOCK_LINE_TOO_LONG) and b"\x00" in block:
            refusal = S554_NUL
        elif refusal is None and too_long(block):
            refusal = STOCK_LINE_TOO_LONG
        if refusal is None:
            content += block
        elif content:
            content = bytearray()  # drop what we have (memory); read on to the end

    try:
        # The start: the DATA command's own CRLF ends the line before the mail, so the mail
        # may end at once (".<CRLF>") or after a few bytes that readuntil below would take
        # without seeing the end marker they begin. Until no end marker can have begun in
        # the last bytes read, just enough is read to tell (one read for almost every mail;
        # a line at a time for a mail of very short lines, as a line-by-line reader would).
        pending, virtual = b"\r\n", 2  # pending[:virtual] is that CRLF, not mail
        while True:
            # How much of an end marker the last bytes read may already be (0: none).
            begun = next(
                (j for j in range(min(4, len(pending)), 0, -1) if pending.endswith(_MARK[:j])), 0
            )
            if not begun:
                keep(pending[virtual:])
                break
            if begun == 1:
                # A CR, which only an LF could go on: read to the next LF.
                try:
                    more = await reader.readuntil(b"\n")
                except asyncio.LimitOverrunError as exc:
                    more = await reader.readexactly(exc.consumed)
            else:
                more = await reader.readexactly(len(_MARK) - begun)
                if more == _MARK[begun:]:
                    # The end: what came before it, with the CRLF ending the last line.
                    keep(pending[virtual : len(pending) - begun + 2])
                    return _unstuffed(content, refusal)
            pending += more
            if len(pending) > 8:
                # Only the last 4 bytes can still begin an end marker.
                keep(pending[virtual:-4])
                pending, virtual = pending[-4:], 0
        while True:
            try:
                block = await reader.readuntil(_MARK)
            except asyncio.LimitOverrunError as exc:
                # No end within the reader's limit: take what cannot be part of the end
                # marker (readuntil leaves its last bytes in the buffer) and look again.
                keep(await reader.readexactly(exc.consumed))
                continue
            keep(block[:-3])  # up to the CRLF that ends the last line
            break
    except asyncio.IncompleteReadError:
        return None
    return _unstuffed(content, refusal)


def _unstuffed(content: bytearray, refusal: str | None) -> tuple[bytearray, str | None]:
    """One leading "." off every line (the first one, then each after a CRLF)."""
    if refusal is None:
        if content.startswith(b"."):
            del content[0]
        if b"\r\n." in content:
            content = content.replace(b"\r\n.", b"\r\n")
    return content, refusal
