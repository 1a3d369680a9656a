"""What every detector reads (:class:`Context`) and returns (:class:`Finding`), and the
readers more than one detector uses."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property

from replytrack.headers import extract_msgids, parse_mailbox

from .. import _patterns as pat
from .._anchored import anchors
from .._mime import Headers, MailView, decode_words
from ..new_text import MARKER_SPAN, NEW_TEXT_LIMIT, new_text
from ..subjects import subject_text
from ..thread_ids import answered_ids

MAX_IDS = 50
MAX_RECIPIENTS = 50
# The own text kept for the detectors (quoted lines removed); reports put their wording first.
MAX_OWN_TEXT = 40000

ADDRESS = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})+"
)


@dataclass
class Finding:
    """What one detector found: the kind, the evidence, and the details it could read."""

    kind: str
    subtype: str | None
    evidence: list[str]
    referenced_ids: list[str] = field(default_factory=list)
    failed_recipients: list[str] = field(default_factory=list)
    permanent: bool | None = None


@dataclass
class Context:
    """The facts every detector reads, computed once per message."""

    view: MailView
    envelope_from: str | None  # None when unknown; "" for the null sender
    subject: str
    from_addr: str
    from_name: str
    own_text: str  # the message's own text (not returned mail's), bounded, as it came
    # Quoted lines are removed as far as a detector reads: the kept lines so far, and
    # how many characters of own_text they come from.
    _kept: list[str] = field(default_factory=list, init=False, repr=False)
    _read: int = field(default=0, init=False, repr=False)

    @property
    def headers(self) -> Headers:
        return self.view.headers

    @cached_property
    def text(self) -> str:
        """The own text with its quoted ("> ") lines removed."""
        return self.head(len(self.own_text))

    def head(self, size: int) -> str:
        """``text[:size]``, removing quoted lines only as far as needed: most detectors
        read the opening of a mail, and a reply may carry a long quoted thread."""
        raw = self.own_text
        # <= rather than <: own text ending in a newline has an empty last line.
        while self._read <= len(raw) and sum(map(len, self._kept)) < size:
            end = raw.find("\n", self._read + size)
            end = len(raw) if end < 0 else end
            chunk = raw[self._read : end]
            lines = chunk.split("\n")
            if ">" in chunk:
                lines = [line for line in lines if not line.lstrip().startswith(">")]
            self._kept += lines
            self._read = end + 1
        return "\n".join(self._kept)[:size]

    @cached_property
    def new_text(self) -> str:
        """The opening of what the sender wrote now, above any quoted earlier message."""
        return new_text(self.head(NEW_TEXT_LIMIT + MARKER_SPAN))

    @cached_property
    def new_low(self) -> str:
        """The new text lower-cased, for anchored phrase tables."""
        return self.new_text.lower()

    @cached_property
    def new_words(self) -> frozenset[str]:
        """The anchor words of the new text (see :mod:`replytrack.classify._anchored`)."""
        return anchors(self.new_low)

    @property
    def null_sender(self) -> bool:
        return self.envelope_from == ""

    @classmethod
    def build(cls, view: MailView, envelope_from: str | None) -> Context:
        headers = view.headers
        if envelope_from is None:
            # A delivered .eml records MAIL FROM in Return-Path; use it when the
            # caller does not know the envelope.
            envelope_from = headers.get("Return-Path")
        envelope = None
        if envelope_from is not None:
            envelope = envelope_from.strip().strip("<>").strip()
        subject = subject_text(headers.get("Subject"))[:1000]
        name, addr = parse_mailbox(decode_words(headers.get("From") or "")[:2000])
        text = view.own_text()[:MAX_OWN_TEXT] if view.body_seen else ""
        return cls(view, envelope, subject, addr.lower(), name, text)


def unique(items: Iterable[str], limit: int | None = None) -> list[str]:
    """``items`` in order, each once, at most ``limit``."""
    return list(dict.fromkeys(items))[:limit]


def header_ids(headers: Headers, name: str) -> list[str]:
    """The Message-IDs in every ``name`` header."""
    return unique(
        (i for value in headers.get_all(name) for i in extract_msgids(value, limit=MAX_IDS)),
        MAX_IDS,
    )


def threading_ids(ctx: Context) -> list[str]:
    """The IDs the mail answers: In-Reply-To first, then References newest first."""
    pairs = answered_ids(
        ctx.headers.get_all("In-Reply-To"), ctx.headers.get_all("References"), limit=MAX_IDS
    )
    return [message_id for message_id, _ in pairs][:MAX_IDS]


def sender_is_daemon(ctx: Context) -> str | None:
    """Evidence when the sender is delivery software, else None."""
    if ctx.null_sender:
        return "envelope-from:null"
    envelope = ctx.envelope_from or ""
    for addr in (envelope.lower(), ctx.from_addr):
        local = addr.rsplit("@", 1)[0] if "@" in addr else addr
        if local and pat.DAEMON_LOCALPART.match(local):
            return f"from:{local}"
    from_local = ctx.from_addr.rsplit("@", 1)[0]
    if from_local and pat.LIST_ADMIN_LOCALPART.match(from_local):
        return "from:list-admin"
    if ctx.from_addr in ("", "<>") and "From" in ctx.headers:
        return "from:empty"
    if ctx.from_name and pat.DAEMON_DISPLAY.search(ctx.from_name):
        return "from-name:delivery-system"
    return None


def is_mailer_daemon(ctx: Context) -> bool:
    """True when the envelope or From address is a MAILER-DAEMON one."""
    envelope = (ctx.envelope_from or "").lower()
    return any(
        addr.split("@", 1)[0] in ("mailer-daemon", "mailer_daemon", "mailerdaemon")
        for addr in (envelope, ctx.from_addr)
    )
