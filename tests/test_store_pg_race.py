"""A refused campaign mail taking back its enrollment while another host records a mail to the
same prospect, step by step on one store (issue 12, "enrollment upserts do not race").

Host 1's mail A enrolled x@them.example and is then refused upstream; host 2's mail B to the
same prospect in the same campaign is being recorded at that moment. Whatever the order, the
prospect B went to stays enrolled, and an enrollment nothing else backs is taken back. Each
test stops one host's write transaction at a chosen point with its locks held (:class:`Hold`,
the only fake here: it injects the timing a real host gives by chance), makes sure the other
host's call is waiting for it (PostgreSQL: ``pg_blocking_pids``; SQLite: its one write lock,
whose wait begins with ``BEGIN IMMEDIATE``), then lets the first one commit or roll back.

On PostgreSQL this pins down what the row locks do: record_outbound's ``ON CONFLICT DO UPDATE``
locks the enrollment already there, set_message_status locks its candidates ``FOR UPDATE OF
e`` and DELETEs in a new statement (a new snapshot) only where no other mail backs the
enrollment. On SQLite the writers take turns, and the same outcomes must follow.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from replytrack.store.postgresql import PostgreSQLStore
from replytrack.store.postgresql.connection import PgConnections
from replytrack.store.records import ACTIVE, OutboundRecipient, OutboundRecord
from replytrack.store.sqlite import SQLiteStore

pytestmark = pytest.mark.timeout(120)

NOW = 1_760_000_000.0
PROSPECT = "x@them.example"
CAMPAIGN = "c"
REFUSAL = "550 5.1.1 no such user"
# The bound on each wait for the other thread (a test that hangs fails instead); never a
# duration the outcome depends on. Lock waits inside the stores are bounded far above it.
WAIT = 30.0
LOCK_WAIT_MS = 120_000


def campaign_mail(message_id: str, created_at: float) -> OutboundRecord:
    """A campaign mail to the prospect, recorded before it is relayed (record first)."""
    return OutboundRecord(
        message_id=message_id,
        original_message_id=None,
        campaign=CAMPAIGN,
        step=1,
        sender="sales@ours.example",
        from_address="sales@ours.example",
        subject="Hello",
        size=100,
        status="relaying",
        recipients=(OutboundRecipient(PROSPECT, "to", True),),
        created_at=created_at,
    )


# --- holding one host's transaction open --------------------------------------------------------


class HostGone(Exception):
    """The held host's process ended before its COMMIT: its transaction is rolled back."""


class Hold:
    """Stops one write transaction with its locks held: before the first statement that
    starts with ``before``, or (``before`` None) after its last statement, before COMMIT.
    It stays there until the test lets it commit, or end as if its host had gone."""

    def __init__(self, before: str | None = None) -> None:
        self.before = before
        self.reached = threading.Event()
        self.backend_pid: int | None = None  # PostgreSQL: the held transaction's server process
        self._released = threading.Event()
        self._commit = True

    def pause(self) -> None:
        self.reached.set()
        if not self._released.wait(WAIT):
            raise HostGone("the test never let the held transaction go on")
        if not self._commit:
            raise HostGone("host gone before its COMMIT")

    def release(self, *, commit: bool) -> None:
        self._commit = commit
        self._released.set()

    def pause_here(self, sql: str | None) -> bool:
        """Whether the transaction stops now: at the statement ``sql`` or, None, at its end."""
        if self.reached.is_set():
            return False  # one stop a test; later transactions run through
        if sql is None:
            return self.before is None
        return self.before is not None and sql.lstrip().startswith(self.before)


class _PausingConn:
    """A connection (psycopg or sqlite3) that stops at its Hold's statement."""

    def __init__(self, conn: Any, hold: Hold) -> None:
        self._conn = conn
        self._hold = hold

    def execute(self, sql: Any, *args: Any, **kwargs: Any) -> Any:
        if self._hold.pause_here(str(sql)):
            self._hold.pause()
        return self._conn.execute(sql, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def hold_pg_writes(store: PostgreSQLStore, hold: Hold, *, single_statements: bool) -> None:
    """``store``'s write transactions stop at ``hold``. With ``single_statements``, a write
    that is one statement committed as it runs (record_outbound) runs as BEGIN; statement;
    COMMIT instead: the same statement takes the same locks, and can be held before COMMIT."""

    def write(work: Callable[[Any], Any]) -> Any:
        def held(conn: Any) -> Any:
            if not hold.reached.is_set():
                hold.backend_pid = conn.info.backend_pid
            result = work(_PausingConn(conn, hold))
            if hold.pause_here(None):
                hold.pause()
            return result

        return PgConnections.write(store, held)

    store.write = write  # type: ignore[method-assign]
    if single_statements:
        store.write_single = write  # type: ignore[method-assign]


def hold_sqlite_writes(store: SQLiteStore, hold: Hold) -> None:
    """``store``'s write transactions (BEGIN IMMEDIATE ... COMMIT) stop at ``hold``."""
    unheld = store.write

    @contextmanager
    def write() -> Iterator[Any]:
        with unheld() as conn:
            # An error (HostGone) raised in the body leaves through unheld(): ROLLBACK.
            yield _PausingConn(conn, hold)
            if hold.pause_here(None):
                hold.pause()

    store.write = write  # type: ignore[method-assign]


# --- the two backends ---------------------------------------------------------------------------


class Backend:
    """Two hosts' stores on one database, and how to see that one waits for the other."""

    name: str
    hosts: tuple[Any, Any]

    def hold_writes(self, store: Any, hold: Hold, *, single_statements: bool) -> None:
        raise NotImplementedError

    def waiting(self, call: Callable[[], Any], store: Any) -> Callable[[], Any]:
        """``call`` made ready to run in a thread of its own (on ``store``)."""
        return call

    def blocked(self, hold: Hold) -> bool:
        """Whether the waiting call is now waiting for the held transaction's locks."""
        raise NotImplementedError

    def close(self) -> None:
        for store in self.hosts:
            store.close_all()


class PgBackend(Backend):
    name = "postgresql"

    def __init__(self, url: str) -> None:
        self.hosts = (
            PostgreSQLStore(url, statement_timeout_ms=LOCK_WAIT_MS),
            PostgreSQLStore(url, statement_timeout_ms=LOCK_WAIT_MS, create=False),
        )
        self._monitor = psycopg.connect(url, autocommit=True)

    def hold_writes(self, store: Any, hold: Hold, *, single_statements: bool) -> None:
        hold_pg_writes(store, hold, single_statements=single_statements)

    def blocked(self, hold: Hold) -> bool:
        row = self._monitor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
            (hold.backend_pid,),
        ).fetchone()
        return row is not None and row[0] > 0

    def close(self) -> None:
        self._monitor.close()
        super().close()


class SQLiteBackend(Backend):
    name = "sqlite"

    def __init__(self, path: Path) -> None:
        self.hosts = (
            SQLiteStore(path, busy_timeout_ms=LOCK_WAIT_MS),
            SQLiteStore(path, busy_timeout_ms=LOCK_WAIT_MS),
        )
        self._began = threading.Event()

    def hold_writes(self, store: Any, hold: Hold, *, single_statements: bool) -> None:
        hold_sqlite_writes(store, hold)

    def waiting(self, call: Callable[[], Any], store: Any) -> Callable[[], Any]:
        # The one write lock is taken by BEGIN IMMEDIATE, which cannot end while the held
        # transaction lives: once the waiting thread's connection starts it, it waits.
        def traced() -> Any:
            conn = store.conn  # this thread's connection, which the call uses
            conn.set_trace_callback(
                lambda sql: self._began.set() if sql.startswith("BEGIN") else None
            )
            try:
                return call()
            finally:
                conn.set_trace_callback(None)

        return traced

    def blocked(self, hold: Hold) -> bool:
        return self._began.is_set()


@pytest.fixture(params=["postgresql", "sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    made: Backend
    if request.param == "postgresql":
        made = PgBackend(request.getfixturevalue("pg_url"))
    else:
        made = SQLiteBackend(tmp_path / "replytrack.db")
    try:
        yield made
    finally:
        made.close()


@dataclass
class Race:
    held: Future[Any]  # the call whose transaction was held
    waiter: Future[Any]  # the call made meanwhile on the other host
    waited: bool  # whether that call was seen waiting for the held one's locks


def race(
    backend: Backend,
    hold: Hold,
    held: Callable[[], Any],
    waiter: tuple[Callable[[], Any], Any],
    *,
    commit: bool,
) -> Race:
    """Run ``held`` until its transaction stops at ``hold``; then the ``waiter`` call (on
    its store) until it waits for that transaction (or ends); then let ``held`` commit or
    roll back, and wait for both."""
    call, store = waiter
    with ThreadPoolExecutor(max_workers=2) as pool:
        held_future = pool.submit(held)
        try:
            if not _until(hold.reached.is_set, held_future):
                held_future.result(timeout=0)  # it ended: its error says why
                raise AssertionError("the held call ended without reaching its stop")
            waiter_future = pool.submit(backend.waiting(call, store))
            waited = _until(lambda: backend.blocked(hold), waiter_future)
        finally:
            hold.release(commit=commit)
        waiter_future.exception(timeout=WAIT)
        held_future.exception(timeout=WAIT)
    return Race(held_future, waiter_future, waited)


def _until(condition: Callable[[], bool], running: Future[Any]) -> bool:
    """Poll ``condition`` until it holds (True) or ``running`` ended first (False)."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if condition():
            return True
        if running.done():
            return condition()
        time.sleep(0.002)
    raise AssertionError(f"neither happened within {WAIT} s")


def enrollments(store: Any) -> list[tuple[str, str, float]]:
    return [(e.recipient, e.status, e.since) for e in store.enrollments(campaign=CAMPAIGN)]


def statuses(store: Any) -> dict[str, str]:
    return {m.message_id: m.status for m in store.messages(campaign=CAMPAIGN)}


# --- the take-back meets a record in flight -----------------------------------------------------


def take_back_meets_record(backend: Backend, *, commit: bool) -> tuple[Race, int]:
    """Host 1 records mail A to the prospect; host 2's record of B runs its statement and
    is held before COMMIT; host 1 then takes A back (refused), and host 2 commits or rolls
    back. The race, and A's key."""
    host1, host2 = backend.hosts
    pk_a = host1.record_outbound(campaign_mail("a@ours.example", NOW))
    hold = Hold()
    backend.hold_writes(host2, hold, single_statements=True)
    done = race(
        backend,
        hold,
        lambda: host2.record_outbound(campaign_mail("b@ours.example", NOW + 10)),
        (lambda: host1.set_message_status(pk_a, "failed", REFUSAL), host1),
        commit=commit,
    )
    return done, pk_a


def test_a_refused_mail_keeps_the_enrollment_of_a_mail_another_host_records_meanwhile(
    backend: Backend,
) -> None:
    host1 = backend.hosts[0]
    done, pk_a = take_back_meets_record(backend, commit=True)
    done.waiter.result()
    assert done.held.result() > pk_a
    # B went to the prospect: the enrollment A made stays, active, from A's time.
    assert enrollments(host1) == [(PROSPECT, ACTIVE, NOW)]
    assert statuses(host1) == {"a@ours.example": "failed", "b@ours.example": "relaying"}
    last = host1.last_message_to(PROSPECT, CAMPAIGN)
    assert last is not None and last.message_id == "b@ours.example"
    assert done.waited, "the take-back did not wait for host 2's record in flight"


def test_a_refused_mail_takes_back_its_enrollment_when_the_other_record_rolls_back(
    backend: Backend,
) -> None:
    host1 = backend.hosts[0]
    done, _ = take_back_meets_record(backend, commit=False)
    done.waiter.result()
    with pytest.raises(HostGone):
        done.held.result()
    # B never happened: nothing backs the enrollment A made, so it is taken back.
    assert enrollments(host1) == []
    assert statuses(host1) == {"a@ours.example": "failed"}
    assert done.waited, "the take-back did not wait for host 2's record in flight"


# --- the record meets a take-back in flight -----------------------------------------------------


@pytest.mark.parametrize(
    "stop",
    [None, "DELETE FROM enrollments"],
    ids=["before-commit", "locked-not-deleted-yet"],
)
def test_a_mail_recorded_while_a_refused_mail_takes_back_leaves_the_prospect_enrolled(
    backend: Backend, stop: str | None
) -> None:
    host1, host2 = backend.hosts
    pk_a = host1.record_outbound(campaign_mail("a@ours.example", NOW))
    # Host 1's take-back holds its locks: after its DELETE (before COMMIT), or with the
    # candidates locked FOR UPDATE but the DELETE not yet sent.
    hold = Hold(before=stop)
    backend.hold_writes(host1, hold, single_statements=False)
    done = race(
        backend,
        hold,
        lambda: host1.set_message_status(pk_a, "failed", REFUSAL),
        (lambda: host2.record_outbound(campaign_mail("b@ours.example", NOW + 10)), host2),
        commit=True,
    )
    done.held.result()
    assert done.waiter.result() > pk_a
    # B went to the prospect: enrolled and active, whatever the take-back did.
    assert [(r, status) for r, status, _ in enrollments(host2)] == [(PROSPECT, ACTIVE)]
    assert statuses(host2) == {"a@ours.example": "failed", "b@ours.example": "relaying"}
    assert done.waited, "host 2's record did not wait for the take-back in flight"
    # Having waited, B found A's enrollment gone and made its own, from B's time.
    assert enrollments(host2) == [(PROSPECT, ACTIVE, NOW + 10)]
