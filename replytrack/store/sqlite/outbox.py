"""The SQLite store's notification outbox and maintenance calls (prune, write probe)."""

from __future__ import annotations

import time

from replytrack.store import rows
from replytrack.store.errors import StoreError
from replytrack.store.records import OutboxItem
from replytrack.store.sqlite import schema
from replytrack.store.sqlite.connection import SQLiteConnections, text

# The row check_writable writes and deletes again.
_PROBE_ADDRESS = "write-probe@doctor.replytrack.invalid"


class SQLiteOutbox(SQLiteConnections):
    """Outbox leases and deliveries, and the maintenance calls, on one store file."""

    def claim_outbox(
        self, owner: str, *, now: float, lease_seconds: float, limit: int = 1
    ) -> list[OutboxItem]:
        with self.write() as conn:
            # The lease is taken inside the IMMEDIATE transaction, so two senders racing for
            # the same row are serialised by SQLite's write lock: the second sees the lease.
            found = conn.execute(
                "SELECT o.id AS outbox_id, o.attempts, o.created_at AS queued_at, e.*"
                " FROM outbox o JOIN events e ON e.id = o.event"
                " WHERE o.delivered_at IS NULL AND o.dead_at IS NULL AND o.next_attempt_at <= ?"
                " AND (o.lease_until IS NULL OR o.lease_until <= ?)"
                " ORDER BY o.next_attempt_at, o.id LIMIT ?",
                (now, now, int(limit)),
            ).fetchall()
            items = []
            for row in found:
                conn.execute(
                    "UPDATE outbox SET lease_owner = ?, lease_until = ? WHERE id = ?",
                    (owner, now + lease_seconds, row["outbox_id"]),
                )
                urls = conn.execute(
                    "SELECT url FROM outbox_deliveries WHERE outbox = ?", (row["outbox_id"],)
                ).fetchall()
                items.append(
                    OutboxItem(
                        id=row["outbox_id"],
                        event=rows.event(row),
                        attempts=row["attempts"],
                        created_at=row["queued_at"],
                        delivered_urls=frozenset(u["url"] for u in urls),
                    )
                )
        return items

    def mark_outbox_url_delivered(self, outbox_id: int, url: str, now: float) -> None:
        with self.write() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO outbox_deliveries (outbox, url, delivered_at)"
                " VALUES (?, ?, ?)",
                (outbox_id, text(url), now),
            )

    def finish_outbox_attempt(
        self,
        outbox_id: int,
        owner: str,
        *,
        now: float,
        delivered: bool,
        next_attempt_at: float | None = None,
        error: str | None = None,
        dead: bool = False,
    ) -> None:
        with self.write() as conn:
            conn.execute(
                "UPDATE outbox SET attempts = attempts + 1, lease_owner = NULL,"
                " lease_until = NULL, last_error = ?,"
                " delivered_at = CASE WHEN ? THEN ? ELSE delivered_at END,"
                " dead_at = CASE WHEN ? THEN ? ELSE dead_at END,"
                " next_attempt_at = coalesce(?, next_attempt_at)"
                " WHERE id = ? AND (lease_owner = ? OR lease_owner IS NULL)",
                (
                    text(error),
                    int(delivered),
                    now,
                    int(dead),
                    now,
                    next_attempt_at,
                    outbox_id,
                    owner,
                ),
            )

    def outbox_counts(self, now: float | None = None) -> dict[str, int]:
        now = time.time() if now is None else now
        row = self.query(
            "SELECT"
            " count(*) FILTER (WHERE delivered_at IS NULL AND dead_at IS NULL) AS pending,"
            " count(*) FILTER (WHERE delivered_at IS NULL AND dead_at IS NULL"
            "   AND next_attempt_at <= ?) AS due,"
            " count(*) FILTER (WHERE dead_at IS NOT NULL) AS dead,"
            " count(*) FILTER (WHERE delivered_at IS NOT NULL) AS delivered"
            " FROM outbox",
            [now],
        )[0]
        return {key: int(row[key] or 0) for key in ("pending", "due", "dead", "delivered")}

    def retry_dead_outbox(self, now: float) -> int:
        with self.write() as conn:
            cur = conn.execute(
                "UPDATE outbox SET attempts = 0, dead_at = NULL, next_attempt_at = ?,"
                " last_error = NULL WHERE dead_at IS NOT NULL AND delivered_at IS NULL",
                (now,),
            )
            return int(cur.rowcount)

    # --- maintenance ---------------------------------------------------------------------
    def check_writable(self) -> None:
        # A probe row, written and deleted, each step committed: in WAL mode a rolled-back
        # write never reaches the file, so only a commit shows that the store (and its -wal)
        # can really be written. An address under .invalid never matches real mail.
        try:
            with self.write() as conn:
                conn.execute(
                    "INSERT OR REPLACE INTO ooo (address, until, updated_at) VALUES (?, 0, ?)",
                    (_PROBE_ADDRESS, time.time()),
                )
            with self.write() as conn:
                conn.execute("DELETE FROM ooo WHERE address = ?", (_PROBE_ADDRESS,))
        except StoreError as exc:
            detail = exc.__cause__ or exc
            raise StoreError(f"store {self.path} is not writable: {detail}") from exc

    def prune(self, before: float, *, dry_run: bool = False) -> dict[str, int]:
        pending = "SELECT event FROM outbox WHERE delivered_at IS NULL AND dead_at IS NULL"
        targets = {
            "messages": ("messages", f"created_at < {before!r}"),
            "events": ("events", f"created_at < {before!r} AND id NOT IN ({pending})"),
            "outbox": (
                "outbox",
                f"created_at < {before!r} AND (delivered_at IS NOT NULL OR dead_at IS NOT NULL)",
            ),
        }
        counts: dict[str, int] = {}
        with self.write() as conn:
            if not dry_run:
                # The lookup keys of the mails about to go (found by key, not by a scan).
                schema.key_function(conn)
                conn.execute(
                    "DELETE FROM message_keys WHERE (key, message) IN ("
                    + schema.KEYS_OF_MESSAGES.format(where=targets["messages"][1])
                    + ")"
                )
            # Outbox rows first: deleting their events would cascade and hide the count.
            for name in ("outbox", "events", "messages"):
                table, where = targets[name]
                counts[name] = int(
                    conn.execute(f"SELECT count(*) FROM {table} WHERE {where}").fetchone()[0]
                )
                if not dry_run:
                    conn.execute(f"DELETE FROM {table} WHERE {where}")
        return counts
