"""Mail from a MAILER-DAEMON address that no other detector read is still a delivery
report of some kind; postmaster alone is not (people write as postmaster)."""

from __future__ import annotations

from ._context import MAX_IDS, Context, Finding, is_mailer_daemon, threading_ids, unique
from ._reports import failed_from_headers, failed_from_text, returned_ids


def check(ctx: Context) -> Finding | None:
    """The envelope or From address is MAILER-DAEMON."""
    if not is_mailer_daemon(ctx):
        return None
    return Finding(
        "bounce",
        None,
        ["from:mailer-daemon"],
        referenced_ids=unique([*returned_ids(ctx), *threading_ids(ctx)], MAX_IDS),
        failed_recipients=failed_from_headers(ctx) or failed_from_text(ctx),
    )


def signals(ctx: Context) -> list[str]:
    """A MAILER-DAEMON sender."""
    return ["from:mailer-daemon"] if is_mailer_daemon(ctx) else []
