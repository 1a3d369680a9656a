"""The PostgreSQL store's do-not-contact list and erasure (``replytrack forget``).

What an erasure can promise here is less than on SQLite, and ``forget`` says so: the
deletes commit at once, and a plain ``VACUUM`` of the touched tables afterwards removes
the dead row versions from the table and index pages, so that no query, dump or
``pageinspect`` of the live database shows them. It does not overwrite the bytes: they may
stay in free space inside a page until it is rewritten, in the write-ahead log until its
segments are recycled, and in WAL archives, base backups and standbys for as long as
those are kept. ``VACUUM FULL`` would rewrite the files but locks each table against every
proxy and milter for its whole run, so it is left to a maintenance window.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import psycopg

from replytrack import do_not_contact
from replytrack.store import rows, rules
from replytrack.store.base import AddressHasher
from replytrack.store.errors import StoreError
from replytrack.store.postgresql.connection import Conn, PgConnections, text
from replytrack.store.postgresql.listing import limited
from replytrack.store.postgresql.outbox import insert_event
from replytrack.store.records import DNC_ADDRESS, Event, Suppression
from replytrack.store.rows import suppression

log = logging.getLogger(__name__)

# Tables an erasure touches, vacuumed after it.
# The do-not-contact entries that may cover some addresses (suppressions aliased ``s``):
# each arm one probe of a unique index. Named parameters, so that blocked_enrollments can
# make it one sub-select of its single statement.
DNC_MATCH = (
    "(s.kind = 'address' AND s.value = ANY(%(dnc_addresses)s))"
    " OR (s.kind = 'domain' AND s.value = ANY(%(dnc_domains)s))"
    " OR s.digest = ANY(%(dnc_digests)s)"
)

_ERASED_TABLES = (
    "recipients",
    "messages",
    "enrollments",
    "ooo",
    "events",
    "outbox",
    "suppressions",
)


class PgSuppressions(PgConnections):
    """The do-not-contact calls of the PostgreSQL store."""

    hasher: AddressHasher | None

    def add_suppressions(self, entries: Sequence[Suppression]) -> int:
        # One order for every host: two imports of overlapping lists cannot deadlock.
        ordered = sorted(entries, key=lambda e: (e.kind, e.value or "", e.digest or ""))

        def write(conn: Conn) -> int:
            added = 0
            for entry in ordered:
                value = text(entry.value)
                digest = entry.digest
                if entry.kind == DNC_ADDRESS and value and digest is None and self.hasher:
                    digest = self.hasher(value)[0]
                    conn.execute(
                        "UPDATE suppressions SET digest = %s WHERE kind = 'address'"
                        " AND value = %s AND digest IS NULL",
                        (digest, value),
                    )
                cur = conn.execute(
                    "INSERT INTO suppressions (kind, value, digest, reason, actor, created_at)"
                    " VALUES (%s,%s,%s,%s,%s,%s) ON CONFLICT DO NOTHING",
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

        return self.write(write)

    def remove_suppression(self, kind: str, value: str) -> bool:
        digests = list(self.hasher(value)) if kind == DNC_ADDRESS and self.hasher else []
        return self.write(
            lambda conn: (
                conn.execute(
                    "DELETE FROM suppressions WHERE kind = %s AND (value = %s OR digest = ANY(%s))",
                    (kind, text(value), digests),
                ).rowcount
                > 0
            )
        )

    def suppressions(
        self, *, kind: str | None = None, limit: int | None = None
    ) -> list[Suppression]:
        where, params = rows.conditions((("kind", kind),), mark="%s")
        sql = limited(rows.select("suppressions", where, rows.NEWEST_FIRST), params, limit)
        return [suppression(row) for row in self.rows(sql, params)]

    def _dnc_keys(self, addresses: Iterable[str]) -> tuple[list[str], list[str], list[str]]:
        """The parameters of DNC_MATCH for ``addresses``: the addresses, their domains (with
        parents) and their keyed hashes."""
        return do_not_contact.lookup_keys([text(a) for a in addresses], self.hasher)

    def _dnc_covering(
        self, wanted: Iterable[str], found: Iterable[Mapping[str, Any]]
    ) -> dict[str, Suppression]:
        """Which of ``wanted`` the rows DNC_MATCH found cover, and by which entry."""
        return do_not_contact.covering(wanted, map(suppression, found), self.hasher)

    def _suppressed(self, conn: Conn, addresses: Iterable[str]) -> dict[str, Suppression]:
        wanted, domains, digests = self._dnc_keys(addresses)
        found = conn.execute(
            f"SELECT * FROM suppressions s WHERE {DNC_MATCH}",
            {"dnc_addresses": wanted, "dnc_domains": domains, "dnc_digests": digests},
        )
        return self._dnc_covering(wanted, found)

    def suppressed(self, addresses: Iterable[str]) -> dict[str, Suppression]:
        wanted = list(addresses)
        return self.read(lambda conn: self._suppressed(conn, wanted))

    # --- erasure ---------------------------------------------------------------------------
    def forget(self, address: str, *, actor: str, now: float) -> dict[str, int]:
        if self.hasher is None:
            raise StoreError("erasing an address needs the token key file (to keep its hash)")
        address = text(address.strip().lower())
        digests = list(self.hasher(address))
        needle = address.lower()

        def write(conn: Conn) -> dict[str, int]:
            counts: dict[str, int] = {}
            touched = [
                row["message"]
                for row in conn.execute(
                    "DELETE FROM recipients WHERE address = %s RETURNING message", (address,)
                )
            ]
            counts["recipients"] = len(touched)
            counts["messages"] = conn.execute(
                "DELETE FROM messages m WHERE m.id = ANY(%s) AND NOT EXISTS"
                " (SELECT 1 FROM recipients r WHERE r.message = m.id)",
                (touched,),
            ).rowcount
            counts["texts"] = (
                conn.execute(
                    "UPDATE messages SET upstream_reply = NULL"
                    " WHERE strpos(lower(upstream_reply), %s) > 0",
                    (needle,),
                ).rowcount
                + conn.execute(
                    "UPDATE recipients SET reason = NULL WHERE strpos(lower(reason), %s) > 0",
                    (needle,),
                ).rowcount
            )
            counts["enrollments"] = conn.execute(
                "DELETE FROM enrollments WHERE recipient = %s", (address,)
            ).rowcount
            counts["ooo"] = conn.execute("DELETE FROM ooo WHERE address = %s", (address,)).rowcount
            events = (
                "sender = %(a)s OR recipient = %(a)s OR strpos(lower(evidence), %(n)s) > 0"
                " OR strpos(lower(detail), %(n)s) > 0"
            )
            row = conn.execute(
                "SELECT count(*) AS n FROM outbox WHERE delivered_at IS NULL AND event IN"
                f" (SELECT id FROM events WHERE {events})",
                {"a": address, "n": needle},
            ).fetchone()
            counts["notifications"] = int(row["n"]) if row else 0
            counts["events"] = conn.execute(
                f"DELETE FROM events WHERE {events}", {"a": address, "n": needle}
            ).rowcount
            held = [
                suppression(r)
                for r in conn.execute(
                    "DELETE FROM suppressions WHERE kind = 'address' AND (value = %s"
                    " OR digest = ANY(%s)) RETURNING *",
                    (address, digests),
                )
            ]
            conn.execute(
                "INSERT INTO suppressions (kind, value, digest, reason, actor, created_at)"
                " VALUES (%s, NULL, %s, %s, %s, %s)",
                rules.hash_only_entry(held, digests[0], actor=actor, now=now),
            )
            insert_event(
                conn,
                Event(kind="erased", created_at=now, actor=actor, detail={"removed": counts}),
                dedupe_key=None,
                notify=False,
            )
            return counts

        counts = self.write(write)
        counts["files_cleared"] = int(self._vacuum())
        return counts

    def _vacuum(self) -> bool:
        """Plain VACUUM of the tables an erasure touched (see the module doc for what it
        does not do); False when it could not run (not the tables' owner, say)."""
        try:
            with self.direct("vacuum") as conn:
                conn.execute("SET statement_timeout = 0")
                for table in _ERASED_TABLES:
                    conn.execute(f"VACUUM {table}")
        except (StoreError, psycopg.Error) as exc:
            log.warning("store %s: VACUUM after the erasure failed: %s", self.safe_url, exc)
            return False
        return True
