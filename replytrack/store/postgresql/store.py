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
from collections.abc import Iterable, Sequence
from typing import Any

from psycopg.rows import DictRow

from replytrack.store import rows, rules
from replytrack.store.base import AddressHasher, Store
from replytrack.store.postgresql import schema
from replytrack.store.postgresql.connection import Conn, text, texts
from replytrack.store.postgresql.listing import PgListing, limited
from replytrack.store.postgresql.outbox import PgOutbox
from replytrack.store.postgresql.sequences import PgSequences
from replytrack.store.postgresql.suppressions import PgSuppressions
from replytrack.store.records import (
    BOUNCED,
    Enrollment,
    Event,
    OutboundRecipient,
    OutboundRecord,
    SentMessage,
    StatusChange,
)

# What a settled mail's suppression events are made of, returned by the statement that
# settles it (one round trip).
_SETTLED = (
    "m.id, m.message_id, m.campaign, m.sender, m.step, m.created_at,"
    " (SELECT coalesce(json_agg(json_build_object('address', r.address, 'reason', r.reason)),"
    " '[]') FROM recipients r WHERE r.message = m.id AND r.status = 'suppressed') AS suppressed"
)


def _domain(address: str) -> str:
    return address.rpartition("@")[2]


def _storable(record: Any) -> Any:
    return rows.storable(record, text)


def _settled_suppressions(row: DictRow) -> list[Event]:
    return rules.suppression_events(
        message_id=row["message_id"],
        campaign=row["campaign"],
        sender=row["sender"],
        step=row["step"],
        created_at=row["created_at"],
        recipients=[
            OutboundRecipient(s["address"], "to", True, status="suppressed", reason=s["reason"])
            for s in row["suppressed"]
        ],
    )


class PostgreSQLStore(PgListing, PgOutbox, PgSuppressions, PgSequences, Store):
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

    # --- outbound -------------------------------------------------------------------------
    def blocked_enrollments(self, campaign: str, addresses: Iterable[str]) -> dict[str, Enrollment]:
        now = time.time()
        wanted = sorted({text(a) for a in addresses})
        campaign = text(campaign)

        def read(conn: Conn) -> dict[str, Enrollment]:
            stop = rows.campaign_stop(
                conn.execute(
                    "SELECT reason, updated_at, updated_by, status FROM campaigns"
                    " WHERE campaign = %s AND status IN ('stopped', 'braked')",
                    (campaign,),
                ).fetchone()
            )
            found: list[Enrollment] = []
            if stop is None:
                found = [
                    rows.enrollment(row)
                    for row in conn.execute(
                        "SELECT * FROM enrollments WHERE campaign = %s AND recipient = ANY(%s)"
                        " AND status != 'active'",
                        (campaign, wanted),
                    )
                ]
            return rules.blocked_recipients(
                campaign,
                wanted,
                stop=stop,
                enrollments=found,
                now=now,
                do_not_contact=self._suppressed(conn, wanted),
            )

        return self.read(read)

    def record_outbound(self, record: OutboundRecord) -> int:
        """Record the mail and, for campaign mail, enroll its ``sent`` recipients at once,
        whatever its status (record first, relay second); suppressions once it is settled."""
        record = _storable(record)
        recipients = sorted(
            ((r.address, r.role, r.envelope, r.status, r.reason) for r in record.recipients),
            key=lambda r: r[0],
        )

        def write(conn: Conn) -> int:
            row = conn.execute(
                "INSERT INTO messages (message_id, original_message_id, campaign, step, sender,"
                " from_address, subject, created_at, status, size, upstream_reply)"
                " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) RETURNING id",
                (
                    record.message_id,
                    record.original_message_id,
                    record.campaign,
                    record.step,
                    record.sender,
                    record.from_address,
                    record.subject,
                    record.created_at,
                    record.status,
                    record.size,
                    record.upstream_reply,
                ),
            ).fetchone()
            assert row is not None
            pk = int(row["id"])
            if recipients:
                columns = list(zip(*recipients, strict=True))
                conn.execute(
                    "INSERT INTO recipients (message, address, role, envelope, status, reason)"
                    " SELECT %s, * FROM unnest(%s::text[], %s::text[], %s::boolean[],"
                    " %s::text[], %s::text[]) ON CONFLICT DO NOTHING",
                    (pk, *(list(c) for c in columns)),
                )
            if record.campaign is not None:
                conn.execute(
                    "INSERT INTO campaigns (campaign, created_at) VALUES (%s, %s)"
                    " ON CONFLICT DO NOTHING",
                    (record.campaign, record.created_at),
                )
                self._enroll(conn, record.campaign, record.created_at, rules.enrolled_by(record))
                self._keep_thread_root(conn, record)
                if rules.records_suppressions(None, record.status):
                    for event in rules.suppression_events(
                        message_id=record.message_id,
                        campaign=record.campaign,
                        sender=record.sender,
                        step=record.step,
                        created_at=record.created_at,
                        recipients=record.recipients,
                    ):
                        self._insert_event(conn, event, dedupe_key=None, notify=True)
            return pk

        return self.write(write)

    @staticmethod
    def _enroll(conn: Conn, campaign: str, created_at: float, addresses: Sequence[str]) -> None:
        """Enroll ``addresses`` (sorted: one lock order for every host) not enrolled yet.

        An enrollment already there is locked (DO UPDATE ... WHERE false changes nothing but
        takes the row lock), so that a refused mail of another host, which takes back the
        enrollments only it made, waits for this transaction and then sees its mail.
        """
        if not addresses:
            return
        conn.execute(
            "INSERT INTO enrollments (campaign, recipient, domain, status, reason, since,"
            " created_at) SELECT %s, a, d, 'active', NULL, %s, %s"
            " FROM unnest(%s::text[], %s::text[]) AS u(a, d)"
            " ON CONFLICT (campaign, recipient) DO UPDATE SET status = enrollments.status"
            " WHERE false",
            (campaign, created_at, created_at, list(addresses), [_domain(a) for a in addresses]),
        )

    def set_message_status(self, pk: int, status: str, upstream_reply: str | None) -> None:
        def write(conn: Conn) -> None:
            row = conn.execute(
                # m.id = %s named again: a generic plan made before the first ANALYZE of a
                # new store would otherwise hash-join over a scan of messages.
                "UPDATE messages m SET status = %s, upstream_reply = %s"
                " FROM (SELECT id, status FROM messages WHERE id = %s FOR UPDATE) old"
                " WHERE m.id = %s AND m.id = old.id"
                f" RETURNING old.status AS old_status, {_SETTLED}",
                (status, text(upstream_reply), pk, pk),
            ).fetchone()
            if row is None:
                return
            if rules.records_suppressions(row["old_status"], status):
                for event in _settled_suppressions(row):
                    self._insert_event(conn, event, dedupe_key=None, notify=True)
            if not rules.takes_back_enrollments(row["old_status"], status, row["campaign"]):
                return
            # Lock the candidates first: a concurrent mail that enrolls the same address
            # holds its row lock until it commits, and the DELETE below (a new statement,
            # so a new snapshot) then sees that mail and keeps the enrollment.
            candidates = [
                r["recipient"]
                for r in conn.execute(
                    "SELECT e.recipient FROM enrollments e JOIN recipients r"
                    " ON r.address = e.recipient WHERE r.message = %s AND r.status = 'sent'"
                    " AND e.campaign = %s AND e.created_at = %s"
                    " ORDER BY e.recipient FOR UPDATE OF e",
                    (pk, row["campaign"], row["created_at"]),
                )
            ]
            if candidates:
                conn.execute(
                    "DELETE FROM enrollments e WHERE e.campaign = %s"
                    " AND e.recipient = ANY(%s) AND e.status = 'active' AND e.created_at = %s"
                    " AND NOT EXISTS (SELECT 1 FROM recipients r"
                    " JOIN messages m ON m.id = r.message WHERE r.address = e.recipient"
                    " AND r.status = 'sent' AND m.campaign = e.campaign AND m.id != %s"
                    " AND m.status != 'failed')",
                    (row["campaign"], candidates, row["created_at"], pk),
                )

        self.write(write)

    def reconcile_relaying(self, older_than: float) -> int:
        def write(conn: Conn) -> int:
            stuck = conn.execute(
                "UPDATE messages m SET status = 'unconfirmed' WHERE status = 'relaying'"
                f" AND created_at < %s RETURNING {_SETTLED}",
                (older_than,),
            ).fetchall()
            for row in sorted(stuck, key=lambda r: r["id"]):
                if rules.records_suppressions("relaying", "unconfirmed"):
                    for event in _settled_suppressions(row):
                        self._insert_event(conn, event, dedupe_key=None, notify=True)
            return len(stuck)

        return self.write(write)

    def count_relaying(self, older_than: float) -> int:
        found = self.rows(
            "SELECT count(*) AS n FROM messages WHERE status = 'relaying' AND created_at < %s",
            (older_than,),
        )
        return int(found[0]["n"])

    # --- inbound --------------------------------------------------------------------------
    def find_sent(self, message_ids: Sequence[str]) -> list[SentMessage]:
        wanted = sorted({text(m) for m in message_ids})
        if not wanted:
            return []
        # One b-tree probe per ID in each of the two indexes, OR-ed as bitmaps.
        return self._messages(
            "SELECT * FROM messages WHERE message_id = ANY(%s) OR original_message_id = ANY(%s)"
            " ORDER BY created_at DESC, id DESC",
            (wanted, wanted),
        )

    def enrollments_of(self, address: str) -> list[Enrollment]:
        return self.enrollments(recipient=address)

    def enrollments(
        self,
        *,
        campaign: str | None = None,
        recipient: str | None = None,
        domain: str | None = None,
        status: str | Sequence[str] | None = None,
        limit: int | None = None,
    ) -> list[Enrollment]:
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
        if campaign is not None:
            sql += " AND m.campaign = %s"
            params.append(text(campaign))
        sql += " ORDER BY m.created_at DESC, m.id DESC LIMIT 1"
        found = self._messages(sql, params)
        return found[0] if found else None

    @staticmethod
    def _insert_event(
        conn: Conn, event: Event, *, dedupe_key: str | None, notify: bool
    ) -> int | None:
        # Only a repeated dedupe key is skipped (by whichever host comes second); an event
        # that breaks a NOT NULL rule is an error, not a silent skip. The outbox row goes in
        # with the event, in the same statement.
        marks = ",".join(["%s"] * (len(rows.EVENT_COLUMNS) + 1))
        row = conn.execute(
            f"WITH e AS (INSERT INTO events ({', '.join(rows.EVENT_COLUMNS)}, dedupe_key)"
            f" VALUES ({marks}) ON CONFLICT (dedupe_key) DO NOTHING RETURNING id, created_at),"
            " o AS (INSERT INTO outbox (event, created_at, next_attempt_at)"
            " SELECT id, created_at, created_at FROM e WHERE %s)"
            " SELECT id FROM e",
            (*texts(rows.event_values(_storable(event))), text(dedupe_key), notify),
        ).fetchone()
        return None if row is None else int(row["id"])

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
            (_storable(c) for c in rules.status_changes(set_status)),
            key=lambda c: (c.campaign, c.recipient),
        )

        def write(conn: Conn) -> int | None:
            event_id = self._insert_event(conn, event, dedupe_key=dedupe_key, notify=notify)
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
                        _domain(winner.recipient),
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
