"""The multi-host store: one PostgreSQL database shared by every proxy, milter and CLI.

Many hosts write at once here, so the guarantees SQLite gets from its single write lock are
spelled out: events carry a unique dedupe key (``ON CONFLICT DO NOTHING``), enrollments are
upserted with ``ON CONFLICT`` in one lock order, the rows a rule decides on are read ``FOR
UPDATE``. psycopg prepares a statement on a connection once it has run a few times, so the
hot statements use ``= ANY(%s)`` instead of IN-lists whose text changes with their length.
What the calls decide follows :mod:`replytrack.store.rules`, as on SQLite.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from replytrack.headers import address_domain
from replytrack.store import rows, rules
from replytrack.store.base import AddressHasher, Store
from replytrack.store.postgresql import schema
from replytrack.store.postgresql.connection import Conn, checked_only, storable, text
from replytrack.store.postgresql.listing import PgListing, limited
from replytrack.store.postgresql.outbound import PgOutbound
from replytrack.store.postgresql.outbox import PgOutbox, insert_event
from replytrack.store.postgresql.sequences import PgSequences
from replytrack.store.records import (
    BOUNCED,
    Enrollment,
    Event,
    SentMessage,
    StatusChange,
)

# find_sent: one b-tree probe per ID in each of the two indexes, OR-ed as bitmaps.
FIND_SENT = (
    "SELECT * FROM messages WHERE message_id = ANY(%s) OR original_message_id = ANY(%s)"
    " ORDER BY created_at DESC, id DESC"
)


class PostgreSQLStore(PgOutbound, PgListing, PgOutbox, PgSequences, Store):
    """The store in a PostgreSQL database. Safe to share between threads."""

    def __init__(
        self,
        url: str,
        *,
        statement_timeout_ms: int = 5000,
        pool_timeout: float = 5.0,
        connect_timeout: int = 5,
        pool_max_size: int = 10,
        reconnect_timeout: float | None = None,
        create: bool = True,
        readonly: bool = False,
        hasher: AddressHasher | None = None,
    ) -> None:
        self.hasher = hasher
        super().__init__(
            url,
            statement_timeout_ms=statement_timeout_ms,
            pool_timeout=pool_timeout,
            connect_timeout=connect_timeout,
            pool_max_size=pool_max_size,
            reconnect_timeout=reconnect_timeout,
            readonly=readonly,
        )
        # Only an explicit create (``replytrack init``, ``migrate``) makes or upgrades the
        # schema; every other opener needs this version's schema as it is. Both use a
        # connection of their own, whose failure says why (the pool only says "timeout").
        if create and not readonly:
            self.migrate()
        else:
            with self.direct("open") as conn:
                schema.check_version(self, schema.version_of(conn))

    # --- schema ----------------------------------------------------------------------------
    def schema_version(self) -> int:
        """The schema version recorded in the database (0: none yet)."""
        return self.read(schema.version_of)

    def migrate(self) -> None:
        """Bring the schema to this replytrack's version (advisory-locked, one step a
        transaction)."""
        schema.migrate(self)

    # --- inbound --------------------------------------------------------------------------
    def find_sent(self, message_ids: Sequence[str]) -> list[SentMessage]:
        wanted = sorted({text(m) for m in message_ids})
        if not wanted:
            return []
        return self._messages(FIND_SENT, (wanted, wanted))

    def enrollments(
        self,
        *,
        campaign: str | None = None,
        recipient: str | None = None,
        domain: str | None = None,
        status: str | Sequence[str] | None = None,
        limit: int | None = None,
    ) -> list[Enrollment]:
        # Domains are stored lowercase (case-insensitive, RFC 5321 2.4): so is the filter.
        domain = None if domain is None else domain.lower()
        where, params = rows.conditions(
            (("campaign", campaign), ("recipient", recipient), ("domain", domain)),
            mark="%s",
            text=text,
        )
        if isinstance(status, str):
            where.append("status = %s")
            params.append(status)
        elif status is not None:
            where.append("status = ANY(%s)")
            params.append(list(status))
        sql = limited(rows.select("enrollments", where, "campaign, recipient"), params, limit)
        return [rows.enrollment(row) for row in self.rows(sql, params)]

    def last_message_to(self, address: str, campaign: str | None = None) -> SentMessage | None:
        sql = (
            "SELECT m.* FROM recipients r JOIN messages m ON m.id = r.message WHERE r.address = %s"
        )
        params: list[Any] = [text(address)]
        if campaign is not None:  # found by recipient (connection.checked_only)
            sql += f" AND {checked_only('m.campaign')} = %s"
            params.append(text(campaign))
        sql += " ORDER BY m.created_at DESC, m.id DESC LIMIT 1"
        found = self._messages(sql, params)
        return found[0] if found else None

    def record_event(
        self,
        event: Event,
        *,
        dedupe_key: str | None = None,
        set_status: Sequence[StatusChange] = (),
        notify: bool = True,
        campaign_status: str | None = None,
    ) -> int | None:
        rules.check_campaign_status(event, campaign_status)
        actor = text(event.actor or event.kind)
        by_hand = rules.changed_by_hand(event)
        # One order for every host, so two upserting transactions cannot deadlock; sorted()
        # is stable, so a pair named twice still ends with its last change.
        changes = sorted(
            (storable(c) for c in rules.status_changes(set_status)),
            key=lambda c: (c.campaign, c.recipient),
        )

        def write(conn: Conn) -> int | None:
            event_id = insert_event(conn, event, dedupe_key=dedupe_key, notify=notify)
            if event_id is None:
                return None
            if campaign_status is not None:
                reason = event.detail.get("reason")
                conn.execute(
                    "INSERT INTO campaigns (campaign, created_at, status, reason, updated_at,"
                    " updated_by) VALUES (%s,%s,%s,%s,%s,%s) ON CONFLICT (campaign) DO UPDATE"
                    " SET status = excluded.status, reason = excluded.reason,"
                    " updated_at = excluded.updated_at, updated_by = excluded.updated_by",
                    (
                        text(event.campaign),
                        event.created_at,
                        campaign_status,
                        text(reason) if campaign_status == "stopped" else None,
                        event.created_at,
                        actor,
                    ),
                )
            held = {} if by_hand else self._held(conn, changes)
            bounced = set()
            for change in changes:
                key = (change.campaign, change.recipient)
                winner = rules.settle_status(held.get(key), change, by_hand=by_hand)
                if winner is None:
                    continue
                conn.execute(
                    "INSERT INTO enrollments (campaign, recipient, domain, status, reason, since,"
                    " until, updated_by, created_at) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)"
                    " ON CONFLICT (campaign, recipient) DO UPDATE SET status = excluded.status,"
                    " reason = excluded.reason, since = excluded.since, until = excluded.until,"
                    " updated_by = excluded.updated_by",
                    (
                        winner.campaign,
                        winner.recipient,
                        address_domain(winner.recipient),
                        winner.status,
                        winner.reason,
                        event.created_at,
                        winner.until,
                        actor,
                        event.created_at,
                    ),
                )
                held[key] = Enrollment(
                    campaign=winner.campaign,
                    recipient=winner.recipient,
                    status=winner.status,
                    reason=winner.reason,
                    since=event.created_at,
                    until=winner.until,
                    updated_by=actor,
                )
                if winner.status == BOUNCED:
                    bounced.add(winner.campaign)
            if bounced and not by_hand:
                self._check_brake(conn, bounced, event.created_at)
            return event_id

        return self.write(write)

    @staticmethod
    def _held(conn: Conn, changes: Sequence[StatusChange]) -> dict[tuple[str, str], Enrollment]:
        """The enrollments ``changes`` meet, locked until the transaction ends (another
        host's change to them waits, then meets this one's)."""
        if not changes:
            return {}
        found = conn.execute(
            "SELECT * FROM enrollments WHERE (campaign, recipient) IN"
            " (SELECT * FROM unnest(%s::text[], %s::text[]))"
            " ORDER BY campaign, recipient FOR UPDATE",
            ([c.campaign for c in changes], [c.recipient for c in changes]),
        )
        return {(e.campaign, e.recipient): e for e in map(rows.enrollment, found)}

    def remember_ooo(self, address: str, until: float) -> None:
        self.write(
            lambda conn: conn.execute(
                "INSERT INTO ooo (address, until, updated_at) VALUES (%s,%s,%s)"
                " ON CONFLICT (address) DO UPDATE SET until = excluded.until,"
                " updated_at = excluded.updated_at",
                (text(address), until, time.time()),
            )
        )

    def ooo_until(self, address: str) -> float | None:
        found = self.rows("SELECT until FROM ooo WHERE address = %s", (text(address),))
        return float(found[0]["until"]) if found else None

    def reactivate_due(self, now: float) -> int:
        return self.write(
            lambda conn: (
                conn.execute(
                    "UPDATE enrollments SET status = 'active', reason = 'pause ended', since = %s,"
                    " until = NULL, updated_by = 'replytrack' WHERE status = 'paused'"
                    " AND until IS NOT NULL AND until <= %s",
                    (now, now),
                ).rowcount
            )
        )
