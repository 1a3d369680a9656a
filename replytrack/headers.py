"""Header parsing and editing on the raw bytes of a message.

The proxy edits headers without ever re-serialising the body: a message is split at the
first empty line, the header block is cut into fields (a field keeps its folded lines and
its own line endings byte for byte), fields are dropped or added, and the pieces are joined
again. Everything here is pure and bounded in the work it does on hostile input.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from email.utils import getaddresses, parseaddr
from urllib.parse import quote

# Bounds against hostile input: a References header of a real thread has tens of IDs,
# never thousands, and no legitimate header value is megabytes long.
MAX_IDS = 1000
MAX_VALUE_CHARS = 256 * 1024
MAX_ADDRESSES = 1000


@dataclass(frozen=True)
class Field:
    """One header field as it appeared: ``raw`` holds its bytes, folded lines included."""

    name: str
    raw: bytes

    @property
    def value(self) -> str:
        """The unfolded value as text (undecodable bytes kept as surrogate escapes)."""
        _, _, rest = self.raw.partition(b":")
        text = rest.decode("utf-8", "surrogateescape")
        return re.sub(r"\r?\n[ \t]", " ", text).rstrip("\r\n").strip()


def split_message(data: bytes) -> tuple[bytes, bytes]:
    """Split into the header block and the rest (the empty line and the body, untouched).

    A message without an empty line is all header; a message starting with an empty line
    has no header at all.
    """
    if data.startswith(b"\r\n") or data.startswith(b"\n"):
        return b"", data
    match = re.search(rb"\r?\n(?=\r?\n)", data)
    if match is None:
        return data, b""
    return data[: match.end()], data[match.end() :]


def line_ending(header: bytes) -> bytes:
    """The line ending the header block uses (CRLF on the wire, LF in files)."""
    index = header.find(b"\n")
    if index > 0 and header[index - 1 : index] == b"\r":
        return b"\r\n"
    return b"\n" if index >= 0 else b"\r\n"


_LINE = re.compile(rb"[^\n]*\n|[^\n]+")
# RFC 5322 3.6.8: a field name is printable US-ASCII except the colon.
_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+")


def parse_fields(header: bytes) -> list[Field]:
    """Cut a header block into fields; continuation lines stay with their field.

    A line that is neither a field nor a continuation (no colon) is kept as a field with an
    empty name, so joining the fields always gives back the original bytes.
    """
    fields: list[Field] = []
    current: list[bytes] = []
    current_name = ""
    # Lines end at LF only (CRLF included), as split_message and MTAs see them: splitting
    # at a bare CR as well would read "Subject: a<CR>X-Field: b" as two fields, and
    # removing the second would glue the next field onto the Subject line.
    for line in _LINE.findall(header):
        if line[:1] in (b" ", b"\t") and current:
            current.append(line)
            continue
        if current:
            fields.append(Field(current_name, b"".join(current)))
        name, colon, _ = line.partition(b":")
        # RFC 5322's obsolete syntax allows white space before the colon ("Subject :");
        # such a field is still that field, so a metadata header written that way is read
        # and removed like any other instead of leaking to the recipient.
        name = name.rstrip(b" \t")
        valid = bool(colon) and bool(name) and _FIELD_NAME.fullmatch(name)
        current_name = name.decode("ascii") if valid else ""
        current = [line]
    if current:
        fields.append(Field(current_name, b"".join(current)))
    return fields


def header_values(header: bytes, name: str) -> list[str]:
    """All values of the fields called ``name`` (case-insensitive), in order."""
    wanted = name.lower()
    return [f.value for f in parse_fields(header) if f.name.lower() == wanted]


def edit_header(
    data: bytes,
    *,
    remove: Iterable[str] = (),
    remove_prefixes: Iterable[str] = (),
    add: Sequence[tuple[str, str]] = (),
    parsed: tuple[bytes, list[Field]] | None = None,
) -> tuple[bytes, list[Field]]:
    """Drop the named fields, put new ones on top, leave every other byte as it was.

    Returns the new message and the fields removed (so the caller can read what it dropped).
    New fields use the line ending of the existing header block. ``parsed`` is a header
    block and its ``parse_fields``, when the caller has them: used if it is this header.
    """
    header, rest = split_message(data)
    names = {n.lower() for n in remove}
    prefixes = tuple(p.lower() for p in remove_prefixes)
    kept: list[bytes] = []
    removed: list[Field] = []
    fields = parsed[1] if parsed is not None and parsed[0] == header else parse_fields(header)
    for f in fields:
        lowered = f.name.lower()
        if f.name and (lowered in names or (prefixes and lowered.startswith(prefixes))):
            removed.append(f)
        else:
            kept.append(f.raw)
    # Without a header block, the empty line that starts the rest tells the line ending;
    # an empty message gets CRLF, the ending on the wire.
    eol = line_ending(header) if header else (b"\n" if rest.startswith(b"\n") else b"\r\n")
    if kept and not kept[-1].endswith(b"\n"):
        kept[-1] += eol
    new_fields = [f"{n}: {v}".encode("utf-8", "surrogateescape") + eol for n, v in add]
    if not rest and not header:
        rest = eol
    elif not rest:
        # A message that was all header gets the empty line that ends a header block.
        rest = eol
    return b"".join(new_fields) + b"".join(kept) + rest, removed


_COMMENT = re.compile(r"\([^()]*\)")
# A bare ID may only start where a run of ID characters starts (the lookbehind): without
# that anchor a long run with no "@" is rescanned from every position, quadratic in its length.
_MSGID = re.compile(r"<\s*([^<>\s]+?)\s*>|(?<![^\s<>(),;\"'])([^\s<>(),;\"']+@[^\s<>(),;\"']+)")


def strip_comments(value: str) -> str:
    """Remove RFC 5322 comments (nested ones too) with a bounded number of passes."""
    for _ in range(8):
        stripped = _COMMENT.sub(" ", value)
        if stripped == value:
            break
        value = stripped
    return value


def normalize_msgid(value: str) -> str:
    """A Message-ID as we store and compare it: no brackets, no surrounding space."""
    text = value.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    return text


def extract_msgids(value: str, limit: int = MAX_IDS) -> list[str]:
    """Message-IDs in an In-Reply-To, References or Message-ID value, in order, deduplicated.

    Accepts folded values, comments and IDs missing their angle brackets (some clients
    write them bare). Work is bounded: at most ``MAX_VALUE_CHARS`` are read and at most
    ``limit`` IDs returned.
    """
    text = strip_comments(value[:MAX_VALUE_CHARS])
    seen: set[str] = set()
    ids: list[str] = []
    for match in _MSGID.finditer(text):
        msgid = match.group(1) or match.group(2)
        if "@" not in msgid or msgid in seen or len(msgid) > 998:
            continue
        seen.add(msgid)
        ids.append(msgid)
        if len(ids) >= limit:
            break
    return ids


def normalize_address(address: str) -> str:
    """An address as we store and compare it: lowercase, no brackets or spaces."""
    return address.strip().strip("<>").strip().lower()


def extract_addresses(values: Iterable[str], limit: int = MAX_ADDRESSES) -> list[str]:
    """Mailbox addresses in To/Cc/From style values, normalised, deduplicated, bounded."""
    result: list[str] = []
    seen: set[str] = set()
    for _, addr in _parse_addresses(v[:MAX_VALUE_CHARS] for v in values):
        norm = normalize_address(addr)
        if "@" not in norm or norm in seen:
            continue
        seen.add(norm)
        result.append(norm)
        if len(result) >= limit:
            break
    return result


_BARE_ADDRESS = re.compile(r"(?<![^\s<>(),;:\"\[\]])([^\s<>(),;:\"\[\]@]+@[^\s<>(),;:\"\[\]@]+)")


# One plain mailbox, the shape of nearly every From and most To values: an optional display
# name of plain words, then an address in angle brackets, or a bare address. Such a value
# is parsed here; anything else (quotes, comments, groups, lists, routes) goes to the
# stdlib parser, which costs ~20 us a value (tests check that both agree on this shape).
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
# A plain addr-spec: a dot-atom local part, a domain of dot-separated letters, digits and
# hyphens (no quotes, comments, literals or odd dots). The proxy reads SMTP paths with it.
PLAIN_ADDR_SPEC = rf"{_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
_SIMPLE_MAILBOX = re.compile(
    rf"[ \t]*(?:({_ATOM}(?:[ \t]+{_ATOM})*)?"
    rf"[ \t]*<({PLAIN_ADDR_SPEC})>|({PLAIN_ADDR_SPEC}))[ \t]*"
)


def _plain_mailbox(value: str) -> tuple[str, str] | None:
    """(display name, address) of a plain mailbox value, None for any other shape."""
    simple = _SIMPLE_MAILBOX.fullmatch(value)
    if simple is None:
        return None
    name, bracketed, bare = simple.groups()
    return (" ".join(name.split()) if name else ""), bracketed or bare


def parse_mailbox(value: str) -> tuple[str, str]:
    """(display name, address) of a From-style value, as ``email.utils.parseaddr`` gives."""
    return _plain_mailbox(value) or parseaddr(value)


def _parse_addresses(values: Iterable[str]) -> Iterator[tuple[str, str]]:
    """(name, address) pairs of each value; a value the stdlib parser chokes on is scanned.

    ``email.utils.getaddresses`` recurses once per nested comment or group, so a hostile
    value of a few thousand ``(`` or ``:`` raises RecursionError. Such a value is not a
    real address list; the addresses in it are still picked out with a linear scan.
    """
    for value in values:
        plain = _plain_mailbox(value)
        if plain is not None:
            yield plain
            continue
        try:
            pairs = getaddresses([value])
        except (RecursionError, ValueError, IndexError):
            pairs = [("", m.group(1)) for m in _BARE_ADDRESS.finditer(value)]
        yield from pairs


# --- sender metadata and the header values we write ------------------------------------------

# The one rule for campaign ids, wherever one comes in (the proxy's X-ReplyTrack-Campaign,
# the CLI's --campaign, import): 1 to 200 characters, each an ASCII letter or digit or one
# of . _ : - / + @ . Such an id needs no quoting anywhere it goes (an SMTP reply, a header
# parameter, a log line, a shell), and no id can carry a ";", "=", a quote, white space or
# a line end into a header we add.
MAX_CAMPAIGN_CHARS = 200
CAMPAIGN_ID_RULE = "1 to 200 characters: ASCII letters, digits and . _ : - / + @"
_CAMPAIGN_ID = re.compile(r"[A-Za-z0-9._:/+@-]{1,200}")
# A step is a count written in ASCII digits: str.isdigit() and \d also take other scripts'
# digits ("٣" is 3), which no sending engine means.
_STEP = re.compile(r"[0-9]{1,9}")


class InvalidMetadata(ValueError):
    """A campaign id or step that breaks the rule; the message says which rule."""


def check_campaign_id(value: str) -> str:
    """``value`` when it is a valid campaign id (see CAMPAIGN_ID_RULE), else InvalidMetadata.

    Nothing is stripped or changed: an id is stored and compared exactly as given.
    """
    if not value.strip():
        raise InvalidMetadata("the campaign id is empty")
    if not _CAMPAIGN_ID.fullmatch(value):
        if len(value) > MAX_CAMPAIGN_CHARS:
            raise InvalidMetadata(f"the campaign id is longer than {MAX_CAMPAIGN_CHARS} characters")
        raise InvalidMetadata(f"the campaign id must be {CAMPAIGN_ID_RULE}")
    return value


def parse_step(value: str) -> int:
    """A campaign step: a non-negative integer in ASCII digits (at most 9), else InvalidMetadata."""
    if not _STEP.fullmatch(value):
        raise InvalidMetadata("the step must be a non-negative integer in ASCII digits 0-9")
    return int(value)


def header_parameter(name: str, value: str) -> str:
    """``name=value`` for a ``;``-separated header we add, safe whatever ``value`` holds.

    A valid campaign id is written bare (it holds nothing a reader splits on). Anything else,
    such as a campaign id recorded before the rule above, is written RFC 2231 style,
    ``name*=utf-8''`` and its UTF-8 bytes percent-encoded: no ";", "=", quote, white space or
    line end of it reaches the header, so it cannot add a parameter or a line, even for a
    reader that just splits at ";".
    """
    if _CAMPAIGN_ID.fullmatch(value):
        return f"{name}={value}"
    return f"{name}*=utf-8''" + quote(value.encode("utf-8", "surrogateescape"), safe="")


def address_domain(address: str) -> str:
    """The domain of an address, lowercase (empty when there is none)."""
    return address.rpartition("@")[2].lower()
