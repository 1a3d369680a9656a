"""The embedded store: one SQLite file in WAL mode, accessed through sqlite-utils.

Each thread gets its own connection (SQLite connections must not be shared across threads
without serialising every call). Writes are short ``BEGIN IMMEDIATE`` transactions so that a
writer waits for the lock up front (bounded by the busy timeout) instead of failing halfway.
The schema is versioned: ``MIGRATIONS[n]`` brings a store from version n to n + 1.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import sqlite_utils

from replytrack.store import files
from replytrack.store.base import (
    ACTIVE,
    BOUNCED,
    CAMPAIGN_STATES,
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
    Store,
    StoreError,
    StoreLocked,
)

log = logging.getLogger(__name__)

# SQLite allows 32766 host parameters; stay far below so IN (...) lists are cheap.
_CHUNK = 500
# Idle connections kept for session() callers; more are closed when given back.
_POOL_IDLE = 32
# How often the watchdog looks for sessions past their deadline (seconds).
_WATCHDOG_TICK = 0.05
# The row check_writable writes and deletes again.
_PROBE_ADDRESS = "write-probe@doctor.replytrack.invalid"


class _Watchdog:
    """Interrupts the statement of a session whose deadline has passed.

    A thread of its own calls ``Connection.interrupt()`` (plain C, thread-safe). SQLite's
    Python callbacks (a progress handler, say) are not an option: they re-enter Python
    through PyGILState_Ensure, and on libmilter's threads, where pymilter keeps one Python
    thread state per milter connection and moves it between C threads, that picked up
    another connection's thread state and crashed the process (measured: a segfault
    within seconds under load).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: dict[int, tuple[sqlite3.Connection, float]] = {}
        self._next = 0
        self._thread: threading.Thread | None = None
        # Set when a session starts: the thread sleeps on it while nothing is watched.
        self._wake = threading.Event()

    def watch(self, conn: sqlite3.Connection, deadline: float) -> int:
        with self._lock:
            self._next += 1
            self._sessions[self._next] = (conn, deadline)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="replytrack-store-watchdog", daemon=True
                )
                self._thread.start()
            token = self._next
        self._wake.set()
        return token

    def unwatch(self, token: int) -> None:
        # Under the lock: once this returns, no interrupt can reach the connection, which
        # may go to another session next.
        with self._lock:
            self._sessions.pop(token, None)

    def _run(self) -> None:
        while True:
            with self._lock:
                idle = not self._sessions
                if idle:
                    self._wake.clear()
            if idle:
                self._wake.wait()  # a watch() after the clear sets it again
                continue
            time.sleep(_WATCHDOG_TICK)
            now = time.monotonic()
            with self._lock:
                late = [t for t, (_, deadline) in self._sessions.items() if deadline <= now]
                for token in late:
                    conn, _ = self._sessions.pop(token)
                    # A connection renewed during the session is closed already.
                    with suppress(sqlite3.Error):
                        conn.interrupt()


_watchdog = _Watchdog()

MIGRATIONS: list[str] = [
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
]

SCHEMA_VERSION = len(MIGRATIONS)
# Bytes of write-ahead log kept after a checkpoint (PRAGMA journal_size_limit).
_WAL_SIZE_LIMIT = 16 * 1024 * 1024

# Messages per backfill transaction: short enough that a proxy waiting for the write lock
# stays well inside its busy timeout while an old store upgrades.
_BACKFILL_BATCH = 50_000


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


def _key_function(conn: sqlite3.Connection) -> None:
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
_KEYS_OF_MESSAGES = (
    "SELECT rt_message_key(message_id) AS key, id AS message FROM messages WHERE {where}"
    " UNION ALL SELECT rt_message_key(original_message_id), id FROM messages"
    " WHERE ({where}) AND original_message_id IS NOT NULL"
)


def _row_to_enrollment(row: sqlite3.Row | dict[str, Any]) -> Enrollment:
    return Enrollment(
        campaign=row["campaign"],
        recipient=row["recipient"],
        status=row["status"],
        reason=row["reason"],
        since=row["since"],
        until=row["until"],
        updated_by=row["updated_by"],
    )


def _row_to_event(row: sqlite3.Row | dict[str, Any]) -> Event:
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


def _text(value: Any) -> Any:
    """A string SQLite can store: lone surrogates (undecodable header bytes) escaped.

    Header values that are not UTF-8 reach us as surrogate escapes, which SQLite's UTF-8
    encoding refuses; without this a mail with such a Subject could never be recorded.
    The escaping is deterministic, so a lookup finds what was recorded.
    """
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


_D = TypeVar("_D")


def _storable(record: _D) -> _D:
    """The dataclass record with every string (also in nested records) made storable."""
    changes: dict[str, Any] = {}
    for item in dataclasses.fields(record):  # type: ignore[arg-type]
        value = getattr(record, item.name)
        if isinstance(value, str):
            new = _text(value)
        elif isinstance(value, tuple):
            new = tuple(_storable(v) if dataclasses.is_dataclass(v) else _text(v) for v in value)
        else:
            continue
        if new is not value and new != value:
            changes[item.name] = new
    return dataclasses.replace(record, **changes) if changes else record  # type: ignore[type-var]


def _chunks(items: Sequence[str], size: int = _CHUNK) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _is_locked(exc: sqlite3.Error) -> bool:
    """Whether SQLite refused because another connection holds the lock."""
    text = str(exc).lower()
    return "locked" in text or "busy" in text


class SQLiteStore(Store):
    """The store in one SQLite file. Safe to share between threads."""

    def __init__(
        self,
        path: str | Path,
        *,
        busy_timeout_ms: int = 5000,
        create: bool = True,
        readonly: bool = False,
    ) -> None:
        self.path = Path(path)
        self.busy_timeout_ms = busy_timeout_ms
        self.readonly = readonly
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        # Idle connections for session(), each with the generation it was opened in.
        self._idle: list[tuple[sqlite3.Connection, int]] = []
        # Bumped when a connection broke (I/O or read-only error): every thread then opens
        # a fresh connection on its next call instead of reusing a stale one.
        self._generation = 0
        # How far the 3 -> 4 backfill of message_keys got (message ids up to this).
        self._backfilled = 0
        # Only an explicit create (``replytrack init``, ``migrate``) makes or upgrades a
        # store; every other opener is refused a missing, empty or foreign file. The
        # default here (create) serves tests and tools that build a store directly; the
        # product opens stores through open_store, whose default is not to create.
        create = create and not readonly
        created = create and files.create_store_file(self.path)
        if not created:
            state = files.inspect_store_file(self.path, readonly=readonly)
            files.check_usable(self.path, state, schema_version=SCHEMA_VERSION, create=create)
        if create:
            try:
                self.migrate()
            except BaseException:
                if created:
                    # An empty file left behind would be refused as a truncated store.
                    self.close_all()
                    for suffix in ("", "-wal", "-shm"):
                        with suppress(OSError):
                            Path(f"{self.path}{suffix}").unlink()
                raise

    # --- connections -----------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        """A new connection, with no Python callbacks (see :func:`_key_function`)."""
        try:
            if self.readonly:
                conn = sqlite3.connect(
                    # Quoted: a "#", "?" or "%" in the path would otherwise end or alter it.
                    f"file:{quote(str(self.path))}?mode=ro",
                    uri=True,
                    isolation_level=None,
                    timeout=0,
                    check_same_thread=False,
                )
            else:
                # Each connection is used by one thread only (thread-local); the check is
                # off so that close_all can close the connections of finished threads.
                conn = sqlite3.connect(
                    str(self.path), isolation_level=None, timeout=0, check_same_thread=False
                )
            conn.row_factory = sqlite3.Row
            nonblocking = getattr(self._local, "nonblocking", False)
            busy_ms = 0 if nonblocking else int(self.busy_timeout_ms)
            conn.execute(f"PRAGMA busy_timeout = {busy_ms}")
            if nonblocking and not self.readonly:
                # A commit that crosses the threshold would checkpoint (and fsync) inline.
                conn.execute("PRAGMA wal_autocheckpoint = 0")
            if not self.readonly:
                conn.execute("PRAGMA journal_mode = WAL")
                # WAL with synchronous=NORMAL survives a crash of the process (the promise
                # behind our 250); only a power cut can lose the last commits.
                conn.execute("PRAGMA synchronous = NORMAL")
                # While a reader holds an old snapshot the log cannot restart and grows with
                # every write; once checkpointed, it is cut back to this size, so a long
                # ops query on a small disk does not leave the disk full for good.
                conn.execute(f"PRAGMA journal_size_limit = {_WAL_SIZE_LIMIT}")
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {self.path}: {exc}") from exc
        return conn

    @property
    def conn(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "generation", 0) != self._generation:
            with suppress(sqlite3.Error):
                self.close()
            conn = None
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            self._local.generation = self._generation
            with self._lock:
                self._connections.append(conn)
        return conn

    @contextmanager
    def session(self, *, deadline: float | None = None) -> Iterator[None]:
        """Run the block's calls on a pooled connection, given back at the end.

        libmilter calls Python from its own C threads, and pymilter gives each milter
        connection a Python thread state of its own: a per-thread store connection would be
        opened for every SMTP connection and never closed. The block borrows an idle
        connection instead. With a ``deadline`` (``time.monotonic()``)
        a statement still running then is interrupted (by :class:`_Watchdog`) and raises
        StoreError: a runaway query cannot hold a mail. Lock waits end with the busy timeout.
        """
        if getattr(self._local, "in_session", False):
            yield  # nested: the outer session's connection and deadline apply
            return
        own = getattr(self._local, "conn", None)
        if own is not None:
            # This thread keeps its own connection (not a libmilter thread): use it.
            conn, generation = own, getattr(self._local, "generation", 0)
        else:
            conn, generation = self._borrow()
            self._local.conn = conn
            self._local.generation = generation
        self._local.in_session = True
        token = _watchdog.watch(conn, deadline) if deadline is not None else None
        try:
            yield
        finally:
            if token is not None:
                _watchdog.unwatch(token)
            self._local.in_session = False
            # A broken connection may have been replaced during the block: the one in use
            # now is what goes back (or stays with its thread).
            conn = getattr(self._local, "conn", None)
            generation = getattr(self._local, "generation", 0)
            if own is None:
                self._local.conn = None
                self._local.db = None
                if conn is not None:
                    self._give_back(conn, generation)

    def _borrow(self) -> tuple[sqlite3.Connection, int]:
        stale: list[sqlite3.Connection] = []
        found: tuple[sqlite3.Connection, int] | None = None
        with self._lock:
            while self._idle:
                conn, generation = self._idle.pop()
                if generation == self._generation:
                    found = (conn, generation)
                    break
                stale.append(conn)
                self._connections.remove(conn)
            current = self._generation
        for conn in stale:
            with suppress(sqlite3.Error):
                conn.close()
        if found is not None:
            return found
        conn = self._connect()
        with self._lock:
            self._connections.append(conn)
        return conn, current

    def _give_back(self, conn: sqlite3.Connection, generation: int) -> None:
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            generation = -1  # unusable: close it below
        with self._lock:
            if generation == self._generation and len(self._idle) < _POOL_IDLE:
                self._idle.append((conn, generation))
                return
            if conn in self._connections:
                self._connections.remove(conn)
        with suppress(sqlite3.Error):
            conn.close()

    @property
    def db(self) -> sqlite_utils.Database:
        """This thread's connection wrapped by sqlite-utils (for listing and ad-hoc queries)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite_utils.Database(self.conn)
            self._local.db = db
        return db

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A short write transaction; SQLite errors become StoreError, rolled back."""
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._raise_if_locked(exc)
            self._drop_if_broken(exc)
            raise StoreError(f"store busy or not writable: {exc}") from exc
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                self._drop_if_broken(exc)
                raise StoreError(f"store write failed: {exc}") from exc
            raise

    def _raise_if_locked(self, exc: sqlite3.Error) -> None:
        """StoreLocked for a lock met on a connection that must not wait for one."""
        if getattr(self._local, "nonblocking", False) and _is_locked(exc):
            raise StoreLocked(f"store busy: {exc}") from exc

    def nonblocking(self) -> None:
        self._local.nonblocking = True
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            # This thread's connection was opened waiting: open it again not waiting.
            self.close()

    def checkpoint(self) -> None:
        if self.readonly:
            return
        try:
            self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"store checkpoint failed: {exc}") from exc

    def _drop_if_broken(self, exc: sqlite3.Error) -> None:
        """Renew connections after an I/O or read-only error.

        A connection opened while the file could not be written holds a read-only handle
        and answers "attempt to write a readonly database" even once the file is writable
        again; only a fresh connection recovers. Busy and constraint errors leave the
        connection sound.
        """
        text = str(exc).lower()
        if isinstance(exc, sqlite3.IntegrityError) or _is_locked(exc):
            return
        if "interrupted" in text:
            return  # a session's deadline passed: the connection is sound
        # Other threads may hold such a connection too: all of this store's connections
        # are renewed, each by its own thread on its next call.
        with self._lock:
            self._generation += 1
        with suppress(sqlite3.Error):
            self.close()

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        try:
            return self.conn.execute(sql, [_text(p) for p in params]).fetchall()
        except sqlite3.Error as exc:
            self._raise_if_locked(exc)
            raise StoreError(f"store read failed: {exc}") from exc

    def schema_version(self) -> int:
        """The schema version recorded in the file."""
        return int(self._query("PRAGMA user_version")[0][0])

    def migrate(self) -> None:
        """Bring the schema to ``SCHEMA_VERSION``; each step is its own transaction."""
        if self.readonly:
            if self.schema_version() != SCHEMA_VERSION:
                raise StoreError(f"store {self.path} has schema {self.schema_version()}")
            return
        current = self.schema_version()
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"store {self.path} has schema {current}, newer than this replytrack"
                f" ({SCHEMA_VERSION}); upgrade replytrack"
            )
        for version in range(current, SCHEMA_VERSION):
            if version == 3:
                self._backfill_message_keys()
            with self.write() as conn:
                # Another process may have migrated while we waited for the lock.
                if int(conn.execute("PRAGMA user_version").fetchone()[0]) != version:
                    continue
                for statement in MIGRATIONS[version].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                if version == 3:
                    # Mails recorded (by an older replytrack) during the batches.
                    self._add_message_keys(conn, self._backfilled)
                conn.execute(f"PRAGMA user_version = {version + 1}")
            log.info("store %s migrated to schema %d", self.path, version + 1)

    def _add_message_keys(self, conn: sqlite3.Connection, after: int, upto: int = -1) -> int:
        """Add the keys of messages with ``after < id <= upto`` (no upper bound when -1)."""
        where = f"id > {int(after)}" + (f" AND id <= {int(upto)}" if upto >= 0 else "")
        _key_function(conn)
        cur = conn.execute(
            "INSERT OR IGNORE INTO message_keys (key, message) "
            + _KEYS_OF_MESSAGES.format(where=where)
        )
        return int(cur.rowcount)

    def _backfill_message_keys(self) -> None:
        """Create message_keys and fill it from recorded mails, one short transaction a batch.

        The version stays 3 until the last batch, which runs in the same transaction as the
        bump, so no reader ever sees schema 4 with keys missing. A run cut short is simply
        redone (INSERT OR IGNORE).
        """
        self._backfilled = 0
        with self.write() as conn:
            if int(conn.execute("PRAGMA user_version").fetchone()[0]) != 3:
                return
            conn.execute(MIGRATIONS[3])
            top = int(conn.execute("SELECT coalesce(max(id), 0) FROM messages").fetchone()[0])
        started = time.monotonic()
        while self._backfilled < top:
            upto = self._backfilled + _BACKFILL_BATCH
            with self.write() as conn:
                self._add_message_keys(conn, self._backfilled, upto)
            self._backfilled = upto
        if top:
            log.info(
                "store %s: message keys of %d mails added in %.1f s",
                self.path,
                top,
                time.monotonic() - started,
            )

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            self._local.conn = None
            self._local.db = None
            with self._lock:
                if conn in self._connections:
                    self._connections.remove(conn)
            conn.close()

    def close_all(self) -> None:
        """Close every connection (at shutdown, after worker threads stopped)."""
        with self._lock:
            connections, self._connections = self._connections, []
            self._idle = []
        for conn in connections:
            with suppress(sqlite3.Error):
                conn.close()
        self._local = threading.local()

    # --- outbound -------------------------------------------------------------------------
    def blocked_enrollments(self, campaign: str, addresses: Iterable[str]) -> dict[str, Enrollment]:
        now = time.time()
        wanted = sorted(set(addresses))
        stop = self._query(
            "SELECT reason, updated_at, updated_by FROM campaigns WHERE campaign = ?"
            f" AND status = '{STOPPED}'",
            [campaign],
        )
        if stop:
            # The campaign stop outranks each recipient's own state: nobody gets its mail.
            row = stop[0]
            reason = CAMPAIGN_STOPPED + (f": {row['reason']}" if row["reason"] else "")
            return {
                address: Enrollment(
                    campaign=campaign,
                    recipient=address,
                    status=STOPPED,
                    reason=reason,
                    since=row["updated_at"] or now,
                    updated_by=row["updated_by"],
                )
                for address in wanted
            }
        blocked: dict[str, Enrollment] = {}
        for chunk in _chunks(wanted):
            marks = ",".join("?" * len(chunk))
            rows = self._query(
                f"SELECT * FROM enrollments WHERE campaign = ? AND recipient IN ({marks})"
                " AND status != 'active'",
                [campaign, *chunk],
            )
            for row in rows:
                enrollment = _row_to_enrollment(row)
                if enrollment.blocks_sending(now):
                    blocked[enrollment.recipient] = enrollment
        return blocked

    def record_outbound(self, record: OutboundRecord) -> int:
        record = _storable(record)
        with self.write() as conn:
            cur = conn.execute(
                "INSERT INTO messages (message_id, original_message_id, campaign, step, sender,"
                " from_address, subject, created_at, status, size, upstream_reply)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    record.message_id,
                    record.original_message_id,
                    record.campaign,
                    record.step,
                    record.sender,
                    record.from_address,
                    record.subject,
                    record.created_at,
                    record.status,
                    record.size,
                    record.upstream_reply,
                ),
            )
            pk = int(cur.lastrowid or 0)
            conn.executemany(
                "INSERT OR IGNORE INTO message_keys (key, message) VALUES (?, ?)",
                [
                    (message_key(mid), pk)
                    for mid in (record.message_id, record.original_message_id)
                    if mid is not None
                ],
            )
            conn.executemany(
                "INSERT OR IGNORE INTO recipients (message, address, role, envelope, status,"
                " reason) VALUES (?,?,?,?,?,?)",
                [
                    (pk, r.address, r.role, int(r.envelope), r.status, r.reason)
                    for r in record.recipients
                ],
            )
            if record.campaign is not None:
                conn.execute(
                    "INSERT OR IGNORE INTO campaigns (campaign, created_at) VALUES (?, ?)",
                    (record.campaign, record.created_at),
                )
                # Also for a mail still on its way upstream: once DATA is sent, nothing that
                # fails later (the store, the disk, the proxy itself) may leave a mail that
                # went out outside matching and suppression.
                self._enroll(conn, record.campaign, record.created_at, record.recipients)
                if record.status != RELAYING:
                    self._record_suppressions(conn, record.message_id, record.recipients)
        return pk

    def _enroll(
        self,
        conn: sqlite3.Connection,
        campaign: str,
        created_at: float,
        recipients: Sequence[OutboundRecipient],
    ) -> None:
        """The first campaign mail to an address enrolls it; later steps find it."""
        conn.executemany(
            "INSERT OR IGNORE INTO enrollments (campaign, recipient, domain, status,"
            " reason, since, created_at) VALUES (?,?,?,'active',NULL,?,?)",
            [
                (campaign, r.address, r.address.rpartition("@")[2], created_at, created_at)
                for r in recipients
                if r.status == "sent"
            ],
        )

    def _record_suppressions(
        self, conn: sqlite3.Connection, message_id: str, recipients: Sequence[OutboundRecipient]
    ) -> None:
        """Events for the recipients a campaign mail was not sent to. Recorded once the mail
        is settled (relayed, suppressed or unconfirmed), so that an attempt the upstream
        refused, which the client sends again, leaves none behind."""
        row = conn.execute(
            "SELECT campaign, sender, step, created_at FROM messages WHERE message_id = ?",
            (message_id,),
        ).fetchone()
        for r in recipients:
            if r.status != "suppressed":
                continue
            self._insert_event(
                conn,
                Event(
                    kind="suppressed",
                    created_at=row["created_at"],
                    campaign=row["campaign"],
                    message_id=message_id,
                    sender=row["sender"],
                    recipient=r.address,
                    detail={"reason": r.reason, "step": row["step"]},
                ),
                dedupe_key=None,
                notify=True,
            )

    def set_message_status(self, pk: int, status: str, upstream_reply: str | None) -> None:
        with self.write() as conn:
            row = conn.execute(
                "SELECT status, campaign, message_id, created_at FROM messages WHERE id = ?",
                (pk,),
            ).fetchone()
            conn.execute(
                "UPDATE messages SET status = ?, upstream_reply = ? WHERE id = ?",
                (status, upstream_reply, pk),
            )
            if row is not None and row["status"] == RELAYING and status == RELAYED:
                self._record_suppressions(conn, row["message_id"], self._recipients_in(conn, pk))
            if (
                row is not None
                and row["status"] in (RELAYING, UNCONFIRMED)
                and status == FAILED
                and row["campaign"] is not None
            ):
                # The upstream refused the mail: the enrollments it made stand for nothing
                # that went out. Only those still active and made by this mail (same time)
                # go, and only where no other mail of the campaign that may have gone out
                # reached the recipient.
                conn.execute(
                    "DELETE FROM enrollments WHERE campaign = ? AND status = 'active'"
                    " AND created_at = ? AND recipient IN"
                    " (SELECT address FROM recipients WHERE message = ? AND status = 'sent')"
                    " AND NOT EXISTS (SELECT 1 FROM recipients r JOIN messages m"
                    "   ON m.id = r.message WHERE m.campaign = enrollments.campaign"
                    "   AND r.address = enrollments.recipient AND r.status = 'sent'"
                    "   AND m.id != ? AND m.status != 'failed')",
                    (row["campaign"], row["created_at"], pk, pk),
                )

    def reconcile_relaying(self, older_than: float) -> int:
        with self.write() as conn:
            # The literal 'relaying' lets SQLite use the partial index messages_relaying.
            stuck = conn.execute(
                "SELECT id, message_id FROM messages WHERE status = 'relaying' AND created_at < ?",
                (older_than,),
            ).fetchall()
            for row in stuck:
                conn.execute(
                    "UPDATE messages SET status = ? WHERE id = ?", (UNCONFIRMED, row["id"])
                )
                self._record_suppressions(
                    conn, row["message_id"], self._recipients_in(conn, row["id"])
                )
            return len(stuck)

    @staticmethod
    def _recipients_in(conn: sqlite3.Connection, pk: int) -> list[OutboundRecipient]:
        return [
            OutboundRecipient(
                address=r["address"],
                role=r["role"],
                envelope=bool(r["envelope"]),
                status=r["status"],
                reason=r["reason"],
            )
            for r in conn.execute("SELECT * FROM recipients WHERE message = ?", (pk,))
        ]

    def count_relaying(self, older_than: float) -> int:
        rows = self._query(
            "SELECT count(*) AS n FROM messages WHERE status = 'relaying' AND created_at < ?",
            (older_than,),
        )
        return int(rows[0]["n"])

    # --- inbound --------------------------------------------------------------------------
    def _recipients_for(self, pks: Sequence[int]) -> dict[int, list[OutboundRecipient]]:
        found: dict[int, list[OutboundRecipient]] = {pk: [] for pk in pks}
        for start in range(0, len(pks), _CHUNK):
            chunk = pks[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            for row in self._query(
                f"SELECT * FROM recipients WHERE message IN ({marks})"
                " ORDER BY message, role DESC, address",
                chunk,
            ):
                found[row["message"]].append(
                    OutboundRecipient(
                        address=row["address"],
                        role=row["role"],
                        envelope=bool(row["envelope"]),
                        status=row["status"],
                        reason=row["reason"],
                    )
                )
        return found

    def _messages_from_rows(self, rows: Sequence[sqlite3.Row]) -> list[SentMessage]:
        recipients = self._recipients_for([row["id"] for row in rows])
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
                recipients=tuple(recipients[row["id"]]),
            )
            for row in rows
        ]

    def find_sent(self, message_ids: Sequence[str]) -> list[SentMessage]:
        wanted = {_text(m) for m in message_ids}
        keys = sorted({message_key(m) for m in wanted})
        rows: dict[int, sqlite3.Row] = {}
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            # One descent of message_keys per ID; the message rows are read for hits only.
            for row in self._query(
                "SELECT * FROM messages WHERE id IN"
                f" (SELECT message FROM message_keys WHERE key IN ({marks}))",
                chunk,
            ):
                # Two IDs can share a key: only rows that carry a wanted ID match.
                if row["message_id"] in wanted or row["original_message_id"] in wanted:
                    rows[row["id"]] = row
        ordered = sorted(rows.values(), key=lambda r: r["created_at"], reverse=True)
        return self._messages_from_rows(ordered)

    def enrollments_of(self, address: str) -> list[Enrollment]:
        return self.enrollments(recipient=address)

    def enrollments(
        self,
        *,
        campaign: str | None = None,
        recipient: str | None = None,
        domain: str | None = None,
        status: str | Sequence[str] | None = None,
        limit: int | None = None,
    ) -> list[Enrollment]:
        where: list[str] = []
        params: list[object] = []
        for column, value in (("campaign", campaign), ("recipient", recipient), ("domain", domain)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if isinstance(status, str):
            where.append("status = ?")
            params.append(status)
        elif status is not None:
            where.append(f"status IN ({','.join('?' * len(status))})")
            params.extend(status)
        sql = "SELECT * FROM enrollments"
        if where:
            sql += " WHERE " + " AND ".join(where)
        if recipient is not None:
            # One person's enrollments are few: sorting them here skips SQLite's temporary
            # sort b-tree, which cost 23 of the 29 us of the milter's per-mail lookup of a
            # sender who is enrolled nowhere.
            found = sorted(
                (_row_to_enrollment(row) for row in self._query(sql, params)),
                key=lambda e: (e.campaign, e.recipient),
            )
            return found if limit is None else found[: max(0, int(limit))]
        sql += " ORDER BY campaign, recipient"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [_row_to_enrollment(row) for row in self._query(sql, params)]

    def last_message_to(self, address: str, campaign: str | None = None) -> SentMessage | None:
        sql = "SELECT m.* FROM recipients r JOIN messages m ON m.id = r.message WHERE r.address = ?"
        params: list[Any] = [address]
        if campaign is not None:
            sql += " AND m.campaign = ?"
            params.append(campaign)
        sql += " ORDER BY m.created_at DESC LIMIT 1"
        rows = self._query(sql, params)
        return self._messages_from_rows(rows)[0] if rows else None

    def _insert_event(
        self,
        conn: sqlite3.Connection,
        event: Event,
        *,
        dedupe_key: str | None,
        notify: bool,
    ) -> int | None:
        event = _storable(event)
        cur = conn.execute(
            # Only a repeated dedupe key is skipped; OR IGNORE would also drop, silently,
            # an event that breaks a NOT NULL rule.
            "INSERT INTO events (kind, created_at, campaign, message_id,"
            " inbound_message_id, sender, recipient, relation, evidence, detail, queue_id,"
            " actor, dedupe_key) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT (dedupe_key) DO NOTHING",
            (
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
                _text(dedupe_key),
            ),
        )
        if cur.rowcount == 0:
            return None
        event_id = int(cur.lastrowid or 0)
        if notify:
            conn.execute(
                "INSERT INTO outbox (event, created_at, next_attempt_at) VALUES (?, ?, ?)",
                (event_id, event.created_at, event.created_at),
            )
        return event_id

    def record_event(
        self,
        event: Event,
        *,
        dedupe_key: str | None = None,
        set_status: Sequence[tuple[str, str, str, str | None, float | None]] = (),
        notify: bool = True,
        campaign_status: str | None = None,
    ) -> int | None:
        if campaign_status is not None and (
            campaign_status not in CAMPAIGN_STATES or event.campaign is None
        ):
            raise ValueError(f"campaign status {campaign_status!r} needs a campaign event")
        with self.write() as conn:
            event_id = self._insert_event(conn, event, dedupe_key=dedupe_key, notify=notify)
            if event_id is None:
                return None
            if campaign_status is not None:
                reason = event.detail.get("reason")
                conn.execute(
                    "INSERT INTO campaigns (campaign, created_at, status, reason, updated_at,"
                    " updated_by) VALUES (?,?,?,?,?,?) ON CONFLICT (campaign) DO UPDATE SET"
                    " status = excluded.status, reason = excluded.reason,"
                    " updated_at = excluded.updated_at, updated_by = excluded.updated_by",
                    (
                        _text(event.campaign),
                        event.created_at,
                        campaign_status,
                        _text(reason) if campaign_status == STOPPED else None,
                        event.created_at,
                        _text(event.actor or event.kind),
                    ),
                )
            for change in set_status:
                campaign, recipient, status, reason, until = (_text(v) for v in change)
                conn.execute(
                    "INSERT INTO enrollments (campaign, recipient, domain, status, reason, since,"
                    " until, updated_by, created_at) VALUES (?,?,?,?,?,?,?,?,?)"
                    " ON CONFLICT (campaign, recipient) DO UPDATE SET status = excluded.status,"
                    " reason = excluded.reason, since = excluded.since, until = excluded.until,"
                    " updated_by = excluded.updated_by",
                    (
                        campaign,
                        recipient,
                        recipient.rpartition("@")[2],
                        status,
                        reason,
                        event.created_at,
                        until,
                        event.actor or event.kind,
                        event.created_at,
                    ),
                )
        return event_id

    def remember_ooo(self, address: str, until: float) -> None:
        with self.write() as conn:
            conn.execute(
                "INSERT INTO ooo (address, until, updated_at) VALUES (?,?,?)"
                " ON CONFLICT (address) DO UPDATE SET until = excluded.until,"
                " updated_at = excluded.updated_at",
                (address, until, time.time()),
            )

    def ooo_until(self, address: str) -> float | None:
        rows = self._query("SELECT until FROM ooo WHERE address = ?", [address])
        return float(rows[0]["until"]) if rows else None

    def reactivate_due(self, now: float) -> int:
        with self.write() as conn:
            cur = conn.execute(
                "UPDATE enrollments SET status = 'active', reason = 'pause ended', since = ?,"
                " until = NULL, updated_by = 'replytrack' WHERE status = 'paused'"
                " AND until IS NOT NULL AND until <= ?",
                (now, now),
            )
            return int(cur.rowcount)

    # --- listing ---------------------------------------------------------------------------
    def messages(
        self,
        *,
        campaign: str | None = None,
        since: float | None = None,
        limit: int | None = None,
        status: str | None = None,
    ) -> list[SentMessage]:
        where: list[str] = []
        params: list[object] = []
        if campaign is not None:
            where.append("campaign = ?")
            params.append(campaign)
        if status is not None:
            where.append("status = ?")
            params.append(status)
        if since is not None:
            where.append("created_at >= ?")
            params.append(since)
        sql = "SELECT * FROM messages"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return self._messages_from_rows(self._query(sql, params))

    def events(
        self,
        *,
        kind: str | None = None,
        campaign: str | None = None,
        since: float | None = None,
        limit: int | None = None,
    ) -> list[Event]:
        where: list[str] = []
        params: list[object] = []
        for column, value in (("kind", kind), ("campaign", campaign)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if since is not None:
            where.append("created_at >= ?")
            params.append(since)
        sql = "SELECT * FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [_row_to_event(row) for row in self._query(sql, params)]

    # --- notify outbox -----------------------------------------------------------------------
    def claim_outbox(
        self, owner: str, *, now: float, lease_seconds: float, limit: int = 1
    ) -> list[OutboxItem]:
        with self.write() as conn:
            # The lease is taken inside the IMMEDIATE transaction, so two senders racing for
            # the same row are serialised by SQLite's write lock: the second sees the lease.
            rows = conn.execute(
                "SELECT o.id AS outbox_id, o.attempts, o.created_at AS queued_at, e.*"
                " FROM outbox o JOIN events e ON e.id = o.event"
                " WHERE o.delivered_at IS NULL AND o.dead_at IS NULL AND o.next_attempt_at <= ?"
                " AND (o.lease_until IS NULL OR o.lease_until <= ?)"
                " ORDER BY o.next_attempt_at, o.id LIMIT ?",
                (now, now, int(limit)),
            ).fetchall()
            items = []
            for row in rows:
                conn.execute(
                    "UPDATE outbox SET lease_owner = ?, lease_until = ? WHERE id = ?",
                    (owner, now + lease_seconds, row["outbox_id"]),
                )
                urls = conn.execute(
                    "SELECT url FROM outbox_deliveries WHERE outbox = ?", (row["outbox_id"],)
                ).fetchall()
                items.append(
                    OutboxItem(
                        id=row["outbox_id"],
                        event=_row_to_event(row),
                        attempts=row["attempts"],
                        created_at=row["queued_at"],
                        delivered_urls=frozenset(u["url"] for u in urls),
                    )
                )
        return items

    def mark_outbox_url_delivered(self, outbox_id: int, url: str, now: float) -> None:
        with self.write() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO outbox_deliveries (outbox, url, delivered_at)"
                " VALUES (?, ?, ?)",
                (outbox_id, url, now),
            )

    def finish_outbox_attempt(
        self,
        outbox_id: int,
        owner: str,
        *,
        now: float,
        delivered: bool,
        next_attempt_at: float | None = None,
        error: str | None = None,
        dead: bool = False,
    ) -> None:
        with self.write() as conn:
            conn.execute(
                "UPDATE outbox SET attempts = attempts + 1, lease_owner = NULL,"
                " lease_until = NULL, last_error = ?,"
                " delivered_at = CASE WHEN ? THEN ? ELSE delivered_at END,"
                " dead_at = CASE WHEN ? THEN ? ELSE dead_at END,"
                " next_attempt_at = coalesce(?, next_attempt_at)"
                " WHERE id = ? AND (lease_owner = ? OR lease_owner IS NULL)",
                (
                    error,
                    int(delivered),
                    now,
                    int(dead),
                    now,
                    next_attempt_at,
                    outbox_id,
                    owner,
                ),
            )

    def outbox_counts(self, now: float | None = None) -> dict[str, int]:
        now = time.time() if now is None else now
        row = self._query(
            "SELECT"
            " count(*) FILTER (WHERE delivered_at IS NULL AND dead_at IS NULL) AS pending,"
            " count(*) FILTER (WHERE delivered_at IS NULL AND dead_at IS NULL"
            "   AND next_attempt_at <= ?) AS due,"
            " count(*) FILTER (WHERE dead_at IS NOT NULL) AS dead,"
            " count(*) FILTER (WHERE delivered_at IS NOT NULL) AS delivered"
            " FROM outbox",
            [now],
        )[0]
        return {key: int(row[key] or 0) for key in ("pending", "due", "dead", "delivered")}

    def retry_dead_outbox(self, now: float) -> int:
        """Give every dead outbox row a fresh set of attempts, due now; returns how many."""
        with self.write() as conn:
            cur = conn.execute(
                "UPDATE outbox SET attempts = 0, dead_at = NULL, next_attempt_at = ?,"
                " last_error = NULL WHERE dead_at IS NOT NULL AND delivered_at IS NULL",
                (now,),
            )
            return int(cur.rowcount)

    # --- maintenance ---------------------------------------------------------------------
    def check_writable(self) -> None:
        # A probe row, written and deleted, each step committed: in WAL mode a rolled-back
        # write never reaches the file, so only a commit shows that the store (and its -wal)
        # can really be written. An address under .invalid never matches real mail.
        try:
            with self.write() as conn:
                conn.execute(
                    "INSERT OR REPLACE INTO ooo (address, until, updated_at) VALUES (?, 0, ?)",
                    (_PROBE_ADDRESS, time.time()),
                )
            with self.write() as conn:
                conn.execute("DELETE FROM ooo WHERE address = ?", (_PROBE_ADDRESS,))
        except StoreError as exc:
            detail = exc.__cause__ or exc
            raise StoreError(f"store {self.path} is not writable: {detail}") from exc

    def prune(self, before: float, *, dry_run: bool = False) -> dict[str, int]:
        pending = "SELECT event FROM outbox WHERE delivered_at IS NULL AND dead_at IS NULL"
        targets = {
            "messages": ("messages", f"created_at < {before!r}"),
            "events": ("events", f"created_at < {before!r} AND id NOT IN ({pending})"),
            "outbox": (
                "outbox",
                f"created_at < {before!r} AND (delivered_at IS NOT NULL OR dead_at IS NOT NULL)",
            ),
        }
        counts: dict[str, int] = {}
        with self.write() as conn:
            if not dry_run:
                # The lookup keys of the mails about to go (found by key, not by a scan).
                _key_function(conn)
                conn.execute(
                    "DELETE FROM message_keys WHERE (key, message) IN ("
                    + _KEYS_OF_MESSAGES.format(where=targets["messages"][1])
                    + ")"
                )
            # Outbox rows first: deleting their events would cascade and hide the count.
            for name in ("outbox", "events", "messages"):
                table, where = targets[name]
                counts[name] = int(
                    conn.execute(f"SELECT count(*) FROM {table} WHERE {where}").fetchone()[0]
                )
                if not dry_run:
                    conn.execute(f"DELETE FROM {table} WHERE {where}")
        return counts

    def campaign_stats(self, campaign: str | None = None) -> list[CampaignStats]:
        params: list[Any] = []
        where = ""
        if campaign is not None:
            where = "WHERE c.campaign = ?"
            params.append(campaign)
        sql = f"""
            SELECT c.campaign, c.status, c.reason,
              (SELECT count(*) FROM messages m WHERE m.campaign = c.campaign
                 AND m.status IN ('relayed', 'unconfirmed')) AS sent,
              (SELECT min(created_at) FROM messages m WHERE m.campaign = c.campaign) AS first_sent,
              (SELECT max(created_at) FROM messages m WHERE m.campaign = c.campaign) AS last_sent,
              (SELECT count(*) FROM enrollments e WHERE e.campaign = c.campaign) AS recipients,
              (SELECT count(*) FROM enrollments e WHERE e.campaign = c.campaign
                 AND e.status = '{STOPPED}') AS stopped,
              (SELECT count(*) FROM enrollments e WHERE e.campaign = c.campaign
                 AND e.status = '{BOUNCED}') AS bounced,
              (SELECT count(*) FROM enrollments e WHERE e.campaign = c.campaign
                 AND e.status = '{PAUSED}') AS paused,
              (SELECT count(*) FROM enrollments e WHERE e.campaign = c.campaign
                 AND e.status = '{ACTIVE}') AS active,
              (SELECT count(DISTINCT ev.sender) FROM events ev WHERE ev.campaign = c.campaign
                 AND ev.kind = 'reply') AS replied,
              (SELECT count(*) FROM events ev WHERE ev.campaign = c.campaign
                 AND ev.kind = 'suppressed') AS suppressed
            FROM campaigns c {where} ORDER BY c.campaign
        """
        return [
            CampaignStats(
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
            for row in self._query(sql, params)
        ]
