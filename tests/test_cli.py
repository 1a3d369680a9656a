"""The ops CLI through click's CliRunner against a real SQLite store (and once as a process)."""

from __future__ import annotations

import json
import mailbox
import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from replytrack.cli import cli
from replytrack.config import load_config
from replytrack.store import Event, StatusChange
from replytrack.store.sqlite import SQLiteStore
from replytrack.tokens import load_keyring
from tests.conftest import free_port
from tests.support.env import clean_environ
from tests.support.milter_records import record_mail

REPLYTRACK = Path(sys.executable).with_name("replytrack")

Invoke = Callable[..., Result]


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # No ./replytrack.toml or REPLYTRACK_* from the developer's shell leaks in.
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        # All but REPLYTRACK_CONFIG=none (conftest): no /etc/replytrack either.
        if name.startswith("REPLYTRACK_") and name != "REPLYTRACK_CONFIG":
            monkeypatch.delenv(name)
    return tmp_path / "replytrack.db"


@pytest.fixture
def run(db: Path) -> Invoke:
    runner = CliRunner()

    def invoke(*args: str, code: int = 0) -> Result:
        result = runner.invoke(cli, ["--db", str(db), "--domain", "mail.example.com", *args])
        assert result.exit_code == code, (result.output, result.exception)
        if code != 0:
            # A user error is a message, never a traceback.
            assert isinstance(result.exception, SystemExit), result.exception
            assert "Traceback" not in result.output
        return result

    return invoke


@pytest.fixture
def store(db: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(db)
    yield s
    s.close_all()


def _reply(store: SQLiteStore, campaign: str, sender: str, message_id: str, at: float) -> None:
    store.record_event(
        Event(
            kind="reply",
            created_at=at,
            campaign=campaign,
            message_id=message_id,
            sender=sender,
            recipient=sender,
            relation="original_recipient",
            evidence=("in-reply-to",),
        ),
        set_status=[StatusChange(campaign, sender, "stopped", "reply")],
    )


def test_every_command_has_help_and_example() -> None:
    runner = CliRunner()
    for name, command in cli.commands.items():
        assert command.help and command.help.strip(), name
        result = runner.invoke(cli, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert "Example:" in result.output, name
        example = result.output.split("Example:", 1)[1]
        assert "replytrack" in example, name


def test_contract_commands_are_registered() -> None:
    for name in (
        "init", "events", "campaigns", "enrollments", "stop", "resume", "doctor",
        "import", "prune", "export", "notify", "messages",
    ):  # fmt: skip
        assert name in cli.commands, name


def test_init_creates_key_store_and_config(run: Invoke, db: Path, tmp_path: Path) -> None:
    config_file = tmp_path / "etc" / "replytrack.toml"
    result = run("init", "--write-config", str(config_file))
    key = tmp_path / "replytrack.secret"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert db.exists()
    assert "created key file" in result.output
    # The written file is a valid config naming the same store, key and domain.
    config = load_config(config_file, env={})
    assert config.db == str(db.resolve())
    assert config.domain == "mail.example.com"
    assert config.secret_path == key.resolve()
    assert "#" in config_file.read_text()
    first = load_keyring(key)
    # Running again replaces nothing; the config file needs --force.
    run("init", "--write-config", str(config_file), code=1)
    assert load_keyring(key) == first
    run("init", "--write-config", str(config_file), "--force")
    run("init", "--rotate-key")
    rotated = load_keyring(key)
    assert len(rotated.keys) == 2 and rotated.keys[1] == first.keys[0]


def test_listings_json_table_csv(run: Invoke, store: SQLiteStore) -> None:
    now = time.time()
    record_mail(store, "a1@mail.example.com", "spring", "ann@x.org", "bob@x.org", at=now - 100)
    record_mail(store, "b1@mail.example.com", "fall", "cy@y.org", at=now - 10 * 86400)
    _reply(store, "spring", "ann@x.org", "a1@mail.example.com", now - 50)

    events = json.loads(run("events", "--json").output)
    assert [e["kind"] for e in events] == ["reply"]
    for key in ("kind", "message_id", "campaign", "sender", "evidence"):
        assert key in events[0]
    assert events[0]["evidence"] == ["in-reply-to"]
    assert json.loads(run("events", "--kind", "bounce", "--json").output) == []
    assert json.loads(run("events", "--campaign", "fall", "--json").output) == []

    campaigns = {c["campaign"]: c for c in json.loads(run("campaigns", "--json").output)}
    assert campaigns["spring"]["sent"] == 1
    assert campaigns["spring"]["replied"] == 1
    assert campaigns["spring"]["stopped"] == 1
    assert campaigns["fall"]["replied"] == 0

    stopped = json.loads(run("enrollments", "--status", "stopped", "--json").output)
    assert [(e["campaign"], e["recipient"], e["status"], e["reason"]) for e in stopped] == [
        ("spring", "ann@x.org", "stopped", "reply")
    ]
    mine = json.loads(run("enrollments", "--recipient", "BOB@x.org", "--json").output)
    assert [e["recipient"] for e in mine] == ["bob@x.org"]

    table = run("campaigns").output.splitlines()
    assert table[0].split()[:5] == ["campaign", "status", "sent", "recipients", "replied"]
    assert any(line.startswith("spring") for line in table)
    csv_lines = run("enrollments", "--csv").output.splitlines()
    assert csv_lines[0] == "campaign,recipient,status,reason,since,until"
    assert len(csv_lines) == 4
    # --since filters messages by age.
    recent = json.loads(run("messages", "--since", "7d", "--json").output)
    assert [m["campaign"] for m in recent] == ["spring"]


def test_stop_and_resume_record_who_and_why(
    run: Invoke, store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SUDO_USER", "alice")
    now = time.time()
    record_mail(store, "a1@mail.example.com", "spring", "ann@x.org", "bob@x.org", at=now)
    record_mail(store, "b1@mail.example.com", "fall", "ann@x.org", at=now)

    run("stop", "--campaign", "spring", "--reason", "pricing changed")
    assert {e.recipient: e.status for e in store.enrollments(campaign="spring")} == {
        "ann@x.org": "stopped",
        "bob@x.org": "stopped",
    }
    assert store.enrollments(campaign="fall")[0].status == "active"
    (event,) = store.events(kind="stopped")
    assert event.actor == "alice" and event.campaign == "spring"
    assert event.detail["reason"] == "pricing changed"
    assert event.detail["count"] == 2
    assert store.outbox_counts()["pending"] == 1  # notified

    run("resume", "--campaign", "spring", "--recipient", "bob@x.org")
    assert store.enrollments(recipient="bob@x.org")[0].status == "active"
    assert store.enrollments(recipient="ann@x.org", campaign="spring")[0].status == "stopped"
    assert store.events(kind="resumed")[0].recipient == "bob@x.org"

    # A recipient stop covers every campaign; a pre-emptive stop enrolls as stopped.
    run("stop", "--recipient", "ann@x.org")
    assert {e.status for e in store.enrollments(recipient="ann@x.org")} == {"stopped"}
    run("stop", "--campaign", "winter", "--recipient", "dan@z.org")
    assert store.enrollments(campaign="winter")[0].status == "stopped"


def test_resume_of_bounced_or_replied_needs_force(run: Invoke, store: SQLiteStore) -> None:
    now = time.time()
    record_mail(store, "a1@mail.example.com", "spring", "ann@x.org", "bob@x.org", at=now)
    store.record_event(
        Event(kind="bounce", created_at=now, campaign="spring", recipient="bob@x.org"),
        set_status=[StatusChange("spring", "bob@x.org", "bounced", "5.1.1 user unknown")],
    )
    _reply(store, "spring", "ann@x.org", "a1@mail.example.com", now)
    result = run("resume", "--recipient", "bob@x.org", code=1)
    assert "bounced" in result.output and "--force" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert store.enrollments(recipient="bob@x.org")[0].status == "bounced"
    run("resume", "--campaign", "spring", code=1)
    run("resume", "--recipient", "bob@x.org", "--force")
    assert store.enrollments(recipient="bob@x.org")[0].status == "active"
    run("resume", "--campaign", "spring", "--force")
    assert store.enrollments(recipient="ann@x.org")[0].status == "active"


def test_user_errors_are_one_line(run: Invoke, db: Path, tmp_path: Path) -> None:
    missing = CliRunner().invoke(cli, ["--db", str(tmp_path / "nope.db"), "events"])
    assert missing.exit_code == 1
    assert "does not exist" in missing.output and "Traceback" not in missing.output
    run("init")
    run("stop", code=2)
    run("stop", "--recipient", "nobody@x.org", code=1)
    run("stop", "--recipient", "not-an-address", code=2)
    run("events", "--since", "sometime soon", code=2)  # words that name no time
    run("events", "--kind", "nonsense", code=2)
    run("import", str(tmp_path / "missing.mbox"), code=2)
    run("prune", "--older-than", "soon", code=2)


def _mail(msgid: str | None, to: str, cc: str | None = None, campaign: str | None = None) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Sales <sales@example.com>"
    msg["To"] = to
    if cc:
        msg["Cc"] = cc
    msg["Subject"] = "Quick question"
    msg["Date"] = "Mon, 02 Nov 2026 10:00:00 +0000"
    if msgid:
        msg["Message-ID"] = msgid
    if campaign:
        msg["X-ReplyTrack-Campaign"] = campaign
    msg.set_content("Hi,\nare you free next week?\n")
    return msg.as_bytes()


@pytest.mark.parametrize("kind", ["mbox", "maildir"])
def test_import_backfills_sent_mail_once(
    run: Invoke, store: SQLiteStore, tmp_path: Path, kind: str
) -> None:
    path = tmp_path / ("Sent" if kind == "maildir" else "sent.mbox")
    box: mailbox.Mailbox = mailbox.Maildir(path) if kind == "maildir" else mailbox.mbox(path)
    box.add(_mail("<old-1@client.example.com>", "Ann <ann@x.org>", cc="bob@x.org"))
    box.add(_mail("<old-2@client.example.com>", "cy@y.org", campaign="fall"))
    box.add(_mail(None, "dan@z.org"))
    box.close()

    run("init")
    result = run("import", str(path), "--campaign", "spring")
    assert "imported 2 message(s); 0 already recorded; 1 skipped" in result.output
    (first,) = store.find_sent(["old-1@client.example.com"])
    # Imported mail went out: it is relayed mail, and its campaign counts it as sent.
    assert first.status == "relayed"
    sent = {c["campaign"]: c["sent"] for c in json.loads(run("campaigns", "--json").output)}
    assert sent == {"spring": 1, "fall": 1}
    assert first.campaign == "spring"
    assert first.original_message_id == "old-1@client.example.com"
    assert first.message_id.endswith("@mail.example.com")
    assert [(r.address, r.role) for r in first.recipients] == [
        ("ann@x.org", "to"),
        ("bob@x.org", "cc"),
    ]
    assert first.created_at == pytest.approx(1793613600.0)
    assert store.find_sent(["old-2@client.example.com"])[0].campaign == "fall"
    # Replies to backfilled mail find an enrollment to stop.
    assert store.enrollments(campaign="spring", recipient="bob@x.org")[0].status == "active"

    again = run("import", str(path), "--campaign", "spring")
    assert "imported 0 message(s); 2 already recorded" in again.output
    assert len(store.messages()) == 2


def test_import_rejects_wrong_format(run: Invoke, tmp_path: Path) -> None:
    run("init")
    (tmp_path / "plain").mkdir()
    assert "not a Maildir" in run("import", str(tmp_path / "plain"), code=1).output


def test_prune_drops_old_records_only(run: Invoke, store: SQLiteStore) -> None:
    now = time.time()
    old = now - 400 * 86400
    record_mail(store, "old@mail.example.com", "spring", "ann@x.org", at=old)
    record_mail(store, "new@mail.example.com", "spring", "bob@x.org", at=now)
    _reply(store, "spring", "ann@x.org", "old@mail.example.com", old)  # outbox still pending
    store.record_event(Event(kind="unrelated", created_at=old), notify=False)
    store.record_event(Event(kind="unrelated", created_at=now), notify=False)

    dry = run("prune", "--dry-run")
    assert "would drop 1 message(s), 1 event(s), 0 outbox row(s)" in dry.output
    assert len(store.messages()) == 2 and len(store.events()) == 3

    run("prune")
    assert [m.message_id for m in store.messages()] == ["new@mail.example.com"]
    # The old reply waits for its notification; the old unrelated event is gone.
    assert sorted(e.kind for e in store.events()) == ["reply", "unrelated"]
    assert store.enrollments(recipient="ann@x.org")  # enrollments are state, kept

    (item,) = store.claim_outbox("t", now=now, lease_seconds=10)
    store.finish_outbox_attempt(item.id, "t", now=now, delivered=True)
    assert "dropped 0 message(s), 1 event(s), 1 outbox row(s)" in run("prune").output
    assert [e.kind for e in store.events()] == ["unrelated"]
    assert "dropped 1 message(s)" in run("prune", "--older-than", "2099-01-01").output


def test_export_jsonl_and_csv(run: Invoke, store: SQLiteStore, tmp_path: Path) -> None:
    now = time.time()
    record_mail(store, "a1@mail.example.com", "spring", "ann@x.org", "bob@x.org", at=now)
    _reply(store, "spring", "ann@x.org", "a1@mail.example.com", now)
    lines = run("export", "messages").output.splitlines()
    (message,) = [json.loads(line) for line in lines]
    assert message["message_id"] == "a1@mail.example.com"
    assert message["recipients"] == ["ann@x.org", "bob@x.org"]
    events = [json.loads(line) for line in run("export", "events").output.splitlines()]
    assert events[0]["kind"] == "reply"
    out = tmp_path / "enrollments.csv"
    run("export", "enrollments", "--format", "csv", "-o", str(out))
    rows = out.read_text().splitlines()
    assert rows[0].startswith("campaign,recipient,status,reason")
    assert len(rows) == 3


def test_installed_command_runs_as_a_process(db: Path, tmp_path: Path) -> None:
    assert REPLYTRACK.exists(), f"{REPLYTRACK} missing: pip install -e ."
    env = clean_environ()
    base = [str(REPLYTRACK), "--db", str(db), "--domain", "mail.example.com"]
    done = subprocess.run([*base, "init"], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    done = subprocess.run(
        [*base, "stop", "--campaign", "spring", "--recipient", "ann@x.org"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    done = subprocess.run(
        [*base, "enrollments", "--json"], capture_output=True, text=True, env=env, timeout=60
    )
    assert json.loads(done.stdout)[0]["status"] == "stopped"
    bad = subprocess.run(
        [str(REPLYTRACK), "--db", str(tmp_path / "none.db"), "campaigns"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 1
    assert bad.stderr.startswith("Error: ") and "Traceback" not in bad.stderr


def test_notify_command(run: Invoke, store: SQLiteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "no webhooks configured" in run("notify", "--once", code=1).output
    store.record_event(Event(kind="stopped", created_at=time.time(), campaign="c"))
    # Nothing listens on this URL: the event stays queued for a retry.
    monkeypatch.setenv("REPLYTRACK_NOTIFY_WEBHOOKS", f"http://127.0.0.1:{free_port()}/x")
    monkeypatch.setenv("REPLYTRACK_NOTIFY_SECRET", "cli-test-secret")
    assert "tried 1; pending 1, dead 0" in run("notify", "--once").output


def test_campaign_stop_is_a_campaign_status(
    run: Invoke, store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SUDO_USER", "alice")
    record_mail(store, "a1@mail.example.com", "spring", "ann@x.org", at=time.time())
    run("stop", "--campaign", "spring", "--reason", "pricing changed")
    # Addresses the campaign has not mailed yet are blocked too.
    blocked = store.blocked_enrollments("spring", ["ann@x.org", "new@y.org"])
    assert {a: (e.status, e.reason) for a, e in blocked.items()} == {
        "ann@x.org": ("stopped", "campaign stopped: pricing changed"),
        "new@y.org": ("stopped", "campaign stopped: pricing changed"),
    }
    (row,) = json.loads(run("campaigns", "--json").output)
    assert (row["campaign"], row["status"], row["status_reason"]) == (
        "spring",
        "stopped",
        "pricing changed",
    )
    assert "stopped" in run("campaigns").output.splitlines()[-1]
    (event,) = store.events(kind="stopped")
    assert event.detail["scope"] == "campaign" and event.actor == "alice"

    # Resuming one recipient leaves the campaign stopped; resuming the campaign clears it.
    run("resume", "--campaign", "spring", "--recipient", "ann@x.org")
    assert "ann@x.org" in store.blocked_enrollments("spring", ["ann@x.org"])
    run("resume", "--campaign", "spring")
    assert store.blocked_enrollments("spring", ["ann@x.org", "new@y.org"]) == {}
    (row,) = json.loads(run("campaigns", "--json").output)
    assert row["status"] == "active" and row["status_reason"] is None

    # A campaign can be stopped before it sends anything.
    run("stop", "--campaign", "autumn")
    assert set(store.blocked_enrollments("autumn", ["new@y.org"])) == {"new@y.org"}
    run("resume", "--campaign", "autumn")
    run("resume", "--campaign", "autumn", code=1)  # nothing left to resume


# --- only init creates a store or a key ------------------------------------------------------

# Every command that opens the store, with arguments that would otherwise run.
STORE_COMMANDS = [
    ["messages"],
    ["events", "--json"],
    ["campaigns"],
    ["enrollments", "--csv"],
    ["stop", "--campaign", "spring"],
    ["resume", "--campaign", "spring"],
    ["prune", "--dry-run"],
    ["export", "events"],
]


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("args", STORE_COMMANDS, ids=lambda a: a[0])
def test_commands_refuse_a_missing_store_and_create_nothing(
    db: Path, tmp_path: Path, args: list[str]
) -> None:
    wrong = tmp_path / "wrong" / "path.db"
    result = CliRunner().invoke(cli, ["--db", str(wrong), *args])
    assert result.exit_code == 1, result.output
    assert result.output == f"Error: store {wrong} does not exist; run `replytrack init`\n"
    assert _files(tmp_path) == []


def _daemon(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A daemon as a process: with the fix it exits at once; the timeout only guards a run
    that (wrongly) starts serving."""
    env = clean_environ()
    # Webhooks set, so that `notify` gets as far as the store.
    env.update(
        REPLYTRACK_NOTIFY_WEBHOOKS=f"http://127.0.0.1:{free_port()}/x",
        REPLYTRACK_NOTIFY_SECRET="cli-test-secret",
    )
    return subprocess.run(
        [str(REPLYTRACK), "--db", str(db), "--domain", "mail.example.com", *args],
        capture_output=True,
        text=True,
        env=env,
        # No ./replytrack.toml: the directory above the store's (which may not exist).
        cwd=db.parent.parent,
        timeout=60,
    )


def _daemons() -> list[list[str]]:
    return [
        ["proxy", "--listen", f"127.0.0.1:{free_port()}", "--upstream", "127.0.0.1:1"],
        ["milter", "--socket", f"inet:{free_port()}@127.0.0.1"],
        ["notify", "--once"],
    ]


def test_daemons_refuse_a_wrong_db_path_in_one_line(tmp_path: Path) -> None:
    # `milter --db /wrong/path.db` once made itself a new empty store and key there.
    wrong = tmp_path / "wrong" / "path.db"
    for args in _daemons():
        done = _daemon(wrong, *args)
        assert done.returncode == 1, (args, done.stderr)
        [line] = done.stderr.splitlines()
        assert line.startswith("Error: ") and "run `replytrack init`" in line, args
        assert str(wrong.parent) in line, args
    assert not wrong.parent.exists()


def test_daemons_refuse_a_lost_key_file_and_keep_recorded_ids(tmp_path: Path) -> None:
    # A lost key once became a new key, silently: every Message-ID sent before turned into
    # a "forged token" for the milter.
    db = tmp_path / "replytrack.db"
    key = tmp_path / "replytrack.secret"
    _daemon(db, "init")
    store = SQLiteStore(db)
    record_mail(store, "1ab@mail.example.com", "spring", "ann@x.org", at=time.time())
    store.close_all()
    key.unlink()
    for args in _daemons()[:2]:
        done = _daemon(db, *args)
        assert done.returncode == 1, (args, done.stderr)
        assert done.stderr == f"Error: key file {key} does not exist; run `replytrack init`\n"
    assert not key.exists()
    # Nor does init paper over it: the store holds mail signed with the lost key.
    done = _daemon(db, "init")
    assert done.returncode == 1
    assert "restore the key file from a backup" in done.stderr and "--new-key" in done.stderr
    assert not key.exists()
    done = _daemon(db, "init", "--new-key")
    assert done.returncode == 0, done.stderr
    assert f"created key file {key}" in done.stdout


def test_a_truncated_store_is_refused_by_daemons_commands_and_init(tmp_path: Path) -> None:
    db = tmp_path / "replytrack.db"
    _daemon(db, "init")
    db.write_bytes(b"")  # truncated to 0 bytes
    for args in [*_daemons(), ["campaigns"], ["init"]]:
        done = _daemon(db, *args)
        assert done.returncode == 1, (args, done.stderr)
        [line] = done.stderr.splitlines()[-1:]
        assert f"store {db} is empty (0 bytes" in line, args
    assert db.stat().st_size == 0


def test_migrate_upgrades_an_existing_store_only(run: Invoke, db: Path) -> None:
    out = run("migrate", code=1).output
    assert "does not exist; run `replytrack init`" in out and not db.exists()
    run("init")
    assert "is at the current schema" in run("migrate").output
