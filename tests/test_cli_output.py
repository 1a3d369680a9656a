# ruff: noqa: F811  (pytest fixtures imported from tests.test_cli are parameters)
"""How listings read (issue 17 item 7): a cut at --limit is said, a closed pipe ends quietly,
--wide, who acted and why in every format, human --since and --tz, --recipient filters,
imported campaigns counted, a progress bar on import."""

from __future__ import annotations

import csv
import io
import json
import mailbox
import os
import pty
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from replytrack.cli import cli
from replytrack.store.sqlite import SQLiteStore
from tests.support.env import clean_environ
from tests.support.milter_records import record_mail
from tests.test_cli import Invoke, _mail, _reply, db, run, store  # noqa: F401  (fixtures)

REPLYTRACK = Path(sys.executable).with_name("replytrack")
LONG_ID = "a-very-long-message-id-that-a-table-would-cut-0123456789abcdef@mail.example.com"


def test_a_list_cut_at_limit_says_so_on_stderr(run: Invoke, store: SQLiteStore) -> None:
    now = time.time()
    for n in range(3):
        record_mail(store, f"m{n}@mail.example.com", "spring", f"p{n}@x.org", at=now - n)
        _reply(store, "spring", f"p{n}@x.org", f"m{n}@mail.example.com", now - n)
    for command, what in (("messages", "messages"), ("events", "events")):
        cut = run(command, "--limit", "2", "--json")
        assert len(json.loads(cut.stdout)) == 2  # stdout stays valid JSON
        assert f"(showing the first 2 {what}; there are more: raise --limit)" in cut.stderr
        whole = run(command, "--limit", "3", "--json")
        assert len(json.loads(whole.stdout)) == 3
        assert whole.stderr == ""
    assert "there are more" in run("enrollments", "--limit", "1").stderr
    assert run("enrollments", "--limit", "3").stderr == ""


def test_a_closed_pipe_ends_the_listing_quietly(db: Path, store: SQLiteStore) -> None:
    now = time.time()
    for n in range(50):
        record_mail(store, f"m{n}@mail.example.com", "spring", f"p{n}@x.org", at=now - n)
    # The reader is gone before we write: as `replytrack messages | head` once head exits.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [str(REPLYTRACK), "--db", str(db), "messages"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            env=clean_environ(),
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert done.stderr == ""  # no "Error: Broken pipe", no "Exception ignored"
    assert done.returncode == 141  # as a process ended by SIGPIPE


def test_wide_shows_whole_message_ids(run: Invoke, store: SQLiteStore) -> None:
    record_mail(store, LONG_ID, "spring", "ann@x.org", at=time.time())
    assert LONG_ID not in run("messages").stdout
    assert "..." in run("messages").stdout
    assert LONG_ID in run("messages", "--wide").stdout


def test_events_show_who_acted_and_why_in_every_format(
    run: Invoke, store: SQLiteStore, monkeypatch
) -> None:
    record_mail(store, "m1@mail.example.com", "spring", "ann@x.org", at=time.time() - 60)
    _reply(store, "spring", "ann@x.org", "m1@mail.example.com", time.time() - 30)
    monkeypatch.setenv("SUDO_USER", "carol")
    run(
        "resume",
        "--campaign",
        "spring",
        "--recipient",
        "ann@x.org",
        "--force",
        "--reason",
        "asked by phone",
    )

    events = json.loads(run("events", "--json").stdout)
    assert [(e["kind"], e["actor"], e["reason"]) for e in events] == [
        ("resumed", "carol", "asked by phone"),
        ("reply", "milter", "reply"),
    ]
    rows = list(csv.DictReader(io.StringIO(run("events", "--csv").stdout)))
    assert [(r["kind"], r["actor"], r["reason"]) for r in rows] == [
        ("resumed", "carol", "asked by phone"),
        ("reply", "milter", "reply"),
    ]
    table = run("events").stdout.splitlines()
    assert "actor" in table[0].split() and "reason" in table[0].split()
    assert "carol" in table[2] and "asked by phone" in table[2]


def test_since_takes_words_and_tz_shows_times_in_a_zone(run: Invoke, store: SQLiteStore) -> None:
    now = time.time()
    record_mail(store, "old@mail.example.com", "spring", "ann@x.org", at=now - 3 * 86400)
    record_mail(store, "new@mail.example.com", "spring", "bob@x.org", at=now - 60)

    def ids(*args: str) -> list[str]:
        return [m["message_id"] for m in json.loads(run("messages", *args, "--json").stdout)]

    assert ids("--since", "yesterday") == ["new@mail.example.com"]
    assert ids("--since", "4 days ago") == ["new@mail.example.com", "old@mail.example.com"]
    assert ids("--since", "yesterday", "--tz", "local") == ["new@mail.example.com"]
    assert "is not a time" in run("messages", "--since", "sometime soon", code=2).output
    assert "in the future" in run("messages", "--since", "in 3 days", code=2).output

    utc = json.loads(run("messages", "--json").stdout)[0]["sent_at"]
    assert utc.endswith("Z")
    tokyo = json.loads(run("messages", "--json", "--tz", "Asia/Tokyo").stdout)[0]["sent_at"]
    assert tokyo.endswith("+09:00")
    assert tokyo[11:13] == f"{(int(utc[11:13]) + 9) % 24:02d}"
    assert "+09:00" in run("messages", "--tz", "Asia/Tokyo").stdout
    assert "is not a time zone" in run("messages", "--tz", "Mars/Olympus", code=2).output


def test_recipient_filter_on_messages_and_events(run: Invoke, store: SQLiteStore) -> None:
    now = time.time()
    record_mail(store, "ann1@mail.example.com", "spring", "ann@x.org", "bob@x.org", at=now - 5000)
    # Newer mail to others than the first window the filter reads: it reads further back.
    for n in range(600):
        record_mail(store, f"bob{n}@mail.example.com", "spring", "bob@x.org", at=now - 4000 + n)
    _reply(store, "spring", "ann@x.org", "ann1@mail.example.com", now - 10)

    mine = json.loads(run("messages", "--recipient", "ANN@x.org", "--json").stdout)
    assert [m["message_id"] for m in mine] == ["ann1@mail.example.com"]
    cut = run("messages", "--recipient", "bob@x.org", "--limit", "5", "--json")
    assert len(json.loads(cut.stdout)) == 5 and "there are more" in cut.stderr
    events = json.loads(run("events", "--recipient", "ann@x.org", "--json").stdout)
    assert [(e["kind"], e["sender"]) for e in events] == [("reply", "ann@x.org")]
    assert json.loads(run("events", "--recipient", "bob@x.org", "--json").stdout) == []


def test_recipient_filter_counts_toward_limit_on_both_backends(
    any_store: Any, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--limit 1 --recipient X`` shows X's newest row though newer rows for others exist:
    the store filters before it cuts (SQLite and PostgreSQL)."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("REPLYTRACK_") and name != "REPLYTRACK_CONFIG":
            monkeypatch.delenv(name)
    if isinstance(any_store, SQLiteStore):
        db = str(any_store.path)
    else:
        db = request.getfixturevalue("pg_url")
    now = time.time()
    record_mail(any_store, "ann1@mail.example.com", "spring", "ann@x.org", at=now - 900)
    _reply(any_store, "spring", "ann@x.org", "ann1@mail.example.com", now - 800)
    for n in range(3):
        record_mail(any_store, f"bob{n}@mail.example.com", "spring", "bob@x.org", at=now - 90 + n)
        _reply(any_store, "spring", "bob@x.org", f"bob{n}@mail.example.com", now - 50 + n)

    def listing(*args: str) -> tuple[list[dict[str, Any]], str]:
        result = CliRunner().invoke(
            cli, ["--db", db, "--domain", "mail.example.com", *args, "--limit", "1", "--json"]
        )
        assert result.exit_code == 0, (result.output, result.exception)
        return json.loads(result.stdout), result.stderr

    mine, said = listing("messages", "--recipient", "ANN@x.org")
    assert [m["message_id"] for m in mine] == ["ann1@mail.example.com"] and said == ""
    events, said = listing("events", "--recipient", "ann@x.org")
    assert [(e["kind"], e["sender"]) for e in events] == [("reply", "ann@x.org")] and said == ""
    bobs, said = listing("messages", "--recipient", "bob@x.org")
    assert [m["message_id"] for m in bobs] == ["bob2@mail.example.com"]
    assert "there are more" in said


def test_import_shows_progress_on_a_terminal(db: Path, tmp_path: Path) -> None:
    path = tmp_path / "sent.mbox"
    box = mailbox.mbox(path)
    for n in range(30):
        box.add(_mail(f"<old-{n}@client.example.com>", f"p{n}@x.org"))
    box.close()
    env = clean_environ(REPLYTRACK_DB=str(db), REPLYTRACK_DOMAIN="mail.example.com")
    subprocess.run([str(REPLYTRACK), "init"], env=env, check=True, capture_output=True)
    # stderr on a terminal (a pty), stdout a pipe: the bar goes to the terminal only.
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.Popen(
            [str(REPLYTRACK), "import", str(path), "--campaign", "spring"],
            stdout=subprocess.PIPE,
            stderr=terminal,
            env=env,
            text=True,
        )
        os.close(terminal)
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the process closed the terminal
                break
            if not chunk:
                break
            shown += chunk
        out, _ = proc.communicate(timeout=60)
    finally:
        os.close(controller)
    assert proc.returncode == 0
    assert "importing" in shown.decode() and "30/30" in shown.decode()
    assert out.strip() == "imported 30 message(s); 0 already recorded; 0 skipped (no Message-ID)"
    # Not on a terminal (cron, a log): no bar at all.
    again = subprocess.run(
        [str(REPLYTRACK), "import", str(path)], env=env, capture_output=True, text=True
    )
    assert again.returncode == 0 and again.stderr == ""
