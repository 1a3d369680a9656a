"""The header transformation the proxy applies to every outbound mail. Pure: no I/O.

``stamp(data, message_id)`` takes the message bytes as the client sent them and a Message-ID
we minted, and returns the bytes to relay plus what must be recorded:

- every ``Message-ID`` field is removed and ours is put on top, so exactly one leaves;
- the client's first Message-ID is kept as ``X-Original-Message-ID`` (replies may quote
  either); any ``X-Original-Message-ID`` the client sent is dropped first, so the header
  cannot be used to plant a false original;
- ``X-ReplyTrack-Campaign`` / ``X-ReplyTrack-Step`` are read and removed, and so is every
  other ``X-ReplyTrack*`` field (the inbound verdict header must never leave with our mail);
- the body and every other header byte stay exactly as they were.

Bad metadata (a campaign id that is empty, too long or not printable, a step that is not a
non-negative integer, conflicting repeated values) raises :class:`MetadataError`; the proxy
rejects such mail with ``550 5.6.0`` so the sending engine learns at once that its campaign
mail would not be tracked, rather than having it silently recorded as one-to-one mail.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.header import decode_header, make_header

from replytrack.headers import (
    Field,
    edit_header,
    extract_addresses,
    extract_msgids,
    parse_fields,
    split_message,
)

CAMPAIGN_HEADER = "X-ReplyTrack-Campaign"
STEP_HEADER = "X-ReplyTrack-Step"
ORIGINAL_HEADER = "X-Original-Message-ID"
META_PREFIX = "X-ReplyTrack"
MAX_CAMPAIGN_CHARS = 200
_STEP = re.compile(r"\d{1,9}")


class MetadataError(ValueError):
    """The sender's X-ReplyTrack-* metadata is unusable; the message says which and why."""


@dataclass(frozen=True)
class Stamped:
    """A stamped message and what the proxy records about it."""

    data: bytes
    message_id: str
    original_message_id: str | None
    campaign: str | None
    step: int | None
    to: tuple[str, ...]
    cc: tuple[str, ...]
    from_address: str | None
    subject: str | None


def _single(fields: list[Field], name: str) -> str | None:
    """The value of ``name``; repeated fields must agree, an empty value counts as absent."""
    wanted = name.lower()
    values = {f.value for f in fields if f.name.lower() == wanted}
    values.discard("")
    if len(values) > 1:
        raise MetadataError(f"{name} given more than once with different values")
    return values.pop() if values else None


def validate_campaign(value: str) -> str:
    """A campaign id as sent in ``X-ReplyTrack-Campaign``: printable, 1 to 200 characters."""
    if len(value) > MAX_CAMPAIGN_CHARS:
        raise MetadataError(f"{CAMPAIGN_HEADER} is longer than {MAX_CAMPAIGN_CHARS} characters")
    # Undecodable bytes arrive as surrogate escapes, which are not printable either.
    if not value.isprintable():
        raise MetadataError(f"{CAMPAIGN_HEADER} holds characters that are not printable")
    return value


def _decode_subject(value: str) -> str:
    """The subject as a person reads it (RFC 2047 words decoded when they can be)."""
    try:
        return str(make_header(decode_header(value)))
    except (ValueError, LookupError, UnicodeError):
        return value


def stamp(data: bytes, message_id: str) -> Stamped:
    """Stamp ``message_id`` (``token@domain``, no brackets) on ``data``; see the module doc.

    Raises :class:`MetadataError` for unusable X-ReplyTrack-* values.
    """
    header, _ = split_message(data)
    fields = parse_fields(header)
    campaign_text = _single(fields, CAMPAIGN_HEADER)
    step_text = _single(fields, STEP_HEADER)
    campaign = validate_campaign(campaign_text) if campaign_text is not None else None
    step: int | None = None
    if step_text is not None:
        if not _STEP.fullmatch(step_text):
            raise MetadataError(f"{STEP_HEADER} must be a non-negative integer, got {step_text!r}")
        if campaign is None:
            raise MetadataError(f"{STEP_HEADER} given without {CAMPAIGN_HEADER}")
        step = int(step_text)

    original: str | None = None
    for f in fields:
        if f.name.lower() == "message-id":
            ids = extract_msgids(f.value, limit=1)
            if ids:
                original = ids[0]
                break

    add = [("Message-ID", f"<{message_id}>")]
    if original is not None:
        add.append((ORIGINAL_HEADER, f"<{original}>"))
    new_data, _ = edit_header(
        data,
        remove=("Message-ID", ORIGINAL_HEADER),
        remove_prefixes=(META_PREFIX,),
        add=add,
    )

    def values(name: str) -> list[str]:
        wanted = name.lower()
        return [f.value for f in fields if f.name.lower() == wanted]

    senders = extract_addresses(values("From"), limit=1)
    subjects = values("Subject")
    return Stamped(
        data=new_data,
        message_id=message_id,
        original_message_id=original,
        campaign=campaign,
        step=step,
        to=tuple(extract_addresses(values("To"))),
        cc=tuple(extract_addresses(values("Cc"))),
        from_address=senders[0] if senders else None,
        subject=_decode_subject(subjects[0])[:998] if subjects else None,
    )
