"""SQLite connections: one per thread, a small pool for libmilter's threads, and the bounds
on every call (the busy timeout for lock waits, an interrupt watchdog for a session's
deadline, never-wait connections for the proxy's event loop).

Writes are short ``BEGIN IMMEDIATE`` transactions so that a writer waits for the lock up
front (bounded by the busy timeout) instead of failing halfway.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import quote

from replytrack.store.errors import StoreError, StoreWouldWait

# Idle connections kept for session() callers; more are closed when given back.
_POOL_IDLE = 32
# How often the watchdog looks for sessions past their deadline (seconds).
_WATCHDOG_TICK = 0.05
# Bytes of write-ahead log kept after a checkpoint (PRAGMA journal_size_limit).
WAL_SIZE_LIMIT = 16 * 1024 * 1024


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


def text(value: Any) -> Any:
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


def is_locked(exc: sqlite3.Error) -> bool:
    """Whether SQLite refused because another connection holds the lock."""
    message = str(exc).lower()
    return "locked" in message or "busy" in message


class SQLiteConnections:
    """The connections of one store file, safe to share between threads."""

    def __init__(self, path: str | Path, *, busy_timeout_ms: int, readonly: bool) -> None:
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

    def _connect(self) -> sqlite3.Connection:
        """A new connection, with no Python callbacks (see ``schema.key_function``)."""
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
            never_wait = getattr(self._local, "never_wait", False)
            busy_ms = 0 if never_wait else int(self.busy_timeout_ms)
            conn.execute(f"PRAGMA busy_timeout = {busy_ms}")
            if never_wait and not self.readonly:
                # A commit that crosses the threshold would checkpoint (and fsync) inline;
                # upkeep() does it in a thread instead.
                conn.execute("PRAGMA wal_autocheckpoint = 0")
            if not self.readonly:
                conn.execute("PRAGMA journal_mode = WAL")
                # WAL with synchronous=NORMAL survives a crash of the process (the promise
                # behind our 250); only a power cut can lose the last commits.
                conn.execute("PRAGMA synchronous = NORMAL")
                # While a reader holds an old snapshot the log cannot restart and grows with
                # every write; once checkpointed, it is cut back to this size, so a long
                # ops query on a small disk does not leave the disk full for good.
                conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
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
        connection instead. With a ``deadline`` (``time.monotonic()``) a statement still
        running then is interrupted (by :class:`_Watchdog`) and raises StoreError: a
        runaway query cannot hold a mail. Lock waits end with the busy timeout.
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

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A short write transaction; SQLite errors become StoreError, rolled back."""
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._raise_if_would_wait(exc)
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

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """One read statement's rows; SQLite errors become StoreError."""
        try:
            return self.conn.execute(sql, [text(p) for p in params]).fetchall()
        except sqlite3.Error as exc:
            self._raise_if_would_wait(exc)
            raise StoreError(f"store read failed: {exc}") from exc

    def _raise_if_would_wait(self, exc: sqlite3.Error) -> None:
        """StoreWouldWait for a lock met on a connection that must not wait for one."""
        if getattr(self._local, "never_wait", False) and is_locked(exc):
            raise StoreWouldWait(f"store busy: {exc}") from exc

    def _drop_if_broken(self, exc: sqlite3.Error) -> None:
        """Renew connections after an I/O or read-only error.

        A connection opened while the file could not be written holds a read-only handle
        and answers "attempt to write a readonly database" even once the file is writable
        again; only a fresh connection recovers. Busy and constraint errors leave the
        connection sound.
        """
        message = str(exc).lower()
        if isinstance(exc, sqlite3.IntegrityError) or is_locked(exc):
            return
        if "interrupted" in message:
            return  # a session's deadline passed: the connection is sound
        # Other threads may hold such a connection too: all of this store's connections
        # are renewed, each by its own thread on its next call.
        with self._lock:
            self._generation += 1
        with suppress(sqlite3.Error):
            self.close()

    # --- the proxy's event loop ------------------------------------------------------------
    #: The passive WAL checkpoint of :meth:`upkeep`, each second.
    upkeep_interval: float | None = 1.0

    def prepare_for_event_loop(self) -> bool:
        """From now on this thread's calls never wait: one that finds another writer holding
        the store raises StoreWouldWait at once having written nothing, and this thread's
        commits leave the write-ahead log to :meth:`upkeep`. Most calls need not wait, so
        the proxy runs them inline and hands only those to a thread. True."""
        self._local.never_wait = True
        if getattr(self._local, "conn", None) is not None:
            # This thread's connection was opened waiting: open it again not waiting.
            self.close()
        return True

    def upkeep(self) -> None:
        """Fold the write-ahead log into the store file (a passive checkpoint: it waits for
        nobody), since the event loop's commits leave that to a thread."""
        if self.readonly:
            return
        try:
            self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"store checkpoint failed: {exc}") from exc

    def close(self) -> None:
        """Close this thread's connection."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            self._local.conn = None
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
