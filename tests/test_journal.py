"""The fail-open journal: appended when the store is unavailable, replayed when it is back,
idempotently; a chain of locations that ends in the log, replayed by hand from there; the
milter flags a reply whose record failed; doctor writes to the journal to check it."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import Milter
import Milter.test  # NOREPLY reads as CONTINUE, as pymilter's own tests expect
import pytest
from click.testing import CliRunner

from replytrack import tokens
from replytrack.cli import cli
from replytrack.config import Config
from replytrack.metrics import JOURNAL_BACKLOG
from replytrack.milter import adapter
from replytrack.milter.engine import Engine, Inbound
from replytrack.milter.journal import (
    LOG_ENTRY_LIMIT,
    LOG_MARKER,
    Journal,
    JournalChain,
    Replayer,
    entries_from_log,
    entry,
    log_line,
)
from replytrack.store import StoreError
from replytrack.store.sqlite import SQLiteStore
from replytrack.tokens import Keyring
from tests.support.faults import set_immutable
from tests.support.milter_records import DOMAIN, inbound, record_sent, reply_headers
from tests.test_milter_adapter import TestCtx


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


# --- the chain of locations: journal, fallback, log ---------------------------------------------
def _blocked(tmp_path: Path, name: str) -> Path:
    """A journal path no process can create: its directory's name is taken by a file."""
    (tmp_path / name).write_text("not a directory\n")
    return tmp_path / name / "journal"


def _reply(store: SQLiteStore, keyring: Keyring, who: str = "ann@acme.example") -> Inbound:
    mid = record_sent(store, keyring, to=[who])
    headers = reply_headers(who, in_reply_to=f"<{mid}>", message_id=f"<re-{who}>")
    return inbound(who, headers)


def test_chain_takes_the_second_location_when_the_journal_cannot_be_written(
    tmp_path, store, keyring, caplog
):
    fallback = tmp_path / "run" / "journal"
    chain = JournalChain([Journal(_blocked(tmp_path, "spool")), Journal(fallback)])
    msg = _reply(store, keyring)
    with caplog.at_level(logging.ERROR):
        assert chain.append(msg, "attempt to write a readonly database") == fallback
        assert chain.append(msg, "attempt to write a readonly database") == fallback
    # The failing location is named once, not for every mail.
    assert caplog.text.count("not writable") == 1
    assert LOG_MARKER not in caplog.text
    assert chain.backlog() == 2

    engine = Engine(Config(domain=DOMAIN), keyring, store)
    assert chain.replay(engine.process) == 2
    assert chain.backlog() == 0
    assert len(store.events(kind="reply")) == 1
    assert store.enrollments(recipient="ann@acme.example")[0].status == "stopped"


def test_chain_replays_every_location(tmp_path, store, keyring):
    first, second = Journal(tmp_path / "a" / "journal"), Journal(tmp_path / "b" / "journal")
    first.append(_reply(store, keyring, "ann@acme.example"), "x")
    second.append(_reply(store, keyring, "bob@acme.example"), "x")
    chain = JournalChain([first, second])
    assert chain.replay(Engine(Config(domain=DOMAIN), keyring, store).process) == 2
    assert {e.status for e in store.enrollments()} == {"stopped"}
    assert chain.backlog() == 0


def test_private_fallback_refuses_a_directory_someone_else_made(tmp_path, store, keyring):
    # In a shared temporary directory another user may have taken the name first.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "replytrack-x").symlink_to(elsewhere)
    journal = Journal(tmp_path / "replytrack-x" / "journal", private=True)
    with pytest.raises(OSError):
        journal.append(_reply(store, keyring), "x")
    assert list(elsewhere.iterdir()) == []
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o777)
    loose.chmod(0o777)
    with pytest.raises(OSError):
        Journal(loose / "journal", private=True).append(_reply(store, keyring), "x")
    mine = Journal(tmp_path / "mine" / "journal", private=True)
    mine.append(_reply(store, keyring), "x")
    assert (tmp_path / "mine").stat().st_mode & 0o777 == 0o700


def _site_config(tmp_path: Path, keyring: Keyring, journal: Path, fallback: Path) -> Path:
    tokens.write_keyring(tmp_path / "rt.secret", keyring)
    config = tmp_path / "replytrack.toml"
    config.write_text(
        f'db = "{tmp_path / "replytrack.db"}"\ndomain = "{DOMAIN}"\n'
        f'secret_file = "{tmp_path / "rt.secret"}"\n'
        f'[milter]\njournal = "{journal}"\njournal_fallback = "{fallback}"\n'
    )
    return config


def test_no_location_writable_logs_the_entry_and_journal_replay_applies_it(
    tmp_path, store, keyring, caplog
):
    chain = JournalChain([Journal(_blocked(tmp_path, "spool")), Journal(_blocked(tmp_path, "run"))])
    msg = _reply(store, keyring)
    with caplog.at_level(logging.ERROR, logger="replytrack.milter.journal"):
        assert chain.append(msg, "attempt to write a readonly database") is None
    [record] = [r for r in caplog.records if LOG_MARKER in r.getMessage()]
    assert record.levelno == logging.ERROR
    text = record.getMessage()
    assert "\n" not in text
    data = json.loads(text.split(LOG_MARKER, 1)[1])
    assert data["inbound"]["queue_id"] == "TESTQID"
    assert data["reason"] == "attempt to write a readonly database"
    assert store.enrollments(recipient="ann@acme.example")[0].status == "active"

    # The log as a syslog file holds it, among other lines.
    log_file = tmp_path / "mail.log"
    log_file.write_text(
        "Dec  6 08:00:00 mx replytrack[812]: INFO replytrack.milter: listening\n"
        f"Dec  6 08:00:01 mx replytrack[812]: ERROR replytrack.milter.journal: {text}\n"
    )
    config = _site_config(tmp_path, keyring, tmp_path / "j1", tmp_path / "j2")
    args = ["-c", str(config), "journal", "replay", "--from-log", str(log_file), "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.output)
    assert row["outcome"] == "recorded" and row["kind"] == "reply" and row["line"] == 2
    assert store.enrollments(recipient="ann@acme.example")[0].status == "stopped"
    # Twice is once: the event's dedupe key is the inbound mail's.
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0, again.output
    assert json.loads(again.output)[0]["outcome"] == "already recorded"
    assert len(store.events(kind="reply")) == 1


def test_journal_replay_from_log_names_an_entry_cut_short(tmp_path, store, keyring):
    log_file = tmp_path / "mail.log"
    log_file.write_text(f'ERROR x: {LOG_MARKER} {{"reason":"x","inbound":{{"envelope_\n')
    config = _site_config(tmp_path, keyring, tmp_path / "j1", tmp_path / "j2")
    result = CliRunner().invoke(
        cli, ["-c", str(config), "journal", "replay", "--from-log", str(log_file)]
    )
    assert result.exit_code == 1
    assert "1 entry(ies) could not be read" in result.output
    assert "Traceback" not in result.output


def test_journal_replay_empties_the_configured_locations(tmp_path, store, keyring):
    journal, fallback = tmp_path / "spool" / "journal", tmp_path / "run" / "journal"
    Journal(journal).append(_reply(store, keyring, "ann@acme.example"), "x")
    Journal(fallback).append(_reply(store, keyring, "bob@acme.example"), "x")
    config = _site_config(tmp_path, keyring, journal, fallback)
    result = CliRunner().invoke(cli, ["-c", str(config), "journal", "replay"])
    assert result.exit_code == 0, result.output
    assert "replayed 2 journaled mail(s); 0 waiting" in result.output
    assert {e.status for e in store.enrollments()} == {"stopped"}


def test_log_entry_stays_below_the_line_limit(store, keyring):
    who = "ann@acme.example"
    mid = record_sent(store, keyring, to=[who])
    msg = inbound(who, reply_headers(who, in_reply_to=f"<{mid}>"), body=b"x" * 200_000)
    line = log_line(entry(msg, "x"))
    assert len(line) <= LOG_ENTRY_LIMIT
    [(_, data, problem)] = list(entries_from_log([f"ERROR {LOG_MARKER} {line}"]))
    assert problem == "" and data is not None and data["body_cut"] is True
    replayed = Inbound.from_json(data["inbound"])
    assert replayed.headers == msg.headers
    assert replayed.body and replayed.body == b"x" * len(replayed.body)


# --- the milter: the header does not wait for the write ------------------------------------------
class WritesFail:
    """The real store for reads; every write fails as on a read-only filesystem (fault
    injection for hosts where ``chattr +i`` is not available)."""

    WRITES = ("record_event", "remember_ooo", "set_status")

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store

    def __getattr__(self, name: str) -> object:
        if name in self.WRITES:

            def fail(*args: object, **kwargs: object) -> None:
                raise StoreError("store write failed: attempt to write a readonly database")

            return fail
        return getattr(self.store, name)


def test_reply_is_flagged_when_only_the_write_fails(tmp_path, store, keyring):
    mid = record_sent(store, keyring, to=["ann@acme.example"], campaign="c-ro")
    fallback = tmp_path / "run" / "journal"
    chain = JournalChain([Journal(_blocked(tmp_path, "spool")), Journal(fallback)])
    engine = Engine(Config(domain=DOMAIN), keyring, WritesFail(store))  # type: ignore[arg-type]
    adapter.install(engine, chain)
    ctx = TestCtx()
    assert ctx._connect() == Milter.CONTINUE
    try:
        raw = (
            f"From: ann@acme.example\nMessage-ID: <ro@acme.example>\nIn-Reply-To: <{mid}>\n"
            "Subject: Re: Hello\n\nYes, call me.\n"
        )
        rc = ctx._feedFile(io.BytesIO(raw.encode()), "ann@acme.example", "sales@vendor.example")
    finally:
        ctx._close()
    assert rc == Milter.ACCEPT
    # The match was read: the reply is flagged although nothing could be recorded.
    assert ctx._msg.get_all("X-ReplyTrack") == ["reply; campaign=c-ro; match=in-reply-to"]
    assert store.enrollments(recipient="ann@acme.example")[0].status == "active"
    [line] = fallback.read_text().splitlines()
    assert json.loads(line)["verdict"]["kind"] == "reply"
    assert chain.replay(Engine(Config(domain=DOMAIN), keyring, store).process) == 1
    assert store.enrollments(recipient="ann@acme.example")[0].status == "stopped"


# --- doctor ------------------------------------------------------------------------------------
def _doctor_journal(config: Path) -> tuple[int, list[dict[str, str]]]:
    skips = ["--skip", "proxy", "--skip", "milter", "--skip", "postfix"]
    result = CliRunner().invoke(cli, ["-c", str(config), "doctor", *skips, "--json"])
    assert "Traceback" not in result.output
    return result.exit_code, [f for f in json.loads(result.output) if f["check"] == "journal"]


def test_doctor_fails_on_a_journal_it_cannot_write(tmp_path, store, keyring):
    spool = tmp_path / "spool"
    spool.mkdir()
    config = _site_config(tmp_path, keyring, spool / "journal", tmp_path / "run" / "journal")
    code, findings = _doctor_journal(config)
    assert [f["status"] for f in findings] == ["OK"], findings
    assert list(spool.iterdir()) == []  # the probe file is gone

    if not set_immutable([spool], True):
        pytest.skip("chattr +i is not supported on this filesystem")
    try:
        code, findings = _doctor_journal(config)
    finally:
        set_immutable([spool], False)
    assert code == 1
    [fail] = [f for f in findings if f["status"] == "FAIL"]
    assert str(spool / "journal") in fail["message"]
    assert list(spool.iterdir()) == []


def test_doctor_fails_on_a_missing_journal_directory(tmp_path, store, keyring):
    config = _site_config(tmp_path, keyring, tmp_path / "nowhere" / "journal", tmp_path / "run")
    code, findings = _doctor_journal(config)
    assert code == 1
    [fail] = [f for f in findings if f["status"] == "FAIL"]
    assert f"{tmp_path / 'nowhere'} does not exist" in fail["message"]
    assert f"install -d -m 0750 -o replytrack -g replytrack {tmp_path / 'nowhere'}" in fail["fix"]
