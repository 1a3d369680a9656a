"""A private PostgreSQL server for the test suite, and the store fixtures built on it.

The server runs from Debian's binaries (``/usr/lib/postgresql/*/bin``) in a temporary
directory, listening on 127.0.0.1 at a free port and on a unix socket in that directory;
the system cluster is never read, started or touched. PostgreSQL refuses to run as root, so
when the suite runs as root the server is created and run as ``nobody``. It is started once
per test session (``fsync = off``: a crash of the test machine loses nothing we keep); each
test gets a database of its own, copied from a template that is migrated once.

Without the binaries the PostgreSQL tests skip with the reason, except under CI
(``CI=true``), where they fail: CI must run them.

Usage::

    def test_something(any_store):       # runs once on SQLite, once on PostgreSQL
        any_store.record_outbound(...)

    def test_down(pg_server, pg_url):
        store = PostgreSQLStore(pg_url)
        with pg_server.stopped():
            ...
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.net import free_port

# The database superuser of the private server (not an OS user), and the template every
# test database is copied from.
DB_USER = "replytrack"
TEMPLATE = "replytrack_template"
# The unprivileged OS user the server runs as when the suite runs as root.
RUN_AS = "nobody"

SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    # No fsync (the OS cache outlives the server, which is all a test restart needs); but
    # synchronous_commit stays on: an immediate stop must not lose a commit already made.
    "fsync": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "'32MB'",
    "log_min_messages": "warning",
    "log_connections": "off",
}


class PgUnavailable(RuntimeError):
    """No PostgreSQL binaries here, or the server could not be started."""


def find_bindir() -> Path:
    """Debian's newest PostgreSQL server binaries (``initdb``, ``pg_ctl``)."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise PgUnavailable(
        "PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/initdb):"
        " run scripts/bootstrap.sh, which installs Debian's postgresql"
    )


def unavailable(reason: str) -> None:
    """Skip with ``reason``; under CI fail instead, so a missing server is never silent."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"PostgreSQL tests cannot run under CI: {reason}", pytrace=False)
    pytest.skip(reason)


class PgServer:
    """One private PostgreSQL server: start, stop, create databases, URLs."""

    def __init__(self, bindir: Path, base: Path) -> None:
        self.bindir = bindir
        self.base = base
        self.data = base / "data"
        self.log = base / "server.log"
        self.port = free_port()
        self.host = "127.0.0.1"
        self._names = itertools.count(1)
        # As root, files and processes belong to an unprivileged user.
        self._user: str | None = RUN_AS if os.geteuid() == 0 else None

    # --- processes -----------------------------------------------------------------------
    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            cwd=self.base,
            user=self._user,
            env={**os.environ, "LC_ALL": "C", "HOME": str(self.base)},
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
        )

    def init(self) -> None:
        """initdb into the base directory and write the private settings."""
        if self._user is not None:
            shutil.chown(self.base, user=self._user)
        done = self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            DB_USER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            check=False,
        )
        if done.returncode != 0:
            raise PgUnavailable(f"initdb failed: {done.stderr.strip() or done.stdout.strip()}")
        settings = {
            **SETTINGS,
            "port": str(self.port),
            "unix_socket_directories": f"'{self.base}'",
        }
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\n# replytrack test server\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        done = self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-w",
            "-t",
            "60",
            "start",
            check=False,
        )
        if done.returncode != 0:
            tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise PgUnavailable(f"PostgreSQL did not start: {done.stderr.strip()}\n{tail}")

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server (``immediate``: no shutdown checkpoint, clients cut at once)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def promote(self) -> None:
        """Turn this standby into a primary (``pg_ctl promote``, waits until it is done)."""
        done = self._run("pg_ctl", "-D", str(self.data), "-w", "-t", "60", "promote", check=False)
        if done.returncode != 0:
            raise PgUnavailable(f"promote failed: {done.stderr.strip() or done.stdout.strip()}")

    def make_standby(self) -> PgServer:
        """A running streaming standby of this server, in a directory of its own.

        ``pg_basebackup -R`` copies the running primary and writes ``standby.signal`` and
        ``primary_conninfo``; the copy then gets its own port and socket directory. initdb's
        default pg_hba.conf lets loopback replication connections in, and the default
        ``wal_level`` (replica) and ``max_wal_senders`` serve one standby.
        """
        standby = PgServer(self.bindir, Path(tempfile.mkdtemp(prefix="replytrack-pg-standby-")))
        if standby._user is not None:
            shutil.chown(standby.base, user=standby._user)
        done = standby._run(
            "pg_basebackup",
            "-h",
            self.host,
            "-p",
            str(self.port),
            "-U",
            DB_USER,
            "-D",
            str(standby.data),
            "-R",
            "-X",
            "stream",
            # A spread checkpoint would hold the copy back for minutes.
            "--checkpoint=fast",
            "--no-sync",
            check=False,
        )
        if done.returncode != 0:
            standby.remove()
            raise PgUnavailable(f"pg_basebackup failed: {done.stderr.strip()}")
        with (standby.data / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# replytrack test standby\n"
                f"port = {standby.port}\n"
                f"unix_socket_directories = '{standby.base}'\n"
            )
        try:
            standby.start()
        except PgUnavailable:
            standby.remove()
            raise
        return standby

    def remove(self) -> None:
        """Stop the server and delete its directory."""
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    @contextlib.contextmanager
    def stopped(self, mode: str = "immediate") -> Iterator[None]:
        """The block runs with the server stopped; it is started again afterwards."""
        self.stop(mode)
        try:
            yield
        finally:
            self.start()

    # --- databases -----------------------------------------------------------------------
    def url(self, dbname: str) -> str:
        """The libpq URL of one database on this server (loopback TCP)."""
        return f"postgresql://{DB_USER}@{self.host}:{self.port}/{dbname}"

    def admin(self, sql: str) -> None:
        """Run one statement as the superuser in the ``postgres`` database."""
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(sql.encode())

    def make_template(self) -> None:
        """Create the template database with replytrack's schema, migrated once."""
        from replytrack.store.postgresql import PostgreSQLStore

        self.admin(f"CREATE DATABASE {TEMPLATE}")
        store = PostgreSQLStore(self.url(TEMPLATE))
        store.close_all()

    def create_database(self, *, template: str | None = TEMPLATE) -> str:
        """A new database (a copy of the migrated template, or empty); returns its name."""
        name = f"rt_test_{os.getpid()}_{next(self._names)}"
        source = f" TEMPLATE {template}" if template else " TEMPLATE template0"
        self.admin(f"CREATE DATABASE {name}{source}")
        return name

    def drop_database(self, name: str) -> None:
        with contextlib.suppress(Exception):
            self.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def start_server() -> PgServer:
    """A running private server with the template database; PgUnavailable if impossible."""
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError as exc:
        raise PgUnavailable(f"psycopg is not installed ({exc}): run scripts/bootstrap.sh") from None
    bindir = find_bindir()
    # Not under pytest's tmp_path: that is private to root (mode 0700) and the server's user
    # must reach its directory.
    base = Path(tempfile.mkdtemp(prefix="replytrack-pg-"))
    server = PgServer(bindir, base)
    try:
        server.init()
        server.start()
        server.make_template()
    except BaseException:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
        raise
    return server


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The session's private PostgreSQL server (skips, or fails under CI, without one)."""
    try:
        server = start_server()
    except PgUnavailable as exc:
        unavailable(str(exc))
        raise  # not reached: unavailable() skips or fails
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.base, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """The URL of a fresh database with the current schema, dropped after the test."""
    if not pg_server.running():
        pg_server.start()  # a test that stopped it and failed before starting it again
    name = pg_server.create_database()
    yield pg_server.url(name)
    pg_server.drop_database(name)


@pytest.fixture
def pg_store(pg_url: str) -> Iterator[Any]:
    """A PostgreSQLStore on a fresh database."""
    from replytrack.store.postgresql import PostgreSQLStore

    store = PostgreSQLStore(pg_url)
    yield store
    store.close_all()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A fresh store of each backend in turn: the store's behaviour is the same on both."""
    if request.param == "sqlite":
        from replytrack.store.sqlite import SQLiteStore

        store: Any = SQLiteStore(tmp_path / "replytrack.db")
    else:
        from replytrack.store.postgresql import PostgreSQLStore

        store = PostgreSQLStore(request.getfixturevalue("pg_url"))
    yield store
    store.close_all()
