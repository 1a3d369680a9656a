"""What monitor mode let happen, as columns of ``replytrack campaigns``."""

from __future__ import annotations

from typing import Any

from replytrack.store import Store

# The columns, after the counts of what enforce mode did: the JSON and CSV keys too.
MONITOR_COLUMNS = ("would_stop", "would_suppress")


def add_monitor_counts(rows: list[dict[str, Any]], store: Store, campaign: str | None) -> None:
    """Give each campaign row ``would_stop`` (recipients enforce mode would have stopped or
    marked bounced, on the evidence monitor mode recorded) and ``would_suppress``
    (recipients a campaign mail was relayed to in monitor mode that enforce mode would have
    suppressed or deferred); 0 for a campaign monitor mode never touched."""
    counts = store.monitor_counts(campaign)
    for row in rows:
        found = counts.get(row["campaign"])
        row["would_stop"] = found.would_stop if found else 0
        row["would_suppress"] = found.would_suppress if found else 0
