"""RFC 3464 delivery status notifications: multipart/report, or a
message/delivery-status part anywhere in the mail."""

from __future__ import annotations

from ._context import MAX_IDS, MAX_RECIPIENTS, Context, Finding, threading_ids, unique
from ._reports import (
    address_of,
    dsn_fields,
    failed_from_headers,
    failed_from_text,
    failure_nature,
    returned_ids,
)

_STATUS_PARTS = ("message/delivery-status", "message/global-delivery-status")


def check(ctx: Context) -> Finding | None:
    """The report's own status fields decide failed, delayed or delivered."""
    ctype = ctx.view.content_type
    report_type = (ctype.params.get("report-type") or "").lower()
    parts = [p for p in ctx.view.parts_of(*_STATUS_PARTS) if not p.returned]
    evidence: list[str] = []
    if ctype.mime == "multipart/report" and report_type == "delivery-status":
        evidence.append("content-type:multipart/report;report-type=delivery-status")
    if parts:
        evidence.append("part:message/delivery-status")
    if not evidence:
        return None
    actions: list[str] = []
    statuses: list[str] = []
    recipients: list[str] = []
    for part in parts:
        for group in dsn_fields(part.text):
            action = (group.get("Action") or "").lower().strip()
            status = (group.get("Status") or "").strip()
            if action:
                actions.append(action.split()[0])
            if status:
                statuses.append(status.split()[0])
            if not (action or status):
                continue
            # Original-Recipient is the address as we sent it (before aliasing),
            # Final-Recipient the one that failed; both name the recipient.
            for name in ("Original-Recipient", "Final-Recipient"):
                value = group.get(name)
                addr = address_of(value) if value else None
                if addr:
                    recipients.append(addr)
    finding = Finding("bounce", None, evidence)
    if any(a == "failed" for a in actions) or any(s.startswith("5") for s in statuses):
        finding.subtype, finding.permanent = "dsn_failed", True
    elif any(a == "delayed" for a in actions) or any(s.startswith("4") for s in statuses):
        finding.subtype, finding.permanent = "dsn_delayed", False
    elif actions and all(a in ("delivered", "relayed", "expanded") for a in actions):
        finding.subtype, finding.permanent = "dsn_delivered", None
    else:
        # A report whose status part is missing or unreadable: read the text.
        _, permanent = failure_nature(ctx.text)
        finding.subtype = "dsn_failed" if permanent is not False else "dsn_delayed"
        finding.permanent = permanent
    if actions:
        finding.evidence.append("dsn-action:" + ",".join(sorted(set(actions))))
    if statuses:
        finding.evidence.append("dsn-status:" + ",".join(sorted(set(statuses))[:5]))
    failed = unique(recipients) or failed_from_headers(ctx) or failed_from_text(ctx)
    finding.failed_recipients = failed[:MAX_RECIPIENTS]
    finding.referenced_ids = unique([*returned_ids(ctx), *threading_ids(ctx)], MAX_IDS)
    return finding


def signals(ctx: Context) -> list[str]:
    """A report or message content type: the status part may be in the body."""
    mime = ctx.view.content_type.mime
    if mime == "multipart/report" or mime.startswith("message/"):
        return [f"content-type:{mime}"]
    return []
