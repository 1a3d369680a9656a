"""PostgreSQL connections: a thread-safe psycopg pool, and the bounds on every call.

libmilter's threads and the proxy's executor share one ``psycopg_pool.ConnectionPool``; a
call borrows a connection for the duration of one read or one short write transaction.
Every call is bounded: the wait for a connection by the pool's timeout (or a session's
deadline), each statement by ``statement_timeout``, a new connection by libpq's
``connect_timeout``.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import ConnStatus
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from replytrack.store import rows
from replytrack.store.errors import StoreError

log = logging.getLogger(__name__)

Conn = psycopg.Connection[DictRow]
T = TypeVar("T")


def safe_url(url: str) -> str:
    """``url`` fit for logs and ``doctor``: the password (in the URL or a parameter) left out."""
    if "://" in url:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hosts = netloc.rpartition("@")
            netloc = f"{userinfo.partition(':')[0]}@{hosts}"
        query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k != "password"])
        return urlunsplit((parts.scheme, netloc, parts.path, query, ""))
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error:
        return "(a PostgreSQL connection string that does not parse)"
    params.pop("password", None)
    return make_conninfo("", **params)


def _conninfo(url: str, connect_timeout: int) -> str:
    """libpq parameters for ``url``; what the URL says wins over our defaults."""
    try:
        given = conninfo_to_dict(url)
    except psycopg.Error as exc:
        raise StoreError(f"not a PostgreSQL URL: {safe_url(url)}: {exc}") from None
    extra: dict[str, Any] = {}
    if "connect_timeout" not in given:
        extra["connect_timeout"] = connect_timeout
    if "application_name" not in given:
        extra["application_name"] = "replytrack"
    return make_conninfo(url, **extra)


def text(value: Any) -> Any:
    """A string PostgreSQL can store: lone surrogates (undecodable header bytes) and NUL
    escaped. Deterministic, so a lookup finds what was recorded."""
    if isinstance(value, str):
        if "\x00" in value:
            value = value.replace("\x00", "\\x00")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def checked_only(column: str) -> str:
    """``column`` in a form no index serves: a condition on it is checked on the rows an
    index found by another, never used to find them. For the campaign in the lookups that
    start from a recipient: a campaign the planner's statistics do not know yet (a new one,
    until autovacuum's next ANALYZE, which on a large table waits for 10 % of it to change)
    looks empty to it, and it would start from the campaign and read all of its rows, more
    with every mail sent."""
    return f"({column} || '')"


def texts(values: Iterable[Any]) -> list[Any]:
    return [text(v) for v in values]


def storable(record: Any) -> Any:
    """``record`` with its text fields made storable (:func:`text`)."""
    return rows.storable(record, text)


def _gone(conn: Conn) -> bool:
    """Whether an idle connection is already known dead: its socket is readable (an idle
    connection is sent nothing but a server's goodbye or a notification) and reading it
    finds the connection closed."""
    pgconn = conn.pgconn
    if conn.closed or pgconn.status != ConnStatus.OK:
        return True
    poller = select.poll()
    poller.register(pgconn.socket, select.POLLIN)
    if not poller.poll(0):
        return False
    try:
        pgconn.consume_input()
    except psycopg.OperationalError:
        return True
    return pgconn.status != ConnStatus.OK


class PgConnections:
    """The connection pool of one PostgreSQL store, safe to share between threads."""

    def __init__(
        self,
        url: str,
        *,
        statement_timeout_ms: int,
        pool_timeout: float,
        connect_timeout: int,
        pool_max_size: int,
        reconnect_timeout: float | None,
        readonly: bool,
    ) -> None:
        self.url = url
        self.safe_url = safe_url(url)
        self.readonly = readonly
        self.statement_timeout_ms = int(statement_timeout_ms)
        self.pool_timeout = pool_timeout
        self.pool_max_size = pool_max_size
        # The pool retries a lost server with a growing back-off; past reconnect_timeout it
        # gives up and the next call starts again at once. As long as a call waits for a
        # connection, the gap between two tries stays shorter than that wait, so the first
        # call after the server is back gets a connection.
        self.reconnect_timeout = pool_timeout if reconnect_timeout is None else reconnect_timeout
        self._conninfo = _conninfo(url, connect_timeout)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._pool: ConnectionPool[Conn] | None = None
        self._pool_pid = 0

    def _configure(self, conn: Conn) -> None:
        # Per session, so that every statement of every call is bounded, and a transaction
        # left open by a crashed caller cannot hold row locks for long.
        conn.execute(
            "SELECT set_config('statement_timeout', %s, false),"
            " set_config('idle_in_transaction_session_timeout', %s, false),"
            " set_config('default_transaction_read_only', %s, false)",
            (
                str(self.statement_timeout_ms),
                str(max(self.statement_timeout_ms * 4, 10_000)),
                "on" if self.readonly else "off",
            ),
        )

    def _get_pool(self) -> ConnectionPool[Conn]:
        pool = self._pool
        if pool is not None and self._pool_pid == os.getpid():
            return pool
        with self._lock:
            if self._pool is None or self._pool_pid != os.getpid():
                # A forked child must not use (or close) its parent's sockets: it opens its own.
                self._pool = ConnectionPool(
                    self._conninfo,
                    connection_class=Conn,
                    kwargs={"autocommit": True, "row_factory": dict_row},
                    min_size=1,
                    max_size=max(1, self.pool_max_size),
                    configure=self._configure,
                    timeout=self.pool_timeout,
                    reconnect_timeout=self.reconnect_timeout,
                    name="replytrack-store",
                    open=False,
                )
                self._pool.open(wait=False)
                self._pool_pid = os.getpid()
            return self._pool

    def _wait(self) -> float:
        """How long a call may wait for a connection: the pool timeout, or less in a
        session whose deadline is nearer."""
        deadline = getattr(self._local, "deadline", None)
        if deadline is None:
            return self.pool_timeout
        return max(0.001, min(self.pool_timeout, deadline - time.monotonic()))

    def error(self, exc: BaseException, doing: str) -> StoreError:
        """A driver error as the StoreError callers see (no password in it)."""
        if isinstance(exc, PoolTimeout):
            return StoreError(
                f"PostgreSQL store {self.safe_url} unreachable: no connection within"
                f" {self._wait():.1f} s"
            )
        if isinstance(exc, pg_errors.QueryCanceled):
            return StoreError(f"PostgreSQL store {self.safe_url}: {doing} timed out: {exc}")
        if isinstance(exc, pg_errors.ReadOnlySqlTransaction):
            return StoreError(
                f"PostgreSQL store {self.safe_url} is read-only (a standby, or opened"
                f" read-only): {exc}"
            )
        return StoreError(f"PostgreSQL store {self.safe_url}: {doing} failed: {exc}")

    def _checkout(self, pool: ConnectionPool[Conn]) -> Conn:
        """A pooled connection, one found dead while idle (the server restarted, failed over
        or ended it: its socket then holds the goodbye) replaced before anything is sent on
        it. A poll, no round trip; a connection that died silently is noticed by _run."""
        for _ in range(self.pool_max_size):
            conn = pool.getconn(timeout=self._wait())
            if not _gone(conn):
                return conn
            log.warning("store connection lost while idle; trying a fresh one")
            pool.putconn(conn)  # the pool drops a closed connection and opens another
            pool.check()
        # Every idle one was dead: a fresh one (or a broken one, which _run then meets).
        return pool.getconn(timeout=self._wait())

    def _run(self, work: Callable[[Conn], T], *, write: bool, single: bool = False) -> T:
        """Run ``work`` on a pooled connection: a write in one transaction, a read (or a
        ``single`` write statement, which the server commits as it runs) as is.

        A connection that broke while idle in the pool (the server restarted or failed
        over) is noticed before or at its first statement; the call is then tried once
        more on a fresh connection, and the pool checks its other idle connections. Before
        COMMIT was sent nothing of a broken transaction can have been committed, so the
        retry never writes twice; a ``single`` write that broke once sent may have
        committed, so it is not tried again.
        """
        pool = self._get_pool()
        doing = "write" if write else "read"
        for attempt in (1, 2):
            try:
                conn = self._checkout(pool)
            except psycopg.Error as exc:
                raise self.error(exc, doing) from exc
            committing = write and single
            try:
                if write and not single:
                    conn.execute("BEGIN")
                    result = work(conn)
                    committing = True
                    conn.execute("COMMIT")
                    return result
                return work(conn)
            except psycopg.Error as exc:
                if conn.broken or conn.closed:
                    if attempt == 1 and not committing:
                        log.warning("store connection lost (%s); trying a fresh one", exc)
                        pool.check()
                        continue
                elif write and not single:
                    with suppress(psycopg.Error):
                        conn.execute("ROLLBACK")
                raise self.error(exc, doing) from exc
            except BaseException:
                if write and not single and not (conn.broken or conn.closed):
                    with suppress(psycopg.Error):
                        conn.execute("ROLLBACK")
                raise
            finally:
                pool.putconn(conn)
        raise AssertionError("unreachable")  # the loop returns or raises

    def read(self, work: Callable[[Conn], T]) -> T:
        """``work`` on a pooled connection, outside a transaction."""
        return self._run(work, write=False)

    def write(self, work: Callable[[Conn], T]) -> T:
        """``work`` in one transaction on a pooled connection, committed when it returns."""
        return self._run(work, write=True)

    def write_single(self, work: Callable[[Conn], T]) -> T:
        """``work`` that makes exactly one statement, atomic by itself: run without
        BEGIN and COMMIT, two round trips fewer. Only for one statement: a second one
        would commit apart from the first."""
        return self._run(work, write=True, single=True)

    def rows(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[DictRow]:
        """One read statement's rows."""
        return self.read(lambda conn: conn.execute(sql, params).fetchall())

    @contextmanager
    def direct(self, doing: str) -> Iterator[Conn]:
        """A connection outside the pool (opening checks, migrations); errors as StoreError."""
        try:
            with psycopg.connect(self._conninfo, autocommit=True, row_factory=dict_row) as conn:
                conn.execute(
                    "SELECT set_config('statement_timeout', %s, false)",
                    (str(self.statement_timeout_ms),),
                )
                yield conn
        except psycopg.Error as exc:
            raise self.error(exc, doing) from exc

    @contextmanager
    def session(self, *, deadline: float | None = None) -> Iterator[None]:
        """Bound the block's waits for a connection by ``deadline``; each call still
        borrows a pooled connection (that costs nothing here), and each statement is
        bounded by ``statement_timeout``."""
        outer = getattr(self._local, "deadline", None)
        if deadline is not None and (outer is None or deadline < outer):
            self._local.deadline = deadline
        try:
            yield
        finally:
            self._local.deadline = outer

    #: psycopg_pool's worker threads and condition waits, and libpq's callbacks, crashed the
    #: milter (a segmentation fault in about one PostgreSQL outage in three, the mail then
    #: neither flagged nor journaled) when run on libmilter's threads; on Python threads of
    #: the milter's own they never did (tests/test_e2e_multihost.py, bench/README.md).
    runs_on_foreign_threads = False

    def prepare_for_event_loop(self) -> bool:
        """False: every PostgreSQL call waits for the network, so the proxy's event loop
        runs each one in its executor's threads."""
        return False

    def close(self) -> None:
        """Close the pool's connections. A later call opens a new pool (as a SQLite store
        opens a new connection), so this is safe to call from any thread."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None and self._pool_pid == os.getpid():
            pool.close()

    def close_all(self) -> None:
        """Close every connection (at shutdown)."""
        self.close()
