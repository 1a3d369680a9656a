"""Who a mail is recorded for, and what a sender is told when nobody may get it. Pure,
but for monitor mode's log line and metric (:func:`let_through`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from replytrack import metrics
from replytrack.config import Config
from replytrack.config.mode import MONITOR, MONITOR_REASON
from replytrack.proxy.stamp import Stamped
from replytrack.store import CAMPAIGN_STOPPED, Enrollment, OutboundRecipient
from replytrack.store.records import DO_NOT_CONTACT

log = logging.getLogger("replytrack.proxy")


class Blocked(dict[str, Enrollment]):
    """The recipients a mail must not reach (address -> the enrollment that says why), and
    in ``watched`` those monitor mode relays to although enforce mode would not."""

    def __init__(
        self, blocked: Mapping[str, Enrollment], watched: Mapping[str, Enrollment] | None = None
    ) -> None:
        super().__init__(blocked)
        self.watched = dict(watched or {})


def let_through(
    config: Config, blocked: Mapping[str, Enrollment], campaign: str | None, *, cid: str
) -> Blocked:
    """``blocked`` as the proxy enforces it. In monitor mode (``mode = "monitor"``) every
    recipient goes in ``watched`` instead (relayed, its row noting why enforce mode would
    not have), logged (with the connection id ``cid``) and counted, except those on the
    do-not-contact list: theirs is the recipient's own request, honoured in both modes."""
    if config.mode != MONITOR or not blocked:
        return Blocked(blocked)
    kept = {a: e for a, e in blocked.items() if (e.reason or "").startswith(DO_NOT_CONTACT)}
    watched = {a: e for a, e in blocked.items() if a not in kept}
    if watched:
        metrics.PROXY_RECIPIENTS_MONITORED.inc(len(watched))
        log.info(
            "[%s] monitor mode: campaign %s: not suppressing %s, as enforce mode would (%s)",
            cid,
            campaign,
            ", ".join(sorted(watched)),
            "; ".join(_why(e) for _, e in sorted(watched.items())),
        )
    return Blocked(kept, watched)


def _why(enrollment: Enrollment) -> str:
    return enrollment.status + (f": {enrollment.reason}" if enrollment.reason else "")


def build_recipients(
    stamped: Stamped,
    envelope: Sequence[str],
    blocked: dict[str, Enrollment],
    refused: dict[str, str],
) -> tuple[OutboundRecipient, ...]:
    """Recipients to record: header To/Cc and envelope, with role, envelope flag and status.

    An envelope recipient not named in To or Cc is a Bcc. Blocked envelope recipients are
    ``suppressed`` with their enrollment's state as reason; recipients the upstream refused
    at RCPT are ``refused`` with its reply. Those monitor mode let through (``watched`` of
    a :class:`Blocked`) are ``sent``, their reason ``monitor: `` and what it would have been.
    """
    watched = blocked.watched if isinstance(blocked, Blocked) else {}
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
            status, reason = "suppressed", _why(blocked[address])
        elif on_envelope and address in watched:
            reason = MONITOR_REASON + _why(watched[address])
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
