"""Threaded follow-ups: a campaign step made a reply in the recipient's earlier thread.

Asked for by ``X-ReplyTrack-Thread: previous`` (``new`` declines), or for all campaign mail
by ``proxy.thread_followups``. The step then carries:

- ``In-Reply-To``: the stamped Message-ID of the latest earlier step to that recipient;
- ``References``: the earlier steps' IDs, oldest first (the first and the latest ones when
  there are more than :data:`MAX_REFERENCES`);
- ``Thread-Topic``: the first step's subject without its ``Re:``-like prefixes (Outlook);
- ``Thread-Index``: Outlook's conversation index (MS-OXOMSG 2.2.1.3): a 22-byte header
  block (the thread's start as FILETIME, 6 bytes, and a GUID, 16 bytes), kept per
  enrollment, followed by one 5-byte child block per later step, in base64.

A field the client set itself is kept and ours is not added. The Subject is never changed:
the engine writes it (a follow-up saying ``Re: <first subject>`` threads in Gmail too, which
groups by subject as well as by References).

One mail has one set of headers, so a mail to several recipients is threaded by one of
them: the first To address that is an envelope recipient, else the first envelope
recipient. The first step (no earlier one) gets only Thread-Topic and Thread-Index, so
that later steps extend its conversation in Outlook. Pure, but for :func:`look_up`, which
reads the store (the proxy runs it like any store call).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import replace
from email.header import Header

from replytrack.headers import edit_header, parse_fields
from replytrack.proxy.stamp import Stamped
from replytrack.store import Store
from replytrack.store.records import ThreadHistory, ThreadRoot

# References of a long sequence: the first step and the latest ones (RFC 5322 3.6.4 lets
# a writer trim the middle), so the field stays short.
MAX_REFERENCES = 20
# 100 ns ticks between 1601-01-01 (FILETIME's epoch) and 1970-01-01.
_FILETIME_EPOCH = 11_644_473_600 * 10_000_000
_PREFIX = re.compile(r"^\s*(?:(?:re|aw|sv|vs|antw|fw|fwd|wg|tr)(?:\[\d+\])?\s*:\s*)+", re.I)


# --- Outlook's Thread-Index ----------------------------------------------------------------------
def filetime(ts: float) -> int:
    """A UNIX time as a Windows FILETIME (100 ns ticks since 1601)."""
    return int(ts * 10_000_000) + _FILETIME_EPOCH


def index_root(started: float, guid: bytes) -> bytes:
    """The 22-byte header block: the 6 high bytes of the start's FILETIME (the first of
    them is the format's 0x01), then the conversation GUID."""
    if len(guid) != 16:
        raise ValueError("a Thread-Index GUID has 16 bytes")
    return (filetime(started) >> 16).to_bytes(6, "big") + guid


def child_block(root: bytes, at: float, salt: bytes) -> bytes:
    """One 5-byte child block for a step sent at ``at``: the time since the header's time
    (31 bits, in units of 2^18 ticks, or 2^23 past about 1.1 years: the delta code bit says
    which), then 4 random bits (from ``salt``, so one step always gets the same block) and
    a 4-bit sequence count of 0."""
    start = int.from_bytes(root[:6], "big") << 16
    delta = max(0, filetime(at) - start)
    if delta >> 49:
        code, units = 1, (delta >> 23) & 0x7FFF_FFFF
    else:
        code, units = 0, (delta >> 18) & 0x7FFF_FFFF
    noise = hashlib.blake2b(salt, digest_size=1).digest()[0] & 0xF0
    return ((code << 39) | (units << 8) | noise).to_bytes(5, "big")


def thread_index(root: bytes, steps: Sequence[tuple[float, str]]) -> bytes:
    """The index of a mail whose parents after the thread's first mail are ``steps``
    (each its send time and Message-ID), this mail last."""
    return root + b"".join(child_block(root, at, mid.encode()) for at, mid in steps)


def topic(subject: str | None) -> str:
    """A subject without reply and forward prefixes, as Outlook's Thread-Topic wants it."""
    return _PREFIX.sub("", (subject or "").replace("\r", " ").replace("\n", " ")).strip()


# --- the proxy's side ----------------------------------------------------------------------------
def wanted(stamped: Stamped, site_default: bool) -> bool:
    """Whether this mail is to be threaded: campaign mail asking for it (or, with the site
    default on, not declining it)."""
    if stamped.campaign is None:
        return False
    return stamped.thread == "previous" or (site_default and stamped.thread is None)


def thread_recipient(stamped: Stamped, envelope: Sequence[str]) -> str | None:
    """Whose thread a mail joins: the first To address that is an envelope recipient, else
    the first envelope recipient (addresses normalized)."""
    for address in stamped.to:
        if address in envelope:
            return address
    return envelope[0] if envelope else None


def look_up(store: Store, campaign: str, recipient: str) -> ThreadHistory:
    """The recipient's earlier steps in ``campaign`` (a store read)."""
    return store.thread_history(campaign, recipient)


def follow_up(
    stamped: Stamped,
    history: ThreadHistory,
    recipient: str,
    *,
    now: float,
    guid: bytes | None = None,
) -> Stamped:
    """``stamped`` made a reply in ``recipient``'s thread, with the root to keep (new
    roots get ``guid``, random when None)."""
    new_root = history.index is None
    root = _root(history, now, guid)
    steps = list(zip(history.sent_at, history.message_ids, strict=True))[1:]
    steps.append((now, stamped.message_id))
    ids = list(history.message_ids)
    if len(ids) > MAX_REFERENCES:
        ids = ids[:1] + ids[-(MAX_REFERENCES - 1) :]
    add: list[tuple[str, str]] = []
    if ids:
        add.append(("In-Reply-To", f"<{ids[-1]}>"))
        add.append(("References", " ".join(f"<{i}>" for i in ids)))
    subject = topic(history.first_subject if ids else stamped.subject)
    if subject:
        add.append(("Thread-Topic", _encoded(subject)))
    index = thread_index(root, steps if ids else [])
    add.append(("Thread-Index", base64.b64encode(index).decode("ascii")))
    have = {f.name.lower() for f in parse_fields(stamped.head)}
    add = [(name, value) for name, value in add if name.lower() not in have]
    head, _ = edit_header(stamped.head, add=add) if add else (stamped.head, [])
    kept = ThreadRoot(recipient, base64.b64encode(root).decode("ascii")) if new_root else None
    return replace(stamped, head=head, thread_root=kept)


def _root(history: ThreadHistory, now: float, guid: bytes | None) -> bytes:
    if history.index is not None:
        try:
            root = base64.b64decode(history.index, validate=True)
        except ValueError:
            root = b""
        if len(root) == 22:
            return root
    started = history.sent_at[0] if history.sent_at else now
    return index_root(started, guid if guid is not None else os.urandom(16))


def _encoded(text: str) -> str:
    """``text`` as a header value: as it is in ASCII, else RFC 2047 words."""
    text = text[:500]
    if text.isascii():
        return text
    return Header(text, "utf-8").encode()
