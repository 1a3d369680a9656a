"""postfix-example/postgresql-roles.sql applied to the private PostgreSQL: the schema made
by its owner role, the daemon role records and reads but cannot change the schema, the ops
role reads and cannot write. Through the real CLI where a user would use it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import errors

from tests.support.pg import PgServer

ROLES_SQL = Path(__file__).resolve().parents[1] / "postfix-example" / "postgresql-roles.sql"


def run_sql_file(url: str) -> None:
    """The file as an admin runs it with psql: statement by statement, stop at an error."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(ROLES_SQL.read_text().encode())


def cli(
    url: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "replytrack", "--config", "none", "--db", url, *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def role_urls(pg_server: PgServer, tmp_path: Path) -> Iterator[dict[str, str]]:
    """An empty database set up as the roles file says, its schema made by the owner role."""
    name = pg_server.create_database(template=None)
    urls = {
        role: f"postgresql://{role}@{pg_server.host}:{pg_server.port}/{name}"
        for role in ("replytrack_owner", "replytrack_daemon", "replytrack_ops")
    }
    try:
        run_sql_file(pg_server.url(name))
        done = cli(
            urls["replytrack_owner"],
            "--domain",
            "track.example.test",
            "init",
            env={"REPLYTRACK_SECRET_FILE": str(tmp_path / "replytrack.secret")},
        )
        assert done.returncode == 0, done.stderr
        # Once more after the first init: the schema version becomes read-only for daemons.
        run_sql_file(pg_server.url(name))
        yield urls
    finally:
        pg_server.drop_database(name)


def test_daemon_role_records_and_reads_but_cannot_change_the_schema(
    role_urls: dict[str, str],
) -> None:
    daemon = role_urls["replytrack_daemon"]
    done = cli(daemon, "stop", "--campaign", "spring", "--recipient", "ann@example.test")
    assert done.returncode == 0, done.stderr
    listed = cli(daemon, "enrollments", "--json")
    assert listed.returncode == 0, listed.stderr
    assert '"ann@example.test"' in listed.stdout
    with psycopg.connect(daemon, autocommit=True) as conn:
        for statement in (
            "DROP TABLE events",
            "ALTER TABLE messages ADD COLUMN x INTEGER",
            "CREATE TABLE mine (x INTEGER)",
            "UPDATE replytrack_schema SET version = version + 1",
            "TRUNCATE events",
        ):
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(statement.encode())


def test_ops_role_reads_and_cannot_write(role_urls: dict[str, str]) -> None:
    assert cli(role_urls["replytrack_daemon"], "stop", "--campaign", "spring").returncode == 0
    ops = role_urls["replytrack_ops"]
    listed = cli(ops, "events", "--json")
    assert listed.returncode == 0, listed.stderr
    assert '"stopped"' in listed.stdout
    refused = cli(ops, "stop", "--recipient", "ben@example.test")
    assert refused.returncode != 0
    assert "Traceback" not in refused.stderr
    with psycopg.connect(ops, autocommit=True) as conn:
        with pytest.raises((errors.InsufficientPrivilege, errors.ReadOnlySqlTransaction)):
            conn.execute(b"DELETE FROM events")
        # Not even with the session's read-only default switched off.
        conn.execute(b"SET default_transaction_read_only = off")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute(b"DELETE FROM events")
