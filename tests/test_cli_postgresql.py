"""The CLI on a PostgreSQL store: init, migrate, daemons' start-up refusals, listings as a
read-only role, and passwords kept out of every message. A private PostgreSQL server
(tests/support/pg.py) on loopback; the commands run as processes, as an operator runs them."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from replytrack.tokens import load_keyring, mint
from tests.support.milter_records import record_mail as support_record_mail
from tests.support.net import free_port
from tests.support.pg import PgServer

psycopg = pytest.importorskip("psycopg")

REPLYTRACK = Path(sys.executable).with_name("replytrack")
STANDBY_FIX = "point db at the primary, or add target_session_attrs=read-write"
_roles = itertools.count(1)


# --- helpers (test_doctor_pg.py uses them too) -----------------------------------------------


def current_schema() -> int:
    from replytrack.store.postgresql.schema import SCHEMA_VERSION

    return SCHEMA_VERSION


def schema_of(url: str) -> int:
    """The schema version recorded in the database (0: no replytrack schema)."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT to_regclass('replytrack_schema') IS NOT NULL").fetchone()
        if not row or not row[0]:
            return 0
        row = conn.execute("SELECT max(version) FROM replytrack_schema").fetchone()
    return int(row[0] or 0) if row else 0


def set_schema(url: str, version: int) -> None:
    """Record ``version`` as the store's schema (a newer replytrack's, say)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE replytrack_schema SET version = %s", (version,))


def build_schema(url: str, version: int) -> None:
    """Bring an empty database to ``version`` as an older replytrack's migrate left it."""
    from replytrack.store.postgresql.schema import MIGRATIONS, VERSION_TABLE

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(VERSION_TABLE)
        for step in MIGRATIONS[:version]:
            conn.execute(step.encode())
        conn.execute("INSERT INTO replytrack_schema (version) VALUES (%s)", (version,))


def with_user(url: str, user: str) -> str:
    """``url`` with another role (the test server's URLs name the superuser)."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{user}@{rest.partition('@')[2]}"


@contextlib.contextmanager
def role(
    pg_server: PgServer, url: str, grants: str = "", *, password: str | None = None
) -> Iterator[str]:
    """A login role for the test (``grants`` run in ``url``'s database), dropped after."""
    name = f"rt_role_{os.getpid()}_{next(_roles)}"
    secret = f" PASSWORD '{password}'" if password else ""
    pg_server.admin(f"CREATE ROLE {name} LOGIN{secret}")
    try:
        if grants:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(grants.format(role=name).encode())
        yield name
    finally:
        with contextlib.suppress(psycopg.Error), psycopg.connect(url, autocommit=True) as conn:
            # Tables it was given go back to the superuser; its grants go away.
            conn.execute(f"REASSIGN OWNED BY {name} TO CURRENT_USER".encode())
            conn.execute(f"DROP OWNED BY {name}".encode())
        pg_server.admin(f"DROP ROLE IF EXISTS {name}")


def record_mail(url: str, message_id: str, campaign: str, *addresses: str) -> None:
    from replytrack.store.postgresql import PostgreSQLStore

    store = PostgreSQLStore(url, create=False)
    try:
        support_record_mail(store, message_id, campaign, *addresses)
    finally:
        store.close_all()


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A clean environment: no REPLYTRACK_* or libpq PG* from the developer's shell, a HOME
    without ~/.pgpass, the key file and the milter journal in ``tmp_path``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REPLYTRACK_", "PG"))}
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env.update(
        HOME=str(home),
        REPLYTRACK_DOMAIN="mail.example.com",
        REPLYTRACK_SECRET_FILE=str(tmp_path / "replytrack.secret"),
        REPLYTRACK_MILTER_JOURNAL=str(tmp_path / "journal"),
        REPLYTRACK_MILTER_JOURNAL_FALLBACK=str(tmp_path / "journal-fallback"),
        # Webhooks set, so that `notify` gets as far as the store.
        REPLYTRACK_NOTIFY_WEBHOOKS=f"http://127.0.0.1:{free_port()}/x",
        REPLYTRACK_NOTIFY_SECRET="cli-test-secret",
    )
    env.update(extra)
    return env


def run(env: dict[str, str], *args: str, code: int | None = 0) -> subprocess.CompletedProcess[str]:
    """``replytrack ARGS`` as a process; with the checks under test a daemon exits at once
    (the timeout only guards one that wrongly starts serving)."""
    done = subprocess.run(
        [str(REPLYTRACK), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=env["HOME"],
        timeout=60,
    )
    if code is not None:
        assert done.returncode == code, (args, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def daemons() -> list[list[str]]:
    return [
        [
            "proxy",
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--upstream",
            "127.0.0.1:1",
            "--workers",
            "1",
        ],
        ["milter", "--socket", f"inet:{free_port()}@127.0.0.1"],
        ["notify", "--once"],
    ]


@pytest.fixture
def empty_url(pg_server: PgServer) -> Iterator[str]:
    """A database without any schema, dropped after the test."""
    name = pg_server.create_database(template=None)
    yield pg_server.url(name)
    pg_server.drop_database(name)


# --- init and migrate ------------------------------------------------------------------------


def test_init_creates_the_schema_and_key_and_runs_again(empty_url: str, tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    key = tmp_path / "replytrack.secret"
    first = run(env, "--db", empty_url, "init")
    assert f"created the schema in store {empty_url}" in first.stdout
    assert f"created key file {key}" in first.stdout
    assert schema_of(empty_url) == current_schema()
    assert key.stat().st_mode & 0o077 == 0
    record_mail(empty_url, "<a1@mail.example.com>", "spring", "ann@x.org")
    again = run(env, "--db", empty_url, "init")
    assert f"store ok {empty_url}" in again.stdout and f"key file ok {key}" in again.stdout
    # The mail recorded in between is still there.
    listed = json.loads(run(env, "--db", empty_url, "messages", "--json").stdout)
    assert [m["message_id"] for m in listed] == ["<a1@mail.example.com>"]


def test_init_needs_a_key_file_setting_for_a_shared_store(empty_url: str, tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    del env["REPLYTRACK_SECRET_FILE"]
    done = run(env, "--db", empty_url, "init", code=1)
    assert "secret_file must be set when db is a PostgreSQL URL" in done.stderr
    assert schema_of(empty_url) == 0  # refused before anything was created


def test_init_says_the_database_must_exist(pg_server: PgServer, tmp_path: Path) -> None:
    url = pg_server.url("no_such_db")
    done = run(cli_env(tmp_path), "--db", url, "init", code=1)
    [line] = done.stderr.splitlines()
    assert line.startswith('Error: database "no_such_db" does not exist on 127.0.0.1:')
    assert "create it first" in line
    assert not (tmp_path / "replytrack.secret").exists()


def test_init_and_migrate_refuse_a_read_only_standby(
    pg_server: PgServer, empty_url: str, tmp_path: Path
) -> None:
    env = cli_env(tmp_path)
    # What a session on a hot standby sees: every transaction read-only.
    read_only = f"{empty_url}?options=-c%20default_transaction_read_only%3Don"
    for command in ("init", "migrate"):
        done = run(env, "--db", read_only, command, code=1)
        [line] = done.stderr.splitlines()
        assert "read-only" in line and STANDBY_FIX in line, line
    assert schema_of(empty_url) == 0
    assert not (tmp_path / "replytrack.secret").exists()


def test_migrate_upgrades_an_old_schema_that_the_daemons_refused(
    empty_url: str, tmp_path: Path
) -> None:
    env = cli_env(tmp_path)
    run(env, "--db", empty_url, "migrate", code=1)  # no schema yet: init's job
    build_schema(empty_url, current_schema() - 2)
    run(env, "--db", empty_url, "init", "--new-key")  # the key; init upgrades too
    set_schema(empty_url, current_schema() - 2)
    old = current_schema() - 2
    for args in daemons():
        done = run(env, "--db", empty_url, *args, code=1)
        [line] = done.stderr.splitlines()[-1:]
        assert "run `replytrack migrate`" in line, (args, done.stderr)
        assert f"has schema {old}" in line
    assert schema_of(empty_url) == old  # no daemon migrated on its own
    done = run(env, "--db", empty_url, "migrate")
    assert f"migrated from schema {old} to {current_schema()}" in done.stdout
    assert schema_of(empty_url) == current_schema()
    assert "is at the current schema" in run(env, "--db", empty_url, "migrate").stdout
    run(env, "--db", empty_url, "campaigns")


def test_migrate_on_an_empty_database_names_init(empty_url: str, tmp_path: Path) -> None:
    done = run(cli_env(tmp_path), "--db", empty_url, "migrate", code=1)
    assert "holds no replytrack schema; run `replytrack init`" in done.stderr
    assert schema_of(empty_url) == 0


def test_daemons_and_migrate_refuse_a_newer_schema(pg_url: str, tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    run(env, "--db", pg_url, "init")
    set_schema(pg_url, current_schema() + 1)
    for args in [*daemons(), ["migrate"], ["init"], ["campaigns"]]:
        done = run(env, "--db", pg_url, *args, code=1)
        [line] = done.stderr.splitlines()[-1:]
        assert "newer than this replytrack" in line and "upgrade replytrack" in line, args
    assert schema_of(pg_url) == current_schema() + 1


# --- listings as a role that may only read ---------------------------------------------------

LISTINGS = [
    ["messages", "--json"],
    ["events", "--json"],
    ["campaigns", "--json"],
    ["enrollments", "--json"],
    ["export", "messages"],
    ["prune", "--dry-run"],
]


def test_listing_commands_work_as_a_select_only_role(
    pg_server: PgServer, pg_url: str, tmp_path: Path
) -> None:
    env = cli_env(tmp_path)
    run(env, "--db", pg_url, "init")
    # A Message-ID minted with the key, so that `check` matches the reply to it.
    sent = mint(load_keyring(tmp_path / "replytrack.secret"), "mail.example.com")
    record_mail(pg_url, sent, "spring", "ann@x.org", "bob@y.org")
    run(env, "--db", pg_url, "stop", "--campaign", "spring", "--recipient", "bob@y.org")
    reply = tmp_path / "reply.eml"
    reply.write_text(
        "From: ann@x.org\r\nTo: sales@example.com\r\nSubject: Re: Hello\r\n"
        f"Message-ID: <r1@x.org>\r\nIn-Reply-To: {sent}\r\n\r\nYes please.\r\n"
    )
    grants = "GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}"
    with role(pg_server, pg_url, grants) as reader:
        url = with_user(pg_url, reader)
        outputs = {args[0]: run(env, "--db", url, *args).stdout for args in LISTINGS}
        check = json.loads(run(env, "--db", url, "check", "--json", str(reply)).stdout)
        # The role really cannot write: a command that writes is refused.
        denied = run(env, "--db", url, "stop", "--campaign", "spring", code=1)
    assert "permission denied" in denied.stderr
    messages = json.loads(outputs["messages"])
    assert [m["message_id"] for m in messages] == [sent]
    enrollments = {e["recipient"]: e["status"] for e in json.loads(outputs["enrollments"])}
    assert enrollments == {"ann@x.org": "active", "bob@y.org": "stopped"}
    assert [c["campaign"] for c in json.loads(outputs["campaigns"])] == ["spring"]
    assert any(e["kind"] == "stopped" or "stop" in e["kind"] for e in json.loads(outputs["events"]))
    assert sent in outputs["export"]
    assert check[0]["kind"] == "reply" and check[0]["matched"]
    # Nothing was written by the listings: still one mail, no reply event from `check`.
    kinds = [e["kind"] for e in json.loads(run(env, "--db", pg_url, "events", "--json").stdout)]
    assert "reply" not in kinds


# --- passwords never shown -------------------------------------------------------------------

URL_PASSWORD = "Url-Sekr1t-pw"
ENV_PASSWORD = "Env-Sekr1t-pw"
FILE_PASSWORD = "File-Sekr1t-pw"


def _with_password(url: str) -> str:
    scheme, _, rest = url.partition("://")
    user, _, host = rest.partition("@")
    return f"{scheme}://{user}:{URL_PASSWORD}@{host}"


def test_no_password_reaches_any_output(pg_server: PgServer, pg_url: str, tmp_path: Path) -> None:
    password_file = tmp_path / "db.password"
    password_file.write_text(FILE_PASSWORD + "\n")
    password_file.chmod(0o600)
    env = cli_env(tmp_path, PGPASSWORD=ENV_PASSWORD)
    good = _with_password(pg_url)
    down = _with_password(f"postgresql://replytrack@127.0.0.1:{free_port()}/x")
    missing = _with_password(pg_server.url("no_such_db"))
    old_name = pg_server.create_database(template=None)
    old = _with_password(pg_server.url(old_name))
    build_schema(pg_server.url(old_name), 1)
    runs = [
        run(env, "--db", good, "init"),
        run(env, "--db", good, "--help"),
        run(env, "--db", good, "doctor", "--skip", "postfix", "--skip", "proxy", code=None),
        run(env, "--db", down, "doctor", "--skip", "postfix", code=1),
        run(env, "--db", missing, "doctor", "--skip", "postfix", code=1),
        run(env, "--db", missing, "init", code=1),
        run(env, "--db", down + "&port=x", "campaigns", code=1),
        run(env, "--db", down.replace("@", "@[", 1), "campaigns", code=1),
        run(env, "--db", down, "campaigns", code=1),
        # A daemon on the older schema, then the migration it asks for.
        run({**env, "REPLYTRACK_DB": old}, *daemons()[1], code=1),
        run(env, "--db", old, "migrate"),
        run(
            {**env, "REPLYTRACK_DB_PASSWORD_FILE": str(password_file)},
            "--db",
            good,
            "init",
            "--write-config",
            str(tmp_path / "written.toml"),
        ),
    ]
    for args in daemons():
        runs.append(run(env, "--db", down, *args, code=1))
        runs.append(run({**env, "REPLYTRACK_DB": good}, *args, "--help"))
    pg_server.drop_database(old_name)
    # The messages still say what is wrong and where (the host, the database).
    assert "127.0.0.1" in runs[3].stdout and "no_such_db" in runs[4].stdout
    written = (tmp_path / "written.toml").read_text()
    assert "postgresql://replytrack:***@" in written
    for secret in (URL_PASSWORD, ENV_PASSWORD, FILE_PASSWORD):
        for done in runs:
            assert secret not in done.stdout + done.stderr, (done.args, secret)
        assert secret not in written


# --- the password file -----------------------------------------------------------------------

HBA_LINE = "host all {role} 127.0.0.1/32 scram-sha-256\n"


@contextlib.contextmanager
def password_role(pg_server: PgServer, url: str, password: str) -> Iterator[str]:
    """A role that must give its password: a pg_hba.conf line for it alone, ahead of the
    test server's trust lines, so the other tests' roles are not affected."""
    grants = "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}"
    with role(pg_server, url, grants, password=password) as name:
        hba = pg_server.data / "pg_hba.conf"
        before = hba.read_text()
        hba.write_text(HBA_LINE.format(role=name) + before)
        pg_server.admin("SELECT pg_reload_conf()")
        try:
            yield name
        finally:
            hba.write_text(before)
            pg_server.admin("SELECT pg_reload_conf()")


def test_the_password_file_is_used_and_must_be_private(
    pg_server: PgServer, pg_url: str, tmp_path: Path
) -> None:
    env = cli_env(tmp_path)
    run(env, "--db", pg_url, "init")
    record_mail(pg_url, "<a1@mail.example.com>", "spring", "ann@x.org")
    password_file = tmp_path / "db.password"
    with password_role(pg_server, pg_url, FILE_PASSWORD) as name:
        url = with_user(pg_url, name)
        # Without the password the server refuses the role.
        refused = run(env, "--db", url, "campaigns", code=1)
        assert "password" in refused.stderr
        password_file.write_text(FILE_PASSWORD + "\n")
        password_file.chmod(0o600)
        env["REPLYTRACK_DB_PASSWORD_FILE"] = str(password_file)
        listed = json.loads(run(env, "--db", url, "campaigns", "--json").stdout)
        assert [c["campaign"] for c in listed] == ["spring"]
        # The file wins over a stale PGPASSWORD.
        run({**env, "PGPASSWORD": ENV_PASSWORD}, "--db", url, "campaigns")
        # A file others may read is refused at start, like libpq refuses such a .pgpass.
        password_file.chmod(0o640)
        done = run(env, "--db", url, "campaigns", code=1)
        assert f"db_password_file: {password_file} has mode 640" in done.stderr
        assert "chmod 600" in done.stderr
        # A wrong password: the server's refusal, without either password.
        password_file.write_text("wrong-password")
        password_file.chmod(0o600)
        done = run(env, "--db", url, "campaigns", code=1)
        assert "password authentication failed" in done.stderr
        assert "wrong-password" not in done.stderr and FILE_PASSWORD not in done.stderr


# --- the db setting --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("db", "expected"),
    [
        ("postgresql://u:pw-in-url@h1:notaport/db", "invalid port 'notaport'"),
        (
            "postgresql://u:pw-in-url@h1/db?nosuchparam=1",
            'invalid URI query parameter: "nosuchparam"',
        ),
        ("postgresql://u:pw-in-url@h1/db?target_session_attrs=rw", "target_session_attrs='rw'"),
        ("postgresql://u:pw%ZZ@h1/db", "invalid percent-encoded token"),
    ],
)
def test_a_malformed_url_is_a_config_error_without_the_password(
    tmp_path: Path, db: str, expected: str
) -> None:
    done = run(cli_env(tmp_path, REPLYTRACK_DB=db), "campaigns", code=1)
    [line] = done.stderr.splitlines()
    assert line.startswith("Error: configuration: db: ") and expected in line
    assert "pw-in-url" not in line and "pw%ZZ" not in line


def test_several_hosts_reach_the_one_that_takes_writes(
    pg_server: PgServer, pg_url: str, tmp_path: Path
) -> None:
    # The first host answers nothing; libpq tries the next, as after a failover.
    env = cli_env(tmp_path)
    run(env, "--db", pg_url, "init")
    dead = free_port()
    scheme, _, rest = pg_url.partition("://")
    user, _, tail = rest.partition("@")
    dbname = tail.partition("/")[2]
    url = (
        f"{scheme}://{user}@127.0.0.1:{dead},127.0.0.1:{pg_server.port}/{dbname}"
        "?target_session_attrs=read-write"
    )
    record_mail(pg_url, "<a1@mail.example.com>", "spring", "ann@x.org")
    listed = json.loads(run(env, "--db", url, "messages", "--json").stdout)
    assert [m["message_id"] for m in listed] == ["<a1@mail.example.com>"]
