"""The SQLite store's side of the listings (:mod:`replytrack.store.listing`), and the export
that streams recorded mails, events and enrollments.

The export reads through sqlite-utils (``Table.rows_where``), one page at a time, each page
its own short read: an export of millions of rows holds no snapshot for minutes, during
which the write-ahead log could not restart and would grow with every write.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any

import sqlite_utils

from replytrack.store import rows
from replytrack.store.errors import StoreError
from replytrack.store.listing import Listing
from replytrack.store.records import (
    Enrollment,
    Event,
    OutboundRecipient,
    SentMessage,
)
from replytrack.store.sqlite.connection import SQLiteConnections, text

# SQLite allows 32766 host parameters; stay far below so IN (...) lists are cheap.
_CHUNK = 500
# Rows per page of an export.
EXPORT_PAGE = 1000


def chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def limited(sql: str, limit: int | None) -> str:
    """``sql`` with a LIMIT of ``limit`` rows when one is given (written into the SQL: it is
    an int, and SQLite reads a negative one as no limit)."""
    return sql if limit is None else f"{sql} LIMIT {int(limit)}"


class SQLiteListing(SQLiteConnections, Listing):
    """How the listing commands' queries run on SQLite, and the export."""

    def _messages_from_rows(self, found: Sequence[rows.Row]) -> list[SentMessage]:
        pks = [row["id"] for row in found]
        recipients: dict[int, list[OutboundRecipient]] = {pk: [] for pk in pks}
        for chunk in chunks(pks):
            marks = ",".join("?" * len(chunk))
            for row in self.query(
                f"SELECT * FROM recipients WHERE message IN ({marks})"
                " ORDER BY message, role DESC, address",
                chunk,
            ):
                recipients[row["message"]].append(rows.recipient(row))
        return rows.sent_messages(found, recipients)

    # --- listing (the queries are replytrack.store.listing's) ------------------------------
    MARK = "?"
    FIND_IN = "instr"
    param = staticmethod(text)

    def listed_rows(self, sql: str, params: list[Any], limit: int | None) -> list[sqlite3.Row]:
        return self.query(limited(sql, limit), params)

    def listed_messages(self, sql: str, params: list[Any], limit: int | None) -> list[SentMessage]:
        return self._messages_from_rows(self.listed_rows(sql, params, limit))

    def detail_names(self, key: str) -> str:
        # json_each reads a scalar as a list of one: a key that holds no list names nobody.
        return (
            f"EXISTS (SELECT 1 FROM json_each(events.detail, '$.{key}')"
            f" WHERE json_type(events.detail, '$.{key}') = 'array' AND value = ?)"
        )

    # --- export ----------------------------------------------------------------------------
    def _pages(
        self,
        table: str,
        filters: tuple[list[str], list[Any]],
        *,
        order: tuple[str, ...],
        descending: bool,
    ) -> Iterator[dict[str, Any]]:
        """Every row of ``table`` matching ``filters`` (conditions and their parameters) in
        ``order``, read a page at a time, each page after the last row of the one before."""
        db = sqlite_utils.Database(self.conn, recursive_triggers=False)
        after: dict[str, Any] | None = None
        keys = ", ".join(order)
        marks = ", ".join("?" * len(order))
        while True:
            where = list(filters[0])
            params = [text(p) for p in filters[1]]
            if after is not None:
                where.append(f"({keys}) {'<' if descending else '>'} ({marks})")
                params += [after[k] for k in order]
            try:
                page = list(
                    db.table(table).rows_where(
                        " AND ".join(where) or None,
                        params,
                        order_by=", ".join(f"{k} {'DESC' if descending else 'ASC'}" for k in order),
                        limit=EXPORT_PAGE,
                    )
                )
            except sqlite3.Error as exc:
                raise StoreError(f"store read failed: {exc}") from exc
            yield from page
            if len(page) < EXPORT_PAGE:
                return
            after = page[-1]

    def export_messages(
        self, *, campaign: str | None = None, since: float | None = None
    ) -> Iterator[SentMessage]:
        filters = rows.conditions((("campaign", campaign),), mark="?", since=since)
        page: list[dict[str, Any]] = []
        for row in self._pages("messages", filters, order=("created_at", "id"), descending=True):
            page.append(row)
            if len(page) == EXPORT_PAGE:
                yield from self._messages_from_rows(page)
                page = []
        yield from self._messages_from_rows(page)

    def export_events(
        self, *, campaign: str | None = None, since: float | None = None
    ) -> Iterator[Event]:
        filters = rows.conditions((("campaign", campaign),), mark="?", since=since)
        for row in self._pages("events", filters, order=("created_at", "id"), descending=True):
            yield rows.event(row)

    def export_enrollments(
        self, *, campaign: str | None = None, since: float | None = None
    ) -> Iterator[Enrollment]:
        filters = rows.conditions((("campaign", campaign),), mark="?")
        if since is not None:
            # An enrollment's time is when it came to its state, not a ``created_at``.
            filters[0].append("since >= ?")
            filters[1].append(since)
        order = ("campaign", "recipient")
        for row in self._pages("enrollments", filters, order=order, descending=False):
            yield rows.enrollment(row)
