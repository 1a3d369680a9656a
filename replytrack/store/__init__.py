"""The store behind proxy, milter and CLI. ``open_store`` picks the backend."""

from __future__ import annotations

from replytrack.store.base import (
    ACTIVE,
    BOUNCED,
    CAMPAIGN_STOPPED,
    PAUSED,
    STOPPED,
    CampaignStats,
    Enrollment,
    Event,
    OutboundRecipient,
    OutboundRecord,
    SentMessage,
    Store,
    StoreError,
    StoreLocked,
)

__all__ = [
    "ACTIVE",
    "BOUNCED",
    "CAMPAIGN_STOPPED",
    "PAUSED",
    "STOPPED",
    "CampaignStats",
    "Enrollment",
    "Event",
    "OutboundRecipient",
    "OutboundRecord",
    "SentMessage",
    "Store",
    "StoreError",
    "StoreLocked",
    "open_store",
]


def open_store(
    db: str, *, busy_timeout_ms: int = 5000, create: bool = True, readonly: bool = False
) -> Store:
    """Open the store named by ``db``: a SQLite file path (a PostgreSQL URL later)."""
    if db.startswith(("postgres://", "postgresql://")):
        raise StoreError("the PostgreSQL backend is not available in this version")
    from replytrack.store.sqlite import SQLiteStore

    return SQLiteStore(db, busy_timeout_ms=busy_timeout_ms, create=create, readonly=readonly)
