"""``replytrack suppress`` and ``replytrack forget`` through the CLI, on a real SQLite store:
what the commands print, what the store holds, and that an erased address is gone from the
store's files (main file, write-ahead log, shared memory)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from replytrack.cli import cli
from replytrack.store.records import (
    Event,
    StatusChange,
    Suppression,
)
from replytrack.store.sqlite import SQLiteStore
from tests.support.milter_records import record_mail

Invoke = Callable[..., Result]
NOW = 1_760_000_000.0


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("REPLYTRACK_") and name != "REPLYTRACK_CONFIG":
            monkeypatch.delenv(name)
    monkeypatch.setenv("SUDO_USER", "dpo")
    return tmp_path / "replytrack.db"


@pytest.fixture
def run(db: Path) -> Invoke:
    runner = CliRunner()

    def invoke(*args: str, code: int = 0, stdin: str | None = None) -> Result:
        result = runner.invoke(
            cli, ["--db", str(db), "--domain", "mail.example.com", *args], input=stdin
        )
        assert result.exit_code == code, (result.output, result.exception)
        if code != 0:
            assert isinstance(result.exception, SystemExit), result.exception
            assert "Traceback" not in result.output
        return result

    invoke("init")
    return invoke


@pytest.fixture
def store(run: Invoke, db: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(db, create=False)
    yield s
    s.close_all()


def listed(run: Invoke, *args: str) -> list[dict]:
    return json.loads(run("suppress", "list", *args, "--json").output)


def test_add_list_and_remove_addresses_and_domains(run: Invoke) -> None:
    out = run("suppress", "add", "Ann@Example.org", "@competitor.example", "--reason", "asked")
    assert "2 added, 0 already listed" in out.output
    assert "0 added, 1 already listed" in run("suppress", "add", "ann@example.org").output
    rows = listed(run)
    assert {(r["kind"], r["address"], r["domain"]) for r in rows} == {
        ("address", "ann@example.org", None),
        ("domain", None, "competitor.example"),
    }
    for row in rows:
        assert {"address", "reason", "actor", "created_at"} <= set(row)
        assert (row["reason"], row["actor"]) == ("asked", "dpo")
        assert row["created_at"].endswith("Z")
    table = run("suppress", "list").output
    assert "ann@example.org" in table and "competitor.example" in table and "dpo" in table
    # Asking about addresses: a subdomain's address is covered by the domain's entry.
    [hit] = listed(run, "joe@mail.competitor.example")
    assert hit["domain"] == "competitor.example"
    assert "not listed: bob@example.org" in run("suppress", "list", "bob@example.org").output
    assert "1 removed" in run("suppress", "remove", "competitor.example").output
    run("suppress", "remove", "competitor.example", code=1)
    assert [r["address"] for r in listed(run)] == ["ann@example.org"]


def test_bad_entries_are_refused(run: Invoke) -> None:
    for bad in ("not an address", "ann@", "a b@example.org", "@nodot"):
        result = run("suppress", "add", bad, code=2)
        assert "not an address" in result.output or "not a domain" in result.output
    assert listed(run) == []


def test_import_a_csv_of_addresses(run: Invoke, tmp_path: Path) -> None:
    csv_file = tmp_path / "optouts.csv"
    csv_file.write_text("Name,Email\nAnn,ann@example.org\nBob,BOB@example.org\n,\n")
    out = run("suppress", "import", str(csv_file), "--reason", "CRM opt-outs")
    assert "2 added" in out.output
    assert {r["address"] for r in listed(run)} == {"ann@example.org", "bob@example.org"}
    # One bad row: nothing is imported, each problem is named; --skip-invalid takes the rest.
    csv_file.write_text("eve@example.org\nnot-an-address\nfay@example.org\n")
    result = run("suppress", "import", str(csv_file), code=1)
    assert "line 2" in result.output and "nothing imported" in result.output
    assert len(listed(run)) == 2
    out = run("suppress", "import", str(csv_file), "--skip-invalid")
    assert "2 added" in out.output and "1 skipped" in out.output
    assert len(listed(run)) == 4


def _record_ann(store: SQLiteStore) -> None:
    for i, (campaign, who) in enumerate([("spring", ("ann",)), ("fall", ("ann", "bob"))]):
        to = (f"{n}@example.org" for n in who)
        record_mail(
            store, f"m{i}@mail.example.com", campaign, *to, sender="sales@ours.example", at=NOW + i
        )
    store.record_event(
        Event(kind="reply", created_at=NOW + 5, campaign="spring", sender="ann@example.org"),
        set_status=[StatusChange("spring", "ann@example.org", "stopped", "replied")],
    )
    # An enrollment updated more than once leaves old row versions in the pages.
    for status in ("paused", "active", "paused"):
        store.record_event(
            Event(kind="paused", created_at=NOW + 6, actor="ops"),
            set_status=[StatusChange("fall", "ann@example.org", status, "by hand")],
            notify=False,
        )
    store.remember_ooo("ann@example.org", NOW + 3600)


def store_files(db: Path) -> dict[str, bytes]:
    return {
        p.name: p.read_bytes()
        for p in db.parent.iterdir()
        if p.name.startswith(db.name) and p.is_file()
    }


def test_forget_erases_from_tables_and_files_and_keeps_the_person_unmailable(
    run: Invoke, db: Path, store: SQLiteStore
) -> None:
    # Many SQLite builds (Python's own wheels among them) leave secure_delete off: rows
    # updated or deleted then leave their old bytes in the pages. Debian's is on, so the
    # mails are recorded here as such a build would.
    store.conn.execute("PRAGMA secure_delete = OFF")
    _record_ann(store)
    # Listed once and taken off again: the deleted row's bytes stay in the page.
    store.add_suppressions(
        [
            Suppression(
                kind="address", value="ann@example.org", reason="x", actor="a", created_at=NOW
            )
        ]
    )
    store.remove_suppression("address", "ann@example.org")
    store.upkeep()
    run("suppress", "add", "ann@example.org", "--reason", "asked by phone")
    assert any(b"ann@example.org" in data for data in store_files(db).values())

    # The store stays open in this process (as a proxy's would) while forget runs.
    result = run("forget", "ann@example.org", "--yes", "--json")
    report = json.loads(result.output)
    assert report["files_cleared"] is True
    assert report["removed"]["recipients"] == 2 and report["removed"]["enrollments"] == 2
    assert report["removed"]["messages"] == 1 and report["removed"]["events"] >= 1

    for name, data in store_files(db).items():
        assert b"ann@example.org" not in data, name
        assert b"ann@example.org".upper() not in data.upper(), name
    assert [r.address for m in store.messages() for r in m.recipients] == ["bob@example.org"]
    assert [e.recipient for e in store.enrollments()] == ["bob@example.org"]
    erased = json.loads(run("events", "--kind", "erased", "--json").output)
    assert len(erased) == 1 and "ann" not in json.dumps(erased)

    [entry] = listed(run)
    assert entry["address"] is None and entry["erased"] is True
    assert entry["reason"] == "asked by phone"
    assert "(erased)" in run("suppress", "list").output
    # Named by the operator, the hashed entry is found and shown with the address.
    [named] = listed(run, "ann@example.org")
    assert named["address"] == "ann@example.org" and named["erased"] is True


def test_forget_asks_first_and_needs_the_key(run: Invoke, db: Path) -> None:
    result = run("forget", "ann@example.org", code=1, stdin="n\n")
    assert "Aborted" in result.output
    run("forget", "example.org", "--yes", code=2)
    (db.parent / "replytrack.secret").unlink()
    result = run("forget", "ann@example.org", "--yes", code=1)
    assert "key" in result.output
