"""The SQLite schema built by sqlite-utils' table API is the schema earlier versions built
with SQL: a new store and one upgraded from each older version are the same store."""

from __future__ import annotations

import re
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from replytrack.store.sqlite import SCHEMA_VERSION, SQLiteStore, schema
from replytrack.store.sqlite.connection import SQLiteConnections
from tests.support.sqlite_legacy import LEGACY_MIGRATIONS, legacy_store


def normalized_schema(path: Path) -> list[tuple[str, str, str, str | None]]:
    """``sqlite_master`` without the quoting and layout that differ between SQL written by
    hand and by sqlite-utils (``"name"``, ``[name]``, spaces and line breaks)."""

    def tidy(sql: str | None) -> str | None:
        if sql is None:
            return None
        sql = re.sub(r'["\[\]]', "", sql)
        sql = re.sub(r"\s+", " ", sql)
        return re.sub(r"\s*([(),])\s*", r"\1", sql).strip()

    with closing(sqlite3.connect(path)) as conn:
        found = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    assert version == SCHEMA_VERSION
    return sorted((kind, name, table, tidy(sql)) for kind, name, table, sql in found)


@pytest.fixture
def new_store(tmp_path: Path) -> Path:
    path = tmp_path / "new.db"
    SQLiteStore(path).close_all()
    return path


def test_the_versions_are_the_same_as_before() -> None:
    assert len(LEGACY_MIGRATIONS) == SCHEMA_VERSION


@pytest.mark.parametrize("version", range(SCHEMA_VERSION + 1))
def test_a_store_written_by_an_earlier_replytrack_upgrades_to_the_new_schema(
    tmp_path: Path, new_store: Path, version: int
) -> None:
    path = tmp_path / f"v{version}.db"
    legacy_store(path, version)
    SQLiteStore(path).close_all()
    assert normalized_schema(path) == normalized_schema(new_store)


@pytest.mark.parametrize("version", range(1, SCHEMA_VERSION))
def test_a_store_stopped_at_any_version_upgrades_to_the_new_schema(
    tmp_path: Path, new_store: Path, version: int
) -> None:
    path = tmp_path / f"v{version}.db"
    partial = SQLiteConnections(path, busy_timeout_ms=5000, readonly=False)
    schema.migrate(partial, target=version)
    assert schema.schema_version(partial) == version
    partial.close_all()
    SQLiteStore(path).close_all()
    assert normalized_schema(path) == normalized_schema(new_store)


def test_the_table_api_keeps_what_the_store_relies_on(new_store: Path) -> None:
    # Constraints sqlite-utils cannot write are still there: cascading deletes (prune),
    # unique IDs and dedupe keys, rowid-less tables, partial indexes.
    with closing(sqlite3.connect(new_store)) as conn:
        conn.execute("PRAGMA foreign_keys = ON")
        sql = dict(conn.execute("SELECT name, sql FROM sqlite_master").fetchall())
        assert "ON DELETE CASCADE" in sql["recipients"] and "WITHOUT ROWID" in sql["recipients"]
        assert "dedupe_key TEXT UNIQUE" in sql["events"]
        assert "WHERE status = 'relaying'" in sql["messages_relaying"]
        conn.execute("INSERT INTO campaigns (campaign, created_at) VALUES ('c', 1.0)")
        status = conn.execute("SELECT status FROM campaigns").fetchone()[0]
    assert status == "active"
