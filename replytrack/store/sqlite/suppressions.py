"""The SQLite store's do-not-contact list and erasure (``replytrack forget``).

Erasure must also reach the file: SQLite leaves deleted rows in freed page space, in older
versions of a page (a row updated earlier without ``secure_delete``) and in the write-ahead
log. So the deletes run with ``PRAGMA secure_delete`` on, then ``VACUUM`` rebuilds the file
from the live rows only and ``wal_checkpoint(TRUNCATE)`` copies that into the store file and
empties the log. What the filesystem keeps of freed blocks is beyond the store's reach.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable, Sequence

from replytrack import do_not_contact
from replytrack.store import rows, rules
from replytrack.store.base import AddressHasher
from replytrack.store.errors import StoreError
from replytrack.store.records import DNC_ADDRESS, Event, Suppression
from replytrack.store.rows import suppression
from replytrack.store.sqlite.connection import SQLiteConnections, text
from replytrack.store.sqlite.listing import chunks, limited

log = logging.getLogger(__name__)

# Addresses per lookup statement (each brings its domains and hashes along).
_LOOKUP_CHUNK = 100


def like_pattern(value: str) -> str:
    """A LIKE pattern (ESCAPE '\\') for text containing ``value``."""
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class SQLiteSuppressions(SQLiteConnections):
    """The do-not-contact calls of the SQLite store."""

    hasher: AddressHasher | None

    def add_suppressions(self, entries: Sequence[Suppression]) -> int:
        added = 0
        with self.write() as conn:
            for entry in entries:
                value = text(entry.value)
                digest = entry.digest
                if entry.kind == DNC_ADDRESS and value and digest is None and self.hasher:
                    digest = self.hasher(value)[0]
                    # An entry made before the store had a hasher gets its hash now.
                    conn.execute(
                        "UPDATE suppressions SET digest = ? WHERE kind = 'address'"
                        " AND value = ? AND digest IS NULL",
                        (digest, value),
                    )
                cur = conn.execute(
                    "INSERT INTO suppressions (kind, value, digest, reason, actor, created_at)"
                    " VALUES (?,?,?,?,?,?) ON CONFLICT DO NOTHING",
                    (
                        entry.kind,
                        value,
                        digest,
                        text(entry.reason),
                        text(entry.actor),
                        entry.created_at,
                    ),
                )
                added += cur.rowcount
        return added

    def remove_suppression(self, kind: str, value: str) -> bool:
        digests = list(self.hasher(value)) if kind == DNC_ADDRESS and self.hasher else []
        marks = ",".join("?" * len(digests)) or "NULL"
        with self.write() as conn:
            cur = conn.execute(
                f"DELETE FROM suppressions WHERE kind = ? AND (value = ? OR digest IN ({marks}))",
                (kind, text(value), *digests),
            )
            return cur.rowcount > 0

    def suppressions(
        self, *, kind: str | None = None, limit: int | None = None
    ) -> list[Suppression]:
        where, params = rows.conditions((("kind", kind),), mark="?")
        sql = rows.select("suppressions", where, rows.NEWEST_FIRST)
        # Unlike the SQLite store's other listings, a limit below zero lists nothing here.
        sql = limited(sql, None if limit is None else max(0, int(limit)))
        return [suppression(row) for row in self.query(sql, params)]

    def suppressed(self, addresses: Iterable[str]) -> dict[str, Suppression]:
        found: dict[str, Suppression] = {}
        for chunk in chunks(sorted({text(a) for a in addresses}), _LOOKUP_CHUNK):
            wanted, domains, digests = do_not_contact.lookup_keys(chunk, self.hasher)
            marks = [",".join("?" * len(keys)) or "NULL" for keys in (wanted, domains, digests)]
            entries = map(
                suppression,
                self.query(
                    "SELECT * FROM suppressions WHERE (kind = 'address' AND value IN"
                    f" ({marks[0]})) OR (kind = 'domain' AND value IN ({marks[1]}))"
                    f" OR digest IN ({marks[2]})",
                    [*wanted, *domains, *digests],
                ),
            )
            found.update(do_not_contact.covering(wanted, entries, self.hasher))
        return found

    # --- erasure ---------------------------------------------------------------------------
    def forget(self, address: str, *, actor: str, now: float) -> dict[str, int]:
        if self.hasher is None:
            raise StoreError("erasing an address needs the token key file (to keep its hash)")
        address = text(address.strip().lower())
        digests = list(self.hasher(address))
        pattern = like_pattern(address)
        # On for this connection: every page the deletes free is zeroed, not left as is.
        self.conn.execute("PRAGMA secure_delete = ON")
        counts: dict[str, int] = {}
        with self.write() as conn:
            touched = [
                row[0]
                for row in conn.execute(
                    "SELECT message FROM recipients WHERE address = ?", (address,)
                )
            ]
            counts["recipients"] = conn.execute(
                "DELETE FROM recipients WHERE address = ?", (address,)
            ).rowcount
            orphans: list[int] = []
            for chunk in chunks(touched):
                marks = ",".join("?" * len(chunk))
                orphans += [
                    row[0]
                    for row in conn.execute(
                        f"SELECT id FROM messages WHERE id IN ({marks}) AND NOT EXISTS"
                        " (SELECT 1 FROM recipients WHERE message = messages.id)",
                        chunk,
                    )
                ]
            for chunk in chunks(orphans):
                marks = ",".join("?" * len(chunk))
                conn.execute(f"DELETE FROM message_keys WHERE message IN ({marks})", chunk)
                conn.execute(f"DELETE FROM messages WHERE id IN ({marks})", chunk)
            counts["messages"] = len(orphans)
            # Mails other people got too stay; text that quotes the address goes.
            counts["texts"] = (
                conn.execute(
                    "UPDATE messages SET upstream_reply = NULL"
                    " WHERE upstream_reply LIKE ? ESCAPE '\\'",
                    (pattern,),
                ).rowcount
                + conn.execute(
                    "UPDATE recipients SET reason = NULL WHERE reason LIKE ? ESCAPE '\\'",
                    (pattern,),
                ).rowcount
            )
            counts["enrollments"] = conn.execute(
                "DELETE FROM enrollments WHERE recipient = ?", (address,)
            ).rowcount
            counts["ooo"] = conn.execute("DELETE FROM ooo WHERE address = ?", (address,)).rowcount
            events = "sender = ?1 OR recipient = ?1 OR evidence LIKE ?2 ESCAPE '\\'" + (
                " OR detail LIKE ?2 ESCAPE '\\'"
            )
            counts["notifications"] = int(
                conn.execute(
                    "SELECT count(*) FROM outbox WHERE delivered_at IS NULL AND event IN"
                    f" (SELECT id FROM events WHERE {events})",
                    (address, pattern),
                ).fetchone()[0]
            )
            # Their outbox rows (and per-URL deliveries) go with them (ON DELETE CASCADE).
            counts["events"] = conn.execute(
                f"DELETE FROM events WHERE {events}", (address, pattern)
            ).rowcount
            self._keep_hash_only(conn, address, digests, actor=actor, now=now)
            self._insert_event(  # type: ignore[attr-defined]
                conn,
                Event(kind="erased", created_at=now, actor=actor, detail={"removed": counts}),
                dedupe_key=None,
                notify=False,
            )
        counts["files_cleared"] = int(self._clear_freed_space())
        return counts

    @staticmethod
    def _keep_hash_only(
        conn: sqlite3.Connection, address: str, digests: list[str], *, actor: str, now: float
    ) -> None:
        """Replace the address's list entries by one that holds only its hash (the oldest
        entry's reason, actor and time kept); add one when it was not listed."""
        marks = ",".join("?" * len(digests))
        held = [
            suppression(row)
            for row in conn.execute(
                "SELECT * FROM suppressions WHERE kind = 'address' AND (value = ?"
                f" OR digest IN ({marks}))",
                (address, *digests),
            )
        ]
        conn.execute(
            "DELETE FROM suppressions WHERE kind = 'address' AND (value = ?"
            f" OR digest IN ({marks}))",
            (address, *digests),
        )
        conn.execute(
            "INSERT INTO suppressions (kind, value, digest, reason, actor, created_at)"
            " VALUES (?, NULL, ?, ?, ?, ?)",
            rules.hash_only_entry(held, digests[0], actor=actor, now=now),
        )

    def _clear_freed_space(self) -> bool:
        """Rebuild the file from live rows and empty the write-ahead log; False when a
        reader kept the log from being emptied (the old frames may still hold the erased
        rows until the next full checkpoint)."""
        conn = self.conn
        try:
            conn.execute("VACUUM")
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error as exc:
            log.warning("store %s: freed space not cleared: %s", self.path, exc)
            return False
        return not busy
