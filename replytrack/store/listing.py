"""The listings both engines share: ``messages``, ``events``, ``campaign_stats`` and
``monitor_counts``.

Their filters, SQL and row mapping are the same on SQLite and PostgreSQL (the tables and
columns are alike); an engine supplies its placeholder, how it runs a statement and cuts it
at a limit, how it reads the recipients of a page of mails, and the one condition whose SQL
differs: whether a JSON list in an event's ``detail`` names an address.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, ClassVar

from replytrack.store import monitor_counts, rows
from replytrack.store.monitor_counts import MonitorCounts
from replytrack.store.records import CampaignStats, Event, SentMessage

# The lists of addresses a stop or resume event keeps in its detail (by hand, or the
# recipients a reply stopped): an event concerns the addresses they name.
DETAIL_ADDRESS_LISTS = ("recipients", "stopped")


class Listing(abc.ABC):
    """What the listing commands read, built once for both engines."""

    #: The engine's query placeholder.
    MARK: ClassVar[str]
    #: The engine's substring search, ``FIND_IN(text, part)``: the position, 0 if none.
    FIND_IN: ClassVar[str]

    @staticmethod
    @abc.abstractmethod
    def param(value: Any) -> Any:
        """The engine's ``text``: a parameter made storable as the recorded values were."""

    @abc.abstractmethod
    def listed_rows(self, sql: str, params: list[Any], limit: int | None) -> Sequence[rows.Row]:
        """The rows of ``sql``, cut at ``limit`` in the engine's dialect."""

    @abc.abstractmethod
    def listed_messages(self, sql: str, params: list[Any], limit: int | None) -> list[SentMessage]:
        """The ``messages`` rows of ``sql`` (cut at ``limit``) with their recipients."""

    @abc.abstractmethod
    def detail_names(self, key: str) -> str:
        """An SQL condition on an ``events`` row, with one placeholder for an address: true
        when the JSON list ``detail[key]`` holds that address."""

    def messages(
        self,
        *,
        campaign: str | None = None,
        since: float | None = None,
        limit: int | None = None,
        status: str | None = None,
        recipient: str | None = None,
    ) -> list[SentMessage]:
        where, params = rows.conditions(
            (("campaign", campaign), ("status", status)),
            mark=self.MARK,
            since=since,
            text=self.param,
        )
        if recipient is not None:
            # In the query, so that the limit counts only the mails sent to the address.
            where.append(
                "EXISTS (SELECT 1 FROM recipients r WHERE r.message = messages.id"
                f" AND r.address = {self.MARK})"
            )
            params.append(self.param(recipient))
        sql = rows.select("messages", where, rows.NEWEST_FIRST)
        return self.listed_messages(sql, params, limit)

    def events(
        self,
        *,
        kind: str | None = None,
        campaign: str | None = None,
        since: float | None = None,
        limit: int | None = None,
        recipient: str | None = None,
    ) -> list[Event]:
        where, params = rows.conditions(
            (("kind", kind), ("campaign", campaign)), mark=self.MARK, since=since, text=self.param
        )
        if recipient is not None:
            named = [f"recipient = {self.MARK}", f"sender = {self.MARK}"]
            named += [self.detail_names(key) for key in DETAIL_ADDRESS_LISTS]
            where.append(f"({' OR '.join(named)})")
            params += [self.param(recipient)] * len(named)
        sql = rows.select("events", where, rows.NEWEST_FIRST)
        return [rows.event(row) for row in self.listed_rows(sql, params, limit)]

    def campaign_stats(self, campaign: str | None = None) -> list[CampaignStats]:
        where, params = rows.conditions(
            (("c.campaign", campaign),), mark=self.MARK, text=self.param
        )
        sql = rows.CAMPAIGN_STATS_SQL.format(where=f"WHERE {where[0]}" if where else "")
        return [rows.campaign_stats(row) for row in self.listed_rows(sql, params, None)]

    def monitor_counts(self, campaign: str | None = None) -> dict[str, MonitorCounts]:
        monitored = monitor_counts.monitored_event(self.FIND_IN)
        details = self.listed_rows(f"SELECT detail FROM events WHERE {monitored}", [], None)
        # recipients unaliased: the condition must read as the partial index's does.
        relayed = self.listed_rows(
            "SELECT m.campaign, count(*) AS n FROM recipients JOIN messages m"
            f" ON m.id = recipients.message WHERE {monitor_counts.MONITORED_RECIPIENT}"
            " AND recipients.status = 'sent' AND m.campaign IS NOT NULL"
            " AND m.status IN ('relayed', 'unconfirmed') GROUP BY m.campaign",
            [],
            None,
        )
        return monitor_counts.count(
            (row["detail"] for row in details),
            ((row["campaign"], row["n"]) for row in relayed),
            campaign,
        )

    def monitored_events(self, campaign: str | None = None) -> list[Event]:
        """The events monitor mode recorded (``detail.monitor``), oldest first."""
        where, params = rows.conditions((("campaign", campaign),), mark=self.MARK, text=self.param)
        where.append(monitor_counts.monitored_event(self.FIND_IN))
        sql = rows.select("events", where, "id")
        return [
            event
            for event in map(rows.event, self.listed_rows(sql, params, None))
            if event.detail.get("monitor") is True
        ]
