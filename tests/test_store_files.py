"""The store file: created only when asked, with the group's mode; refused when it is not a
replytrack store of this version, and left as it was."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from replytrack.store import StoreError, open_store
from replytrack.store.sqlite import SCHEMA_VERSION, SQLiteStore
from tests.support.install import immutable, replytrack_init
from tests.support.sqlite_legacy import legacy_store


@pytest.fixture
def umask_022() -> Iterator[None]:
    # The umask of a root shell: what `runuser ... replytrack init` in the install runs with.
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_open_without_create_refuses_a_missing_store_and_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "wrong" / "path.db"
    with pytest.raises(StoreError, match=r"store .*path\.db does not exist; run `replytrack init`"):
        open_store(str(path))
    assert not path.parent.exists()


def test_a_truncated_store_is_refused_not_recreated(tmp_path: Path) -> None:
    path = tmp_path / "rt.db"
    path.write_bytes(b"")
    for create in (False, True):  # not even init replaces it: it may be the only trace
        with pytest.raises(StoreError, match=r"is empty \(0 bytes"):
            SQLiteStore(path, create=create)
    assert path.stat().st_size == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rt.db"]


def test_another_programs_database_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE accounts (name TEXT)")
    before = path.read_bytes()
    for create in (False, True):
        with pytest.raises(StoreError, match="not a replytrack store"):
            SQLiteStore(path, create=create)
    # Not switched to WAL mode, not given our tables: byte for byte what it was.
    assert path.read_bytes() == before


def test_an_older_schema_is_refused_until_migrate(tmp_path: Path) -> None:
    path = tmp_path / "rt.db"
    legacy_store(path, SCHEMA_VERSION - 1)
    # What daemons and commands do: no upgrade on start, one line saying what to run.
    with pytest.raises(StoreError, match="run `replytrack migrate`"):
        open_store(str(path))
    with pytest.raises(StoreError, match="run `replytrack migrate`"):
        open_store(str(path), readonly=True)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION - 1
    out = replytrack_init(env={**os.environ, "REPLYTRACK_DB": str(path)}, cwd=tmp_path)
    assert "store ok" in out
    store = open_store(str(path))
    assert isinstance(store, SQLiteStore) and store.schema_version() == SCHEMA_VERSION
    store.close_all()


def test_a_failed_creation_leaves_no_empty_file_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fault a real disk gives rarely on cue: the first migration fails.
    def broken(self: SQLiteStore) -> None:
        raise StoreError("disk I/O error")

    monkeypatch.setattr(SQLiteStore, "migrate", broken)
    path = tmp_path / "rt.db"
    with pytest.raises(StoreError, match="disk I/O error"):
        SQLiteStore(path, create=True)
    # A retry of init must not meet a 0-byte file it would refuse as a truncated store.
    assert not path.exists()


def test_init_creates_the_store_and_its_wal_files_0660_and_the_key_0600(
    tmp_path: Path, umask_022: None
) -> None:
    path = tmp_path / "state" / "rt.db"
    env = {**os.environ, "REPLYTRACK_DB": str(path), "REPLYTRACK_DOMAIN": "mail.example.com"}
    replytrack_init(env=env, cwd=tmp_path)
    store = open_store(str(path))
    store.remember_ooo("ann@example.org", 1.0)  # a write: -wal and -shm exist while open
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.parent.iterdir() if p.is_file()}
    store.close_all()
    assert modes == {
        "rt.db": 0o660,
        "rt.db-wal": 0o660,
        "rt.db-shm": 0o660,
        "replytrack.secret": 0o600,
    }
    # The directory init made: the group may enter it (the ops CLI), others not.
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o750


def test_check_writable_really_writes(tmp_path: Path) -> None:
    path = tmp_path / "rt.db"
    SQLiteStore(path).close_all()
    store = open_store(str(path))
    store.check_writable()
    store.close_all()
    # The probe row is gone again.
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM ooo").fetchone()[0] == 0
    # An immutable store file opens (read-only) and takes a lock, but no write: only a
    # committed write finds that out.
    with immutable(path):
        store = open_store(str(path))
        try:
            with pytest.raises(StoreError, match=r"is not writable: .*readonly"):
                store.check_writable()
        finally:
            store.close_all()
