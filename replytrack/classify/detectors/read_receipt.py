"""Read receipts: RFC 8098 disposition notifications, and Outlook's TNEF receipts."""

from __future__ import annotations

from .. import _patterns as pat
from ._context import MAX_IDS, Context, Finding, header_ids, threading_ids, unique
from ._reports import dsn_fields, returned_ids


def check(ctx: Context) -> Finding | None:
    """A disposition-notification report, or a receipt subject with a receipt's body."""
    ctype = ctx.view.content_type
    report_type = (ctype.params.get("report-type") or "").lower()
    parts = [p for p in ctx.view.parts_of("message/disposition-notification") if not p.returned]
    evidence: list[str] = []
    if ctype.mime == "multipart/report" and report_type == "disposition-notification":
        evidence.append("content-type:multipart/report;report-type=disposition-notification")
    if parts:
        evidence.append("part:message/disposition-notification")
    if not evidence and pat.RECEIPT_SUBJECT.match(ctx.subject):
        if ctype.mime == "application/ms-tnef":
            evidence.append("subject:read-receipt+content-type:application/ms-tnef")
        elif pat.RECEIPT_BODY.search(ctx.head(4000)):
            evidence.append("subject:read-receipt+body:read-notice")
    if not evidence:
        return None
    ids = [
        i
        for part in parts
        for group in dsn_fields(part.text)
        for i in header_ids(group, "Original-Message-ID")
    ]
    return Finding(
        "receipt",
        "mdn",
        evidence,
        referenced_ids=unique([*ids, *threading_ids(ctx), *returned_ids(ctx)], MAX_IDS),
    )


def signals(ctx: Context) -> list[str]:
    """A read-receipt subject."""
    return ["subject:read-receipt"] if pat.RECEIPT_SUBJECT.match(ctx.subject) else []
