"""One inbound mail as the milter sees it (:class:`Inbound`), and what its headers alone say:
its author, its event key, whether it can be a person's reply at all.

Pure: no store, no milter protocol. The adapter fills an :class:`Inbound` from Postfix's
callbacks, ``replytrack check`` from a file, journal replay from a journal line.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from replytrack.config.mode import MODES
from replytrack.headers import extract_addresses, extract_msgids, normalize_address

# Our header on replies; copies arriving from outside are removed.
HEADER = "X-ReplyTrack"
# Bounds against hostile mail: headers kept per message, body bytes read.
MAX_HEADERS = 1000
MAX_HEADER_BYTES = 512 * 1024
BODY_LIMIT = 256 * 1024


def first_value(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    """The value of the first header called ``name`` (case-insensitive), or None."""
    wanted = name.lower()
    for key, value in headers:
        if key.lower() == wanted:
            return value
    return None


def first_from(headers: Sequence[tuple[str, str]]) -> str | None:
    """The first address of the first From header (lowercase), or None."""
    value = first_value(headers, "From")
    addresses = extract_addresses([value], limit=1) if value is not None else []
    return addresses[0] if addresses else None


def outside_copies(headers: Sequence[tuple[str, str]]) -> int:
    """How many :data:`HEADER` headers the mail arrived with (all from outside: removed)."""
    wanted = HEADER.lower()
    return sum(1 for name, _ in headers if name.lower() == wanted)


@dataclass
class Inbound:
    """What the milter knows about one inbound mail: the decision inputs (journaled as is)."""

    # MAIL FROM without brackets; "" is the null sender, None unknown (``check`` on a file).
    envelope_from: str | None
    recipients: list[str] = field(default_factory=list)
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | None = None
    queue_id: str | None = None
    # The SASL login ({auth_authen}) of an authenticated submission.
    authenticated: str | None = None
    received_at: float = field(default_factory=time.time)
    # The site's mode when the mail arrived ("monitor" or "enforce"): a journaled mail is
    # replayed under it, not under the mode of the day it is replayed. None: not known (an
    # older journal entry, ``check`` on a file): the configured mode.
    mode: str | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe form for the journal (the body base64-encoded)."""
        return {
            "envelope_from": self.envelope_from,
            "recipients": self.recipients,
            "headers": [[n, v] for n, v in self.headers],
            "body": None if self.body is None else base64.b64encode(self.body).decode("ascii"),
            "queue_id": self.queue_id,
            "authenticated": self.authenticated,
            "received_at": self.received_at,
            "mode": self.mode,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Inbound:
        """The inverse of :meth:`to_json`."""
        body = data.get("body")
        return cls(
            envelope_from=data.get("envelope_from"),
            recipients=list(data.get("recipients") or []),
            headers=[(str(n), str(v)) for n, v in data.get("headers") or []],
            body=None if body is None else base64.b64decode(body),
            queue_id=data.get("queue_id"),
            authenticated=data.get("authenticated"),
            received_at=float(data.get("received_at") or time.time()),
            mode=data.get("mode") if data.get("mode") in MODES else None,
        )

    def header(self, name: str) -> str | None:
        """The first value of header ``name``, or None."""
        return first_value(self.headers, name)

    @functools.cached_property
    def envelope(self) -> str | None:
        """The envelope sender normalized ("" the null sender), None when unknown."""
        return None if self.envelope_from is None else normalize_address(self.envelope_from)

    @functools.cached_property
    def author(self) -> str | None:
        """The first address of the first From header (lowercase), or None.

        Read once the headers are complete (end of headers): it is not read again.
        """
        return first_from(self.headers)

    @functools.cached_property
    def sender(self) -> str:
        """The author: the From address, else the envelope sender (lowercase)."""
        return self.author or normalize_address(self.envelope_from or "")


def message_id(msg: Inbound) -> str | None:
    """The mail's own Message-ID (without brackets), or None."""
    ids = extract_msgids(msg.header("Message-ID") or "", limit=1)
    return ids[0] if ids else None


def dedupe_key(msg: Inbound, own_id: str | None = None) -> str:
    """One event per inbound mail: its Message-ID, else a hash of sender, date and subject.

    ``own_id`` is :func:`message_id` when the caller has it already.
    """
    ids = [own_id] if own_id else extract_msgids(msg.header("Message-ID") or "", limit=1)
    if ids:
        # A raw non-UTF-8 byte arrives as a surrogate escape, which no UTF-8 store can hold:
        # escape it the same way every time so the same mail keeps the same key.
        key = ids[0].encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        return "inbound:" + key
    basis = "\x00".join(
        [msg.sender, (msg.header("Date") or "").strip(), (msg.header("Subject") or "").strip()]
    )
    return "inbound-hash:" + hashlib.sha256(basis.encode("utf-8", "surrogateescape")).hexdigest()


def never_reply_reason(msg: Inbound) -> str | None:
    """Why this mail cannot be a person's reply whatever the classifier says, or None.

    A safety net under the classifier: the null sender (delivery reports), RFC 3834
    ``Auto-Submitted`` other than ``no``, and ``multipart/report`` are machines speaking.
    """
    if msg.envelope == "":
        return "null-sender"
    auto = (msg.header("Auto-Submitted") or "").strip().lower()
    if auto and auto.split(";")[0].strip() != "no":
        return "auto-submitted"
    content_type = (msg.header("Content-Type") or "").strip().lower()
    if content_type.startswith("multipart/report"):
        return "multipart-report"
    return None


def weak_sender(msg: Inbound) -> str | None:
    """The address weak evidence may name, or None when it cannot be trusted.

    Without threading headers, only the sender says whom a mail is from, and a From header
    alone is anyone's to write: the envelope sender must be the same address (case aside).
    """
    author = msg.author
    if author is None or msg.envelope_from is None:
        return None
    author = author.lower()
    if (msg.envelope or "").lower() != author:
        return None
    return author
