"""The SQLite store's schema: ``MIGRATIONS[n]`` brings a store from version n to n + 1.

The numbers and what each version means are those of the PostgreSQL schema
(``replytrack.store.postgresql.schema``); the version is SQLite's ``PRAGMA user_version``.

Steps are written with sqlite-utils' table API (``create_table``, ``add_column``,
``create_index``) wherever it says what the schema needs; what it cannot say stays SQL:
``WITHOUT ROWID`` tables, ``UNIQUE`` and ``ON DELETE CASCADE`` constraints, and partial
indexes (``WHERE ...``). Stores created by earlier replytrack versions, whose steps were all
SQL, end with the same schema as a new one (tests/test_store_schema.py compares them).
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import time
from collections.abc import Callable

import sqlite_utils

from replytrack.store import monitor_counts
from replytrack.store.errors import StoreError
from replytrack.store.sqlite.connection import SQLiteConnections

log = logging.getLogger(__name__)

# Messages per backfill transaction: short enough that a proxy waiting for the write lock
# stays well inside its busy timeout while an old store upgrades.
_BACKFILL_BATCH = 50_000


def _tables(conn: sqlite3.Connection) -> sqlite_utils.Database:
    # recursive_triggers off: sqlite-utils would otherwise switch it on for this connection.
    return sqlite_utils.Database(conn, recursive_triggers=False)


def _sql(conn: sqlite3.Connection, script: str) -> None:
    # Not executescript(): that would COMMIT the migration's transaction first.
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


def _indexes(db: sqlite_utils.Database, table: str, *indexes: tuple[str, ...]) -> None:
    """Plain indexes, each given as ``(name, *columns)`` and named ``<table>_<name>``."""
    for columns in indexes:
        name, *cols = columns
        db[table].create_index(cols, index_name=f"{table}_{name}")  # type: ignore[union-attr]


def _v1(conn: sqlite3.Connection) -> None:
    """0 -> 1: the foundation."""
    _sql(
        conn,
        """
        CREATE TABLE messages (
            id INTEGER PRIMARY KEY,
            message_id TEXT NOT NULL UNIQUE,
            original_message_id TEXT,
            campaign TEXT,
            step INTEGER,
            sender TEXT NOT NULL,
            from_address TEXT,
            subject TEXT,
            created_at REAL NOT NULL,
            status TEXT NOT NULL,
            size INTEGER,
            upstream_reply TEXT
        );
        CREATE INDEX messages_original ON messages(original_message_id)
            WHERE original_message_id IS NOT NULL;
        CREATE TABLE recipients (
            message INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
            address TEXT NOT NULL,
            role TEXT NOT NULL,
            envelope INTEGER NOT NULL,
            status TEXT NOT NULL,
            reason TEXT,
            PRIMARY KEY (message, address)
        ) WITHOUT ROWID;
        CREATE TABLE enrollments (
            campaign TEXT NOT NULL,
            recipient TEXT NOT NULL,
            domain TEXT NOT NULL,
            status TEXT NOT NULL,
            reason TEXT,
            since REAL NOT NULL,
            until REAL,
            updated_by TEXT,
            created_at REAL NOT NULL,
            PRIMARY KEY (campaign, recipient)
        ) WITHOUT ROWID;
        CREATE INDEX enrollments_paused ON enrollments(until) WHERE status = 'paused';
        CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL,
            created_at REAL NOT NULL,
            campaign TEXT,
            message_id TEXT,
            inbound_message_id TEXT,
            sender TEXT,
            recipient TEXT,
            relation TEXT,
            evidence TEXT NOT NULL DEFAULT '[]',
            detail TEXT NOT NULL DEFAULT '{}',
            queue_id TEXT,
            actor TEXT,
            dedupe_key TEXT UNIQUE
        );
        CREATE TABLE outbox (
            id INTEGER PRIMARY KEY,
            event INTEGER NOT NULL REFERENCES events(id) ON DELETE CASCADE,
            created_at REAL NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL,
            delivered_at REAL,
            last_error TEXT
        );
        CREATE INDEX outbox_pending ON outbox(next_attempt_at) WHERE delivered_at IS NULL;
        CREATE TABLE ooo (
            address TEXT PRIMARY KEY,
            until REAL NOT NULL,
            updated_at REAL NOT NULL
        ) WITHOUT ROWID;
        """,
    )
    db = _tables(conn)
    db.create_table(
        "campaigns",
        {"campaign": "TEXT", "created_at": "REAL"},
        pk="campaign",
        not_null=["created_at"],
    )
    _indexes(db, "messages", ("campaign", "campaign", "created_at"), ("created", "created_at"))
    _indexes(db, "recipients", ("address", "address", "message"))
    _indexes(db, "enrollments", ("recipient", "recipient"), ("domain", "campaign", "domain"))
    _indexes(
        db,
        "events",
        ("created", "created_at"),
        ("kind", "kind", "created_at"),
        ("campaign", "campaign", "created_at"),
    )


def _v2(conn: sqlite3.Connection) -> None:
    """1 -> 2, notify: leases so that several senders never deliver the same outbox row at
    once, dead rows (attempts exhausted), and per-webhook delivery so a retry only goes to
    the URLs that have not answered 2xx yet (at-least-once per URL)."""
    outbox = _tables(conn).table("outbox")
    outbox.add_column("lease_owner", "TEXT")
    outbox.add_column("lease_until", "REAL")
    outbox.add_column("dead_at", "REAL")
    _sql(
        conn,
        """
        CREATE TABLE outbox_deliveries (
            outbox INTEGER NOT NULL REFERENCES outbox(id) ON DELETE CASCADE,
            url TEXT NOT NULL,
            delivered_at REAL NOT NULL,
            PRIMARY KEY (outbox, url)
        ) WITHOUT ROWID
        """,
    )


def _v3(conn: sqlite3.Connection) -> None:
    """2 -> 3: a campaign stopped as a whole: its mail is suppressed for every recipient,
    enrolled or new, until it is resumed."""
    campaigns = _tables(conn).table("campaigns")
    campaigns.add_column("status", "TEXT", not_null_default="active")
    campaigns.add_column("reason", "TEXT")
    campaigns.add_column("updated_at", "REAL")
    campaigns.add_column("updated_by", "TEXT")


# 3 -> 4: Message-ID lookups through a narrow table keyed by a 64-bit hash of each ID
# (stamped and original), so that a lookup descends one small b-tree whose upper pages stay
# cached, instead of two wide text indexes. Rows already recorded are added by
# _backfill_message_keys before the version is bumped.
_MESSAGE_KEYS = """
    CREATE TABLE IF NOT EXISTS message_keys (
        key INTEGER NOT NULL,
        message INTEGER NOT NULL,
        PRIMARY KEY (key, message)
    ) WITHOUT ROWID
"""


def _v4(conn: sqlite3.Connection) -> None:
    _sql(conn, _MESSAGE_KEYS)


def _v5(conn: sqlite3.Connection) -> None:
    """4 -> 5: the proxy's sweep and doctor look for mails left "relaying"; a partial index
    keeps that a lookup of the few such rows, not a scan of every recorded mail."""
    _sql(
        conn,
        "CREATE INDEX IF NOT EXISTS messages_relaying ON messages (created_at)"
        " WHERE status = 'relaying'",
    )


def _v6(conn: sqlite3.Connection) -> None:
    """5 -> 6: the do-not-contact list, honoured by every campaign. An address entry keeps
    the address and its keyed hash (``digest``); an erased one only the hash."""
    _sql(
        conn,
        """
        CREATE TABLE IF NOT EXISTS suppressions (
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL,
            value TEXT,
            digest TEXT,
            reason TEXT,
            actor TEXT,
            created_at REAL NOT NULL
        );
        CREATE UNIQUE INDEX IF NOT EXISTS suppressions_value ON suppressions (kind, value)
            WHERE value IS NOT NULL;
        CREATE UNIQUE INDEX IF NOT EXISTS suppressions_digest ON suppressions (digest)
            WHERE digest IS NOT NULL
        """,
    )


def _v7(conn: sqlite3.Connection) -> None:
    """6 -> 7: threaded follow-ups keep an Outlook Thread-Index root (22 bytes, base64)
    per enrollment; the campaigns table also holds "braked" (the bounce brake), which needs
    no schema."""
    _tables(conn).table("enrollments").add_column("thread_index", "TEXT")


def _v8(conn: sqlite3.Connection) -> None:
    """7 -> 8: answers without threading headers. Outlook's thread key is looked up by the
    GUID part of each enrollment's Thread-Index root (its base64 from the 9th character), a
    header-less answer by the enrollments at the sender's domain (enrollments_domain leads
    with the campaign, so it cannot serve that)."""
    _sql(
        conn,
        """
        CREATE INDEX IF NOT EXISTS enrollments_thread_guid ON enrollments (substr(thread_index, 9))
            WHERE thread_index IS NOT NULL;
        CREATE INDEX IF NOT EXISTS enrollments_at_domain ON enrollments (domain)
        """,
    )


def _v9(conn: sqlite3.Connection) -> None:
    """8 -> 9: ``replytrack campaigns`` counts what monitor mode let happen from the few
    recipients relayed in monitor mode and the monitored events, found by partial indexes
    instead of a scan of every recipient and event (store/monitor_counts.py). And
    enrollments_domain now leads with the domain (it serves the lookups by domain, so
    enrollments_at_domain goes): an index that led with the campaign competed with the
    primary key (campaign, recipient), and for a campaign the planner's statistics do not
    know yet (a new one, until the next ANALYZE) it took that index and read all the
    campaign's enrollments to find one recipient (PostgreSQL's planner; the two schemas
    keep the same indexes)."""
    _sql(
        conn,
        f"""
        CREATE INDEX IF NOT EXISTS recipients_monitored ON recipients (message)
            WHERE {monitor_counts.MONITORED_RECIPIENT};
        CREATE INDEX IF NOT EXISTS events_monitored ON events (id)
            WHERE {monitor_counts.monitored_event("instr")};
        DROP INDEX IF EXISTS enrollments_domain;
        DROP INDEX IF EXISTS enrollments_at_domain;
        CREATE INDEX enrollments_domain ON enrollments (domain, campaign)
        """,
    )


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _v1, _v2, _v3, _v4, _v5, _v6, _v7, _v8, _v9,
]  # fmt: skip
SCHEMA_VERSION = len(MIGRATIONS)


# --- Message-ID lookup keys ---------------------------------------------------------------------
def message_key(message_id: str) -> int:
    """The 64-bit lookup key of a (storable) Message-ID: the first 8 bytes of its BLAKE2b.

    Two IDs may share a key; lookups compare the real IDs on the message row, so a
    collision costs one extra row read, never a wrong match.
    """
    digest = hashlib.blake2b(message_id.encode("utf-8", "surrogatepass"), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


def _sql_message_key(message_id: str | None) -> int | None:
    """``message_key`` for SQL (``rt_message_key``); NULL for a missing ID."""
    return None if message_id is None else message_key(message_id)


def key_function(conn: sqlite3.Connection) -> None:
    """Register ``rt_message_key`` on ``conn``, for the statements that need it.

    Only migrations and prune use it, never libmilter's threads: closing a connection that
    carries a Python SQL function runs its destructor through PyGILState_Ensure, and on
    libmilter's threads (pymilter moves one Python thread state per milter connection
    between C threads) that took up a foreign or freed thread state and crashed the milter
    (gdb: destructor_callback -> PyGILState_Ensure -> take_gil, SIGSEGV). So no connection
    carries it from the start.
    """
    conn.create_function("rt_message_key", 1, _sql_message_key, deterministic=True)


# Keys of message rows, for the backfill and for dropping the keys of pruned messages.
KEYS_OF_MESSAGES = (
    "SELECT rt_message_key(message_id) AS key, id AS message FROM messages WHERE {where}"
    " UNION ALL SELECT rt_message_key(original_message_id), id FROM messages"
    " WHERE ({where}) AND original_message_id IS NOT NULL"
)


def _add_message_keys(conn: sqlite3.Connection, after: int, upto: int = -1) -> int:
    """Add the keys of messages with ``after < id <= upto`` (no upper bound when -1)."""
    where = f"id > {int(after)}" + (f" AND id <= {int(upto)}" if upto >= 0 else "")
    key_function(conn)
    cur = conn.execute(
        "INSERT OR IGNORE INTO message_keys (key, message) " + KEYS_OF_MESSAGES.format(where=where)
    )
    return int(cur.rowcount)


def _backfill_message_keys(store: SQLiteConnections) -> int:
    """Create message_keys and fill it from recorded mails, one short transaction a batch;
    returns the highest message id done.

    The version stays 3 until the last batch, which runs in the same transaction as the
    bump, so no reader ever sees schema 4 with keys missing. A run cut short is simply
    redone (INSERT OR IGNORE).
    """
    with store.write() as conn:
        if int(conn.execute("PRAGMA user_version").fetchone()[0]) != 3:
            return 0
        _sql(conn, _MESSAGE_KEYS)
        top = int(conn.execute("SELECT coalesce(max(id), 0) FROM messages").fetchone()[0])
    started, done = time.monotonic(), 0
    while done < top:
        upto = done + _BACKFILL_BATCH
        with store.write() as conn:
            _add_message_keys(conn, done, upto)
        done = upto
    if top:
        log.info(
            "store %s: message keys of %d mails added in %.1f s",
            store.path,
            top,
            time.monotonic() - started,
        )
    return done


# --- versions -----------------------------------------------------------------------------------
def schema_version(store: SQLiteConnections) -> int:
    """The schema version recorded in the file."""
    return int(store.query("PRAGMA user_version")[0][0])


def migrate(store: SQLiteConnections, *, target: int = SCHEMA_VERSION) -> None:
    """Bring the schema to ``target`` (this replytrack's version unless a test asks for an
    older one); each step is its own transaction."""
    current = schema_version(store)
    if store.readonly:
        if current != SCHEMA_VERSION:
            raise StoreError(f"store {store.path} has schema {current}")
        return
    if current > SCHEMA_VERSION:
        raise StoreError(
            f"store {store.path} has schema {current}, newer than this replytrack"
            f" ({SCHEMA_VERSION}); upgrade replytrack"
        )
    for version in range(current, target):
        backfilled = _backfill_message_keys(store) if version == 3 else 0
        with store.write() as conn:
            # Another process may have migrated while we waited for the lock.
            if int(conn.execute("PRAGMA user_version").fetchone()[0]) != version:
                continue
            MIGRATIONS[version](conn)
            if version == 3:
                # Mails recorded (by an older replytrack) during the batches.
                _add_message_keys(conn, backfilled)
            conn.execute(f"PRAGMA user_version = {version + 1}")
        log.info("store %s migrated to schema %d", store.path, version + 1)
