"""The PostgreSQL store's notification outbox and maintenance calls (prune, write probe).

Several hosts' senders claim rows at once here: a row is leased with ``FOR UPDATE SKIP
LOCKED``, so a row another sender is leasing right now is passed over, not waited for.
"""

from __future__ import annotations

import time

from replytrack.store import rows
from replytrack.store.errors import StoreError
from replytrack.store.postgresql.connection import Conn, PgConnections, storable, text, texts
from replytrack.store.records import Event, OutboxItem

# The row check_writable writes and deletes again (.invalid never matches real mail).
_PROBE_ADDRESS = "write-probe@doctor.replytrack.invalid"


def insert_event(conn: Conn, event: Event, *, dedupe_key: str | None, notify: bool) -> int | None:
    """Insert ``event`` (and, with ``notify``, its outbox row) unless its ``dedupe_key``
    was recorded already; its id, or None when it was."""
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
        (*texts(rows.event_values(storable(event))), text(dedupe_key), notify),
    ).fetchone()
    return None if row is None else int(row["id"])


class PgOutbox(PgConnections):
    """Outbox leases and deliveries, and the maintenance calls, on one database."""

    def claim_outbox(
        self, owner: str, *, now: float, lease_seconds: float, limit: int = 1
    ) -> list[OutboxItem]:
        def claim(conn: Conn) -> list[OutboxItem]:
            # Once the lease commits, its lease_until keeps the row out for other senders.
            leased = conn.execute(
                "WITH due AS (SELECT id FROM outbox WHERE delivered_at IS NULL"
                " AND dead_at IS NULL AND next_attempt_at <= %s"
                " AND (lease_until IS NULL OR lease_until <= %s)"
                " ORDER BY next_attempt_at, id LIMIT %s FOR UPDATE SKIP LOCKED)"
                " UPDATE outbox o SET lease_owner = %s, lease_until = %s FROM due"
                " WHERE o.id = due.id RETURNING o.id",
                (now, now, int(limit), owner, now + lease_seconds),
            ).fetchall()
            if not leased:
                return []
            found = conn.execute(
                "SELECT o.id AS outbox_id, o.attempts, o.created_at AS queued_at, e.*,"
                " coalesce((SELECT array_agg(d.url) FROM outbox_deliveries d"
                " WHERE d.outbox = o.id), '{}') AS urls"
                " FROM outbox o JOIN events e ON e.id = o.event WHERE o.id = ANY(%s)"
                " ORDER BY o.next_attempt_at, o.id",
                ([row["id"] for row in leased],),
            ).fetchall()
            return [
                OutboxItem(
                    id=row["outbox_id"],
                    event=rows.event(row),
                    attempts=row["attempts"],
                    created_at=row["queued_at"],
                    delivered_urls=frozenset(row["urls"]),
                )
                for row in found
            ]

        return self.write(claim)

    def mark_outbox_url_delivered(self, outbox_id: int, url: str, now: float) -> None:
        self.write(
            lambda conn: conn.execute(
                "INSERT INTO outbox_deliveries (outbox, url, delivered_at) VALUES (%s, %s, %s)"
                " ON CONFLICT DO NOTHING",
                (outbox_id, text(url), now),
            )
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
        self.write(
            lambda conn: conn.execute(
                "UPDATE outbox SET attempts = attempts + 1, lease_owner = NULL,"
                " lease_until = NULL, last_error = %s,"
                " delivered_at = CASE WHEN %s THEN %s ELSE delivered_at END,"
                " dead_at = CASE WHEN %s THEN %s ELSE dead_at END,"
                " next_attempt_at = coalesce(%s, next_attempt_at)"
                " WHERE id = %s AND (lease_owner = %s OR lease_owner IS NULL)",
                (
                    text(error),
                    bool(delivered),
                    now,
                    bool(dead),
                    now,
                    next_attempt_at,
                    outbox_id,
                    owner,
                ),
            )
        )

    def retry_dead_outbox(self, now: float) -> int:
        return self.write(
            lambda conn: (
                conn.execute(
                    "UPDATE outbox SET attempts = 0, dead_at = NULL, next_attempt_at = %s,"
                    " last_error = NULL WHERE dead_at IS NOT NULL AND delivered_at IS NULL",
                    (now,),
                ).rowcount
            )
        )

    def outbox_counts(self, now: float | None = None) -> dict[str, int]:
        now = time.time() if now is None else now
        row = self.rows(
            "SELECT"
            " count(*) FILTER (WHERE delivered_at IS NULL AND dead_at IS NULL) AS pending,"
            " count(*) FILTER (WHERE delivered_at IS NULL AND dead_at IS NULL"
            "   AND next_attempt_at <= %s) AS due,"
            " count(*) FILTER (WHERE dead_at IS NOT NULL) AS dead,"
            " count(*) FILTER (WHERE delivered_at IS NOT NULL) AS delivered"
            " FROM outbox",
            (now,),
        )[0]
        return {key: int(row[key] or 0) for key in ("pending", "due", "dead", "delivered")}

    # --- maintenance ---------------------------------------------------------------------
    def check_writable(self) -> None:
        """Raise StoreError unless this role can write here and commit: a probe row is
        written and deleted, as on SQLite. A standby (or a read-only store) refuses it, so
        does a role without the privileges the daemons need."""

        def probe(conn: Conn) -> None:
            conn.execute(
                "INSERT INTO ooo (address, until, updated_at) VALUES (%s, 0, %s)"
                " ON CONFLICT (address) DO UPDATE SET updated_at = excluded.updated_at",
                (_PROBE_ADDRESS, time.time()),
            )
            conn.execute("DELETE FROM ooo WHERE address = %s", (_PROBE_ADDRESS,))

        try:
            self.write(probe)
        except StoreError as exc:
            detail = exc.__cause__ or exc
            raise StoreError(f"PostgreSQL store {self.safe_url} is not writable: {detail}") from exc

    def prune(self, before: float, *, dry_run: bool = False) -> dict[str, int]:
        pending = "SELECT event FROM outbox WHERE delivered_at IS NULL AND dead_at IS NULL"
        # Outbox rows first: deleting their events would cascade and hide the count.
        targets = {
            "outbox": (
                "outbox",
                "created_at < %s AND (delivered_at IS NOT NULL OR dead_at IS NOT NULL)",
            ),
            "events": ("events", f"created_at < %s AND id NOT IN ({pending})"),
            "messages": ("messages", "created_at < %s"),
        }

        def drop(conn: Conn) -> dict[str, int]:
            counts: dict[str, int] = {}
            for name, (table, where) in targets.items():
                if dry_run:
                    row = conn.execute(
                        f"SELECT count(*) AS n FROM {table} WHERE {where}", (before,)
                    ).fetchone()
                    counts[name] = int(row["n"]) if row else 0
                else:
                    counts[name] = conn.execute(
                        f"DELETE FROM {table} WHERE {where}", (before,)
                    ).rowcount
            return counts

        return self.write(drop)
