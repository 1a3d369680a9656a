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
    db: str, *, busy_timeout_ms: int = 5000, create: bool = False, readonly: bool = False
) -> Store:
    """Open the store named by ``db``: a SQLite file path (a PostgreSQL URL later).

    Without ``create`` (which only ``replytrack init`` and ``migrate`` pass) the store must
    exist and hold this version's schema: a missing, empty or foreign file, or an older
    schema, raises StoreError, and nothing is created or upgraded.
    """
    if db.startswith(("postgres://", "postgresql://")):
        try:
            from replytrack.store.postgresql import PostgreSQLStore
        except ImportError as exc:
            raise StoreError(
                f"a PostgreSQL store needs psycopg ({exc.name} is missing):"
                " pip install 'replytrack[postgresql]'"
            ) from None
        # The busy timeout's job (bound every call) is statement_timeout's there.
        return PostgreSQLStore(
            db, statement_timeout_ms=busy_timeout_ms, create=create, readonly=readonly
        )
    from replytrack.store.sqlite import SQLiteStore

    return SQLiteStore(db, busy_timeout_ms=busy_timeout_ms, create=create, readonly=readonly)
