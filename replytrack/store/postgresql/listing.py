"""The PostgreSQL store's side of the listings (:mod:`replytrack.store.listing`): its
LIMIT, how it reads the recipients of a page of mails, and its JSON."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg.rows import DictRow

from replytrack.store import rows
from replytrack.store.listing import Listing
from replytrack.store.postgresql.connection import Conn, PgConnections, text
from replytrack.store.records import OutboundRecipient, SentMessage


def limited(sql: str, params: list[Any], limit: int | None) -> str:
    """``sql`` with a LIMIT of ``limit`` rows (none below zero) when one is given; its
    parameter is appended to ``params``."""
    if limit is not None:
        sql += " LIMIT %s"
        params.append(max(0, int(limit)))
    return sql


class PgListing(PgConnections, Listing):
    """How the listing commands' queries run on PostgreSQL."""

    @staticmethod
    def _messages_from_rows(conn: Conn, found: Sequence[DictRow]) -> list[SentMessage]:
        recipients: dict[int, list[OutboundRecipient]] = {row["id"]: [] for row in found}
        if recipients:
            for row in conn.execute(
                "SELECT * FROM recipients WHERE message = ANY(%s)"
                " ORDER BY message, role DESC, address",
                (list(recipients),),
            ):
                recipients[row["message"]].append(rows.recipient(row))
        return rows.sent_messages(found, recipients)

    def _messages(self, sql: str, params: Sequence[Any]) -> list[SentMessage]:
        """The mails ``sql`` selects, with their recipients, read in one transaction."""

        def read(conn: Conn) -> list[SentMessage]:
            return self._messages_from_rows(conn, conn.execute(sql, params).fetchall())

        return self.read(read)

    # --- listing (the queries are replytrack.store.listing's) ------------------------------
    MARK = "%s"
    FIND_IN = "strpos"
    param = staticmethod(text)

    def listed_rows(self, sql: str, params: list[Any], limit: int | None) -> list[DictRow]:
        return self.rows(limited(sql, params, limit), params)

    def listed_messages(self, sql: str, params: list[Any], limit: int | None) -> list[SentMessage]:
        return self._messages(limited(sql, params, limit), params)

    def detail_names(self, key: str) -> str:
        # ``json``, not ``jsonb``: jsonb refuses the \u0000 escape a hostile header can leave
        # in a detail; and a key that holds no list names nobody.
        value = f"events.detail::json -> '{key}'"
        return (
            "EXISTS (SELECT 1 FROM json_array_elements_text("
            f"CASE WHEN json_typeof({value}) = 'array' THEN {value} END) AS named(address)"
            " WHERE named.address = %s)"
        )
