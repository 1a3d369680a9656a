"""``replytrack doctor`` for a PostgreSQL store, and the server checks ``init``/``migrate`` share.

The checks talk to the server with a connection of their own (not the store's pool), so
each failure says what the server answered: unreachable, no such database, a standby,
an older or newer schema, a role without the privileges the daemons need. No message shows
a password: servers are named by host and port only, driver errors pass ``scrub_secrets``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from replytrack.cli.doctor import FAIL, OK, WARN, Finding
from replytrack.config import Config, read_db_password, scrub_secrets
from replytrack.store import StoreError

if TYPE_CHECKING:
    import psycopg

# What the daemons do to replytrack's tables; the version table they only read.
DAEMON_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")
STANDBY_FIX = "point db at the primary, or add target_session_attrs=read-write to the URL"
# The row the write probe inserts and rolls back (.invalid never matches real mail).
_PROBE_ADDRESS = "write-probe@doctor.replytrack.invalid"
_MISSING_DB = re.compile(r'database "([^"]+)" does not exist')


def _schema() -> tuple[int, list[str]]:
    """This replytrack's schema version and the tables its migrations create."""
    from replytrack.store.postgresql.schema import MIGRATIONS, SCHEMA_VERSION

    names = re.findall(r"CREATE TABLE (?:IF NOT EXISTS )?(\w+)", "\n".join(MIGRATIONS))
    return SCHEMA_VERSION, list(dict.fromkeys(names))


def _hosts(db: str) -> str:
    """The server(s) ``db`` names, for messages: ``h1:5432,h2:5432`` (never a password)."""
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(db)
    hosts = str(params.get("host") or "the local socket").split(",")
    ports = str(params.get("port") or "").split(",")
    if len(ports) == 1:
        ports = ports * len(hosts)
    return ",".join(f"{h}:{p}" if p else h for h, p in zip(hosts, ports, strict=False))


@dataclass(frozen=True)
class ServerState:
    """What one session on the server found."""

    server: str  # host:port actually reached
    version: str
    database: str
    role: str
    superuser: bool
    in_recovery: bool
    read_only: bool
    server_timeout: str  # statement_timeout before replytrack sets its own
    schema_version: int


@contextmanager
def connect(config: Config) -> Iterator[psycopg.Connection[Any]]:
    """A direct connection to the store's server; StoreError (password-free) when none."""
    try:
        import psycopg
        from psycopg.conninfo import conninfo_to_dict, make_conninfo
    except ImportError as exc:
        raise StoreError(
            f"a PostgreSQL store needs psycopg ({exc.name} is missing):"
            " pip install 'replytrack[postgresql]'"
        ) from None
    extra: dict[str, Any] = {"application_name": "replytrack-doctor"}
    if "connect_timeout" not in conninfo_to_dict(config.db):
        extra["connect_timeout"] = 5
    try:
        conn = psycopg.connect(make_conninfo(config.db, **extra), autocommit=True)
    except psycopg.Error as exc:
        why = scrub_secrets(str(exc).strip(), config.db)
        missing = _MISSING_DB.search(why)
        if missing:
            raise StoreError(
                f'database "{missing.group(1)}" does not exist on {_hosts(config.db)}:'
                " create it first (as a PostgreSQL superuser: createdb -O ROLE"
                f" {missing.group(1)}); replytrack init creates the schema in it, not the"
                " database"
            ) from None
        raise StoreError(f"cannot connect to PostgreSQL at {_hosts(config.db)}: {why}") from None
    try:
        with conn:
            # Bounded like every store call: a hung server must not hang doctor or init.
            conn.execute(
                "SELECT set_config('statement_timeout', %s, false)",
                (str(round(config.db_timeout * 1000)),),
            )
            yield conn
    except psycopg.Error as exc:
        raise StoreError(
            f"PostgreSQL at {_hosts(config.db)}: {scrub_secrets(str(exc).strip(), config.db)}"
        ) from None


def server_state(conn: psycopg.Connection[Any]) -> ServerState:
    """Read the server, the session and the recorded schema version (reads only)."""
    row = conn.execute(
        "SELECT current_setting('server_version'), current_database(), current_user,"
        " (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),"
        " pg_is_in_recovery(), current_setting('transaction_read_only') = 'on',"
        " current_setting('statement_timeout'),"
        " to_regclass('replytrack_schema') IS NOT NULL"
    ).fetchone()
    assert row is not None  # a SELECT without FROM gives one row
    version = 0
    if row[7]:
        found = conn.execute("SELECT max(version) FROM replytrack_schema").fetchone()
        version = int(found[0] or 0) if found else 0
    return ServerState(
        server=f"{conn.info.host}:{conn.info.port}",
        version=str(row[0]),
        database=str(row[1]),
        role=str(row[2]),
        superuser=bool(row[3]),
        in_recovery=bool(row[4]),
        read_only=bool(row[5]),
        server_timeout=str(row[6]),
        schema_version=version,
    )


def read_only_problem(state: ServerState) -> str | None:
    """Why writes would be refused on this session (a standby, read-only sessions), or None."""
    if state.in_recovery:
        return f"PostgreSQL at {state.server} is a read-only standby (in recovery)"
    if state.read_only:
        return (
            f"sessions on PostgreSQL at {state.server} are read-only"
            " (default_transaction_read_only is on for this role or database)"
        )
    return None


def writable_server(config: Config) -> ServerState:
    """For ``init`` and ``migrate``: the server state, or StoreError when the database is
    missing, unreachable or read-only (a standby): the schema is changed on the primary."""
    with connect(config) as conn:
        state = server_state(conn)
    problem = read_only_problem(state)
    if problem:
        raise StoreError(f"{problem}: {STANDBY_FIX}")
    return state


# --- doctor ----------------------------------------------------------------------------------


def check_store_pg(config: Config) -> list[Finding]:
    """The store check of ``doctor`` when ``db`` is a PostgreSQL URL."""
    findings = _password_findings(config)
    try:
        with connect(config) as conn:
            state = server_state(conn)
            findings += _state_findings(config, state)
            if state.schema_version == _schema()[0] and not read_only_problem(state):
                privileges = _privilege_findings(conn, state)
                findings += privileges
                if not any(f.status == FAIL for f in privileges):
                    findings.append(_write_probe(conn))
    except StoreError as exc:
        fix = (
            "create the database, then run replytrack init"
            if "does not exist" in str(exc)
            else "start PostgreSQL there, or check db (hosts, port, database), pg_hba.conf and"
            " the password (db_password_file, PGPASSWORD or ~/.pgpass)"
        )
        findings.append(Finding(FAIL, "store", str(exc), fix))
    return findings


def _state_findings(config: Config, state: ServerState) -> list[Finding]:
    findings = [
        Finding(
            OK,
            "store",
            f"connected to PostgreSQL {state.version} at {state.server}"
            f" (database {state.database}, role {state.role})",
        )
    ]
    problem = read_only_problem(state)
    if problem:
        findings.append(
            Finding(FAIL, "store", f"{problem}: the daemons could not record anything", STANDBY_FIX)
        )
    current, _ = _schema()
    if state.schema_version == 0:
        findings.append(
            Finding(FAIL, "store", "the database holds no replytrack schema", "replytrack init")
        )
    elif state.schema_version < current:
        findings.append(
            Finding(
                FAIL,
                "store",
                f"schema {state.schema_version} is older than this replytrack's ({current}):"
                " the daemons refuse to start",
                "run replytrack migrate (on the primary, with the daemons stopped)",
            )
        )
    elif state.schema_version > current:
        findings.append(
            Finding(
                FAIL,
                "store",
                f"schema {state.schema_version} is newer than this replytrack's ({current})",
                "upgrade replytrack on this host to the version that migrated the store",
            )
        )
    else:
        findings.append(Finding(OK, "store", f"schema {current}, as this replytrack expects"))
    ours = round(config.db_timeout * 1000)
    findings.append(
        Finding(
            OK,
            "store",
            f"statement_timeout {ours} ms in every store session (db_timeout; the milter's at"
            f" most 500 ms); the server's default here is {state.server_timeout}",
        )
    )
    return findings


def _privilege_findings(conn: psycopg.Connection[Any], state: ServerState) -> list[Finding]:
    _, tables = _schema()
    lacking: dict[str, list[str]] = {}
    owned: list[str] = []
    for table in ["replytrack_schema", *tables]:
        wanted = ("SELECT",) if table == "replytrack_schema" else DAEMON_PRIVILEGES
        for privilege in wanted:
            row = conn.execute("SELECT has_table_privilege(%s, %s)", (table, privilege)).fetchone()
            if not (row and row[0]):
                lacking.setdefault(privilege, []).append(table)
        row = conn.execute(
            "SELECT pg_has_role(relowner, 'USAGE') FROM pg_class WHERE oid = to_regclass(%s)",
            (table,),
        ).fetchone()
        if row and row[0]:
            owned.append(table)
    findings = []
    if lacking:
        missing = "; ".join(f"{p} on {', '.join(t)}" for p, t in lacking.items())
        findings.append(
            Finding(
                FAIL,
                "store",
                f"role {state.role} lacks {missing}: the daemons need SELECT, INSERT, UPDATE"
                " and DELETE on every replytrack table",
                f"as the tables' owner: GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN"
                f" SCHEMA public TO {state.role} (a role for ops listings needs SELECT only)",
            )
        )
    else:
        findings.append(
            Finding(
                OK,
                "store",
                f"role {state.role} may read and write every replytrack table",
            )
        )
    if state.superuser:
        findings.append(
            Finding(
                WARN,
                "store",
                f"role {state.role} is a superuser: a daemon's bug or stolen password could do"
                " anything to the server",
                "run the daemons as a role with SELECT, INSERT, UPDATE, DELETE on replytrack's"
                " tables only",
            )
        )
    elif owned:
        findings.append(
            Finding(
                WARN,
                "store",
                f"role {state.role} owns replytrack's tables (it could drop or alter them)",
                "keep the owner for replytrack migrate; run the daemons as a role with"
                " SELECT, INSERT, UPDATE, DELETE only",
            )
        )
    return findings


def _write_probe(conn: psycopg.Connection[Any]) -> Finding:
    """Write a row and roll it back. PostgreSQL checks a write on the server when it is made
    (privileges, read-only state, locks, disk), so the rollback loses none of the proof and
    leaves nothing behind, unlike SQLite, where only a commit reaches the file."""
    import psycopg

    try:
        conn.execute("BEGIN")
        try:
            conn.execute(
                "INSERT INTO ooo (address, until, updated_at) VALUES (%s, 0, 0)"
                " ON CONFLICT (address) DO UPDATE SET updated_at = excluded.updated_at",
                (_PROBE_ADDRESS,),
            )
        finally:
            conn.execute("ROLLBACK")
    except psycopg.Error as exc:
        return Finding(
            FAIL,
            "store",
            f"a probe write was refused: {str(exc).strip()}",
            "check the role's privileges and that the server takes writes",
        )
    return Finding(
        OK,
        "store",
        "takes writes: a probe row was written and rolled back (PostgreSQL checks a write"
        " on the server as it is made, so nothing needs to be kept)",
    )


def _password_findings(config: Config) -> list[Finding]:
    """Where libpq gets the password from, and the mistakes that make it ignore a file."""
    from psycopg.conninfo import conninfo_to_dict

    if "password" in conninfo_to_dict(config.db):
        return [
            Finding(
                WARN,
                "store",
                "db holds the password: whoever reads the config file, the environment or"
                " the command line sees it",
                "move it to db_password_file (mode 0600), PGPASSWORD or ~/.pgpass",
            )
        ]
    if config.db_password_file and read_db_password(config) is not None:
        return [Finding(OK, "store", f"password from db_password_file {config.db_password_file}")]
    if os.environ.get("PGPASSWORD"):
        return [Finding(OK, "store", "password from PGPASSWORD")]
    passfile = Path(os.environ.get("PGPASSFILE") or Path.home() / ".pgpass")
    try:
        mode = passfile.stat().st_mode & 0o777
    except OSError:
        # No password anywhere: trust, peer or certificate authentication, or none works
        # (then the connection check says so).
        return []
    if mode & 0o077:
        return [
            Finding(
                WARN,
                "store",
                f"libpq ignores the password file {passfile}: mode {mode:o} lets group or"
                " others read it",
                f"chmod 600 {passfile}",
            )
        ]
    return [Finding(OK, "store", f"password from {passfile} (mode {mode:o}), if it has this host")]
