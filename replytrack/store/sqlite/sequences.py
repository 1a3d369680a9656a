"""What campaign sequences need from the SQLite store beyond recording: the history of a
threaded follow-up, the Thread-Index root kept per enrollment, and the bounce brake; and
what the milter reads to match answers without threading headers (a thread's GUID, recent
campaign mail to a domain).

The brake is evaluated where a bounce is recorded (``record_event``), not on the proxy's
per-mail path: bounces are rare, campaign mail is not, and a campaign's state is one row
the proxy reads anyway.
"""

from __future__ import annotations

import base64
import sqlite3
from collections.abc import Iterable

from replytrack.store import rules
from replytrack.store.records import BRAKED, OutboundRecord, SentMessage, ThreadHistory
from replytrack.store.sqlite.connection import SQLiteConnections, text

# Earlier steps a follow-up looks at: far more than any real sequence has.
HISTORY_LIMIT = 200

# The campaign's last ``window`` sends (one per recipient of a mail that went out), made
# since the campaign was last resumed, and how many distinct recipients among them are
# enrolled as ``bounced`` (only a permanent bounce marks that).
_BRAKE_COUNT = """
    WITH sends AS (
        SELECT r.address FROM messages m JOIN recipients r ON r.message = m.id
        WHERE m.campaign = ? AND m.created_at >= ? AND m.status IN ('relayed', 'unconfirmed')
        AND r.status = 'sent' ORDER BY m.created_at DESC, m.id DESC LIMIT ?
    )
    SELECT count(*) AS sends,
        count(DISTINCT CASE WHEN e.status = 'bounced' THEN s.address END) AS bounced
    FROM sends s LEFT JOIN enrollments e ON e.campaign = ? AND e.recipient = s.address
"""


class SQLiteSequences(SQLiteConnections):
    """Thread history, thread roots and the bounce brake on SQLite."""

    brake: rules.BrakeRule

    def thread_history(self, campaign: str, recipient: str) -> ThreadHistory:
        found = self.query(
            "SELECT m.message_id, m.created_at, m.subject FROM recipients r"
            " JOIN messages m ON m.id = r.message WHERE r.address = ? AND r.status = 'sent'"
            " AND m.campaign = ? AND m.status IN ('relayed', 'unconfirmed')"
            " ORDER BY m.created_at, m.id LIMIT ?",
            (text(recipient), text(campaign), HISTORY_LIMIT),
        )
        root = self.query(
            "SELECT thread_index FROM enrollments WHERE campaign = ? AND recipient = ?",
            (text(campaign), text(recipient)),
        )
        return ThreadHistory(
            message_ids=tuple(r["message_id"] for r in found),
            sent_at=tuple(float(r["created_at"]) for r in found),
            first_subject=found[0]["subject"] if found else None,
            index=root[0]["thread_index"] if root else None,
        )

    def find_by_thread_guid(self, guid: bytes, *, limit: int = 20) -> list[SentMessage]:
        # A root is 22 bytes in base64: its first 8 characters are the 6 time bytes, the
        # rest is the GUID's own base64 (6 bytes are whole base64 groups). The expression
        # is the one enrollments_thread_guid indexes, written the same way.
        threads = self.query(
            "SELECT campaign, recipient FROM enrollments"
            " WHERE substr(thread_index, 9) = ? AND thread_index IS NOT NULL LIMIT ?",
            (base64.b64encode(guid).decode("ascii"), limit),
        )
        found = [
            sent
            for row in threads
            if (sent := self.last_message_to(row["recipient"], row["campaign"])) is not None  # type: ignore[attr-defined]
        ]
        return sorted(found, key=lambda s: s.created_at, reverse=True)

    def recent_campaign_mail(
        self, domain: str, *, since: float, limit: int = 200
    ) -> list[SentMessage]:
        # Through the enrollments at the domain (enrollments_domain): every campaign
        # mail's recipients are enrolled, and recipients has no domain of its own.
        found = self.query(
            "SELECT m.* FROM messages m WHERE m.id IN (SELECT r.message FROM enrollments e"
            " JOIN recipients r ON r.address = e.recipient AND r.status = 'sent'"
            " WHERE e.domain = ?) AND m.campaign IS NOT NULL AND m.created_at >= ?"
            " AND m.status IN ('relayed', 'unconfirmed')"
            " ORDER BY m.created_at DESC, m.id DESC LIMIT ?",
            (text(domain.lower()), since, limit),
        )
        return self._messages_from_rows(found)  # type: ignore[attr-defined]

    @staticmethod
    def _keep_thread_root(conn: sqlite3.Connection, record: OutboundRecord) -> None:
        """Keep the record's Thread-Index root on its enrollment, unless one is there (the
        first threaded step sets it; every later step extends the same root)."""
        if record.thread is None or record.campaign is None:
            return
        conn.execute(
            "UPDATE enrollments SET thread_index = ? WHERE campaign = ? AND recipient = ?"
            " AND thread_index IS NULL",
            (text(record.thread.index), record.campaign, text(record.thread.recipient)),
        )

    def _check_brake(
        self, conn: sqlite3.Connection, campaigns: Iterable[str], now: float
    ) -> list[int]:
        """Brake each of ``campaigns`` (that just recorded a hard bounce) whose window is
        past the rule; returns the ids of the ``braked`` events recorded."""
        braked: list[int] = []
        rule = self.brake
        for campaign in sorted(set(campaigns)):
            row = conn.execute(
                "SELECT status, updated_at FROM campaigns WHERE campaign = ?", (campaign,)
            ).fetchone()
            if row is None or row["status"] != "active":
                # Stopped or braked already; a campaign never recorded has sent nothing.
                continue
            # An active campaign's updated_at is its last resume: bounces from before it
            # were judged then.
            since = float(row["updated_at"] or 0.0)
            counts = conn.execute(_BRAKE_COUNT, (campaign, since, rule.window, campaign)).fetchone()
            sends, bounced = int(counts["sends"]), int(counts["bounced"])
            if not rules.brake_tripped(rule, sends=sends, hard_bounces=bounced):
                continue
            reason = rules.brake_reason(rule, sends=sends, hard_bounces=bounced)
            conn.execute(
                "UPDATE campaigns SET status = ?, reason = ?, updated_at = ?,"
                " updated_by = 'replytrack' WHERE campaign = ?",
                (BRAKED, reason, now, campaign),
            )
            event_id = self._insert_event(  # type: ignore[attr-defined]
                conn,
                rules.brake_event(campaign, rule, sends=sends, hard_bounces=bounced, now=now),
                dedupe_key=None,
                notify=True,
            )
            if event_id is not None:
                braked.append(event_id)
        return braked
