"""Tell mail written by people from auto-replies, bounces, read receipts and reports.

The milter and ``replytrack check`` call :func:`classify` (headers as the
milter gets them, the body when it was read) or :func:`classify_message` (a
whole .eml file). The verdict is a :class:`Classification`: one of
:data:`KINDS`, the evidence that decided it, and the details an automated
mail carries (the Message-IDs it refers to, the failed recipients of a
bounce, the return date of an out-of-office notice).

The detectors live in :mod:`replytrack.classify.detectors`, one module each, and run
in the order of its table; everything here is pure (no I/O) and bounded in time on
hostile input.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from . import _mime
from .dates import read_return_date
from .detectors import Context, first_finding, header_signals
from .detectors.auto_reply import LEFT_ORGANISATION
from .intent import Intent, label_intent

KINDS = ("human", "auto_reply", "bounce", "receipt", "feedback")


@dataclass(frozen=True)
class Classification:
    """The verdict on one inbound message.

    ``kind`` is one of :data:`KINDS`; "human" means written by a person (the
    caller turns human+matched into "reply" and human+unmatched into
    "unrelated"). ``evidence`` holds short machine-readable reasons.
    ``intent`` is what a person's mail means (:mod:`replytrack.classify.intent`), read
    when the body was: set for "human" and for an auto-reply of subtype
    ``left_organisation`` (whose referral names the successor's address); None otherwise.
    """

    kind: str
    evidence: tuple[str, ...]
    subtype: str | None = None
    return_date: dt.date | None = None
    referenced_ids: tuple[str, ...] = ()
    failed_recipients: tuple[str, ...] = ()
    permanent: bool | None = None
    intent: Intent | None = None


def _intent(ctx: Context) -> Intent | None:
    """The intent of the new text, when the body was read."""
    if not ctx.view.body_seen:
        return None
    return label_intent(
        ctx.new_text,
        subject=ctx.subject,
        sender=ctx.from_addr,
        words=ctx.new_words,
        low=ctx.new_low,
    )


def _mail_date(view: _mime.MailView) -> dt.date | None:
    value = view.headers.get("Date")
    if not value:
        return None
    try:
        return parsedate_to_datetime(value[:200]).date()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _classify_view(
    view: _mime.MailView, envelope_from: str | None, today: dt.date | None
) -> Classification:
    ctx = Context.build(view, envelope_from)
    finding = first_finding(ctx)
    if finding is None:
        return Classification("human", ("no-automation-signal",), intent=_intent(ctx))
    return_date = None
    if finding.kind == "auto_reply" and finding.subtype in (
        "out_of_office",
        "vacation",
        "autoresponder",
    ):
        # The notice's own date is the reference for "next Monday"; a
        # caller-given today wins (the milter knows the real day).
        reference = today or _mail_date(view) or dt.date.today()
        return_date = read_return_date(ctx.subject, ctx.new_text, reference)
        if return_date is not None and finding.subtype == "autoresponder":
            finding.subtype = "out_of_office"
    return Classification(
        kind=finding.kind,
        evidence=tuple(finding.evidence),
        subtype=finding.subtype,
        return_date=return_date,
        referenced_ids=tuple(finding.referenced_ids),
        failed_recipients=tuple(finding.failed_recipients),
        permanent=finding.permanent,
        intent=_intent(ctx) if finding.subtype == LEFT_ORGANISATION else None,
    )


def classify(
    headers: list[tuple[str, str]],
    body: bytes | None = None,
    *,
    envelope_from: str | None = None,
    today: dt.date | None = None,
) -> Classification:
    """Classify one message from its headers and (optionally) its raw body.

    ``headers`` are (name, value) pairs in order, folded or unfolded;
    ``body`` is the raw body after the header block, possibly truncated, or
    None when it was not read; ``envelope_from`` is MAIL FROM ("" or "<>" is
    the null sender; None when unknown, then Return-Path is used). ``today``
    is the reference day for return dates (default: the mail's Date).
    Never raises on malformed input; a fault inside a detector yields "human"
    with the evidence "classifier-error", because inbound fails open.
    """
    try:
        view = _mime.view(headers, body)
        return _classify_view(view, envelope_from, today)
    except (RecursionError, MemoryError, ValueError, TypeError, LookupError, AttributeError) as exc:
        return Classification("human", (f"classifier-error:{type(exc).__name__}",))


def needs_body(headers: list[tuple[str, str]], *, envelope_from: str | None = None) -> bool:
    """True when the headers show the mail may be automated and the body is
    needed to decide or to read details (delivery reports, MAILER-DAEMON
    senders, auto-reply signals, multipart/report)."""
    try:
        view = _mime.view(headers, None)
        return bool(header_signals(view, envelope_from))
    except (RecursionError, ValueError, TypeError, LookupError, AttributeError):
        return True


_MBOX_FROM = re.compile(rb"\AFrom [^\n]*\n")


def classify_message(
    raw: bytes, *, envelope_from: str | None = None, today: dt.date | None = None
) -> Classification:
    """Classify a whole message (an .eml file, optionally with an mbox "From " line)."""
    data = _mime.normalise_newlines(raw)
    data = _MBOX_FROM.sub(b"", data, count=1)
    header_end = data.find(b"\n\n")
    if data.startswith(b"\n"):
        head, body = b"", data[1:]
    elif header_end < 0:
        head, body = data, b""
    else:
        head, body = data[: header_end + 1], data[header_end + 2 :]
    text = head.decode("utf-8", "replace")
    headers, rest = _mime.split_header_block(text + "\n")
    if rest.strip():
        # The header block had a line that is no header: what follows belongs to the body.
        body = rest.encode("utf-8", "replace") + b"\n" + body
    return classify(headers, body, envelope_from=envelope_from, today=today)


__all__ = [
    "KINDS",
    "LEFT_ORGANISATION",
    "Classification",
    "Intent",
    "classify",
    "classify_message",
    "label_intent",
    "needs_body",
]
