"""The milter in monitor mode (``mode = "monitor"``): record what would happen, do nothing.

The decision (:mod:`replytrack.milter.decision`) is the same in both modes and says what
enforce mode does. In monitor mode the shell records the verdict's event, marked
``detail.monitor`` and with what it would have changed (``detail.would_set``), and stops
there: no enrollment changes state, nobody goes on the do-not-contact list, no
out-of-office is remembered, no webhook is queued and no ``X-ReplyTrack`` header is added.
Copies of that header from outside are still removed: a reply must never look flagged by
someone else, whatever the mode.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from replytrack.config import MONITOR, Config
from replytrack.milter.decision import Verdict
from replytrack.store.base import Store

log = logging.getLogger("replytrack.milter")

# Enrollment changes a monitored event lists, like the decision's own "stopped" list.
MAX_LISTED = 100


def active(config: Config, mode: str | None = None) -> bool:
    """True when a mail is handled in monitor mode: ``mode``, the one it arrived under
    (``Inbound.mode``), or the site's configured mode when that is not known."""
    return (mode or config.mode) == MONITOR


def monitored_detail(verdict: Verdict) -> dict[str, Any]:
    """The event's detail with what enforce mode would have done to enrollments."""
    assert verdict.event is not None
    detail = dict(verdict.event.detail)
    detail["monitor"] = True
    detail["would_set"] = [
        {"campaign": c.campaign, "recipient": c.recipient, "status": c.status, "reason": c.reason}
        for c in verdict.set_status[:MAX_LISTED]
    ]
    if verdict.add_header:
        detail["would_add_header"] = verdict.add_header
    if verdict.kind == "reply" and verdict.intent and verdict.intent.intent == "unsubscribe":
        detail["would_do_not_contact"] = verdict.sender
    return detail


def record(store: Store, verdict: Verdict) -> bool:
    """Record the verdict's event as monitored and change nothing else; False when it was
    recorded already (a replay). Raises StoreError like ``Engine.apply``."""
    if verdict.event is None:
        return False
    event = dataclasses.replace(verdict.event, detail=monitored_detail(verdict))
    event_id = store.record_event(event, dedupe_key=verdict.dedupe_key, notify=False)
    return event_id is not None


def as_applied(verdict: Verdict, config: Config, mode: str | None = None) -> Verdict:
    """The verdict as the milter carried it out: unchanged in enforce mode; in monitor mode
    without header, stops, bounces and pause (so neither the mail, the metrics nor the log
    line claim them), what it would have done logged at INFO."""
    if not active(config, mode) or verdict.event is None:
        return verdict
    would = len(verdict.set_status)
    if would or verdict.add_header:
        log.info(
            "qid=%s monitor mode: %s not flagged, %d enrollment change(s) not made"
            " (enforce mode would have: %s)",
            verdict.event.queue_id or "-",
            verdict.kind,
            would,
            ", ".join(f"{c.recipient} {c.status} in {c.campaign}" for c in verdict.set_status[:5])
            or "flagged it",
        )
    return dataclasses.replace(
        verdict, add_header=None, set_status=(), bounced=(), paused_until=None
    )
