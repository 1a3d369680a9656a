"""``replytrack doctor`` on a PostgreSQL store, against the private test server: what it
says (and that it exits 1) for a healthy store, a standby-like session, a role without
write privileges, an old or newer schema, a server that is down, a missing database."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from replytrack.cli import cli
from tests.support.pg import PgServer
from tests.test_cli_postgresql import (
    STANDBY_FIX,
    build_schema,
    current_schema,
    role,
    set_schema,
    with_user,
)

psycopg = pytest.importorskip("psycopg")

# Only the store check (and the key file check where a test asks for it).
OTHERS = ["config", "secret", "journal", "outbox", "relaying", "proxy", "milter", "postfix"]
DAEMON_GRANTS = "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}"

Doctor = Callable[..., tuple[int, list[dict[str, Any]]]]


@pytest.fixture
def doctor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Doctor:
    """Run doctor in-process with --json; returns the exit code and the store findings."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith(("REPLYTRACK_", "PG")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.pgpass but the test's own

    def run(url: str, *, skip: list[str] = OTHERS, check: str = "store") -> Any:
        args = ["--db", url, "doctor", "--json", *(f"--skip={s}" for s in skip)]
        result = CliRunner().invoke(cli, args)
        assert "Traceback" not in result.output, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
        findings = json.loads(result.output)
        return result.exit_code, [f for f in findings if f["check"] == check]

    return run


def _messages(findings: list[dict[str, Any]], status: str) -> list[str]:
    return [f["message"] for f in findings if f["status"] == status]


def _ooo_rows(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM ooo").fetchone()
    return int(row[0]) if row else -1


def test_a_healthy_store_with_a_least_privilege_role(
    doctor: Doctor, pg_server: PgServer, pg_url: str
) -> None:
    with role(pg_server, pg_url, DAEMON_GRANTS) as daemon:
        code, findings = doctor(with_user(pg_url, daemon))
    assert code == 0, findings
    assert _messages(findings, "FAIL") == [] and _messages(findings, "WARN") == []
    ok = " | ".join(_messages(findings, "OK"))
    version = pg_server.bindir.parts[-2]  # /usr/lib/postgresql/<major>/bin
    assert f"connected to PostgreSQL {version}" in ok
    assert f"at 127.0.0.1:{pg_server.port}" in ok and f"role {daemon}" in ok
    assert f"schema {current_schema()}, as this replytrack expects" in ok
    assert "statement_timeout 5000 ms" in ok
    assert "may read and write every replytrack table" in ok
    assert "probe row was written and rolled back" in ok
    assert _ooo_rows(pg_url) == 0  # the probe left nothing behind


def test_a_superuser_or_owner_is_a_warning(doctor: Doctor, pg_url: str) -> None:
    # The test server's URLs name its superuser, who also owns the tables.
    code, findings = doctor(pg_url)
    assert code == 0
    [warning] = _messages(findings, "WARN")
    assert "is a superuser" in warning
    [fix] = [f["fix"] for f in findings if f["status"] == "WARN"]
    assert "SELECT, INSERT, UPDATE, DELETE" in fix


def test_a_table_owner_is_a_warning(doctor: Doctor, pg_server: PgServer, pg_url: str) -> None:
    with role(pg_server, pg_url, "ALTER TABLE messages OWNER TO {role}") as owner:
        url = with_user(pg_url, owner)
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(DAEMON_GRANTS.format(role=owner).encode())
        code, findings = doctor(url)
    assert code == 0
    [warning] = _messages(findings, "WARN")
    assert f"role {owner} owns replytrack's tables" in warning


def test_a_read_only_session_fails_like_a_standby(doctor: Doctor, pg_url: str) -> None:
    # What a hot standby gives every session: read-only transactions.
    url = f"{pg_url}?options=-c%20default_transaction_read_only%3Don"
    code, findings = doctor(url)
    assert code == 1
    [failure] = [f for f in findings if f["status"] == "FAIL"]
    assert "read-only" in failure["message"]
    assert STANDBY_FIX in failure["fix"]
    # No write probe where writes are refused anyway.
    assert not any("probe" in m for m in _messages(findings, "OK"))


def test_a_select_only_role_lacks_the_daemons_privileges(
    doctor: Doctor, pg_server: PgServer, pg_url: str
) -> None:
    grants = "GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}"
    with role(pg_server, pg_url, grants) as reader:
        code, findings = doctor(with_user(pg_url, reader))
    assert code == 1
    [failure] = [f for f in findings if f["status"] == "FAIL"]
    assert f"role {reader} lacks INSERT on " in failure["message"]
    assert "UPDATE on" in failure["message"] and "DELETE on" in failure["message"]
    assert "messages" in failure["message"] and "enrollments" in failure["message"]
    assert f"TO {reader}" in failure["fix"]


def test_one_missing_grant_is_named(doctor: Doctor, pg_server: PgServer, pg_url: str) -> None:
    grants = DAEMON_GRANTS + "; REVOKE DELETE ON outbox FROM {role}"
    with role(pg_server, pg_url, grants) as daemon:
        code, findings = doctor(with_user(pg_url, daemon))
    assert code == 1
    [failure] = _messages(findings, "FAIL")
    assert f"role {daemon} lacks DELETE on outbox:" in failure


def test_an_old_schema_names_migrate_and_a_newer_one_an_upgrade(
    doctor: Doctor, pg_server: PgServer, pg_url: str
) -> None:
    name = pg_server.create_database(template=None)
    try:
        build_schema(pg_server.url(name), 2)
        code, findings = doctor(pg_server.url(name))
    finally:
        pg_server.drop_database(name)
    assert code == 1
    [failure] = [f for f in findings if f["status"] == "FAIL"]
    assert f"schema 2 is older than this replytrack's ({current_schema()})" in failure["message"]
    assert "replytrack migrate" in failure["fix"]
    set_schema(pg_url, current_schema() + 1)
    code, findings = doctor(pg_url)
    assert code == 1
    [failure] = [f for f in findings if f["status"] == "FAIL"]
    assert "newer than this replytrack" in failure["message"]
    assert "upgrade replytrack" in failure["fix"]


def test_an_empty_database_names_init(doctor: Doctor, pg_server: PgServer) -> None:
    name = pg_server.create_database(template=None)
    try:
        code, findings = doctor(pg_server.url(name))
    finally:
        pg_server.drop_database(name)
    assert code == 1
    [failure] = [f for f in findings if f["status"] == "FAIL"]
    assert failure["message"] == "the database holds no replytrack schema"
    assert failure["fix"] == "replytrack init"


def test_a_server_that_is_down_is_named_without_the_password(
    doctor: Doctor, pg_server: PgServer, pg_url: str
) -> None:
    scheme, _, rest = pg_url.partition("://")
    url = f"{scheme}://replytrack:Down-Sekr1t@{rest.partition('@')[2]}"
    with pg_server.stopped():
        code, findings = doctor(url)
    assert code == 1
    [failure] = [f for f in findings if f["status"] == "FAIL"]
    assert failure["message"].startswith(
        f"cannot connect to PostgreSQL at 127.0.0.1:{pg_server.port}"
    )
    assert "start PostgreSQL there" in failure["fix"]
    assert "Down-Sekr1t" not in json.dumps(findings)
    # The password written in the URL is itself a finding.
    [warning] = _messages(findings, "WARN")
    assert "db holds the password" in warning


def test_a_missing_database_says_create_it(doctor: Doctor, pg_server: PgServer) -> None:
    code, findings = doctor(pg_server.url("no_such_db"))
    assert code == 1
    [failure] = [f for f in findings if f["status"] == "FAIL"]
    assert 'database "no_such_db" does not exist' in failure["message"]
    assert "create the database" in failure["fix"]


def test_a_shared_store_needs_the_key_file_setting(doctor: Doctor, pg_url: str) -> None:
    skip = [c for c in OTHERS if c != "secret"]
    code, findings = doctor(pg_url, skip=skip, check="secret")
    assert code == 1
    [failure] = findings
    assert "secret_file must be set when db is a PostgreSQL URL" in failure["message"]


def test_a_pgpass_file_others_can_read_is_flagged(
    doctor: Doctor, pg_url: str, tmp_path: Path
) -> None:
    pgpass = tmp_path / ".pgpass"
    pgpass.write_text("127.0.0.1:*:*:replytrack:Pgpass-Sekr1t\n")
    pgpass.chmod(0o644)
    _, findings = doctor(pg_url)
    warnings = _messages(findings, "WARN")
    assert any(f"libpq ignores the password file {pgpass}: mode 644" in w for w in warnings)
    pgpass.chmod(0o600)
    _, findings = doctor(pg_url)
    assert f"password from {pgpass} (mode 600), if it has this host" in _messages(findings, "OK")
    assert "Pgpass-Sekr1t" not in json.dumps(findings)
