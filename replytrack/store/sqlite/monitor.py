"""The SQLite store's read of what monitor mode let happen (``replytrack campaigns``)."""

from __future__ import annotations

from replytrack.store import monitor_counts
from replytrack.store.monitor_counts import MonitorCounts
from replytrack.store.sqlite.connection import SQLiteConnections


class SQLiteMonitor(SQLiteConnections):
    """``monitor_counts`` of the SQLite store."""

    def monitor_counts(self, campaign: str | None = None) -> dict[str, MonitorCounts]:
        details = self.query(
            "SELECT detail FROM events WHERE detail LIKE ?", [monitor_counts.MONITORED_DETAIL]
        )
        relayed = self.query(
            "SELECT m.campaign, count(*) AS n FROM recipients r JOIN messages m"
            " ON m.id = r.message WHERE r.status = 'sent' AND r.reason LIKE ?"
            " AND m.campaign IS NOT NULL AND m.status IN ('relayed', 'unconfirmed')"
            " GROUP BY m.campaign",
            [monitor_counts.MONITORED_REASON],
        )
        return monitor_counts.count(
            (row["detail"] for row in details),
            ((row["campaign"], row["n"]) for row in relayed),
            campaign,
        )
