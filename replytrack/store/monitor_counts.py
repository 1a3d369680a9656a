"""What monitor mode (``mode = "monitor"``) let happen, per campaign: the part both store
backends share. Pure.

Two counts for ``replytrack campaigns``: ``would_stop``, the recipients whose enrollment
enforce mode would have stopped or marked bounced (the would-be changes a monitored inbound
event lists in ``detail.would_set``, counted once per campaign and recipient); and
``would_suppress``, the recipients a campaign mail was relayed to in monitor mode although
enforce mode would have suppressed or deferred it (their row's reason starts ``monitor:``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from replytrack.config.mode import MONITOR_REASON
from replytrack.store.records import BOUNCED, STOPPED

# Text every monitored event's JSON detail holds (json.dumps' default separators); each
# event found by it is still parsed and checked.
MONITORED_TEXT = '"monitor": true'
assert "'" not in MONITORED_TEXT + MONITOR_REASON  # written into SQL below
# The recipients relayed in monitor mode and the monitored events, as conditions that the
# partial indexes of schema 9 are made with (recipients_monitored, events_monitored): the
# same text in a query lets both engines use them, so ``replytrack campaigns`` reads those
# few rows instead of scanning every recipient and event. ``find_in`` is the engine's
# substring search (SQLite's instr, PostgreSQL's strpos: same arguments).
MONITORED_RECIPIENT = f"substr(reason, 1, {len(MONITOR_REASON)}) = '{MONITOR_REASON}'"


def monitored_event(find_in: str) -> str:
    return f"{find_in}(detail, '{MONITORED_TEXT}') > 0"


_STOPPING = (STOPPED, BOUNCED)


@dataclass(frozen=True)
class MonitorCounts:
    """What monitor mode let happen in one campaign."""

    would_stop: int = 0
    would_suppress: int = 0


def count(
    details: Iterable[str | None], suppressed: Iterable[tuple[str, int]], campaign: str | None
) -> dict[str, MonitorCounts]:
    """Campaign -> counts, from the ``detail`` texts of the events ``monitored_event``
    found and (campaign, rows) of recipients relayed in monitor mode; ``campaign`` keeps
    only that one."""
    stops: dict[str, set[str]] = {}
    for text in details:
        try:
            detail: Any = json.loads(text or "{}")
        except ValueError:
            continue
        if not isinstance(detail, dict) or detail.get("monitor") is not True:
            continue
        for change in detail.get("would_set") or []:
            if not isinstance(change, dict) or change.get("status") not in _STOPPING:
                continue
            name, recipient = change.get("campaign"), change.get("recipient")
            if isinstance(name, str) and isinstance(recipient, str):
                stops.setdefault(name, set()).add(recipient)
    found = {name: MonitorCounts(would_stop=len(who)) for name, who in stops.items()}
    for name, rows in suppressed:
        found[name] = MonitorCounts(found.get(name, MonitorCounts()).would_stop, int(rows))
    if campaign is not None:
        return {campaign: found[campaign]} if campaign in found else {}
    return found
