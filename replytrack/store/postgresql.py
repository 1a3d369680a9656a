"""The multi-host store: one PostgreSQL database shared by every proxy, milter and CLI.

psycopg 3 with a ``psycopg_pool.ConnectionPool``: the pool is thread-safe, so libmilter's
threads and the proxy's executor share it; a call borrows a connection for the duration of
one read or one short write transaction. Every call is bounded: the wait for a connection by
the pool's timeout (or a session's deadline), each statement by ``statement_timeout``, a new
connection by libpq's ``connect_timeout``. psycopg prepares a statement on a connection once
it has run a few times, so the hot statements are written with ``= ANY(%s)`` instead of
IN-lists whose text changes with their length.

Many hosts write at once here, so the rules SQLite gets from its single write lock are
spelled out: outbox rows are leased with ``FOR UPDATE SKIP LOCKED``, events carry a unique
dedupe key (``ON CONFLICT DO NOTHING``), enrollments are upserted with ``ON CONFLICT``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

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
from replytrack.store.pg_schema import MIGRATION_LOCK, MIGRATIONS, SCHEMA_VERSION, VERSION_TABLE

log = logging.getLogger(__name__)

_Conn = psycopg.Connection[DictRow]
T = TypeVar("T")

# How long a migration waits for another host's migration to finish (ms).
_MIGRATE_LOCK_WAIT_MS = 60_000
# The row check_writable writes and deletes again (.invalid never matches real mail).
_PROBE_ADDRESS = "write-probe@doctor.replytrack.invalid"


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


def _text(value: Any) -> Any:
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


def _texts(values: Iterable[Any]) -> list[Any]:
    return [_text(v) for v in values]


def _row_to_enrollment(row: DictRow) -> Enrollment:
    return Enrollment(
        campaign=row["campaign"],
        recipient=row["recipient"],
        status=row["status"],
        reason=row["reason"],
        since=row["since"],
        until=row["until"],
        updated_by=row["updated_by"],
    )


def _row_to_event(row: DictRow) -> Event:
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


def _domain(address: str) -> str:
    return address.rpartition("@")[2]


class PostgreSQLStore(Store):
    """The store in a PostgreSQL database. Safe to share between threads."""

    def __init__(
        self,
        url: str,
        *,
        statement_timeout_ms: int = 5000,
        pool_timeout: float = 5.0,
        connect_timeout: int = 5,
        pool_max_size: int = 10,
        reconnect_timeout: float | None = None,
        create: bool = True,
        readonly: bool = False,
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
        self._pool: ConnectionPool[_Conn] | None = None
        self._pool_pid = 0
        # Only an explicit create (``replytrack init``, ``migrate``) makes or upgrades the
        # schema; every other opener needs this version's schema as it is. Both use a
        # connection of their own, whose failure says why (the pool only says "timeout").
        if create and not readonly:
            self.migrate()
        else:
            with self._direct("open") as conn:
                self._check_version(self._version_of(conn))

    # --- connections -----------------------------------------------------------------------
    def _configure(self, conn: _Conn) -> None:
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

    def _get_pool(self) -> ConnectionPool[_Conn]:
        pool = self._pool
        if pool is not None and self._pool_pid == os.getpid():
            return pool
        with self._lock:
            if self._pool is None or self._pool_pid != os.getpid():
                # A forked child must not use (or close) its parent's sockets: it opens its own.
                self._pool = ConnectionPool(
                    self._conninfo,
                    connection_class=_Conn,
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

    def _error(self, exc: BaseException, doing: str) -> StoreError:
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

    def _run(self, work: Callable[[_Conn], T], *, write: bool) -> T:
        """Run ``work`` on a pooled connection: a write in one transaction, a read as is.

        A connection that broke while idle in the pool (the server restarted or failed
        over) is noticed at its first statement; the call is then tried once more on a
        fresh connection, and the pool checks its other idle connections. Before COMMIT
        was sent nothing of a broken transaction can have been committed, so the retry
        never writes twice.
        """
        if getattr(self._local, "nonblocking", False):
            # Each call waits for the network: an event loop must run it in a thread.
            raise StoreLocked("PostgreSQL store calls are run in a thread")
        pool = self._get_pool()
        doing = "write" if write else "read"
        for attempt in (1, 2):
            try:
                conn = pool.getconn(timeout=self._wait())
            except psycopg.Error as exc:
                raise self._error(exc, doing) from exc
            committing = False
            try:
                if write:
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
                elif write:
                    with suppress(psycopg.Error):
                        conn.execute("ROLLBACK")
                raise self._error(exc, doing) from exc
            except BaseException:
                if write and not (conn.broken or conn.closed):
                    with suppress(psycopg.Error):
                        conn.execute("ROLLBACK")
                raise
            finally:
                pool.putconn(conn)
        raise AssertionError("unreachable")  # the loop returns or raises

    def _read(self, work: Callable[[_Conn], T]) -> T:
        return self._run(work, write=False)

    def _write(self, work: Callable[[_Conn], T]) -> T:
        return self._run(work, write=True)

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[DictRow]:
        return self._read(lambda conn: conn.execute(sql, params).fetchall())

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

    def nonblocking(self) -> None:
        """This thread's calls raise StoreLocked at once: every PostgreSQL call waits for
        the network, so a caller that must not wait (the proxy's event loop) hands each one
        to a thread, as it does when SQLite is locked."""
        self._local.nonblocking = True

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

    # --- schema ----------------------------------------------------------------------------
    @staticmethod
    def _version_of(conn: _Conn) -> int:
        row = conn.execute("SELECT to_regclass('replytrack_schema') IS NOT NULL AS ok").fetchone()
        if not row or not row["ok"]:
            return 0
        row = conn.execute("SELECT max(version) AS version FROM replytrack_schema").fetchone()
        return int(row["version"] or 0) if row else 0

    def _check_version(self, version: int) -> None:
        """Refuse a database without this replytrack's schema, naming the command to run."""
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"PostgreSQL store {self.safe_url} has schema {version}, newer than this"
                f" replytrack ({SCHEMA_VERSION}); upgrade replytrack"
            )
        if version == 0:
            raise StoreError(
                f"PostgreSQL store {self.safe_url} holds no replytrack schema;"
                " run `replytrack init`"
            )
        if version < SCHEMA_VERSION:
            raise StoreError(
                f"PostgreSQL store {self.safe_url} has schema {version}, this replytrack"
                f" needs {SCHEMA_VERSION}; run `replytrack migrate`"
            )

    def schema_version(self) -> int:
        """The schema version recorded in the database (0: none yet)."""
        return self._read(self._version_of)

    def migrate(self) -> None:
        """Bring the schema to ``SCHEMA_VERSION``, one transaction a step, each under an
        advisory lock so that two hosts migrating at once take turns (the second finds the
        work done)."""
        with self._direct("migration") as conn:
            current = self._version_of(conn)
            if current >= SCHEMA_VERSION:
                # Nothing to do (and no DDL privilege needed to find that out), or refused.
                self._check_version(current)
                return
            # A migration step may run long on a big table; only the wait for another
            # host's migration is bounded.
            conn.execute("SET statement_timeout = 0")
            conn.execute(f"SET lock_timeout = {_MIGRATE_LOCK_WAIT_MS}")
            while self._migrate_step(conn):
                pass

    @contextmanager
    def _direct(self, doing: str) -> Iterator[_Conn]:
        """A connection outside the pool (opening checks, migrations); errors as StoreError."""
        try:
            with psycopg.connect(self._conninfo, autocommit=True, row_factory=dict_row) as conn:
                conn.execute(
                    "SELECT set_config('statement_timeout', %s, false)",
                    (str(self.statement_timeout_ms),),
                )
                yield conn
        except psycopg.Error as exc:
            raise self._error(exc, doing) from exc

    def _migrate_step(self, conn: _Conn) -> bool:
        """One migration step; False once the schema is current."""
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute(VERSION_TABLE)
            version = self._version_of(conn)
            if version >= SCHEMA_VERSION:
                self._check_version(version)
                return False
            conn.execute(MIGRATIONS[version].encode())
            conn.execute("DELETE FROM replytrack_schema")
            conn.execute("INSERT INTO replytrack_schema (version) VALUES (%s)", (version + 1,))
        log.info("store %s migrated to schema %d", self.safe_url, version + 1)
        return True

    # --- outbound -------------------------------------------------------------------------
    def blocked_enrollments(self, campaign: str, addresses: Iterable[str]) -> dict[str, Enrollment]:
        now = time.time()
        wanted = sorted({_text(a) for a in addresses})
        campaign = _text(campaign)

        def read(conn: _Conn) -> dict[str, Enrollment]:
            stop = conn.execute(
                "SELECT reason, updated_at, updated_by FROM campaigns WHERE campaign = %s"
                " AND status = %s",
                (campaign, STOPPED),
            ).fetchone()
            if stop is not None:
                # The campaign stop outranks each recipient's own state.
                reason = CAMPAIGN_STOPPED + (f": {stop['reason']}" if stop["reason"] else "")
                return {
                    address: Enrollment(
                        campaign=campaign,
                        recipient=address,
                        status=STOPPED,
                        reason=reason,
                        since=stop["updated_at"] or now,
                        updated_by=stop["updated_by"],
                    )
                    for address in wanted
                }
            rows = conn.execute(
                "SELECT * FROM enrollments WHERE campaign = %s AND recipient = ANY(%s)"
                " AND status != 'active'",
                (campaign, wanted),
            ).fetchall()
            found = (_row_to_enrollment(row) for row in rows)
            return {e.recipient: e for e in found if e.blocks_sending(now)}

        return self._read(read)

    def record_outbound(self, record: OutboundRecord) -> int:
        """Record the mail and, for campaign mail, enroll its ``sent`` recipients at once,
        whatever its status (record first, relay second); suppressions once it is settled."""
        recipients = sorted(
            (
                (_text(r.address), r.role, r.envelope, r.status, _text(r.reason))
                for r in record.recipients
            ),
            key=lambda r: r[0],
        )

        def write(conn: _Conn) -> int:
            row = conn.execute(
                "INSERT INTO messages (message_id, original_message_id, campaign, step, sender,"
                " from_address, subject, created_at, status, size, upstream_reply)"
                " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) RETURNING id",
                _texts(
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
                    )
                ),
            ).fetchone()
            assert row is not None
            pk = int(row["id"])
            if recipients:
                columns = list(zip(*recipients, strict=True))
                conn.execute(
                    "INSERT INTO recipients (message, address, role, envelope, status, reason)"
                    " SELECT %s, * FROM unnest(%s::text[], %s::text[], %s::boolean[],"
                    " %s::text[], %s::text[]) ON CONFLICT DO NOTHING",
                    (pk, *(list(c) for c in columns)),
                )
            if record.campaign is not None:
                campaign = _text(record.campaign)
                conn.execute(
                    "INSERT INTO campaigns (campaign, created_at) VALUES (%s, %s)"
                    " ON CONFLICT DO NOTHING",
                    (campaign, record.created_at),
                )
                # Also for a mail still on its way upstream: once DATA is sent, nothing that
                # fails later (the store, the network, the proxy itself) may leave a mail
                # that went out outside matching and suppression.
                sent = [address for address, _, _, status, _ in recipients if status == "sent"]
                self._enroll(conn, campaign, record.created_at, sent)
                if record.status != RELAYING:
                    self._record_suppressions(conn, [pk])
            return pk

        return self._write(write)

    @staticmethod
    def _enroll(conn: _Conn, campaign: str, created_at: float, addresses: Sequence[str]) -> None:
        """The first campaign mail to an address enrolls it; later steps find it.

        An enrollment already there is locked (DO UPDATE ... WHERE false changes nothing but
        takes the row lock), so that a refused mail of another host, which takes back the
        enrollments only it made, waits for this transaction and then sees its mail.
        """
        sent = sorted(set(addresses))  # one lock order for every host
        if not sent:
            return
        conn.execute(
            "INSERT INTO enrollments (campaign, recipient, domain, status, reason, since,"
            " created_at) SELECT %s, a, d, 'active', NULL, %s, %s"
            " FROM unnest(%s::text[], %s::text[]) AS u(a, d)"
            " ON CONFLICT (campaign, recipient) DO UPDATE SET status = enrollments.status"
            " WHERE false",
            (campaign, created_at, created_at, sent, [_domain(a) for a in sent]),
        )

    @staticmethod
    def _record_suppressions(conn: _Conn, pks: Sequence[int]) -> None:
        """Events (and their notifications) for the recipients these mails were not sent
        to. Recorded once a mail is settled (relayed, suppressed or unconfirmed), so that an
        attempt the upstream refused, which the client sends again, leaves none behind."""
        if not pks:
            return
        conn.execute(
            "WITH e AS (INSERT INTO events (kind, created_at, campaign, message_id, sender,"
            " recipient, detail) SELECT 'suppressed', m.created_at, m.campaign, m.message_id,"
            " m.sender, r.address, json_build_object('reason', r.reason, 'step', m.step)::text"
            " FROM messages m JOIN recipients r ON r.message = m.id"
            " WHERE m.id = ANY(%s) AND r.status = 'suppressed' ORDER BY m.id, r.address"
            " RETURNING id, created_at)"
            " INSERT INTO outbox (event, created_at, next_attempt_at)"
            " SELECT id, created_at, created_at FROM e",
            (list(pks),),
        )

    def set_message_status(self, pk: int, status: str, upstream_reply: str | None) -> None:
        """Settle a recorded mail. One that was ``relaying`` (or ``unconfirmed``) and
        ``failed`` takes back the enrollments it made (still ``active``, made at its time)
        that no other mail of its campaign, not failed, went to."""

        def write(conn: _Conn) -> None:
            row = conn.execute(
                "UPDATE messages m SET status = %s, upstream_reply = %s"
                " FROM (SELECT id, status FROM messages WHERE id = %s FOR UPDATE) old"
                " WHERE m.id = old.id RETURNING old.status AS old_status, m.campaign,"
                " m.created_at",
                (status, _text(upstream_reply), pk),
            ).fetchone()
            if row is not None and row["old_status"] == RELAYING and status == RELAYED:
                self._record_suppressions(conn, [pk])
            if (
                row is None
                or row["old_status"] not in (RELAYING, UNCONFIRMED)
                or status != FAILED
                or row["campaign"] is None
            ):
                return
            # Lock the candidates first: a concurrent mail that enrolls the same address
            # holds its row lock until it commits, and the DELETE below (a new statement,
            # so a new snapshot) then sees that mail and keeps the enrollment.
            candidates = [
                r["recipient"]
                for r in conn.execute(
                    "SELECT e.recipient FROM enrollments e JOIN recipients r"
                    " ON r.address = e.recipient WHERE r.message = %s AND r.status = 'sent'"
                    " AND e.campaign = %s AND e.created_at = %s"
                    " ORDER BY e.recipient FOR UPDATE OF e",
                    (pk, row["campaign"], row["created_at"]),
                )
            ]
            if candidates:
                conn.execute(
                    "DELETE FROM enrollments e WHERE e.campaign = %s"
                    " AND e.recipient = ANY(%s) AND e.status = 'active' AND e.created_at = %s"
                    " AND NOT EXISTS (SELECT 1 FROM recipients r"
                    " JOIN messages m ON m.id = r.message WHERE r.address = e.recipient"
                    " AND r.status = 'sent' AND m.campaign = e.campaign AND m.id != %s"
                    " AND m.status != 'failed')",
                    (row["campaign"], candidates, row["created_at"], pk),
                )

        self._write(write)

    def reconcile_relaying(self, older_than: float) -> int:
        """Mark mails still ``relaying`` since before ``older_than`` ``unconfirmed``: the
        upstream may have taken them, so they count as sent. Returns how many."""

        def write(conn: _Conn) -> int:
            stuck = [
                row["id"]
                for row in conn.execute(
                    "UPDATE messages SET status = %s WHERE status = 'relaying'"
                    " AND created_at < %s RETURNING id",
                    (UNCONFIRMED, older_than),
                )
            ]
            self._record_suppressions(conn, stuck)
            return len(stuck)

        return self._write(write)

    def count_relaying(self, older_than: float) -> int:
        """How many mails are still ``relaying`` since before ``older_than``."""
        rows = self._rows(
            "SELECT count(*) AS n FROM messages WHERE status = 'relaying' AND created_at < %s",
            (older_than,),
        )
        return int(rows[0]["n"])

    # --- inbound --------------------------------------------------------------------------
    @staticmethod
    def _messages_from_rows(conn: _Conn, rows: Sequence[DictRow]) -> list[SentMessage]:
        found: dict[int, list[OutboundRecipient]] = {row["id"]: [] for row in rows}
        if found:
            for row in conn.execute(
                "SELECT * FROM recipients WHERE message = ANY(%s)"
                " ORDER BY message, role DESC, address",
                (list(found),),
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
                recipients=tuple(found[row["id"]]),
            )
            for row in rows
        ]

    def _messages(self, sql: str, params: Sequence[Any]) -> list[SentMessage]:
        def read(conn: _Conn) -> list[SentMessage]:
            return self._messages_from_rows(conn, conn.execute(sql, params).fetchall())

        return self._read(read)

    def find_sent(self, message_ids: Sequence[str]) -> list[SentMessage]:
        wanted = sorted({_text(m) for m in message_ids})
        if not wanted:
            return []
        # One b-tree probe per ID in each of the two indexes, OR-ed as bitmaps.
        return self._messages(
            "SELECT * FROM messages WHERE message_id = ANY(%s) OR original_message_id = ANY(%s)"
            " ORDER BY created_at DESC, id DESC",
            (wanted, wanted),
        )

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
        params: list[Any] = []
        for column, value in (("campaign", campaign), ("recipient", recipient), ("domain", domain)):
            if value is not None:
                where.append(f"{column} = %s")
                params.append(_text(value))
        if isinstance(status, str):
            where.append("status = %s")
            params.append(status)
        elif status is not None:
            where.append("status = ANY(%s)")
            params.append(list(status))
        sql = "SELECT * FROM enrollments"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY campaign, recipient"
        if limit is not None:
            sql += " LIMIT %s"
            params.append(max(0, int(limit)))
        return [_row_to_enrollment(row) for row in self._rows(sql, params)]

    def last_message_to(self, address: str, campaign: str | None = None) -> SentMessage | None:
        sql = (
            "SELECT m.* FROM recipients r JOIN messages m ON m.id = r.message WHERE r.address = %s"
        )
        params: list[Any] = [_text(address)]
        if campaign is not None:
            sql += " AND m.campaign = %s"
            params.append(_text(campaign))
        sql += " ORDER BY m.created_at DESC, m.id DESC LIMIT 1"
        found = self._messages(sql, params)
        return found[0] if found else None

    @staticmethod
    def _insert_event(
        conn: _Conn, event: Event, *, dedupe_key: str | None, notify: bool
    ) -> int | None:
        # Only a repeated dedupe key is skipped (by whichever host comes second); an event
        # that breaks a NOT NULL rule is an error, not a silent skip. The outbox row goes in
        # with the event, in the same statement.
        row = conn.execute(
            "WITH e AS (INSERT INTO events (kind, created_at, campaign, message_id,"
            " inbound_message_id, sender, recipient, relation, evidence, detail, queue_id,"
            " actor, dedupe_key) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"
            " ON CONFLICT (dedupe_key) DO NOTHING RETURNING id, created_at),"
            " o AS (INSERT INTO outbox (event, created_at, next_attempt_at)"
            " SELECT id, created_at, created_at FROM e WHERE %s)"
            " SELECT id FROM e",
            (
                *_texts(
                    (
                        event.kind,
                        event.created_at,
                        event.campaign,
                        event.message_id,
                        event.inbound_message_id,
                        event.sender,
                        event.recipient,
                        event.relation,
                        json.dumps([_text(e) for e in event.evidence]),
                        json.dumps(event.detail, default=str),
                        event.queue_id,
                        event.actor,
                        dedupe_key,
                    )
                ),
                notify,
            ),
        ).fetchone()
        return None if row is None else int(row["id"])

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
        actor = _text(event.actor or event.kind)
        # One order for every host, so two upserting transactions cannot deadlock; sorted()
        # is stable, so a pair named twice still ends with its last change.
        changes = sorted(
            (tuple(_text(v) for v in change) for change in set_status),
            key=lambda c: (c[0], c[1]),
        )

        def write(conn: _Conn) -> int | None:
            event_id = self._insert_event(conn, event, dedupe_key=dedupe_key, notify=notify)
            if event_id is None:
                return None
            if campaign_status is not None:
                reason = event.detail.get("reason")
                conn.execute(
                    "INSERT INTO campaigns (campaign, created_at, status, reason, updated_at,"
                    " updated_by) VALUES (%s,%s,%s,%s,%s,%s) ON CONFLICT (campaign) DO UPDATE"
                    " SET status = excluded.status, reason = excluded.reason,"
                    " updated_at = excluded.updated_at, updated_by = excluded.updated_by",
                    (
                        _text(event.campaign),
                        event.created_at,
                        campaign_status,
                        _text(reason) if campaign_status == STOPPED else None,
                        event.created_at,
                        actor,
                    ),
                )
            for campaign, recipient, status, reason, until in changes:
                conn.execute(
                    "INSERT INTO enrollments (campaign, recipient, domain, status, reason, since,"
                    " until, updated_by, created_at) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)"
                    " ON CONFLICT (campaign, recipient) DO UPDATE SET status = excluded.status,"
                    " reason = excluded.reason, since = excluded.since, until = excluded.until,"
                    " updated_by = excluded.updated_by",
                    (
                        campaign,
                        recipient,
                        _domain(recipient),
                        status,
                        reason,
                        event.created_at,
                        until,
                        actor,
                        event.created_at,
                    ),
                )
            return event_id

        return self._write(write)

    def remember_ooo(self, address: str, until: float) -> None:
        self._write(
            lambda conn: conn.execute(
                "INSERT INTO ooo (address, until, updated_at) VALUES (%s,%s,%s)"
                " ON CONFLICT (address) DO UPDATE SET until = excluded.until,"
                " updated_at = excluded.updated_at",
                (_text(address), until, time.time()),
            )
        )

    def ooo_until(self, address: str) -> float | None:
        rows = self._rows("SELECT until FROM ooo WHERE address = %s", (_text(address),))
        return float(rows[0]["until"]) if rows else None

    def reactivate_due(self, now: float) -> int:
        return self._write(
            lambda conn: (
                conn.execute(
                    "UPDATE enrollments SET status = 'active', reason = 'pause ended', since = %s,"
                    " until = NULL, updated_by = 'replytrack' WHERE status = 'paused'"
                    " AND until IS NOT NULL AND until <= %s",
                    (now, now),
                ).rowcount
            )
        )

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
        params: list[Any] = []
        if campaign is not None:
            where.append("campaign = %s")
            params.append(_text(campaign))
        if status is not None:
            where.append("status = %s")
            params.append(status)
        if since is not None:
            where.append("created_at >= %s")
            params.append(since)
        sql = "SELECT * FROM messages"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id DESC"
        if limit is not None:
            sql += " LIMIT %s"
            params.append(max(0, int(limit)))
        return self._messages(sql, params)

    def events(
        self,
        *,
        kind: str | None = None,
        campaign: str | None = None,
        since: float | None = None,
        limit: int | None = None,
    ) -> list[Event]:
        where: list[str] = []
        params: list[Any] = []
        for column, value in (("kind", kind), ("campaign", campaign)):
            if value is not None:
                where.append(f"{column} = %s")
                params.append(_text(value))
        if since is not None:
            where.append("created_at >= %s")
            params.append(since)
        sql = "SELECT * FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id DESC"
        if limit is not None:
            sql += " LIMIT %s"
            params.append(max(0, int(limit)))
        return [_row_to_event(row) for row in self._rows(sql, params)]

    def campaign_stats(self, campaign: str | None = None) -> list[CampaignStats]:
        params: list[Any] = []
        where = ""
        if campaign is not None:
            where = "WHERE c.campaign = %s"
            params.append(_text(campaign))
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
            for row in self._rows(sql, params)
        ]

    # --- notify outbox -----------------------------------------------------------------------
    def claim_outbox(
        self, owner: str, *, now: float, lease_seconds: float, limit: int = 1
    ) -> list[OutboxItem]:
        def write(conn: _Conn) -> list[OutboxItem]:
            # SKIP LOCKED: a row another sender is leasing right now is passed over, not
            # waited for; once that lease commits, its lease_until keeps the row out.
            leased = conn.execute(
                "WITH due AS (SELECT id FROM outbox WHERE delivered_at IS NULL"
                " AND dead_at IS NULL AND next_attempt_at <= %s"
                " AND (lease_until IS NULL OR lease_until <= %s)"
                " ORDER BY next_attempt_at, id LIMIT %s FOR UPDATE SKIP LOCKED)"
                " UPDATE outbox o SET lease_owner = %s, lease_until = %s FROM due"
                " WHERE o.id = due.id RETURNING o.id",
                (now, now, int(limit), owner, now + lease_seconds),
            ).fetchall()
            if not leased:
                return []
            ids = [row["id"] for row in leased]
            rows = conn.execute(
                "SELECT o.id AS outbox_id, o.attempts, o.created_at AS queued_at, e.*,"
                " coalesce((SELECT array_agg(d.url) FROM outbox_deliveries d"
                " WHERE d.outbox = o.id), '{}') AS urls"
                " FROM outbox o JOIN events e ON e.id = o.event WHERE o.id = ANY(%s)"
                " ORDER BY o.next_attempt_at, o.id",
                (ids,),
            ).fetchall()
            return [
                OutboxItem(
                    id=row["outbox_id"],
                    event=_row_to_event(row),
                    attempts=row["attempts"],
                    created_at=row["queued_at"],
                    delivered_urls=frozenset(row["urls"]),
                )
                for row in rows
            ]

        return self._write(write)

    def mark_outbox_url_delivered(self, outbox_id: int, url: str, now: float) -> None:
        self._write(
            lambda conn: conn.execute(
                "INSERT INTO outbox_deliveries (outbox, url, delivered_at) VALUES (%s, %s, %s)"
                " ON CONFLICT DO NOTHING",
                (outbox_id, _text(url), now),
            )
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
        self._write(
            lambda conn: conn.execute(
                "UPDATE outbox SET attempts = attempts + 1, lease_owner = NULL,"
                " lease_until = NULL, last_error = %s,"
                " delivered_at = CASE WHEN %s THEN %s ELSE delivered_at END,"
                " dead_at = CASE WHEN %s THEN %s ELSE dead_at END,"
                " next_attempt_at = coalesce(%s, next_attempt_at)"
                " WHERE id = %s AND (lease_owner = %s OR lease_owner IS NULL)",
                (
                    _text(error),
                    bool(delivered),
                    now,
                    bool(dead),
                    now,
                    next_attempt_at,
                    outbox_id,
                    owner,
                ),
            )
        )

    def retry_dead_outbox(self, now: float) -> int:
        return self._write(
            lambda conn: (
                conn.execute(
                    "UPDATE outbox SET attempts = 0, dead_at = NULL, next_attempt_at = %s,"
                    " last_error = NULL WHERE dead_at IS NOT NULL AND delivered_at IS NULL",
                    (now,),
                ).rowcount
            )
        )

    def outbox_counts(self, now: float | None = None) -> dict[str, int]:
        now = time.time() if now is None else now
        row = self._rows(
            "SELECT"
            " count(*) FILTER (WHERE delivered_at IS NULL AND dead_at IS NULL) AS pending,"
            " count(*) FILTER (WHERE delivered_at IS NULL AND dead_at IS NULL"
            "   AND next_attempt_at <= %s) AS due,"
            " count(*) FILTER (WHERE dead_at IS NOT NULL) AS dead,"
            " count(*) FILTER (WHERE delivered_at IS NOT NULL) AS delivered"
            " FROM outbox",
            (now,),
        )[0]
        return {key: int(row[key] or 0) for key in ("pending", "due", "dead", "delivered")}

    # --- maintenance ---------------------------------------------------------------------
    def check_writable(self) -> None:
        """Raise StoreError unless this role can write here and commit: a probe row is
        written and deleted, as on SQLite. A standby (or a read-only store) refuses it, so
        does a role without the privileges the daemons need."""

        def probe(conn: _Conn) -> None:
            conn.execute(
                "INSERT INTO ooo (address, until, updated_at) VALUES (%s, 0, %s)"
                " ON CONFLICT (address) DO UPDATE SET updated_at = excluded.updated_at",
                (_PROBE_ADDRESS, time.time()),
            )
            conn.execute("DELETE FROM ooo WHERE address = %s", (_PROBE_ADDRESS,))

        try:
            self._write(probe)
        except StoreError as exc:
            detail = exc.__cause__ or exc
            raise StoreError(f"PostgreSQL store {self.safe_url} is not writable: {detail}") from exc

    def prune(self, before: float, *, dry_run: bool = False) -> dict[str, int]:
        pending = "SELECT event FROM outbox WHERE delivered_at IS NULL AND dead_at IS NULL"
        targets = {
            "outbox": (
                "outbox",
                "created_at < %s AND (delivered_at IS NOT NULL OR dead_at IS NOT NULL)",
            ),
            "events": ("events", f"created_at < %s AND id NOT IN ({pending})"),
            "messages": ("messages", "created_at < %s"),
        }

        def write(conn: _Conn) -> dict[str, int]:
            counts: dict[str, int] = {}
            # Outbox rows first: deleting their events would cascade and hide the count.
            for name, (table, where) in targets.items():
                if dry_run:
                    row = conn.execute(
                        f"SELECT count(*) AS n FROM {table} WHERE {where}", (before,)
                    ).fetchone()
                    counts[name] = int(row["n"]) if row else 0
                else:
                    counts[name] = conn.execute(
                        f"DELETE FROM {table} WHERE {where}", (before,)
                    ).rowcount
            return counts

        return self._write(write)
