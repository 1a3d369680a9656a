"""Acknowledgements of receipt: ticket systems, public offices, web forms and shops
answering "we received your message" ([#12345] in the subject, a no-reply sender, the
X-Mailer of a helpdesk), often without RFC 3834 headers or Precedence.

Wording is required: a helpdesk agent's own answer carries the same ticket number and
X-Mailer, and a person may write "we received your message" in a reply. So the wording
must add up with structure (ticket number, helpdesk headers, no-reply or null sender,
automatic headers or text that says it is automatic, a notice that quotes nothing) before
a mail is taken for one. Mail that says why delivery failed is never one (the bounce
detectors decide), nor a notice that the person is away or has left (the auto-reply
detector decides, with its subtypes).
"""

from __future__ import annotations

from .. import _notice_phrases as notice
from .. import _patterns as pat
from ..subjects import FORWARD_SUBJECT, REPLY_SUBJECT
from ._context import Context, Finding, threading_ids
from .auto_reply import header_evidence, short_and_unquoted

SUBTYPE = "acknowledgement"
# The weight a finding needs; wording alone is at most 3 (an acknowledgement subject).
ENOUGH = 4
# Characters of own text searched for delivery-failure wording (as prose_bounce reads).
_FAILURE_WINDOW = 12000


def _ticket_system(ctx: Context) -> str | None:
    """Evidence that a helpdesk, CRM or form system sent the mail, else None."""
    for name, _ in ctx.headers.items:
        low = name.strip().lower()
        if low.startswith(notice.TICKET_HEADER_PREFIXES):
            return f"header:{low[:40]}"
    for name in ("X-Mailer", "User-Agent", "X-Generator"):
        value = ctx.headers.get(name) or ""
        found = notice.TICKET_MAILER.search(value[:300])
        if found:
            return f"x-mailer:{found.group(0).lower().replace(' ', '-')}"
    return None


def _no_reply(ctx: Context) -> bool:
    for address in (ctx.from_addr, (ctx.headers.get("Reply-To") or "").strip().strip("<>").lower()):
        local = address.rsplit("@", 1)[0] if "@" in address else ""
        if local and notice.NO_REPLY_LOCALPART.match(local):
            return True
    return False


def _wording(ctx: Context) -> tuple[list[str], int]:
    evidence: list[str] = []
    score = 0
    subject_lang = notice.ACK_SUBJECT.first(ctx.subject)
    if subject_lang:
        evidence.append(f"subject:acknowledgement:{subject_lang}")
        replied = REPLY_SUBJECT.match(ctx.subject) or FORWARD_SUBJECT.match(ctx.subject)
        score += 1 if replied else 3
    body_lang = notice.ACK_BODY.first(ctx.new_low, ctx.new_words)
    if body_lang:
        evidence.append(f"body:acknowledgement:{body_lang}")
        score += 2
    return evidence, score


def check(ctx: Context) -> Finding | None:
    """Acknowledgement wording that adds up with structure to ENOUGH."""
    evidence, score = _wording(ctx)
    if not evidence:
        return None
    if notice.TICKET_SUBJECT.search(ctx.subject):
        evidence.append("subject:ticket-number")
        score += 1
    system = _ticket_system(ctx)
    if system:
        evidence.append(system)
        score += 1
    if _no_reply(ctx):
        evidence.append("from:no-reply")
        score += 2
    if ctx.null_sender:
        evidence.append("envelope-from:null")
        score += 2
    declared = pat.SELF_DECLARED_SET.first(ctx.new_text)
    if declared:
        evidence.append(f"body:declares-automatic:{declared}")
        score += 3
    headers, header_score = header_evidence(ctx.headers)
    if header_score >= 3:
        evidence += headers
        score += 3
    if score < ENOUGH and short_and_unquoted(ctx):
        evidence.append("body:unquoted-notice")
        score += 1
    if score < ENOUGH:
        return None
    new = ctx.new_text
    if pat.OOO_BODY_SET.first(new) or notice.LEFT_ORGANISATION.first(ctx.new_low, ctx.new_words):
        return None  # an absence notice: the auto-reply detector names it
    if pat.BOUNCE_BODY_SET.hits(ctx.head(_FAILURE_WINDOW)):
        return None  # a delivery failure, however polite: the bounce detectors decide
    return Finding("auto_reply", SUBTYPE, evidence, referenced_ids=threading_ids(ctx))


def signals(ctx: Context) -> list[str]:
    """An acknowledgement subject or a no-reply sender."""
    found: list[str] = []
    if notice.ACK_SUBJECT.first(ctx.subject):
        found.append("subject:acknowledgement")
    if _no_reply(ctx):
        found.append("from:no-reply")
    return found
