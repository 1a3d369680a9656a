"""Readers for delivery reports: the returned mail's IDs, the failed recipients, and
whether the failure is permanent. Shared by the detectors that recognise a report."""

from __future__ import annotations

import re
from email.utils import getaddresses

from replytrack.headers import extract_msgids

from .. import _patterns as pat
from .._mime import Headers, split_header_block
from ._context import ADDRESS, MAX_RECIPIENTS, Context, header_ids, unique

# "Message-ID:" at a line start, the value on the same line or a folded next one. The
# indentation is [ \t]* and the gap after the colon bounded: an unbounded \s* would
# run across every following empty line from every line start (quadratic time).
_MESSAGE_ID_LINE = re.compile(r"(?im)^[ \t]*message-id:\s{0,40}(<[^>\n]{1,998}>)")

# The separator line before a returned message. Its leading decoration is [ \t>*=-]*,
# not [\s>*=-]*: with re.M the latter runs across the following empty lines from every
# line start, quadratic on a body of blank lines.
_RETURNED_PART_START = re.compile(
    r"(?im)^[ \t>*=-]*(?:original message|returned message|undelivered message|"
    r"message headers follow|this is a copy of the message|below this line)"
    r"|^(?:received|return-path):"
)


def returned_ids(ctx: Context) -> list[str]:
    """Message-IDs of the returned mail: message/rfc822 parts, text/rfc822-headers,
    then "Message-ID:" lines in the text of a plain-text report."""
    ids: list[str] = []
    for part in ctx.view.parts:
        mime = part.content_type.mime
        if mime in ("message/rfc822", "message/global", "message/global-headers"):
            ids.extend(header_ids(part.headers, "Message-ID"))
        elif mime in ("text/rfc822-headers", "text/rfc822-header"):
            headers, _ = split_header_block(part.text.lstrip("\n"))
            ids.extend(header_ids(Headers(headers), "Message-ID"))
    if not ids:
        for match in _MESSAGE_ID_LINE.finditer(ctx.text):
            ids.extend(extract_msgids(match.group(1), limit=1))
            if len(ids) >= 5:
                break
    return unique(ids)


def address_of(value: str) -> str | None:
    """The address from a DSN recipient field ("rfc822; user@host")."""
    _, _, rest = value.partition(";")
    candidate = (rest or value).strip().strip("<>").strip()
    match = ADDRESS.search(candidate)
    return match.group(0).lower() if match else None


def dsn_fields(text: str) -> list[Headers]:
    """The field groups of a message/delivery-status body: the per-message group
    first, then one group per recipient."""
    groups: list[Headers] = []
    for block in re.split(r"\n\s*\n", text.strip())[: MAX_RECIPIENTS + 1]:
        headers, _ = split_header_block(block + "\n\n")
        if headers:
            groups.append(Headers(headers))
    return groups


def failure_nature(text: str) -> tuple[str, bool | None]:
    """Subtype and permanence that the wording of a plain-text report shows."""
    window = text[:8000]
    if any(p.search(window) for p in pat.SUCCESS) and not re.search(
        r"\b(?:fail|undeliver|could not|couldn't|unable)", window, re.I
    ):
        return "dsn_delivered", None
    if any(p.search(window) for p in pat.DELAY) and not re.search(
        r"\bpermanent|\bgave up|\bgiving up|\bretry timeout exceeded|\bhas been returned\b",
        window,
        re.I,
    ):
        return "dsn_delayed", False
    return "dsn_failed", True


def failed_from_headers(ctx: Context) -> list[str]:
    """The addresses in X-Failed-Recipients (Exim)."""
    values = ctx.headers.get_all("X-Failed-Recipients")
    if not values:
        return []
    addrs = (addr.lower() for _, addr in getaddresses(values))
    return unique((a for a in addrs if a and "@" in a), MAX_RECIPIENTS)


def failed_from_text(ctx: Context) -> list[str]:
    """Addresses named in the report's own wording, before the returned message.

    The bounce's own From/To (our sender, the daemon) are left out.
    """
    text = ctx.text[:20000]
    # The returned message starts after a separator line; "The original message was
    # received at" (Sendmail's first sentence) is no such line.
    cut = _RETURNED_PART_START.search(text)
    if cut:
        text = text[: cut.start()]
    own = {ctx.from_addr}
    for name in ("To", "Delivered-To", "X-Original-To", "Envelope-To"):
        for _, addr in getaddresses(ctx.headers.get_all(name)):
            own.add(addr.lower())
    if ctx.envelope_from:
        own.add(ctx.envelope_from.lower())
    found: list[str] = []
    for match in ADDRESS.finditer(text):
        addr = match.group(0).lower().rstrip(".")
        local = addr.split("@", 1)[0]
        if addr in own or pat.DAEMON_LOCALPART.match(local) or addr in found:
            continue
        found.append(addr)
        if len(found) >= 10:
            break
    return found
