"""Who a mail is recorded for, and what a sender is told when nobody may get it. Pure."""

from __future__ import annotations

from collections.abc import Sequence

from replytrack.proxy.stamp import Stamped
from replytrack.store import CAMPAIGN_STOPPED, Enrollment, OutboundRecipient


def build_recipients(
    stamped: Stamped,
    envelope: Sequence[str],
    blocked: dict[str, Enrollment],
    refused: dict[str, str],
) -> tuple[OutboundRecipient, ...]:
    """Recipients to record: header To/Cc and envelope, with role, envelope flag and status.

    An envelope recipient not named in To or Cc is a Bcc. Blocked envelope recipients are
    ``suppressed`` with their enrollment's state as reason; recipients the upstream refused
    at RCPT are ``refused`` with its reply.
    """
    entries: dict[str, tuple[str, bool]] = {}
    for address in stamped.to:
        entries.setdefault(address, ("to", False))
    for address in stamped.cc:
        entries.setdefault(address, ("cc", False))
    for address in [*envelope, *refused]:
        role, _ = entries.get(address, ("bcc", True))
        entries[address] = (role, True)
    result = []
    for address, (role, on_envelope) in entries.items():
        status, reason = "sent", None
        if address in refused:
            status, reason = "refused", refused[address]
        elif on_envelope and address in blocked:
            enrollment = blocked[address]
            status = "suppressed"
            reason = enrollment.status + (f": {enrollment.reason}" if enrollment.reason else "")
        result.append(OutboundRecipient(address, role, on_envelope, status, reason))
    return tuple(result)


def suppressed_reply(campaign: str | None, blocked: dict[str, Enrollment]) -> str:
    """The 550 for a mail none of whose recipients may get it: a stopped campaign, or each
    recipient's own state."""
    reasons = [e.reason or "" for e in blocked.values()]
    if reasons and all(r.startswith(CAMPAIGN_STOPPED) for r in reasons):
        why = reasons[0][len(CAMPAIGN_STOPPED) :].lstrip(": ")
        return f"550 5.7.1 not sent: campaign {campaign} is stopped" + (f" ({why})" if why else "")
    listed = "; ".join(
        f"{a} {e.status}" + (f" ({e.reason})" if e.reason else "")
        for a, e in sorted(blocked.items())
    )
    return f"550 5.7.1 not sent: campaign {campaign} is over for {listed}"


def one_line(reply: str) -> str:
    """A reply of one or more lines as one line of at most 500 characters (for the store,
    and for our 250 quoting the upstream's)."""
    return " ".join(line[4:] if i else line for i, line in enumerate(reply.splitlines()))[:500]
