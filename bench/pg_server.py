"""A private PostgreSQL server for the benchmarks, configured as a small production server.

It reuses the test suite's server (``tests/support/pg.py``: Debian's binaries, a temporary
directory, a loopback port, run as ``nobody`` when we are root; the system cluster is never
touched) but undoes the test shortcuts: **fsync and full_page_writes stay on**, and
``synchronous_commit`` keeps its default (on), so every commit the proxy makes before it
answers 250 waits for the disk, as it would on a real server. Buffers and WAL are sized for
the 10 M-row store benchmark.

The server's CPU is read from its postmaster's process tree (every backend is a child of
the postmaster; an exited backend's time lands in the postmaster's reaped-children times).
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.pg import PgServer, PgUnavailable, find_bindir  # noqa: E402

log = logging.getLogger(__name__)

# Appended after the test settings: the last line of postgresql.conf wins.
BENCH_SETTINGS = {
    "fsync": "on",
    "full_page_writes": "on",
    "synchronous_commit": "on",
    "shared_buffers": "'512MB'",
    "effective_cache_size": "'4GB'",
    "maintenance_work_mem": "'512MB'",
    "max_wal_size": "'2GB'",
    "checkpoint_timeout": "'15min'",
    # autovacuum keeps its defaults: a fresh store's first statistics come from it, and
    # without them the settle statements of the proxy ran sequential scans (bench/README.md,
    # PostgreSQL). Bulk loads end with their own VACUUM ANALYZE.
    "max_connections": "300",
}

__all__ = ["PgUnavailable", "available", "create_database", "server_pid", "start", "stop"]


def available() -> str | None:
    """None when a bench server can be started here, else why not."""
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError as exc:
        return f"psycopg is not installed ({exc})"
    try:
        find_bindir()
    except PgUnavailable as exc:
        return str(exc)
    return None


def start(parent: Path | None = None, settings: dict[str, str] | None = None) -> PgServer:
    """initdb, configure and start a server in a new directory under ``parent`` (/tmp);
    ``settings`` (postgresql.conf lines) override the bench's, for what-if runs."""
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="replytrack-pg-bench-", dir=parent))
    base.chmod(0o755)
    server = PgServer(find_bindir(), base)
    try:
        server.init()
        with (server.data / "postgresql.conf").open("a") as conf:
            conf.write("\n# replytrack benchmark: durable, as in production\n")
            merged = {**BENCH_SETTINGS, **(settings or {})}
            conf.writelines(f"{key} = {value}\n" for key, value in merged.items())
        server.start()
    except BaseException:
        stop(server)
        raise
    return server


def stop(server: PgServer) -> None:
    """Stop the server (fast shutdown) and delete its directory."""
    try:
        server.stop("fast")
    finally:
        shutil.rmtree(server.base, ignore_errors=True)


def server_pid(server: PgServer) -> int:
    """The postmaster's pid (the root of every server process)."""
    return int((server.data / "postmaster.pid").read_text().split()[0])


def create_database(server: PgServer, name: str) -> str:
    """An empty database with replytrack's schema, made as ``replytrack init`` makes it
    (``open_store(url, create=True)``); returns its URL."""
    from replytrack.store import open_store

    server.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    server.admin(f"CREATE DATABASE {name}")
    url = server.url(name)
    open_store(url, create=True).close_all()
    return url
