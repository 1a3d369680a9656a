"""The store behind proxy, milter and CLI. ``open_store`` picks the backend.

- :mod:`~replytrack.store.records`: the domain records and states everyone speaks in;
- :mod:`~replytrack.store.errors`: what a store call raises;
- :mod:`~replytrack.store.base`: the interface, :class:`Store`;
- :mod:`~replytrack.store.rules`: the business rules both backends follow;
- :mod:`~replytrack.store.rows`: rows to records, shared by both backends;
- :mod:`~replytrack.store.sqlite` and :mod:`~replytrack.store.postgresql`: the engines.
"""

from __future__ import annotations

from replytrack.store.base import AddressHasher, Store
from replytrack.store.errors import StoreError, StoreWouldWait
from replytrack.store.records import (
    ACTIVE,
    BOUNCED,
    BRAKED,
    CAMPAIGN_STOPPED,
    FAILED,
    PAUSED,
    RELAYED,
    RELAYING,
    STOPPED,
    UNCONFIRMED,
    CampaignStats,
    Enrollment,
    Event,
    OutboundRecipient,
    OutboundRecord,
    OutboxItem,
    SentMessage,
    StatusChange,
    iso_time,
)

__all__ = [
    "ACTIVE",
    "BOUNCED",
    "BRAKED",
    "CAMPAIGN_STOPPED",
    "FAILED",
    "PAUSED",
    "RELAYED",
    "RELAYING",
    "STOPPED",
    "UNCONFIRMED",
    "CampaignStats",
    "Enrollment",
    "Event",
    "OutboundRecipient",
    "OutboundRecord",
    "OutboxItem",
    "SentMessage",
    "StatusChange",
    "Store",
    "StoreError",
    "StoreWouldWait",
    "iso_time",
    "open_store",
]


def open_store(
    db: str,
    *,
    busy_timeout_ms: int = 5000,
    create: bool = False,
    readonly: bool = False,
    hasher: AddressHasher | None = None,
) -> Store:
    """Open the store named by ``db``: a SQLite file path or a ``postgresql://`` URL.

    Without ``create`` (which only ``replytrack init`` and ``migrate`` pass) the store must
    exist and hold this version's schema: a missing, empty or foreign file, or an older
    schema, raises StoreError, and nothing is created or upgraded. ``hasher`` hashes
    do-not-contact addresses (:func:`replytrack.do_not_contact.address_hasher`); a store
    opened without one can be given one later (``Store.use_hasher``).
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
            db,
            statement_timeout_ms=busy_timeout_ms,
            create=create,
            readonly=readonly,
            hasher=hasher,
        )
    from replytrack.store.sqlite import SQLiteStore

    return SQLiteStore(
        db, busy_timeout_ms=busy_timeout_ms, create=create, readonly=readonly, hasher=hasher
    )
