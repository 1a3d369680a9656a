"""The PostgreSQL store's listings: recorded mails, events and campaign counts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg.rows import DictRow

from replytrack.store import rows
from replytrack.store.postgresql.connection import Conn, PgConnections, text
from replytrack.store.records import (
    CampaignStats,
    Event,
    OutboundRecipient,
    SentMessage,
)


def limited(sql: str, params: list[Any], limit: int | None) -> str:
    """``sql`` with a LIMIT of ``limit`` rows (none below zero) when one is given; its
    parameter is appended to ``params``."""
    if limit is not None:
        sql += " LIMIT %s"
        params.append(max(0, int(limit)))
    return sql


class PgListing(PgConnections):
    """What the listing commands read."""

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
        def read(conn: Conn) -> list[SentMessage]:
            return self._messages_from_rows(conn, conn.execute(sql, params).fetchall())

        return self.read(read)

    # --- listing ---------------------------------------------------------------------------
    def messages(
        self,
        *,
        campaign: str | None = None,
        since: float | None = None,
        limit: int | None = None,
        status: str | None = None,
    ) -> list[SentMessage]:
        where, params = rows.conditions(
            (("campaign", campaign), ("status", status)), mark="%s", since=since, text=text
        )
        sql = limited(rows.select("messages", where, rows.NEWEST_FIRST), params, limit)
        return self._messages(sql, params)

    def events(
        self,
        *,
        kind: str | None = None,
        campaign: str | None = None,
        since: float | None = None,
        limit: int | None = None,
    ) -> list[Event]:
        where, params = rows.conditions(
            (("kind", kind), ("campaign", campaign)), mark="%s", since=since, text=text
        )
        sql = limited(rows.select("events", where, rows.NEWEST_FIRST), params, limit)
        return [rows.event(row) for row in self.rows(sql, params)]

    def campaign_stats(self, campaign: str | None = None) -> list[CampaignStats]:
        where, params = (
            ("WHERE c.campaign = %s", [text(campaign)]) if campaign is not None else ("", [])
        )
        sql = rows.CAMPAIGN_STATS_SQL.format(where=where)
        return [rows.campaign_stats(row) for row in self.rows(sql, params)]
