"""What campaign sequences need from the PostgreSQL store beyond recording: the history of
a threaded follow-up, the Thread-Index root kept per enrollment, and the bounce brake; and
what the milter reads to match answers without threading headers.

As on SQLite (``replytrack.store.sqlite.sequences``), the brake is evaluated where a bounce
is recorded. Several milters may record bounces of one campaign at once: its campaigns row
is read ``FOR UPDATE``, so the second waits, then finds the campaign braked and records no
second ``braked`` event.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable

from replytrack.store import rules
from replytrack.store.postgresql.connection import Conn, PgConnections, checked_only, text
from replytrack.store.postgresql.outbox import insert_event
from replytrack.store.records import BRAKED, Event, SentMessage, ThreadHistory

# Earlier steps a follow-up looks at: far more than any real sequence has.
HISTORY_LIMIT = 200

# A recipient's earlier steps of a campaign, found by recipient (connection.checked_only).
THREAD_MAILS = (
    "SELECT m.message_id, m.created_at, m.subject FROM recipients r"
    " JOIN messages m ON m.id = r.message WHERE r.address = %s"
    f" AND r.status = 'sent' AND {checked_only('m.campaign')} = %s"
    " AND m.status IN ('relayed', 'unconfirmed') ORDER BY m.created_at, m.id LIMIT %s"
)

# The campaign's last ``window`` sends since it was last resumed, and how many distinct
# recipients among them are enrolled as ``bounced`` (only a permanent bounce marks that).
_BRAKE_COUNT = """
    WITH sends AS (
        SELECT r.address FROM messages m JOIN recipients r ON r.message = m.id
        WHERE m.campaign = %s AND m.created_at >= %s AND m.status IN ('relayed', 'unconfirmed')
        AND r.status = 'sent' ORDER BY m.created_at DESC, m.id DESC LIMIT %s
    )
    SELECT count(*) AS sends,
        count(DISTINCT s.address) FILTER (WHERE e.status = 'bounced') AS bounced
    FROM sends s LEFT JOIN enrollments e ON e.campaign = %s AND e.recipient = s.address
"""


class PgSequences(PgConnections):
    """Thread history, thread roots and the bounce brake on PostgreSQL."""

    brake: rules.BrakeRule

    def thread_history(self, campaign: str, recipient: str) -> ThreadHistory:
        def read(conn: Conn) -> ThreadHistory:
            found = conn.execute(
                THREAD_MAILS, (text(recipient), text(campaign), HISTORY_LIMIT)
            ).fetchall()
            root = conn.execute(
                "SELECT thread_index FROM enrollments WHERE campaign = %s AND recipient = %s",
                (text(campaign), text(recipient)),
            ).fetchone()
            return ThreadHistory(
                message_ids=tuple(r["message_id"] for r in found),
                sent_at=tuple(float(r["created_at"]) for r in found),
                first_subject=found[0]["subject"] if found else None,
                index=root["thread_index"] if root else None,
            )

        return self.read(read)

    def find_by_thread_guid(self, guid: bytes, *, limit: int = 20) -> list[SentMessage]:
        # As on SQLite: the GUID is the root's base64 from its 9th character, the
        # expression enrollments_thread_guid indexes.
        def read(conn: Conn) -> list[tuple[str, str]]:
            rows = conn.execute(
                "SELECT campaign, recipient FROM enrollments"
                " WHERE substr(thread_index, 9) = %s AND thread_index IS NOT NULL LIMIT %s",
                (base64.b64encode(guid).decode("ascii"), limit),
            ).fetchall()
            return [(r["campaign"], r["recipient"]) for r in rows]

        found = [
            sent
            for campaign, recipient in self.read(read)
            if (sent := self.last_message_to(recipient, campaign)) is not None  # type: ignore[attr-defined]
        ]
        return sorted(found, key=lambda s: s.created_at, reverse=True)

    def recent_campaign_mail(
        self, domain: str, *, since: float, limit: int = 200
    ) -> list[SentMessage]:
        # Through the enrollments at the domain (enrollments_domain), as on SQLite.
        return self._messages(  # type: ignore[attr-defined]
            "SELECT m.* FROM messages m WHERE m.id IN (SELECT r.message FROM enrollments e"
            " JOIN recipients r ON r.address = e.recipient AND r.status = 'sent'"
            " WHERE e.domain = %s) AND m.campaign IS NOT NULL AND m.created_at >= %s"
            " AND m.status IN ('relayed', 'unconfirmed')"
            " ORDER BY m.created_at DESC, m.id DESC LIMIT %s",
            (text(domain.lower()), since, limit),
        )

    def _check_brake(self, conn: Conn, campaigns: Iterable[str], now: float) -> None:
        """Brake each of ``campaigns`` (that just recorded a hard bounce) whose window is
        past the rule, with a ``braked`` event (notified)."""
        rule = self.brake
        for campaign in sorted(set(campaigns)):
            row = conn.execute(
                "SELECT status, updated_at FROM campaigns WHERE campaign = %s FOR UPDATE",
                (campaign,),
            ).fetchone()
            if row is None or row["status"] != "active":
                continue
            # An active campaign's updated_at is its last resume.
            since = float(row["updated_at"] or 0.0)
            counts = conn.execute(_BRAKE_COUNT, (campaign, since, rule.window, campaign)).fetchone()
            assert counts is not None
            sends, bounced = int(counts["sends"]), int(counts["bounced"])
            if not rules.brake_tripped(rule, sends=sends, hard_bounces=bounced):
                continue
            conn.execute(
                "UPDATE campaigns SET status = %s, reason = %s, updated_at = %s,"
                " updated_by = 'replytrack' WHERE campaign = %s",
                (
                    BRAKED,
                    rules.brake_reason(rule, sends=sends, hard_bounces=bounced),
                    now,
                    campaign,
                ),
            )
            event: Event = rules.brake_event(
                campaign, rule, sends=sends, hard_bounces=bounced, now=now
            )
            insert_event(conn, event, dedupe_key=None, notify=True)
