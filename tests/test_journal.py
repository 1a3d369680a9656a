"""The fail-open journal: appended when the store is unavailable, replayed when it is back,
idempotently."""

from __future__ import annotations

import json

from replytrack.config import Config
from replytrack.metrics import JOURNAL_BACKLOG
from replytrack.milter.engine import Engine
from replytrack.milter.journal import Journal, Replayer
from replytrack.store import StoreError
from tests.support.milter_records import DOMAIN, inbound, record_sent, reply_headers


def test_append_then_replay_records_once(tmp_path, store, keyring):
    mid = record_sent(store, keyring, to=["ann@acme.example"])
    msg = inbound("ann@acme.example", reply_headers("ann@acme.example", in_reply_to=f"<{mid}>"))
    journal = Journal(tmp_path / "j.jsonl")
    journal.append(msg, "database is locked")
    journal.append(msg, "database is locked")  # the same mail twice
    assert journal.backlog() == 2
    assert JOURNAL_BACKLOG._value.get() == 2
    line = json.loads((tmp_path / "j.jsonl").read_text().splitlines()[0])
    assert line["inbound"]["queue_id"] == "TESTQID"

    engine = Engine(Config(domain=DOMAIN), keyring, store)
    assert journal.replay(engine.process) == 2
    assert journal.backlog() == 0
    assert JOURNAL_BACKLOG._value.get() == 0
    assert len(store.events(kind="reply")) == 1
    assert store.enrollments(recipient="ann@acme.example")[0].status == "stopped"


def test_replay_keeps_entries_while_store_unavailable(tmp_path):
    journal = Journal(tmp_path / "j.jsonl")
    for i in range(3):
        journal.append(inbound(f"p{i}@acme.example", reply_headers(f"p{i}@acme.example")), "x")
    calls = []

    def unavailable(msg):
        calls.append(msg)
        raise StoreError("database is locked")

    assert journal.replay(unavailable) == 0
    assert journal.backlog() == 3
    # Mail journaled meanwhile is kept too, and the next round replays all of it.
    journal.append(inbound("late@acme.example", reply_headers("late@acme.example")), "x")
    done: list[str] = []
    assert journal.replay(lambda m: done.append(m.envelope_from)) == 3
    assert journal.replay(lambda m: done.append(m.envelope_from)) == 1
    assert done == ["p0@acme.example", "p1@acme.example", "p2@acme.example", "late@acme.example"]
    assert journal.backlog() == 0


def test_poisoned_line_is_dropped_not_blocking(tmp_path):
    journal = Journal(tmp_path / "j.jsonl")
    (tmp_path / "j.jsonl").write_text("not json\n")
    journal.append(inbound("a@acme.example", reply_headers("a@acme.example")), "x")
    done = []
    assert journal.replay(done.append) == 1
    assert journal.backlog() == 0


def test_replayer_thread_replays_and_reactivates(tmp_path, store, keyring):
    mid = record_sent(store, keyring, to=["ann@acme.example"])
    journal = Journal(tmp_path / "j.jsonl")
    journal.append(
        inbound("ann@acme.example", reply_headers("ann@acme.example", in_reply_to=f"<{mid}>")), "x"
    )
    engine = Engine(Config(domain=DOMAIN), keyring, store)
    reactivated = []
    thread = Replayer(
        journal, engine.process, reactivate=lambda: reactivated.append(1), interval=0.05
    )
    thread.start()
    try:
        for _ in range(200):
            if journal.backlog() == 0 and store.events(kind="reply"):
                break
            thread.stopping.wait(0.05)
    finally:
        thread.stop()
        thread.join(5)
    assert len(store.events(kind="reply")) == 1
    assert reactivated
