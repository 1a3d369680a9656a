"""Delivery reports in prose: Postfix, Exim, qmail, Sendmail, Exchange, Gmail, Notes...

Without a delivery-software sender, the subject and the body must agree, and a person
forwarding a bounce ("Fwd: Undeliverable") is not a bounce.
"""

from __future__ import annotations

from .. import _patterns as pat
from ..subjects import FORWARD_SUBJECT, REPLY_SUBJECT
from ._context import (
    MAX_IDS,
    MAX_RECIPIENTS,
    Context,
    Finding,
    sender_is_daemon,
    threading_ids,
    unique,
)
from ._reports import failed_from_headers, failed_from_text, failure_nature, returned_ids

# Characters of own text read for MTA wording: a report says what failed first.
_WINDOW = 12000


def check(ctx: Context) -> Finding | None:
    """X-Failed-Recipients, or MTA wording with a daemon sender or a bounce subject."""
    evidence: list[str] = []
    failed_header = failed_from_headers(ctx)
    if failed_header:
        evidence.append("header:x-failed-recipients")
    sender = sender_is_daemon(ctx)
    subject_hit = bool(pat.BOUNCE_SUBJECT_SET.hits(ctx.subject))
    forwarded = FORWARD_SUBJECT.match(ctx.subject) is not None
    replied = REPLY_SUBJECT.match(ctx.subject) is not None
    if not (failed_header or sender or subject_hit or not (forwarded or replied)):
        # None of the rules below can decide without one of these: a person's
        # "Re:" or "Fwd:" mail is not read for MTA wording at all.
        return None
    body_hits = pat.BOUNCE_BODY_SET.hits(ctx.head(_WINDOW))
    if subject_hit:
        evidence.append("subject:delivery-failure")
    if body_hits:
        evidence.append("body:mta-report")
    decided = bool(failed_header)
    if sender and (subject_hit or body_hits):
        decided = True
    if not sender and subject_hit and body_hits and not forwarded:
        decided = True
    if not sender and len(body_hits) >= 3 and not forwarded and not replied:
        decided = True
    if not decided:
        return None
    if sender:
        evidence.insert(0, sender)
    subtype, permanent = failure_nature(ctx.subject + "\n" + ctx.text)
    return Finding(
        "bounce",
        subtype,
        evidence,
        referenced_ids=unique([*returned_ids(ctx), *threading_ids(ctx)], MAX_IDS),
        failed_recipients=(failed_header or failed_from_text(ctx))[:MAX_RECIPIENTS],
        permanent=permanent,
    )


def signals(ctx: Context) -> list[str]:
    """A delivery-software sender, X-Failed-Recipients or a bounce subject."""
    found: list[str] = []
    sender = sender_is_daemon(ctx)
    if sender:
        found.append(sender)
    if failed_from_headers(ctx):
        found.append("header:x-failed-recipients")
    if pat.BOUNCE_SUBJECT_SET.hits(ctx.subject):
        found.append("subject:delivery-failure")
    return found
