"""Reports about mail rather than answers to it: abuse feedback (ARF, Microsoft's JMRP),
DMARC aggregate reports and SMTP TLS reports.

The returned mail's IDs are read only once a report is recognised: this detector runs on
every mail, and most mail is none.
"""

from __future__ import annotations

import re

from ._context import Context, Finding
from ._reports import returned_ids

_DMARC_SUBJECT = re.compile(r"\breport[ -]?domain:\s*\S+.{0,20}\bsubmitter:", re.I)
_REPORT_ARCHIVE = (
    "application/zip",
    "application/gzip",
    "application/x-gzip",
    "application/x-zip-compressed",
)


def check(ctx: Context) -> Finding | None:
    """The report's content type, TLS-Report-Domain, or a DMARC subject with an archive."""
    ctype = ctx.view.content_type
    parts = ctx.view.parts
    report_type = (ctype.params.get("report-type") or "").lower()
    if (ctype.mime == "multipart/report" and report_type == "feedback-report") or any(
        not p.returned for p in ctx.view.parts_of("message/feedback-report")
    ):
        return Finding(
            "feedback",
            "arf",
            ["content-type:multipart/report;report-type=feedback-report"],
            returned_ids(ctx),
        )
    if (
        report_type == "tlsrpt"
        or ctx.headers.get("TLS-Report-Domain")
        or any(p.content_type.mime.startswith("application/tlsrpt") for p in parts)
    ):
        return Finding("feedback", "tlsrpt", ["report:tlsrpt"], returned_ids(ctx))
    archives = ctype.mime in _REPORT_ARCHIVE or any(
        p.content_type.mime in _REPORT_ARCHIVE for p in parts
    )
    if _DMARC_SUBJECT.search(ctx.subject) and (archives or not ctx.view.body_seen):
        return Finding("feedback", "dmarc", ["subject:dmarc-aggregate-report"], returned_ids(ctx))
    # Microsoft's junk-mail reporting programme (JMRP) attaches the reported mail
    # with its own X-HmXmrOriginalRecipient header.
    for part in ctx.view.parts_of("message/rfc822"):
        if "X-HmXmrOriginalRecipient" in part.headers:
            return Finding("feedback", "arf", ["part:jmrp-report"], returned_ids(ctx))
    return None


def signals(ctx: Context) -> list[str]:
    """A DMARC report subject or a TLS-Report-Domain header."""
    if _DMARC_SUBJECT.search(ctx.subject) or ctx.headers.get("TLS-Report-Domain"):
        return ["subject:report"]
    return []
