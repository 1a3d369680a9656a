"""The embedded store: one SQLite file in WAL mode, shared by the processes of one host.

The domain calls are hand-written SQL: they are the proxy's and the milter's per-mail path,
where each statement is measured (bench/README.md). What they decide follows
:mod:`replytrack.store.rules`, as on PostgreSQL.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

from replytrack.headers import address_domain
from replytrack.store import files, rows, rules
from replytrack.store.base import AddressHasher, Store
from replytrack.store.records import (
    BOUNCED,
    Enrollment,
    Event,
    OutboundRecord,
    SentMessage,
    StatusChange,
)
from replytrack.store.sqlite import schema
from replytrack.store.sqlite.connection import text
from replytrack.store.sqlite.listing import SQLiteListing, chunks, limited
from replytrack.store.sqlite.outbox import SQLiteOutbox
from replytrack.store.sqlite.sequences import SQLiteSequences
from replytrack.store.sqlite.suppressions import SQLiteSuppressions


def _storable(record: Any) -> Any:
    return rows.storable(record, text)


class SQLiteStore(
    SQLiteListing, SQLiteOutbox, SQLiteSuppressions, SQLiteSequences, Store
):
    """The store in one SQLite file. Safe to share between threads."""

    def __init__(
        self,
        path: str | Path,
        *,
        busy_timeout_ms: int = 5000,
        create: bool = True,
        readonly: bool = False,
        hasher: AddressHasher | None = None,
    ) -> None:
        super().__init__(path, busy_timeout_ms=busy_timeout_ms, readonly=readonly)
        self.hasher = hasher
        # Only an explicit create (``replytrack init``, ``migrate``) makes or upgrades a
        # store; every other opener is refused a missing, empty or foreign file. The
        # default here (create) serves tests and tools that build a store directly; the
        # product opens stores through open_store, whose default is not to create.
        create = create and not readonly
        created = create and files.create_store_file(self.path)
        if not created:
            state = files.inspect_store_file(self.path, readonly=readonly)
            files.check_usable(
                self.path, state, schema_version=schema.SCHEMA_VERSION, create=create
            )
        if create:
            try:
                self.migrate()
            except BaseException:
                if created:
                    # An empty file left behind would be refused as a truncated store.
                    self.close_all()
                    for suffix in ("", "-wal", "-shm"):
                        with suppress(OSError):
                            Path(f"{self.path}{suffix}").unlink()
                raise

    # --- schema ----------------------------------------------------------------------------
    def schema_version(self) -> int:
        return schema.schema_version(self)

    def migrate(self) -> None:
        """Bring the schema to this replytrack's version; each step its own transaction."""
        schema.migrate(self)

    # --- outbound -------------------------------------------------------------------------
    def blocked_enrollments(self, campaign: str, addresses: Iterable[str]) -> dict[str, Enrollment]:
        now = time.time()
        wanted = sorted(set(addresses))
        stop = self.query(
            "SELECT reason, updated_at, updated_by, status FROM campaigns WHERE campaign = ?"
            " AND status IN ('stopped', 'braked')",
            [campaign],
        )
        found: list[Enrollment] = []
        if not stop:
            for chunk in chunks(wanted):
                marks = ",".join("?" * len(chunk))
                found += map(
                    rows.enrollment,
                    self.query(
                        f"SELECT * FROM enrollments WHERE campaign = ? AND recipient IN ({marks})"
                        " AND status != 'active'",
                        [campaign, *chunk],
                    ),
                )
        return rules.blocked_recipients(
            campaign,
            wanted,
            stop=rows.campaign_stop(stop[0] if stop else None),
            enrollments=found,
            now=now,
            do_not_contact=self.suppressed(wanted),
        )

    def record_outbound(self, record: OutboundRecord) -> int:
        record = _storable(record)
        with self.write() as conn:
            cur = conn.execute(
                "INSERT INTO messages (message_id, original_message_id, campaign, step, sender,"
                " from_address, subject, created_at, status, size, upstream_reply)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
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
            )
            pk = int(cur.lastrowid or 0)
            conn.executemany(
                "INSERT OR IGNORE INTO message_keys (key, message) VALUES (?, ?)",
                [
                    (schema.message_key(mid), pk)
                    for mid in (record.message_id, record.original_message_id)
                    if mid is not None
                ],
            )
            conn.executemany(
                "INSERT OR IGNORE INTO recipients (message, address, role, envelope, status,"
                " reason) VALUES (?,?,?,?,?,?)",
                [
                    (pk, r.address, r.role, int(r.envelope), r.status, r.reason)
                    for r in record.recipients
                ],
            )
            if record.campaign is not None:
                conn.execute(
                    "INSERT OR IGNORE INTO campaigns (campaign, created_at) VALUES (?, ?)",
                    (record.campaign, record.created_at),
                )
                # The first campaign mail to an address enrolls it; later steps find it.
                conn.executemany(
                    "INSERT OR IGNORE INTO enrollments (campaign, recipient, domain, status,"
                    " reason, since, created_at) VALUES (?,?,?,'active',NULL,?,?)",
                    [
                        (
                            record.campaign,
                            a,
                            address_domain(a),
                            record.created_at,
                            record.created_at,
                        )
                        for a in rules.enrolled_by(record)
                    ],
                )
                self._keep_thread_root(conn, record)
                if rules.records_suppressions(None, record.status):
                    self._record_suppressions(
                        conn,
                        rules.suppression_events(
                            message_id=record.message_id,
                            campaign=record.campaign,
                            sender=record.sender,
                            step=record.step,
                            created_at=record.created_at,
                            recipients=record.recipients,
                        ),
                    )
        return pk

    def _record_suppressions(self, conn: sqlite3.Connection, events: Iterable[Event]) -> None:
        for event in events:
            self._insert_event(conn, event, dedupe_key=None, notify=True)

    def _settled_suppressions(self, conn: sqlite3.Connection, pk: int) -> list[Event]:
        """The suppression events of the recorded mail ``pk`` (rules.suppression_events)."""
        row = conn.execute(
            "SELECT message_id, campaign, sender, step, created_at FROM messages WHERE id = ?",
            (pk,),
        ).fetchone()
        if row is None:
            return []
        return rules.suppression_events(
            message_id=row["message_id"],
            campaign=row["campaign"],
            sender=row["sender"],
            step=row["step"],
            created_at=row["created_at"],
            recipients=map(
                rows.recipient,
                conn.execute(
                    "SELECT * FROM recipients WHERE message = ? AND status = 'suppressed'", (pk,)
                ),
            ),
        )

    def set_message_status(self, pk: int, status: str, upstream_reply: str | None) -> None:
        with self.write() as conn:
            row = conn.execute(
                "SELECT status, campaign, created_at FROM messages WHERE id = ?", (pk,)
            ).fetchone()
            conn.execute(
                "UPDATE messages SET status = ?, upstream_reply = ? WHERE id = ?",
                (status, text(upstream_reply), pk),
            )
            if row is None:
                return
            if rules.records_suppressions(row["status"], status):
                self._record_suppressions(conn, self._settled_suppressions(conn, pk))
            if rules.takes_back_enrollments(row["status"], status, row["campaign"]):
                # Only those still active and made by this mail (same time) go, and only
                # where no other mail of the campaign that may have gone out reached the
                # recipient.
                conn.execute(
                    "DELETE FROM enrollments WHERE campaign = ? AND status = 'active'"
                    " AND created_at = ? AND recipient IN"
                    " (SELECT address FROM recipients WHERE message = ? AND status = 'sent')"
                    " AND NOT EXISTS (SELECT 1 FROM recipients r JOIN messages m"
                    "   ON m.id = r.message WHERE m.campaign = enrollments.campaign"
                    "   AND r.address = enrollments.recipient AND r.status = 'sent'"
                    "   AND m.id != ? AND m.status != 'failed')",
                    (row["campaign"], row["created_at"], pk, pk),
                )

    def reconcile_relaying(self, older_than: float) -> int:
        with self.write() as conn:
            # The literal 'relaying' lets SQLite use the partial index messages_relaying.
            stuck = conn.execute(
                "SELECT id, status FROM messages WHERE status = 'relaying' AND created_at < ?",
                (older_than,),
            ).fetchall()
            for row in stuck:
                conn.execute(
                    "UPDATE messages SET status = 'unconfirmed' WHERE id = ?", (row["id"],)
                )
                if rules.records_suppressions(row["status"], "unconfirmed"):
                    self._record_suppressions(conn, self._settled_suppressions(conn, row["id"]))
            return len(stuck)

    def count_relaying(self, older_than: float) -> int:
        found = self.query(
            "SELECT count(*) AS n FROM messages WHERE status = 'relaying' AND created_at < ?",
            (older_than,),
        )
        return int(found[0]["n"])

    # --- inbound --------------------------------------------------------------------------
    def find_sent(self, message_ids: Sequence[str]) -> list[SentMessage]:
        wanted = {text(m) for m in message_ids}
        keys = sorted({schema.message_key(m) for m in wanted})
        found: dict[int, sqlite3.Row] = {}
        for chunk in chunks(keys):
            marks = ",".join("?" * len(chunk))
            # One descent of message_keys per ID; the message rows are read for hits only.
            for row in self.query(
                "SELECT * FROM messages WHERE id IN"
                f" (SELECT message FROM message_keys WHERE key IN ({marks}))",
                chunk,
            ):
                # Two IDs can share a key: only rows that carry a wanted ID match.
                if row["message_id"] in wanted or row["original_message_id"] in wanted:
                    found[row["id"]] = row
        ordered = sorted(found.values(), key=lambda r: r["created_at"], reverse=True)
        return self._messages_from_rows(ordered)

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
            (("campaign", campaign), ("recipient", recipient), ("domain", domain)), mark="?"
        )
        if isinstance(status, str):
            where.append("status = ?")
            params.append(status)
        elif status is not None:
            where.append(f"status IN ({','.join('?' * len(status))})")
            params.extend(status)
        sql = rows.select("enrollments", where)
        if recipient is not None:
            # One person's enrollments are few: sorting them here skips SQLite's temporary
            # sort b-tree, which cost 23 of the 29 us of the milter's per-mail lookup of a
            # sender who is enrolled nowhere.
            mine = sorted(
                map(rows.enrollment, self.query(sql, params)),
                key=lambda e: (e.campaign, e.recipient),
            )
            return mine if limit is None else mine[: max(0, int(limit))]
        sql = limited(f"{sql} ORDER BY campaign, recipient", limit)
        return [rows.enrollment(row) for row in self.query(sql, params)]

    def last_message_to(self, address: str, campaign: str | None = None) -> SentMessage | None:
        sql = "SELECT m.* FROM recipients r JOIN messages m ON m.id = r.message WHERE r.address = ?"
        params: list[Any] = [address]
        if campaign is not None:
            sql += " AND m.campaign = ?"
            params.append(campaign)
        sql += " ORDER BY m.created_at DESC LIMIT 1"
        found = self.query(sql, params)
        return self._messages_from_rows(found)[0] if found else None

    def _insert_event(
        self,
        conn: sqlite3.Connection,
        event: Event,
        *,
        dedupe_key: str | None,
        notify: bool,
    ) -> int | None:
        cur = conn.execute(
            # Only a repeated dedupe key is skipped; OR IGNORE would also drop, silently,
            # an event that breaks a NOT NULL rule.
            f"INSERT INTO events ({', '.join(rows.EVENT_COLUMNS)}, dedupe_key)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (dedupe_key) DO NOTHING",
            (*rows.event_values(_storable(event)), text(dedupe_key)),
        )
        if cur.rowcount == 0:
            return None
        event_id = int(cur.lastrowid or 0)
        if notify:
            conn.execute(
                "INSERT INTO outbox (event, created_at, next_attempt_at) VALUES (?, ?, ?)",
                (event_id, event.created_at, event.created_at),
            )
        return event_id

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
        by_hand = rules.changed_by_hand(event)
        changes = [_storable(c) for c in rules.status_changes(set_status)]
        actor = text(event.actor or event.kind)
        bounced: set[str] = set()
        with self.write() as conn:
            event_id = self._insert_event(conn, event, dedupe_key=dedupe_key, notify=notify)
            if event_id is None:
                return None
            if campaign_status is not None:
                reason = event.detail.get("reason")
                conn.execute(
                    "INSERT INTO campaigns (campaign, created_at, status, reason, updated_at,"
                    " updated_by) VALUES (?,?,?,?,?,?) ON CONFLICT (campaign) DO UPDATE SET"
                    " status = excluded.status, reason = excluded.reason,"
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
            for change in changes:
                current = None
                if not by_hand:
                    held = conn.execute(
                        "SELECT * FROM enrollments WHERE campaign = ? AND recipient = ?",
                        (change.campaign, change.recipient),
                    ).fetchone()
                    current = None if held is None else rows.enrollment(held)
                winner = rules.settle_status(current, change, by_hand=by_hand)
                if winner is None:
                    continue
                conn.execute(
                    "INSERT INTO enrollments (campaign, recipient, domain, status, reason, since,"
                    " until, updated_by, created_at) VALUES (?,?,?,?,?,?,?,?,?)"
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
                if winner.status == BOUNCED:
                    bounced.add(winner.campaign)
            if bounced and not by_hand:
                self._check_brake(conn, bounced, event.created_at)
        return event_id

    def remember_ooo(self, address: str, until: float) -> None:
        with self.write() as conn:
            conn.execute(
                "INSERT INTO ooo (address, until, updated_at) VALUES (?,?,?)"
                " ON CONFLICT (address) DO UPDATE SET until = excluded.until,"
                " updated_at = excluded.updated_at",
                (text(address), until, time.time()),
            )

    def ooo_until(self, address: str) -> float | None:
        found = self.query("SELECT until FROM ooo WHERE address = ?", [address])
        return float(found[0]["until"]) if found else None

    def reactivate_due(self, now: float) -> int:
        with self.write() as conn:
            cur = conn.execute(
                "UPDATE enrollments SET status = 'active', reason = 'pause ended', since = ?,"
                " until = NULL, updated_by = 'replytrack' WHERE status = 'paused'"
                " AND until IS NOT NULL AND until <= ?",
                (now, now),
            )
            return int(cur.rowcount)
