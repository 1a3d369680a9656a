"""Rows to records, for both backends: they share table and column names (the migrations
keep them alike), so one mapping reads a ``sqlite3.Row`` and a psycopg dict row."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from replytrack.store.records import (
    CampaignStats,
    CampaignStop,
    Enrollment,
    Event,
    OutboundRecipient,
    SentMessage,
    Suppression,
)


class Row(Protocol):
    """A result row read by column name (``sqlite3.Row``, psycopg's ``dict_row``)."""

    def __getitem__(self, key: str, /) -> Any: ...


_D = TypeVar("_D")


def storable(record: _D, text: Callable[[Any], Any]) -> _D:
    """The dataclass ``record`` with every string (also in tuples and nested records) passed
    through the backend's ``text`` (which escapes what it cannot store)."""
    changes: dict[str, Any] = {}
    for item in dataclasses.fields(record):  # type: ignore[arg-type]
        value = getattr(record, item.name)
        if isinstance(value, str):
            new = text(value)
        elif isinstance(value, tuple):
            new = tuple(
                storable(v, text) if dataclasses.is_dataclass(v) else text(v) for v in value
            )
        else:
            continue
        if new is not value and new != value:
            changes[item.name] = new
    return dataclasses.replace(record, **changes) if changes else record  # type: ignore[type-var]


def _unchanged(value: Any) -> Any:
    return value


def conditions(
    equal: Iterable[tuple[str, Any]],
    *,
    mark: str,
    since: float | None = None,
    text: Callable[[Any], Any] = _unchanged,
) -> tuple[list[str], list[Any]]:
    """The WHERE conditions of a listing and their parameters: ``column = mark`` for each
    (column, value) pair whose value is given (passed through the backend's ``text``), and
    ``created_at >= mark`` when ``since`` is. ``mark`` is the backend's placeholder."""
    where: list[str] = []
    params: list[Any] = []
    for column, value in equal:
        if value is not None:
            where.append(f"{column} = {mark}")
            params.append(text(value))
    if since is not None:
        where.append(f"created_at >= {mark}")
        params.append(since)
    return where, params


def select(table: str, where: Sequence[str], order: str | None = None) -> str:
    """``SELECT * FROM table`` with ``where`` AND-ed and, when given, ``ORDER BY order``;
    the caller adds a LIMIT in its own dialect."""
    sql = f"SELECT * FROM {table}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    if order is not None:
        sql += f" ORDER BY {order}"
    return sql


# Listings show the newest first; the id breaks ties between rows of one instant.
NEWEST_FIRST = "created_at DESC, id DESC"


# The columns of an events row, in the order INSERT statements list them.
EVENT_COLUMNS = (
    "kind",
    "created_at",
    "campaign",
    "message_id",
    "inbound_message_id",
    "sender",
    "recipient",
    "relation",
    "evidence",
    "detail",
    "queue_id",
    "actor",
)

# One campaign's counts (``replytrack campaigns``); the placeholder for a campaign filter
# is the backend's own (``{mark}``), the rest is plain SQL both engines run as is.
CAMPAIGN_STATS_SQL = """
    SELECT c.campaign, c.status, c.reason,
      (SELECT count(*) FROM messages m WHERE m.campaign = c.campaign
         AND m.status IN ('relayed', 'unconfirmed')) AS sent,
      (SELECT min(created_at) FROM messages m WHERE m.campaign = c.campaign) AS first_sent,
      (SELECT max(created_at) FROM messages m WHERE m.campaign = c.campaign) AS last_sent,
      (SELECT count(*) FROM enrollments e WHERE e.campaign = c.campaign) AS recipients,
      (SELECT count(*) FROM enrollments e WHERE e.campaign = c.campaign
         AND e.status = 'stopped') AS stopped,
      (SELECT count(*) FROM enrollments e WHERE e.campaign = c.campaign
         AND e.status = 'bounced') AS bounced,
      (SELECT count(*) FROM enrollments e WHERE e.campaign = c.campaign
         AND e.status = 'paused') AS paused,
      (SELECT count(*) FROM enrollments e WHERE e.campaign = c.campaign
         AND e.status = 'active') AS active,
      (SELECT count(DISTINCT ev.sender) FROM events ev WHERE ev.campaign = c.campaign
         AND ev.kind = 'reply') AS replied,
      (SELECT count(*) FROM events ev WHERE ev.campaign = c.campaign
         AND ev.kind = 'suppressed') AS suppressed
    FROM campaigns c {where} ORDER BY c.campaign
"""


def enrollment(row: Row) -> Enrollment:
    return Enrollment(
        campaign=row["campaign"],
        recipient=row["recipient"],
        status=row["status"],
        reason=row["reason"],
        since=row["since"],
        until=row["until"],
        updated_by=row["updated_by"],
    )


def event(row: Row) -> Event:
    return Event(
        id=row["id"],
        kind=row["kind"],
        created_at=row["created_at"],
        campaign=row["campaign"],
        message_id=row["message_id"],
        inbound_message_id=row["inbound_message_id"],
        sender=row["sender"],
        recipient=row["recipient"],
        relation=row["relation"],
        evidence=tuple(json.loads(row["evidence"] or "[]")),
        detail=json.loads(row["detail"] or "{}"),
        queue_id=row["queue_id"],
        actor=row["actor"],
    )


def event_values(event: Event) -> tuple[Any, ...]:
    """An event's column values in EVENT_COLUMNS order (evidence and detail as JSON text)."""
    return (
        event.kind,
        event.created_at,
        event.campaign,
        event.message_id,
        event.inbound_message_id,
        event.sender,
        event.recipient,
        event.relation,
        json.dumps(list(event.evidence)),
        json.dumps(event.detail, default=str),
        event.queue_id,
        event.actor,
    )


def recipient(row: Row) -> OutboundRecipient:
    return OutboundRecipient(
        address=row["address"],
        role=row["role"],
        envelope=bool(row["envelope"]),
        status=row["status"],
        reason=row["reason"],
    )


def sent_messages(
    rows: Sequence[Row], recipients: Mapping[int, Iterable[OutboundRecipient]]
) -> list[SentMessage]:
    """Message rows with their recipients (by message row id), in the rows' order."""
    return [
        SentMessage(
            id=row["id"],
            message_id=row["message_id"],
            original_message_id=row["original_message_id"],
            campaign=row["campaign"],
            step=row["step"],
            sender=row["sender"],
            from_address=row["from_address"],
            subject=row["subject"],
            created_at=row["created_at"],
            status=row["status"],
            recipients=tuple(recipients.get(row["id"], ())),
        )
        for row in rows
    ]


def campaign_stop(row: Row | None) -> CampaignStop | None:
    """A campaigns row (reason, updated_at, updated_by, status) of a stopped or braked
    campaign, or None."""
    if row is None:
        return None
    return CampaignStop(
        reason=row["reason"],
        since=row["updated_at"],
        updated_by=row["updated_by"],
        status=row["status"],
    )


def campaign_stats(row: Row) -> CampaignStats:
    return CampaignStats(
        campaign=row["campaign"],
        sent=row["sent"],
        recipients=row["recipients"],
        replied=row["replied"],
        stopped=row["stopped"],
        bounced=row["bounced"],
        paused=row["paused"],
        active=row["active"],
        suppressed=row["suppressed"],
        first_sent=row["first_sent"],
        last_sent=row["last_sent"],
        status=row["status"],
        reason=row["reason"],
    )


def suppression(row: Row) -> Suppression:
    """A ``suppressions`` row (the do-not-contact list)."""
    return Suppression(
        kind=row["kind"],
        value=row["value"],
        reason=row["reason"],
        actor=row["actor"],
        created_at=float(row["created_at"]),
        digest=row["digest"],
        id=int(row["id"]),
    )
