"""The SQLite store on real files: schema versions, WAL, one connection per thread, the
outbound record, enrollments, events, and clear StoreErrors when the file is locked or
read-only."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager, suppress
from pathlib import Path

import pytest

from replytrack.store import StoreError, StoreWouldWait, open_store
from replytrack.store.records import (
    Event,
    OutboundRecipient,
    OutboundRecord,
)
from replytrack.store.sqlite import SCHEMA_VERSION, SQLiteStore, schema
from tests.support.sqlite_legacy import legacy_store

NOW = 1_760_000_000.0


def outbound(
    message_id: str,
    *,
    campaign: str | None = "spring",
    recipients: tuple[OutboundRecipient, ...] | None = None,
    original: str | None = None,
    step: int | None = 1,
    created_at: float = NOW,
    status: str = "relayed",
) -> OutboundRecord:
    if recipients is None:
        recipients = (OutboundRecipient("ann@example.com", "to", True),)
    return OutboundRecord(
        message_id=message_id,
        original_message_id=original,
        campaign=campaign,
        step=step,
        sender="sales@ours.example",
        from_address="sales@ours.example",
        subject="Hello",
        size=1234,
        status=status,
        recipients=recipients,
        created_at=created_at,
        upstream_reply="250 2.0.0 queued",
    )


def raw(store: SQLiteStore, sql: str, params: tuple[object, ...] = ()) -> list[sqlite3.Row]:
    return store.conn.execute(sql, params).fetchall()


# --- schema -----------------------------------------------------------------------------------


def test_new_store_has_current_schema_and_reopening_is_a_no_op(tmp_path: Path) -> None:
    path = tmp_path / "rt.db"
    first = SQLiteStore(path)
    assert first.schema_version() == SCHEMA_VERSION
    first.record_outbound(outbound("a@x"))
    tables = {r[0] for r in raw(first, "SELECT name FROM sqlite_master")}
    first.close_all()
    second = SQLiteStore(path)
    assert second.schema_version() == SCHEMA_VERSION
    assert {r[0] for r in raw(second, "SELECT name FROM sqlite_master")} == tables
    assert [m.message_id for m in second.messages()] == ["a@x"]
    second.close_all()


def test_store_of_schema_2_gains_campaign_status(tmp_path: Path) -> None:
    # A store written before campaign-wide stops existed keeps its data; its campaigns are
    # active, and a campaign can then be stopped as a whole.
    path = tmp_path / "rt.db"
    legacy_store(path, 2)
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO campaigns (campaign, created_at) VALUES ('old', 1.0)",
        )
    store = SQLiteStore(path)
    assert store.schema_version() == SCHEMA_VERSION
    (stats,) = store.campaign_stats("old")
    assert (stats.status, stats.reason) == ("active", None)
    store.record_event(
        Event(kind="stopped", created_at=2.0, campaign="old", actor="ops", detail={"reason": "r"}),
        campaign_status="stopped",
    )
    (stats,) = store.campaign_stats("old")
    assert (stats.status, stats.reason) == ("stopped", "r")
    assert store.blocked_enrollments("old", ["x@y.org"])["x@y.org"].updated_by == "ops"
    store.close_all()


def test_store_from_a_newer_replytrack_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "rt.db"
    SQLiteStore(path).close_all()
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer than this replytrack"):
        SQLiteStore(path)
    with pytest.raises(StoreError, match=f"schema {SCHEMA_VERSION + 1}"):
        SQLiteStore(path, readonly=True)


def test_missing_store_without_create(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        SQLiteStore(tmp_path / "absent.db", create=False)
    with pytest.raises(StoreError, match="PostgreSQL"):
        open_store("postgresql://db/replytrack")


def test_not_a_database_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "rt.db"
    path.write_bytes(b"this is not SQLite" * 100)
    with pytest.raises(StoreError):
        SQLiteStore(path)


# --- connections ------------------------------------------------------------------------------


def test_wal_and_busy_timeout_on_every_connection_one_per_thread(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "rt.db", busy_timeout_ms=1234)
    seen: dict[str, object] = {}

    def look(name: str) -> None:
        conn = store.conn
        assert store.conn is conn
        seen[name] = (
            conn,
            conn.execute("PRAGMA journal_mode").fetchone()[0],
            conn.execute("PRAGMA busy_timeout").fetchone()[0],
        )

    look("main")
    thread = threading.Thread(target=look, args=("worker",))
    thread.start()
    thread.join()
    main, worker = seen["main"], seen["worker"]
    assert main[1:] == ("wal", 1234) and worker[1:] == ("wal", 1234)  # type: ignore[index]
    assert main[0] is not worker[0]  # type: ignore[index]
    store.close_all()


def test_sessions_on_short_lived_threads_reuse_pooled_connections(tmp_path: Path) -> None:
    # libmilter calls every callback on a fresh Python thread state; a session lends such
    # a call an idle connection and takes it back, so connections do not grow per mail.
    store = SQLiteStore(tmp_path / "rt.db")
    store.record_outbound(outbound("a@x"))
    store.close()
    found: list[list[str]] = []

    def callback() -> None:
        with store.session(deadline=time.monotonic() + 5):
            found.append([m.message_id for m in store.find_sent(["a@x"])])

    for _ in range(50):
        thread = threading.Thread(target=callback)
        thread.start()
        thread.join()
    assert found == [["a@x"]] * 50
    assert len(store._connections) == 1
    store.close_all()


@pytest.mark.timeout(30)
def test_session_deadline_interrupts_a_runaway_statement(store: SQLiteStore) -> None:
    endless = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT max(x) FROM n"
    started = time.monotonic()
    with (
        pytest.raises(StoreError, match="interrupted"),
        store.session(deadline=time.monotonic() + 0.2),
    ):
        store.query(endless)
    assert time.monotonic() - started < 5
    # The connection is sound and no longer bounded after the session.
    store.record_outbound(outbound("after@x"))
    assert [m.message_id for m in store.find_sent(["after@x"])] == ["after@x"]


@pytest.mark.timeout(120)
def test_concurrent_writers_all_land(store: SQLiteStore) -> None:
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(200):
                store.record_outbound(
                    outbound(
                        f"t{n}-{i}@x",
                        recipients=(OutboundRecipient(f"r{n}-{i}@example.com", "to", True),),
                    )
                )
        except BaseException as exc:  # collected and judged below
            errors.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Only StoreError may ever escape the store; with a 5 s busy timeout none should.
    assert all(isinstance(e, StoreError) for e in errors), errors
    assert errors == []
    assert raw(store, "SELECT count(*) FROM messages")[0][0] == 1600
    assert raw(store, "SELECT count(*) FROM enrollments")[0][0] == 1600


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        other.execute("ROLLBACK")
        other.close()


def test_locked_store_gives_store_error_after_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "rt.db"
    store = SQLiteStore(path, busy_timeout_ms=100)
    store.record_outbound(outbound("before@x"))
    with exclusive_lock(path):
        with pytest.raises(StoreError, match=r"busy|locked"):
            store.record_outbound(outbound("during@x"))
        with pytest.raises(StoreError):
            store.record_event(Event(kind="reply", created_at=NOW))
    # The failed write left nothing behind and the store works again.
    store.record_outbound(outbound("after@x"))
    assert sorted(m.message_id for m in store.messages()) == ["after@x", "before@x"]
    store.close_all()


def test_locked_store_still_serves_reads(tmp_path: Path) -> None:
    # WAL: a writer holding the lock does not stop the milter's lookups.
    path = tmp_path / "rt.db"
    SQLiteStore(path).record_outbound(outbound("a@x"))
    with exclusive_lock(path):
        reader = SQLiteStore(path, busy_timeout_ms=100)
        assert [m.message_id for m in reader.find_sent(["a@x"])] == ["a@x"]
        reader.close_all()


def test_readonly_flag_refuses_writes_with_store_error(tmp_path: Path) -> None:
    path = tmp_path / "rt.db"
    SQLiteStore(path).close_all()
    ro = SQLiteStore(path, readonly=True)
    assert ro.messages() == []
    with pytest.raises(StoreError):
        ro.record_outbound(outbound("a@x"))
    with pytest.raises(StoreError):
        ro.record_event(Event(kind="reply", created_at=NOW))
    with pytest.raises(StoreError):
        ro.reactivate_due(NOW)
    ro.close_all()


@pytest.fixture
def readonly_file(tmp_path: Path) -> Iterator[Path]:
    """A store file with mode 0444; for root (who ignores modes) also made immutable."""
    path = tmp_path / "rt.db"
    store = SQLiteStore(path)
    store.record_outbound(outbound("a@x"))
    store.close_all()
    path.chmod(0o444)
    immutable = False

    if os.geteuid() == 0:
        if shutil.which("chattr") is None:
            pytest.skip("running as root, which ignores file modes, and chattr is absent")
        done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False)
        if done.returncode != 0:
            pytest.skip(f"running as root and chattr +i failed: {done.stderr.decode().strip()}")
        immutable = True
    try:
        yield path
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(path)], check=False)
        path.chmod(0o644)


def test_read_only_file_refuses_writes_with_store_error(readonly_file: Path) -> None:
    store = SQLiteStore(readonly_file)
    assert [m.message_id for m in store.find_sent(["a@x"])] == ["a@x"]
    with pytest.raises(StoreError):
        store.record_outbound(outbound("b@x"))
    with pytest.raises(StoreError):
        store.record_event(Event(kind="reply", created_at=NOW), set_status=[])
    store.close_all()


# --- outbound ---------------------------------------------------------------------------------


def test_find_sent_by_stamped_and_original_ids_beyond_one_chunk(store: SQLiteStore) -> None:
    for i in range(1200):
        store.record_outbound(
            outbound(f"tok{i}@ours", original=f"mua{i}@client", created_at=NOW + i)
        )
    wanted = [f"tok{i}@ours" for i in range(0, 1200, 2)] + [
        f"mua{i}@client" for i in range(1, 1200, 2)
    ]
    wanted += [f"unknown{i}@nowhere" for i in range(300)] + wanted[:10]
    found = store.find_sent(wanted)
    assert len(found) == 1200
    assert [m.created_at for m in found] == sorted((m.created_at for m in found), reverse=True)
    assert {m.message_id for m in found} == {f"tok{i}@ours" for i in range(1200)}
    assert all(m.recipients for m in found)
    assert store.find_sent([]) == []


# --- events and enrollments -------------------------------------------------------------------


def test_readonly_store_in_a_directory_with_uri_characters(tmp_path: Path) -> None:
    path = tmp_path / "odd#dir?x%41" / "rt.db"
    SQLiteStore(path).record_outbound(outbound("a@x"))
    ro = SQLiteStore(path, readonly=True)
    assert [m.message_id for m in ro.messages()] == ["a@x"]
    ro.close_all()


def chattr(paths: list[Path], flag: str) -> bool:
    """Set or clear the immutable flag (which even root cannot write through)."""
    if shutil.which("chattr") is None:
        return False
    done = subprocess.run(["chattr", flag, *map(str, paths)], capture_output=True, check=False)
    return done.returncode == 0


def test_store_recovers_when_the_file_is_writable_again(tmp_path: Path) -> None:
    # A connection opened while the file cannot be written gets a read-only handle and
    # answers "attempt to write a readonly database" forever; one that hit a disk I/O error
    # is suspect too. Once the file is writable again, every thread must write again.
    store = SQLiteStore(tmp_path / "rt.db")
    files = [store.path, Path(f"{store.path}-wal")]

    def record(message_id: str) -> str:
        try:
            store.record_outbound(outbound(message_id))
        except StoreError:
            return "StoreError"
        return "ok"

    def everywhere(pool: ThreadPoolExecutor, prefix: str) -> set[str]:
        # Calls go to the pool's long-lived threads, as the proxy's do.
        return set(pool.map(record, [f"{prefix}{i}@x" for i in range(4)]))

    with ThreadPoolExecutor(2) as early, ThreadPoolExecutor(2) as late:
        assert everywhere(early, "before") == {"ok"}
        if not chattr(files, "+i"):
            pytest.skip("chattr +i is not available on this filesystem")
        try:
            assert everywhere(early, "during-early") == {"StoreError"}
            # These threads open their connections while the file is immutable.
            assert everywhere(late, "during-late") == {"StoreError"}
        finally:
            chattr(files, "-i")
        for round_ in range(2):
            assert everywhere(late, f"after-late{round_}-") == {"ok"}
            assert everywhere(early, f"after-early{round_}-") == {"ok"}
    recorded = {m.message_id for m in store.messages()}
    assert len(recorded) == 20 and not any(m.startswith("during") for m in recorded)
    store.close_all()


def test_close_all_closes_the_connections_of_other_threads(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "rt.db")
    workers = [threading.Thread(target=store.messages) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    def wal_handles() -> int:
        count = 0
        for fd in os.listdir("/proc/self/fd"):
            with suppress(OSError):
                count += str(store.path) in os.readlink(f"/proc/self/fd/{fd}")
        return count

    assert wal_handles() >= 4
    store.close_all()
    assert wal_handles() == 0


# --- Message-ID lookup keys (schema 4) ----------------------------------------------------------


def test_store_of_schema_3_gains_lookup_keys_for_its_mails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A store recorded before message_keys existed upgrades in several short batches, and
    # replies to its old mails (stamped or client ID) still match afterwards.
    monkeypatch.setattr(schema, "_BACKFILL_BATCH", 7)
    path = tmp_path / "rt.db"
    legacy_store(path, 3)
    # Rows written as schema 3 wrote them: no keys. Ids have a gap, as after a prune.
    with sqlite3.connect(path) as conn:
        for i in [*range(1, 20), *range(40, 50)]:
            conn.execute(
                "INSERT INTO messages (id, message_id, original_message_id, sender, created_at,"
                " status) VALUES (?, ?, ?, 's@x', ?, 'relayed')",
                (i, f"old{i}@ours", f"mua{i}@client" if i % 2 else None, NOW + i),
            )
    store = SQLiteStore(path)
    assert store.schema_version() == SCHEMA_VERSION
    assert raw(store, "SELECT count(*) FROM message_keys")[0][0] == 29 + 15
    found = store.find_sent(["old1@ours", "mua3@client", "old49@ours", "mua4@client"])
    assert [m.message_id for m in found] == ["old49@ours", "old3@ours", "old1@ours"]
    store.record_outbound(outbound("new@ours", original="mua-new@client"))
    assert [m.message_id for m in store.find_sent(["mua-new@client"])] == ["new@ours"]
    store.close_all()


def test_lookup_keys_that_collide_never_match_the_wrong_mail(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every ID hashed to the same key: the lookup must still compare the real IDs.
    monkeypatch.setattr(schema, "message_key", lambda message_id: 42)
    store.record_outbound(outbound("a@ours", original="a@client"))
    store.record_outbound(outbound("b@ours", original="b@client"))
    assert [m.message_id for m in store.find_sent(["b@client"])] == ["b@ours"]
    assert [m.message_id for m in store.find_sent(["a@ours", "x@elsewhere"])] == ["a@ours"]
    assert store.find_sent(["x@elsewhere"]) == []


def test_prune_drops_the_lookup_keys_of_pruned_mails(store: SQLiteStore) -> None:
    store.record_outbound(outbound("old@ours", original="old@client", created_at=NOW))
    store.record_outbound(outbound("new@ours", original="new@client", created_at=NOW + 100))
    store.prune(NOW + 50)
    keys = {r[0] for r in raw(store, "SELECT message FROM message_keys")}
    assert keys == {store.find_sent(["new@ours"])[0].id}
    assert store.find_sent(["old@ours", "old@client"]) == []


def test_an_event_loop_thread_is_refused_at_once_while_others_wait(tmp_path: Path) -> None:
    """Store.prepare_for_event_loop: this thread's write finds the store held and raises
    StoreWouldWait without waiting or writing; another thread of the same store still waits
    its turn."""
    from tests.support.faults import hold_exclusive_lock

    store = SQLiteStore(tmp_path / "s.db", busy_timeout_ms=5000)
    assert store.prepare_for_event_loop() is True
    assert store.upkeep_interval is not None
    waited: list[float] = []

    def waiting_write() -> None:
        started = time.monotonic()
        store.remember_ooo("waited@example.test", 2e9)
        waited.append(time.monotonic() - started)

    with hold_exclusive_lock(store.path):
        started = time.monotonic()
        with pytest.raises(StoreWouldWait):
            store.remember_ooo("refused@example.test", 2e9)
        refused_after = time.monotonic() - started
        waiter = threading.Thread(target=waiting_write)
        waiter.start()
        time.sleep(0.3)
    waiter.join(10)
    # Refused at once, not after the 5 s busy timeout; the other thread's write waited for
    # the lock (it would have raised otherwise) and went through once it was free.
    assert refused_after < 2.5
    assert waited and waited[0] < 5.0
    # Nothing of the refused write; free again, this thread writes as usual.
    store.remember_ooo("after@example.test", 2e9)
    assert store.ooo_until("refused@example.test") is None
    assert store.ooo_until("waited@example.test") and store.ooo_until("after@example.test")

    def in_store_file(address: str) -> bool:
        # The store file alone, without its write-ahead log: what a checkpoint folded in.
        copy = tmp_path / "file-only.db"
        shutil.copyfile(store.path, copy)
        with closing(sqlite3.connect(copy)) as conn:
            row = conn.execute("SELECT 1 FROM ooo WHERE address = ?", (address,)).fetchone()
        return row is not None

    assert not in_store_file("after@example.test")
    store.upkeep()
    assert in_store_file("after@example.test")
    store.close_all()
