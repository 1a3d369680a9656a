"""The header transformation the proxy applies to every outbound mail. Pure: no I/O.

``stamp(data, message_id)`` takes the message bytes as the client sent them and a Message-ID
we minted, and returns the bytes to relay plus what must be recorded:

- every ``Message-ID`` field is removed and ours is put on top, so exactly one leaves;
- the client's first Message-ID is kept as ``X-Original-Message-ID`` (replies may quote
  either); any ``X-Original-Message-ID`` the client sent is dropped first, so the header
  cannot be used to plant a false original;
- unless ``mode`` (``proxy.stamp``) keeps the client's own Message-ID: ``campaign`` keeps
  it on mail without a campaign, ``missing`` on all mail; then it is the one Message-ID
  that leaves, and the one recorded (``Stamped.kept_client_id``). Mail without one, and a
  client ID shaped like one of our tokens (it would be screened as forged, never matched),
  get ours;
- ``X-ReplyTrack-Campaign`` / ``X-ReplyTrack-Step`` / ``X-ReplyTrack-Thread`` are read and
  removed, and so is every other ``X-ReplyTrack*`` field (the inbound verdict header must
  never leave with our mail);
- campaign mail gets ``List-Unsubscribe`` (and, with a one-click URL configured,
  ``List-Unsubscribe-Post``) carrying a token made from our Message-ID
  (:mod:`replytrack.unsubscribe`), unless the client set its own ``List-Unsubscribe``,
  which is then kept as it is (``Stamped.list_unsubscribe`` says which); one-to-one mail
  gets none;
- the body and every other header byte stay exactly as they were.

Only the header block is rebuilt: :class:`Stamped` holds the new header block (ending with
the empty line) and a view of the body inside the client's own bytes, so a 25 MB mail is
not copied to be stamped. ``Stamped.data`` joins the two for callers that want one value.

A header block that cannot be read the way the upstream will read it (a bare CR, a first
line starting with white space) raises :class:`MetadataError` too.

Bad metadata (a campaign id that is empty or blank or breaks the rule of
``replytrack.headers.check_campaign_id``, a step that is not a non-negative integer in ASCII
digits, conflicting repeated values) raises :class:`MetadataError`; the proxy rejects such
mail with ``550 5.6.0`` so the sending engine learns at once that its campaign mail would
not be tracked, rather than having it silently recorded as one-to-one mail. A header that is
present counts, even with an empty value: a blank campaign is a campaign id gone missing in
the engine's template, not one-to-one mail.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.header import decode_header, make_header

from replytrack import unsubscribe as unsubscribe_links
from replytrack.headers import (
    Field,
    InvalidMetadata,
    check_campaign_id,
    edit_header,
    extract_addresses,
    extract_msgids,
    parse_fields,
    parse_step,
)
from replytrack.proxy.replies import ProxyError
from replytrack.store.records import ThreadRoot
from replytrack.tokens import TOKEN_LEN, VERSION

CAMPAIGN_HEADER = "X-ReplyTrack-Campaign"
STEP_HEADER = "X-ReplyTrack-Step"
# "previous": make this step a reply in the recipient's earlier thread (proxy.threading);
# "new": do not, even when proxy.thread_followups is on.
THREAD_HEADER = "X-ReplyTrack-Thread"
THREAD_VALUES = ("previous", "new")
# proxy.stamp: whose Message-ID leaves.
STAMP_ALWAYS = "always"
STAMP_CAMPAIGN = "campaign"
STAMP_MISSING = "missing"
ORIGINAL_HEADER = "X-Original-Message-ID"
META_PREFIX = "X-ReplyTrack"
LIST_UNSUBSCRIBE = "List-Unsubscribe"
LIST_UNSUBSCRIBE_POST = "List-Unsubscribe-Post"
# Stamped.list_unsubscribe: whose List-Unsubscribe the mail carries.
UNSUBSCRIBE_OURS = "ours"
UNSUBSCRIBE_CLIENT = "client"
# The end of the header block, as replytrack.headers.split_message finds it: the line end
# followed by the empty line.
_HEADER_END = re.compile(rb"\r?\n(?=\r?\n)")
# A CR not followed by LF. The relay sends it as CRLF (as every line end must go out), so
# inside the header block it would start a new field upstream that we never parsed.
_BARE_CR = re.compile(rb"\r(?!\n)")


class MetadataError(ProxyError, ValueError):
    """The sender's X-ReplyTrack-* metadata is unusable; the message says which and why."""

    @property
    def reply(self) -> str:
        return f"550 5.6.0 {self}"


@dataclass(frozen=True)
class Stamped:
    """A stamped message and what the proxy records about it.

    The message to relay is ``head`` followed by ``source[body_start:]``: the rebuilt
    header block (with the empty line that ends it) and the client's body, not copied.
    """

    head: bytes
    source: bytes | bytearray
    body_start: int
    message_id: str
    original_message_id: str | None
    campaign: str | None
    step: int | None
    to: tuple[str, ...]
    cc: tuple[str, ...]
    from_address: str | None
    subject: str | None
    # "ours" (added), "client" (the client's kept) or None (none: one-to-one mail, or
    # unsubscribe links off and none from the client).
    list_unsubscribe: str | None = None
    # X-ReplyTrack-Thread as the client said it ("previous", "new"), None when not said.
    thread: str | None = None
    # The client's Message-ID left as it was (proxy.stamp): message_id is the client's.
    kept_client_id: bool = False
    # A threaded follow-up's Thread-Index root, to keep on the enrollment (proxy.threading).
    thread_root: ThreadRoot | None = None

    @property
    def body(self) -> memoryview:
        """The body, a view into the client's bytes (no copy)."""
        return memoryview(self.source)[self.body_start :]

    @property
    def size(self) -> int:
        """The size of the stamped message in bytes."""
        return len(self.head) + len(self.source) - self.body_start

    @property
    def data(self) -> bytes:
        """The whole stamped message as one bytes value (a copy; tests and small mail)."""
        return self.head + bytes(self.body)


def header_end(data: bytes | bytearray) -> tuple[int, int]:
    """Where the header block ends and where the body starts in ``data``.

    ``data[:header]`` is the header block as ``split_message`` returns it, ``data[header:
    body]`` the empty line between header and body (empty when there is none) and
    ``data[body:]`` the body. Nothing is copied.
    """
    if data.startswith(b"\r\n"):
        return 0, 2
    if data.startswith(b"\n"):
        return 0, 1
    match = _HEADER_END.search(data)
    if match is None:
        return len(data), len(data)
    end = match.end()
    return end, end + (2 if data[end : end + 1] == b"\r" else 1)


def _single(fields: list[Field], name: str) -> str | None:
    """The value of ``name`` (None when there is no such field); repeated fields must agree."""
    wanted = name.lower()
    values = {f.value for f in fields if f.name.lower() == wanted}
    if len(values) > 1:
        raise MetadataError(f"{name} given more than once with different values")
    return values.pop() if values else None


def validate_campaign(value: str) -> str:
    """A campaign id as sent in ``X-ReplyTrack-Campaign`` (``check_campaign_id``'s rule)."""
    try:
        return check_campaign_id(value)
    except InvalidMetadata as exc:
        raise MetadataError(f"{CAMPAIGN_HEADER}: {exc}") from None


def validate_step(value: str) -> int:
    """A step as sent in ``X-ReplyTrack-Step``: ASCII digits only (``parse_step``)."""
    try:
        return parse_step(value)
    except InvalidMetadata as exc:
        raise MetadataError(f"{STEP_HEADER}: {exc}") from None


def _decode_subject(value: str) -> str:
    """The subject as a person reads it (RFC 2047 words decoded when they can be)."""
    try:
        return str(make_header(decode_header(value)))
    except (ValueError, LookupError, UnicodeError):
        return value


def _shaped_like_ours(message_id: str, ours: str) -> bool:
    """True when ``message_id`` has the shape of a token at our domain (``ours``'s)."""
    local, _, domain = message_id.rpartition("@")
    return (
        domain.lower() == ours.rpartition("@")[2].lower()
        and len(local) == TOKEN_LEN
        and local[:1] == VERSION
    )


def stamp(
    data: bytes | bytearray,
    message_id: str,
    *,
    unsubscribe: unsubscribe_links.Options | None = None,
    mode: str = STAMP_ALWAYS,
) -> Stamped:
    """Stamp ``message_id`` (``token@domain``, no brackets) on ``data``; see the module doc.

    ``data`` is not copied: the result refers to its body, so it must not be changed
    afterwards. Raises :class:`MetadataError` for unusable X-ReplyTrack-* values.
    ``unsubscribe`` (``unsubscribe.Options.from_config``) adds the unsubscribe links to
    campaign mail; None adds none. ``mode`` is ``proxy.stamp`` (see the module doc).
    """
    header_stop, body_start = header_end(data)
    # Header block plus the empty line: editing this gives the same bytes as editing the
    # whole message, whose rest would only be carried along unchanged.
    prefix = bytes(data[:body_start])
    header = prefix[:header_stop]
    if _BARE_CR.search(prefix):
        # We split fields at LF; the upstream would see a line end at this CR, so a second
        # Message-ID or an X-ReplyTrack field could hide behind it and leave unremoved.
        raise MetadataError("the header block holds a bare CR (a CR not followed by LF)")
    if header[:1] in (b" ", b"\t"):
        # A continuation line with no field before it would be glued to our Message-ID.
        raise MetadataError("the header block starts with white space, not a field name")
    fields = parse_fields(header)
    campaign_text = _single(fields, CAMPAIGN_HEADER)
    step_text = _single(fields, STEP_HEADER)
    campaign = validate_campaign(campaign_text) if campaign_text is not None else None
    step: int | None = None
    if step_text is not None:
        step = validate_step(step_text)
        if campaign is None:
            raise MetadataError(f"{STEP_HEADER} given without {CAMPAIGN_HEADER}")
    thread = _single(fields, THREAD_HEADER)
    if thread is not None:
        thread = thread.strip().lower()
        if thread not in THREAD_VALUES:
            raise MetadataError(f"{THREAD_HEADER}: {thread!r} is not one of previous, new")
        if campaign is None:
            raise MetadataError(f"{THREAD_HEADER} given without {CAMPAIGN_HEADER}")

    original: str | None = None
    for f in fields:
        if f.name.lower() == "message-id":
            ids = extract_msgids(f.value, limit=1)
            if ids:
                original = ids[0]
                break

    keep = (
        original is not None
        and (mode == STAMP_MISSING or (mode == STAMP_CAMPAIGN and campaign is None))
        and not _shaped_like_ours(original, message_id)
    )
    if keep and original is not None:
        # Exactly one Message-ID still leaves: the client's first.
        message_id, original = original, None
    add = [("Message-ID", f"<{message_id}>")]
    if original is not None:
        add.append((ORIGINAL_HEADER, f"<{original}>"))
    remove = ["Message-ID", ORIGINAL_HEADER]
    list_unsubscribe: str | None = None
    if any(f.name.lower() == LIST_UNSUBSCRIBE.lower() for f in fields):
        # The sending engine runs its own unsubscribe handling: two competing links
        # would confuse mailbox providers, so theirs stays and ours is not added.
        list_unsubscribe = UNSUBSCRIBE_CLIENT
    elif campaign is not None and unsubscribe is not None:
        links = unsubscribe.headers(message_id)
        if links:
            add += links
            # A Post field left over from the client would pair with our URI.
            remove.append(LIST_UNSUBSCRIBE_POST)
            list_unsubscribe = UNSUBSCRIBE_OURS
    head, _ = edit_header(
        prefix,
        remove=remove,
        remove_prefixes=(META_PREFIX,),
        add=add,
        parsed=(header, fields),
    )

    def values(name: str) -> list[str]:
        wanted = name.lower()
        return [f.value for f in fields if f.name.lower() == wanted]

    senders = extract_addresses(values("From"), limit=1)
    subjects = values("Subject")
    return Stamped(
        head=head,
        source=data,
        body_start=body_start,
        message_id=message_id,
        original_message_id=original,
        campaign=campaign,
        step=step,
        to=tuple(extract_addresses(values("To"))),
        cc=tuple(extract_addresses(values("Cc"))),
        from_address=senders[0] if senders else None,
        subject=_decode_subject(subjects[0])[:998] if subjects else None,
        list_unsubscribe=list_unsubscribe,
        thread=thread,
        kept_client_id=keep,
    )
