"""What only the PostgreSQL store does: schema versions numbered as SQLite's, migrations
taking turns across hosts, several processes on one database, calls bounded in time and
a store that comes back by itself after the server restarts. All on the suite's private
server (tests/support/pg.py)."""

from __future__ import annotations

import logging
import multiprocessing
import time
from typing import Any

import psycopg
import pytest

from replytrack.store import StatusChange, StoreError, open_store
from replytrack.store import sqlite as sqlite_store
from replytrack.store.postgresql import PostgreSQLStore, safe_url
from replytrack.store.postgresql.outbound import TAKE_BACK, TAKE_BACK_CANDIDATES
from replytrack.store.postgresql.schema import MIGRATIONS, SCHEMA_VERSION
from replytrack.store.postgresql.sequences import HISTORY_LIMIT, THREAD_MAILS
from replytrack.store.records import STOPPED, Event, OutboundRecipient, OutboundRecord
from tests.support.pg import PgServer

pytestmark = pytest.mark.timeout(120)
NOW = 1_760_000_000.0
# Child processes start clean (no inherited pool threads or sockets).
SPAWN = multiprocessing.get_context("spawn")


def outbound(message_id: str, *, recipients: tuple[str, ...] = ("ann@example.com",)) -> Any:
    return OutboundRecord(
        message_id=message_id,
        original_message_id=None,
        campaign="spring",
        step=1,
        sender="sales@ours.example",
        from_address=None,
        subject="Hello\x00there",
        size=10,
        status="relayed",
        recipients=tuple(OutboundRecipient(a, "to", True) for a in recipients),
        created_at=NOW,
    )


def empty_database(server: PgServer) -> str:
    return server.url(server.create_database(template=None))


# --- schema -----------------------------------------------------------------------------------


def test_every_schema_version_exists_for_both_backends(
    pg_server: PgServer, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    assert len(MIGRATIONS) == len(sqlite_store.MIGRATIONS)
    assert SCHEMA_VERSION == sqlite_store.SCHEMA_VERSION
    # From an empty database, one step at a time: every number from 1 to N is reached.
    url = empty_database(pg_server)
    with caplog.at_level(logging.INFO, logger="replytrack.store.postgresql"):
        store = PostgreSQLStore(url)
    reached = [
        int(r.getMessage().rsplit(" ", 1)[1])
        for r in caplog.records
        if "migrated to schema" in r.getMessage()
    ]
    assert reached == list(range(1, SCHEMA_VERSION + 1))
    assert store.schema_version() == SCHEMA_VERSION
    store.close_all()
    lite = sqlite_store.SQLiteStore(tmp_path / "rt.db")
    assert lite.schema_version() == SCHEMA_VERSION
    lite.close_all()


def test_opening_without_create_needs_the_current_schema(pg_server: PgServer) -> None:
    url = empty_database(pg_server)
    with pytest.raises(StoreError, match=r"holds no replytrack schema; run `replytrack init`"):
        PostgreSQLStore(url, create=False)
    # An older schema: refused with the command to run, upgraded only by create.
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE replytrack_schema (version INTEGER NOT NULL)")
        for migration in MIGRATIONS[:2]:
            conn.execute(migration.encode())
        conn.execute("INSERT INTO replytrack_schema VALUES (2)")
        conn.execute("INSERT INTO campaigns (campaign, created_at) VALUES ('old', 1.0)")
    with pytest.raises(StoreError, match=r"has schema 2, .* run `replytrack migrate`"):
        open_store(url)
    store = open_store(url, create=True)
    assert isinstance(store, PostgreSQLStore)
    assert store.schema_version() == SCHEMA_VERSION
    [stats] = store.campaign_stats("old")
    assert (stats.campaign, stats.status) == ("old", "active")
    store.close_all()
    # Newer than this replytrack: refused by every opener.
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"UPDATE replytrack_schema SET version = {SCHEMA_VERSION + 1}")
    for create in (False, True):
        with pytest.raises(StoreError, match="newer than this replytrack"):
            PostgreSQLStore(url, create=create)


def _migrate(url: str, barrier: Any) -> str:
    barrier.wait()
    try:
        PostgreSQLStore(url).close_all()
    except StoreError as exc:
        return f"error: {exc}"
    return "ok"


def test_two_hosts_migrating_at_once_take_turns(pg_server: PgServer) -> None:
    url = empty_database(pg_server)
    with SPAWN.Manager() as manager:
        barrier = manager.Barrier(2)
        with SPAWN.Pool(2) as pool:
            results = pool.starmap(_migrate, [(url, barrier), (url, barrier)])
    # Without the advisory lock the second would fail on "relation already exists".
    assert results == ["ok", "ok"]
    store = PostgreSQLStore(url, create=False)
    assert store.schema_version() == SCHEMA_VERSION
    store.close_all()


# --- several processes on one database --------------------------------------------------------


def _drain_outbox(url: str, owner: str, barrier: Any) -> list[int]:
    store = PostgreSQLStore(url, create=False)
    barrier.wait()
    claimed: list[int] = []
    while True:
        items = store.claim_outbox(owner, now=time.time(), lease_seconds=3600, limit=3)
        if not items:
            break
        for item in items:
            claimed.append(item.id)
            store.finish_outbox_attempt(item.id, owner, now=time.time(), delivered=True)
    store.close_all()
    return claimed


def test_two_processes_never_claim_the_same_outbox_row(pg_url: str) -> None:
    store = PostgreSQLStore(pg_url)
    for n in range(300):
        store.record_event(Event(kind="reply", created_at=NOW + n, campaign="spring"))
    with SPAWN.Manager() as manager:
        barrier = manager.Barrier(2)
        with SPAWN.Pool(2) as pool:
            a, b = pool.starmap(_drain_outbox, [(pg_url, "a", barrier), (pg_url, "b", barrier)])
    assert not set(a) & set(b)
    assert len(a) + len(b) == 300 and len(set(a) | set(b)) == 300
    assert store.outbox_counts() == {"pending": 0, "due": 0, "dead": 0, "delivered": 300}
    store.close_all()


def _record_inbound(url: str, barrier: Any) -> list[int | None]:
    store = PostgreSQLStore(url, create=False)
    barrier.wait()
    recorded: list[int | None] = []
    for n in range(200):
        sender = f"p{n}@example.com"
        recorded.append(
            store.record_event(
                Event(kind="reply", created_at=NOW + n, campaign="spring", sender=sender),
                dedupe_key=f"inbound-{n}@mua",
                set_status=[StatusChange("spring", sender, STOPPED, "replied")],
            )
        )
        store.record_outbound(outbound(f"own-{n}-{id(barrier)}-{time.monotonic_ns()}@x"))
    store.close_all()
    return recorded


def test_the_same_inbound_mail_at_two_hosts_gives_one_event(pg_url: str) -> None:
    with SPAWN.Manager() as manager:
        barrier = manager.Barrier(2)
        with SPAWN.Pool(2) as pool:
            a, b = pool.starmap(_record_inbound, [(pg_url, barrier), (pg_url, barrier)])
    # Each mail was recorded by exactly one of the two; the other was told it was a repeat.
    assert all((x is None) != (y is None) for x, y in zip(a, b, strict=True))
    store = PostgreSQLStore(pg_url)
    assert len(store.events(kind="reply")) == 200
    assert store.outbox_counts()["pending"] == 200
    assert {
        e.status for e in store.enrollments(campaign="spring") if e.recipient != "ann@example.com"
    } == {STOPPED}
    # No write lost: every outbound record of both processes is there.
    assert len(store.messages()) == 400
    store.close_all()


# --- bounded calls, a server that goes away and comes back -----------------------------------


def test_a_statement_is_bounded_by_statement_timeout(pg_url: str) -> None:
    store = PostgreSQLStore(pg_url, statement_timeout_ms=200)
    with pytest.raises(StoreError, match="timed out"):
        store.read(lambda conn: conn.execute("SELECT pg_sleep(30)"))
    # A write that waits for a row another host holds ends the same way, writing nothing.
    store.record_outbound(outbound("m@x"))
    with psycopg.connect(pg_url) as other:
        other.execute("SELECT * FROM enrollments FOR UPDATE")
        with pytest.raises(StoreError, match="timed out"):
            store.record_event(
                Event(kind="reply", created_at=NOW),
                set_status=[StatusChange("spring", "ann@example.com", STOPPED, "replied")],
            )
    assert store.events() == []
    assert store.enrollments()[0].status == "active"
    store.close_all()


def test_server_down_gives_store_errors_and_back_up_works_without_reopening(
    pg_server: PgServer, pg_url: str
) -> None:
    store = PostgreSQLStore(pg_url, pool_timeout=2.0, statement_timeout_ms=1000)
    store.record_outbound(outbound("before@x"))
    calls = {
        "find_sent": lambda: store.find_sent(["before@x"]),
        "blocked_enrollments": lambda: store.blocked_enrollments("spring", ["a@example.com"]),
        "record_outbound": lambda: store.record_outbound(outbound("during@x")),
        "record_event": lambda: store.record_event(Event(kind="reply", created_at=NOW)),
    }
    with pg_server.stopped():
        for name, call in calls.items():
            started = time.monotonic()
            with pytest.raises(StoreError, match=r"unreachable|failed") as caught:
                call()
            waited = time.monotonic() - started
            # Bounded by the wait for a connection (2 s), with room for a slow machine.
            assert waited < 15, (name, waited)
            assert "password" not in str(caught.value)
    # The same store object, not reopened: the pool reconnects by itself, and the first
    # call after the restart already works.
    assert [m.message_id for m in store.find_sent(["before@x"])] == ["before@x"]
    store.record_outbound(outbound("after@x"))
    assert sorted(m.message_id for m in store.messages()) == ["after@x", "before@x"]
    store.close_all()


def test_a_connection_lost_while_idle_is_replaced_unnoticed(
    pg_server: PgServer, pg_url: str
) -> None:
    # A failover or restart between two calls: the idle connections in the pool are dead;
    # the next call notices at its first statement and runs on a fresh one.
    store = PostgreSQLStore(pg_url)
    store.record_outbound(outbound("a@x"))
    pg_server.stop()
    pg_server.start()
    assert [m.message_id for m in store.find_sent(["a@x"])] == ["a@x"]
    store.record_outbound(outbound("b@x"))
    assert len(store.messages()) == 2
    store.close_all()


# --- URLs, passwords, roles -------------------------------------------------------------------


def test_passwords_never_appear_in_messages(pg_server: PgServer) -> None:
    assert safe_url("postgresql://rt:s3cret@db1:5432,db2/rt?sslmode=require") == (
        "postgresql://rt@db1:5432,db2/rt?sslmode=require"
    )
    assert "s3cret" not in safe_url("postgresql://rt@db/rt?password=s3cret&sslmode=require")
    assert "s3cret" not in safe_url("host=db user=rt password=s3cret dbname=rt")
    url = f"postgresql://nobody-here:s3cret@127.0.0.1:{pg_server.port}/no_such_db"
    with pytest.raises(StoreError) as caught:
        PostgreSQLStore(url, create=False)
    assert "s3cret" not in str(caught.value)
    assert "no_such_db" in str(caught.value)


def test_several_hosts_in_one_url_go_to_the_one_that_answers(
    pg_server: PgServer, pg_url: str
) -> None:
    from tests.support.net import free_port

    dbname = pg_url.rsplit("/", 1)[1]
    url = (
        f"postgresql://replytrack@127.0.0.1:{free_port()},127.0.0.1:{pg_server.port}/{dbname}"
        "?target_session_attrs=read-write"
    )
    store = open_store(url)
    store.record_outbound(outbound("m@x"))
    assert [m.message_id for m in store.find_sent(["m@x"])] == ["m@x"]
    store.close()


def test_a_readonly_store_reads_and_refuses_writes(pg_url: str) -> None:
    writer = PostgreSQLStore(pg_url)
    writer.record_outbound(outbound("m@x"))
    writer.close()
    store = open_store(pg_url, readonly=True)
    assert [m.message_id for m in store.messages()] == ["m@x"]
    with pytest.raises(StoreError, match="read-only"):
        store.record_outbound(outbound("n@x"))
    with pytest.raises(StoreError, match="not writable"):
        store.check_writable()
    store.close()


def test_nul_in_header_text_is_recorded(pg_store: PostgreSQLStore) -> None:
    # PostgreSQL text cannot hold NUL; an escaped copy is stored instead of refusing the mail.
    pg_store.record_outbound(outbound("nul\x00id@x"))
    [msg] = pg_store.find_sent(["nul\x00id@x"])
    assert msg.subject == "Hello\\x00there"


def test_an_event_loop_runs_every_call_in_a_thread(pg_store: PostgreSQLStore) -> None:
    # Store.prepare_for_event_loop: every PostgreSQL call waits for the network, so the
    # store says False and the proxy's loop runs each call in its executor. Nothing on the
    # loop's thread changes (no call raises), and no periodic upkeep is asked for.
    assert pg_store.prepare_for_event_loop() is False
    assert pg_store.upkeep_interval is None
    pg_store.record_outbound(outbound("m@x"))
    assert [m.message_id for m in pg_store.find_sent(["m@x"])] == ["m@x"]


def _reads(url: str, sql: str, params: Any) -> int:
    """Buffers ``sql`` reads (EXPLAIN ANALYZE: it runs)."""
    with psycopg.connect(url, autocommit=True) as conn:
        [[plan]] = conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, params)
    top = plan[0]["Plan"]
    return int(top["Shared Hit Blocks"]) + int(top["Shared Read Blocks"])


def _blocked_reads(url: str, store: PostgreSQLStore, campaign: str, address: str) -> int:
    """Buffers the proxy's blocked check reads for one recipient of ``campaign``."""
    from replytrack.store.postgresql.outbound import _BLOCKED

    return _reads(url, _BLOCKED, store.blocked_params(campaign, [address]))


# One enrollment by campaign and recipient, as the milter's and the threading's reads ask.
ONE_ENROLLMENT = "SELECT * FROM enrollments WHERE campaign = %s AND recipient = %s"


def test_enrollment_lookups_cost_the_same_in_a_new_campaign_however_large_it_grows(
    pg_url: str,
) -> None:
    """A campaign the planner's statistics do not know yet looks empty to it (all known
    campaigns fit its most-common-values list, as at most sites): the proxy's check of every
    campaign mail, a lookup of one enrollment (the milter's, the threading's), of a
    recipient's earlier steps (a threaded follow-up's) and a refused mail's take-back must
    not then read all the campaign's enrollments or mails, a cost that grew with each mail
    sent until autovacuum's next ANALYZE (on a large table, after 10 % of it changed)."""
    store = PostgreSQLStore(pg_url)
    try:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            for table in ("enrollments", "messages", "recipients"):
                conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")

            def send(campaign: str, prefix: str, domain: str, upto: int) -> None:
                """Step 1 of ``campaign`` sent to {prefix}1..{prefix}upto@{domain}."""
                conn.execute(
                    "WITH m AS (INSERT INTO messages (message_id, campaign, step, sender,"
                    " created_at, status) SELECT %(c)s || '.' || i || '@ours.example', %(c)s, 1,"
                    " 'sales@ours.example', 2.0, 'relayed' FROM generate_series(1, %(n)s) AS i"
                    " ON CONFLICT DO NOTHING RETURNING id, message_id)"
                    " INSERT INTO recipients (message, address, role, envelope, status)"
                    " SELECT id, %(p)s || split_part(split_part(message_id, '@', 1), '.', 2)"
                    " || '@' || %(d)s, 'to', true, 'sent' FROM m",
                    {"c": campaign, "p": prefix, "d": domain, "n": upto},
                )
                conn.execute(
                    "INSERT INTO enrollments (campaign, recipient, domain, status, since,"
                    " created_at) SELECT %(c)s, %(p)s || i || '@' || %(d)s, %(d)s, 'active', 2.0,"
                    " 2.0 FROM generate_series(1, %(n)s) AS i ON CONFLICT DO NOTHING",
                    {"c": campaign, "p": prefix, "d": domain, "n": upto},
                )

            for old in ("autumn", "winter"):  # what the statistics know
                send(old, "p", f"{old}.example", 3000)
            conn.execute("ANALYZE")

            def grow(upto: int) -> None:  # the new campaign's step 1, sent to more people
                send("spring", "n", "new.example", upto)

            one = ("spring", "n5@new.example")
            mails = ("n5@new.example", "spring", HISTORY_LIMIT)

            def reads() -> tuple[int, ...]:
                [[to_n5], [other]] = conn.execute(
                    "SELECT id FROM messages WHERE message_id IN"
                    " ('spring.5@ours.example', 'autumn.1@ours.example') ORDER BY campaign DESC"
                ).fetchall()
                return (
                    _blocked_reads(pg_url, store, *one),
                    _reads(pg_url, ONE_ENROLLMENT, one),
                    _reads(pg_url, THREAD_MAILS, mails),
                    # A refused mail's take-back (the DELETE keeps n5: mail to n5 backs it).
                    _reads(pg_url, TAKE_BACK_CANDIDATES, (to_n5, "spring", 2.0)),
                    _reads(pg_url, TAKE_BACK, ("spring", ["n5@new.example"], 2.0, other)),
                )

            grow(10)
            small = reads()
            grow(5000)
            large = reads()
            # And the check still finds what it must: a stopped enrollment holds the mail.
            conn.execute(
                "UPDATE enrollments SET status = 'stopped', reason = 'reply from n5'"
                " WHERE campaign = 'spring' AND recipient = 'n5@new.example'"
            )
        assert all(big <= few + 2 for few, big in zip(small, large, strict=True)), (small, large)
        # The reads still find what they must.
        assert [m.message_id for m in [store.last_message_to(*reversed(one))] if m] == [
            "spring.5@ours.example"
        ]
        assert store.thread_history(*one).message_ids == ("spring.5@ours.example",)
        held = store.blocked_enrollments("spring", ["n5@new.example", "n6@new.example"])
        assert set(held) == {"n5@new.example"} and held["n5@new.example"].status == STOPPED
    finally:
        store.close_all()
