"""A bounded, forgiving view of a message for the detectors.

The stdlib ``email`` parser recurses once per MIME level and decodes whole
bodies, so a hostile message (thousands of nested multiparts, megabytes of
base64) costs unbounded time there. The detectors only need a handful of
facts: header values, the MIME types present, the text of the first few text
parts and the header blocks of returned messages. This module collects those
with fixed limits on depth, part count and decoded size, and never raises on
malformed input.
"""

from __future__ import annotations

import base64
import binascii
import quopri
import re
from dataclasses import dataclass, field
from email.header import decode_header, make_header

# Limits that keep the work per message bounded whatever arrives.
MAX_BODY = 256 * 1024  # raw body bytes looked at
MAX_DEPTH = 6  # MIME nesting levels followed
MAX_PARTS = 64  # MIME parts visited in total
MAX_TEXT = 64 * 1024  # decoded characters kept per text part
MAX_HEADERS = 300  # header fields kept per header block
MAX_VALUE = 16 * 1024  # characters kept per header value

_CRLF = re.compile(rb"\r\n|\r(?!\n)")
_HEADER_LINE = re.compile(r"^([!-9;-~]+)[ \t]*:(.*)$")
_PARAM = re.compile(r';\s*([A-Za-z0-9_.*-]+)\s*=\s*(?:"((?:[^"\\]|\\.){0,1000})"|([^;\s]{0,1000}))')


def normalise_newlines(raw: bytes) -> bytes:
    """Turn CRLF and lone CR line endings into LF."""
    return _CRLF.sub(b"\n", raw)


def split_header_block(text: str, limit: int = MAX_HEADERS) -> tuple[list[tuple[str, str]], str]:
    """Split ``text`` into (headers, rest) at the first empty line.

    Continuation lines are unfolded into the previous value. Lines that are
    neither a header nor a continuation end the block (as MUAs do).
    """
    headers: list[tuple[str, str]] = []
    pos = 0
    length = len(text)
    while pos < length:
        end = text.find("\n", pos)
        if end < 0:
            end = length
        line = text[pos:end]
        if line.strip() == "":
            return headers, text[end + 1 :]
        if line[0] in " \t" and headers:
            name, value = headers[-1]
            if len(value) < MAX_VALUE:
                headers[-1] = (name, value + " " + line.strip())
        else:
            match = _HEADER_LINE.match(line)
            if match is None and headers and headers[-1][1].rstrip().endswith(";"):
                # A parameter line that lost its indentation ("boundary=..." after
                # "multipart/mixed;"): mail clients read it as a continuation, so do we.
                name, value = headers[-1]
                headers[-1] = (name, value + " " + line.strip())
                pos = end + 1
                continue
            if match is None:
                return headers, text[pos:]
            if len(headers) < limit:
                headers.append((match.group(1), match.group(2).strip()[:MAX_VALUE]))
        pos = end + 1
    return headers, ""


def decode_words(value: str) -> str:
    """Decode RFC 2047 encoded words in the first ``MAX_VALUE`` characters of ``value``
    (which is all it returns), keeping them as they are when they do not decode."""
    value = value[:MAX_VALUE]
    if "=?" not in value:
        return value
    try:
        return str(make_header(decode_header(value)))
    except Exception:  # any decoding fault keeps the raw value.
        return value


@dataclass
class ContentType:
    """A parsed Content-Type: lower-case ``type/subtype`` and parameters."""

    mime: str = "text/plain"
    params: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, value: str | None) -> ContentType:
        """Parse a header value; an absent or broken one means text/plain."""
        if not value:
            return cls()
        value = value[:4096]
        head = value.split(";", 1)[0].strip().lower()
        if "/" not in head:
            head = "text/plain"
        params: dict[str, str] = {}
        for match in _PARAM.finditer(value):
            name = match.group(1).lower()
            params.setdefault(
                name, match.group(2) if match.group(2) is not None else match.group(3)
            )
        return cls(head, params)


class Headers:
    """Case-insensitive access to an ordered header list."""

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self.items = [(str(n), str(v)[:MAX_VALUE]) for n, v in items[:MAX_HEADERS]]
        self._index: dict[str, list[str]] = {}
        for name, value in self.items:
            self._index.setdefault(name.strip().lower(), []).append(value)

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name``, unfolded."""
        values = self._index.get(name.lower())
        if not values:
            return default
        return " ".join(values[0].split())

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name`` in order, unfolded."""
        return [" ".join(v.split()) for v in self._index.get(name.lower(), [])]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._index


@dataclass
class Part:
    """One MIME leaf or container that the detectors may look at."""

    content_type: ContentType
    headers: Headers
    text: str = ""  # decoded text for text/* and message/* status parts
    depth: int = 0
    returned: bool = False  # inside a message/rfc822 part (a returned or forwarded mail)


@dataclass
class MailView:
    """What the detectors read from one message."""

    headers: Headers
    content_type: ContentType
    parts: list[Part]
    body_seen: bool

    def parts_of(self, *mimes: str) -> list[Part]:
        """Parts whose type is one of ``mimes``."""
        return [p for p in self.parts if p.content_type.mime in mimes]

    def first_text(self) -> str:
        """The first own text/plain part, else the first own text/html part without tags."""
        for part in self.parts:
            if part.content_type.mime == "text/plain" and not part.returned and part.text.strip():
                return part.text
        for part in self.parts:
            if part.content_type.mime == "text/html" and not part.returned and part.text.strip():
                return html_to_text(part.text)
        return ""

    def own_text(self, limit: int = 3 * MAX_TEXT) -> str:
        """Text of the message's own readable parts (not of returned mail), joined, bounded."""
        chunks: list[str] = []
        total = 0
        own = [p for p in self.parts if not p.returned]
        plain = [p for p in own if p.content_type.mime == "text/plain"]
        chosen = plain or [p for p in own if p.content_type.mime == "text/html"]
        for part in chosen:
            text = part.text if part.content_type.mime == "text/plain" else html_to_text(part.text)
            chunks.append(text)
            total += len(text)
            if total >= limit:
                break
        return "\n".join(chunks)[:limit]


_LINE_BREAK_TAG = re.compile(r"<br\s*/?>|</p\s*>|</div\s*>", re.I)
_SCRIPT_OPEN = re.compile(r"<(script|style)\b", re.I)
_SCRIPT_CLOSE = {
    "script": re.compile(r"</script\s*>", re.I),
    "style": re.compile(r"</style\s*>", re.I),
}
MAX_TAG = 2000  # characters between "<" and ">" still taken for one tag
_ENTITY = {"&nbsp;": " ", "&amp;": "&", "&lt;": "<", "&gt;": ">", "&quot;": '"', "&#39;": "'"}


def _strip_tags(html: str) -> str:
    """Replace script/style blocks and tags by a space, in one pass.

    A single regex (``<(script|style).*?</\\1>|<[^>]{0,2000}>``) does the same but
    rescans the rest of the text from every unclosed ``<script`` and up to 2000
    characters from every ``<`` that opens no tag: quadratic on hostile HTML. Here
    each close search starts past the previous block, a tag type seen unclosed once
    is not searched again, and the next ``>`` is found once for a run of ``<``.
    """
    out: list[str] = []
    unclosed: set[str] = set()
    pos = 0
    next_gt = -1
    length = len(html)
    while pos < length:
        lt = html.find("<", pos)
        if lt < 0:
            out.append(html[pos:])
            break
        out.append(html[pos:lt])
        opener = _SCRIPT_OPEN.match(html, lt)
        if opener is not None:
            kind = opener.group(1).lower()
            close = None if kind in unclosed else _SCRIPT_CLOSE[kind].search(html, opener.end())
            if close is not None:
                out.append(" ")
                pos = close.end()
                continue
            unclosed.add(kind)
        if next_gt < lt:
            found = html.find(">", lt)
            next_gt = found if found >= 0 else length + MAX_TAG + 2
        if next_gt - lt - 1 <= MAX_TAG:
            out.append(" ")
            pos = next_gt + 1
        else:
            out.append("<")
            pos = lt + 1
    return "".join(out)


def html_to_text(html: str) -> str:
    """Crude tag stripping, enough for phrase matching."""
    text = _LINE_BREAK_TAG.sub("\n", html[:MAX_TEXT])
    text = _strip_tags(text)
    for entity, char in _ENTITY.items():
        text = text.replace(entity, char)
    return text


def _decode_payload(payload: str, encoding: str | None, charset: str | None) -> str:
    """Decode a transfer-encoded payload into text; never raises."""
    encoding = (encoding or "").strip().lower()
    data: bytes
    raw = payload[: MAX_TEXT * 2].encode("latin-1", "replace")
    if encoding == "base64":
        try:
            cleaned = re.sub(rb"[^A-Za-z0-9+/=]", b"", raw)
            cleaned = cleaned[: len(cleaned) - len(cleaned) % 4]
            data = base64.b64decode(cleaned)
        except (binascii.Error, ValueError):
            data = raw
    elif encoding == "quoted-printable":
        try:
            data = quopri.decodestring(raw)
        except Exception:  # malformed QP keeps the raw bytes.
            data = raw
    else:
        data = raw
    for name in (charset, "utf-8"):
        if not name:
            continue
        try:
            return data.decode(name, "replace")[:MAX_TEXT]
        except (LookupError, ValueError):
            continue
    return data.decode("latin-1")[:MAX_TEXT]


def _split_multipart(body: str, boundary: str) -> list[str]:
    """The parts between ``--boundary`` delimiter lines (bounded).

    Delimiter lines are found with ``str.find`` rather than by walking every line
    in Python: a 256 KiB attachment is then skipped at C speed.
    """
    delimiter = "--" + boundary
    parts: list[str] = []
    start: int | None = None  # where the current part's text begins
    pos = body.find(delimiter)
    while pos >= 0:
        if pos > 0 and body[pos - 1] != "\n":
            pos = body.find(delimiter, pos + 1)
            continue
        line_end = body.find("\n", pos)
        line = body[pos:] if line_end < 0 else body[pos:line_end]
        stripped = line.rstrip()
        if stripped.startswith(delimiter):
            if start is not None:
                parts.append(body[start : max(start, pos - 1)])
                if len(parts) >= MAX_PARTS:
                    return parts
            if stripped[len(delimiter) :].startswith("--"):
                return parts
            if line_end < 0:
                return parts
            start = line_end + 1
        if line_end < 0:
            break
        pos = body.find(delimiter, line_end + 1)
    if start is not None:
        parts.append(body[start:])
    return parts


def _walk(
    headers: Headers,
    body: str,
    depth: int,
    out: list[Part],
    budget: list[int],
    returned: bool = False,
) -> None:
    """Collect the parts of one entity; recursion is capped by MAX_DEPTH and MAX_PARTS."""
    if budget[0] <= 0:
        return
    budget[0] -= 1
    ctype = ContentType.parse(headers.get("Content-Type"))
    mime = ctype.mime
    encoding = headers.get("Content-Transfer-Encoding")
    if mime.startswith("multipart/") and depth < MAX_DEPTH:
        out.append(Part(ctype, headers, "", depth, returned))
        boundary = ctype.params.get("boundary")
        if not boundary:
            return
        for chunk in _split_multipart(body, boundary):
            if budget[0] <= 0:
                return
            sub_headers, sub_body = split_header_block(chunk)
            _walk(Headers(sub_headers), sub_body, depth + 1, out, budget, returned)
        return
    if mime == "message/rfc822" or mime == "message/global":
        text = _decode_payload(body, encoding, "utf-8")
        inner_headers, inner_body = split_header_block(text.lstrip("\n"))
        out.append(Part(ctype, Headers(inner_headers), text[:4096], depth, returned))
        if depth < MAX_DEPTH:
            # The returned message is walked too, but marked deeper so that
            # detectors can tell its text from the report's own text.
            _walk(Headers(inner_headers), inner_body, depth + 1, out, budget, True)
        return
    if (
        mime.startswith("text/")
        or mime.startswith("message/")
        or mime
        in (
            "application/json",
            "application/xml",
        )
    ):
        text = _decode_payload(body, encoding, ctype.params.get("charset"))
        out.append(Part(ctype, headers, text, depth, returned))
        return
    out.append(Part(ctype, headers, "", depth, returned))


def view(headers: list[tuple[str, str]], body: bytes | None) -> MailView:
    """Build the bounded view the detectors work on."""
    top = Headers(headers)
    ctype = ContentType.parse(top.get("Content-Type"))
    parts: list[Part] = []
    if body is None:
        return MailView(top, ctype, parts, body_seen=False)
    text = normalise_newlines(body[:MAX_BODY]).decode("latin-1")
    _walk(top, text, 0, parts, [MAX_PARTS])
    if not any(
        p.text.strip() for p in parts if not p.returned and p.content_type.mime.startswith("text/")
    ):
        # Broken MIME (a lost boundary, a wrong type): the raw text is better than none.
        parts.append(Part(ContentType(), Headers([]), text[:MAX_TEXT], 0, False))
    return MailView(top, ctype, parts, body_seen=True)
