"""SQLite stores as earlier replytrack versions wrote them, for upgrade tests.

``LEGACY_MIGRATIONS`` are the schema steps as they were before the steps were written with
sqlite-utils' table API (replytrack.store.sqlite.schema): a store of any version made by
those must upgrade to the same schema as a new one.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

LEGACY_MIGRATIONS: list[str] = [
    # 0 -> 1: the foundation.
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
    CREATE INDEX messages_campaign ON messages(campaign, created_at);
    CREATE INDEX messages_created ON messages(created_at);
    CREATE TABLE recipients (
        message INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
        address TEXT NOT NULL,
        role TEXT NOT NULL,
        envelope INTEGER NOT NULL,
        status TEXT NOT NULL,
        reason TEXT,
        PRIMARY KEY (message, address)
    ) WITHOUT ROWID;
    CREATE INDEX recipients_address ON recipients(address, message);
    CREATE TABLE campaigns (
        campaign TEXT PRIMARY KEY,
        created_at REAL NOT NULL
    );
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
    CREATE INDEX enrollments_recipient ON enrollments(recipient);
    CREATE INDEX enrollments_domain ON enrollments(campaign, domain);
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
    CREATE INDEX events_created ON events(created_at);
    CREATE INDEX events_kind ON events(kind, created_at);
    CREATE INDEX events_campaign ON events(campaign, created_at);
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
    # notify: leases so that several senders never deliver the same outbox row at once,
    # dead rows (attempts exhausted), and per-webhook delivery so a retry only goes to the
    # URLs that have not answered 2xx yet (at-least-once per URL).
    """
    ALTER TABLE outbox ADD COLUMN lease_owner TEXT;
    ALTER TABLE outbox ADD COLUMN lease_until REAL;
    ALTER TABLE outbox ADD COLUMN dead_at REAL;
    CREATE TABLE outbox_deliveries (
        outbox INTEGER NOT NULL REFERENCES outbox(id) ON DELETE CASCADE,
        url TEXT NOT NULL,
        delivered_at REAL NOT NULL,
        PRIMARY KEY (outbox, url)
    ) WITHOUT ROWID;
    """,
    # A campaign stopped as a whole: its mail is suppressed for every recipient, enrolled
    # or new, until it is resumed.
    """
    ALTER TABLE campaigns ADD COLUMN status TEXT NOT NULL DEFAULT 'active';
    ALTER TABLE campaigns ADD COLUMN reason TEXT;
    ALTER TABLE campaigns ADD COLUMN updated_at REAL;
    ALTER TABLE campaigns ADD COLUMN updated_by TEXT;
    """,
    # 3 -> 4: Message-ID lookups through a narrow table keyed by a 64-bit hash of each ID
    # (stamped and original), so that a lookup descends one small b-tree whose upper pages
    # stay cached, instead of two wide text indexes. Rows already recorded are added by
    # _backfill_message_keys before the version is bumped.
    """
    CREATE TABLE IF NOT EXISTS message_keys (
        key INTEGER NOT NULL,
        message INTEGER NOT NULL,
        PRIMARY KEY (key, message)
    ) WITHOUT ROWID;
    """,
    # 4 -> 5: the proxy's sweep and doctor look for mails left "relaying"; a partial index
    # keeps that a lookup of the few such rows, not a scan of every recorded mail.
    """
    CREATE INDEX IF NOT EXISTS messages_relaying ON messages (created_at)
        WHERE status = 'relaying';
    """,
    # 5 -> 6: the do-not-contact list.
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
        WHERE digest IS NOT NULL;
    """,
    # 6 -> 7: the Thread-Index root of threaded follow-ups, per enrollment.
    """
    ALTER TABLE enrollments ADD COLUMN thread_index TEXT;
    """,
    # 7 -> 8: answers without threading headers (Thread-Index GUID, sender's domain).
    """
    CREATE INDEX IF NOT EXISTS enrollments_thread_guid ON enrollments (substr(thread_index, 9))
        WHERE thread_index IS NOT NULL;
    CREATE INDEX IF NOT EXISTS enrollments_at_domain ON enrollments (domain);
    """,
    # 8 -> 9: monitor mode's counts without scans (recipients relayed, events monitored).
    """
    CREATE INDEX IF NOT EXISTS recipients_monitored ON recipients (message)
        WHERE substr(reason, 1, 9) = 'monitor: ';
    CREATE INDEX IF NOT EXISTS events_monitored ON events (id)
        WHERE instr(detail, '"monitor": true') > 0;
    DROP INDEX IF EXISTS enrollments_domain;
    DROP INDEX IF EXISTS enrollments_at_domain;
    CREATE INDEX enrollments_domain ON enrollments (domain, campaign);
    """,
]


def legacy_store(path: Path, version: int) -> None:
    """Create ``path`` as a store of schema ``version`` written by the earlier steps."""
    with closing(sqlite3.connect(path)) as conn:
        for migration in LEGACY_MIGRATIONS[:version]:
            conn.executescript(migration)
        conn.execute(f"PRAGMA user_version = {int(version)}")
        conn.commit()
