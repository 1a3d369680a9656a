"""The PostgreSQL side of ``store_bench.py``: fill databases of 10 k, 1 M, 10 M recorded mails.

One database per size on one private server (``pg_server.py``: fsync on). The schema is
created as ``replytrack init`` creates it (``open_store(url, create=True)``); the rows are
then generated inside the server, one ``INSERT ... SELECT generate_series`` per chunk, with
the secondary indexes and the recipients' foreign key dropped during the load and rebuilt
afterwards from their saved definitions (a sorted build, instead of 10 M random b-tree
inserts), then ``VACUUM ANALYZE`` so that no autovacuum starts during the measurement.

The rows match store_bench's SQLite fill (campaigns, 200 k enrollments, one recipient per
mail, every other mail with the client's own Message-ID) except the stamped IDs: they are
computed by the server (``md5``), so :func:`pg_msgid` is the Python twin of :data:`MSGID_SQL`.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pg_server
from store_bench import ADDRESSES, CAMPAIGNS, DOMAIN

log = logging.getLogger(__name__)

# A 45-character hex token per row, spread like ours (random keys, not sequential).
MSGID_SQL = f"md5('m' || i) || left(md5('n' || i), 13) || '@{DOMAIN}'"
# The client's own Message-ID (store_bench.client_msgid); %% for psycopg's placeholders.
CLIENT_SQL = (
    "to_hex(i) || '.' || lpad(to_hex((i * 2654435761) %% 4294967296), 8, '0') || '@client.example'"
)
CHUNK = 2_000_000


def pg_msgid(i: int) -> str:
    """The stamped Message-ID of row ``i`` as :data:`MSGID_SQL` computes it."""
    a = hashlib.md5(f"m{i}".encode()).hexdigest()  # a spread, not a secret
    b = hashlib.md5(f"n{i}".encode()).hexdigest()
    return f"{a}{b[:13]}@{DOMAIN}"


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def fill(url: str, size: int) -> None:
    """Load ``size`` recorded mails (and the campaigns and enrollments) into an empty store."""
    import psycopg

    now = time.time() - 86400 * 30
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET maintenance_work_mem = '512MB'")
        # What the load drops and rebuilds: every index and constraint of messages and
        # recipients except their primary keys (appended to in order, cheap to keep).
        constraints = conn.execute(
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)"
            " FROM pg_constraint WHERE conrelid IN ('messages'::regclass, 'recipients'::regclass)"
            " AND contype IN ('u', 'f')"
        ).fetchall()
        for table, name, _ in constraints:
            conn.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"'.encode())
        indexes = conn.execute(
            "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index i"
            " WHERE i.indrelid IN ('messages'::regclass, 'recipients'::regclass)"
            " AND NOT i.indisprimary"
        ).fetchall()
        for name, _ in indexes:
            conn.execute(f"DROP INDEX {name}".encode())
        conn.execute(
            "INSERT INTO campaigns (campaign, created_at)"
            " SELECT 'camp-' || c, %s FROM generate_series(0, %s) c ON CONFLICT DO NOTHING",
            (now, CAMPAIGNS - 1),
        )
        conn.execute(
            "INSERT INTO enrollments (campaign, recipient, domain, status, reason, since,"
            " created_at) SELECT 'camp-' || (a %% %s), 'r' || a || '@d' || (a %% 1000)"
            " || '.example', 'd' || (a %% 1000) || '.example', 'active', NULL, %s, %s"
            " FROM generate_series(0, %s) a ON CONFLICT DO NOTHING",
            (CAMPAIGNS, now, now, ADDRESSES - 1),
        )
        for lo in range(0, size, CHUNK):
            hi = min(size, lo + CHUNK) - 1
            conn.execute(
                "INSERT INTO messages (id, message_id, original_message_id, campaign, step,"
                " sender, from_address, subject, created_at, status, size, upstream_reply)"
                f" SELECT i + 1, {MSGID_SQL}, CASE WHEN i %% 2 = 1 THEN {CLIENT_SQL} END,"
                " 'camp-' || (i %% %s), 1 + i %% 5, 'sales@bench.example',"
                " 'sales@bench.example', 'Quick question', %s + i * 0.001, 'relayed', 4096,"
                " '250 2.0.0 Ok' FROM generate_series(%s::bigint, %s::bigint) i",
                (CAMPAIGNS, now, lo, hi),
            )
            conn.execute(
                "INSERT INTO recipients (message, address, role, envelope, status, reason)"
                " SELECT i + 1, 'r' || (i %% %s) || '@d' || (i %% %s %% 1000) || '.example',"
                " 'to', true, 'sent', NULL FROM generate_series(%s::bigint, %s::bigint) i",
                (ADDRESSES, ADDRESSES, lo, hi),
            )
        for _, definition in indexes:
            conn.execute(definition.encode())
        for table, name, definition in constraints:
            conn.execute(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}'.encode())
        # Later inserts (the bench's record_outbound) take ids after the loaded ones.
        conn.execute("SELECT setval(pg_get_serial_sequence('messages', 'id'), %s)", (max(size, 1),))
        conn.execute("VACUUM ANALYZE")


def build(server: object, sizes: list[int]) -> dict[int, str]:
    """One filled database per size; returns their URLs."""
    urls: dict[int, str] = {}
    for size in sorted(sizes):
        started = time.monotonic()
        url = pg_server.create_database(server, f"store_{size}")  # type: ignore[arg-type]
        fill(url, size)
        _say(
            f"  postgresql: filled {size:>11,} rows in {time.monotonic() - started:6.1f} s"
            f" ({database_bytes(url) / 1e6:,.0f} MB)"
        )
        urls[size] = url
    return urls


def database_bytes(url: str) -> int:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        return int(row[0]) if row else 0


def database_files(url: str) -> list[Path]:
    """The files holding one database (to read them into the page cache before timing)."""
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT current_setting('data_directory'), oid FROM pg_database"
            " WHERE datname = current_database()"
        ).fetchone()
    assert row is not None
    return sorted(p for p in (Path(row[0]) / "base" / str(row[1])).iterdir() if p.is_file())


def prewarm(url: str) -> None:
    """Read every file of the database once (the OS page cache), as store_bench does for
    the SQLite files, so that neither store is compared partly from disk."""
    from store_bench import _read_through

    for path in database_files(url):
        _read_through(path)


# The statements the store runs for the timed calls (replytrack/store/postgresql.py), for
# ``--explain``: a plan that stops using an index shows here before it shows in the timings.
EXPLAINED = {
    "find_sent": "SELECT * FROM messages WHERE message_id = ANY(%(ids)s)"
    " OR original_message_id = ANY(%(ids)s) ORDER BY created_at DESC, id DESC",
    "find_sent recipients": "SELECT * FROM recipients WHERE message = ANY(%(pks)s)"
    " ORDER BY message, role DESC, address",
    "blocked_enrollments": "SELECT * FROM enrollments WHERE campaign = %(campaign)s"
    " AND recipient = ANY(%(addresses)s) AND status != 'active'",
}


def explain(url: str, size: int) -> None:
    """Print EXPLAIN (ANALYZE, BUFFERS) of each lookup on a store of ``size`` rows."""
    import random

    import psycopg
    from store_bench import client_msgid, foreign_msgid

    rng = random.Random(1)
    i = rng.randrange(size)
    params = {
        "ids": [pg_msgid(i), client_msgid(i | 1), *(foreign_msgid(rng) for _ in range(3))],
        "pks": [i + 1, (i | 1) + 1],
        "campaign": "camp-1",
        "addresses": ["r1@d1.example", "r101@d101.example", "new@elsewhere.example"],
    }
    with psycopg.connect(url) as conn:
        for name, sql in EXPLAINED.items():
            plan = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", params).fetchall()
            print(f"\n{name} ({size:,} recorded mails):")
            print("\n".join(f"  {row[0]}" for row in plan))


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="plans of the store's lookups on PostgreSQL")
    parser.add_argument("--explain", type=int, default=1_000_000, metavar="ROWS")
    args = parser.parse_args(argv)
    server = pg_server.start()
    try:
        url = build(server, [args.explain])[args.explain]
        explain(url, args.explain)
    finally:
        pg_server.stop(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
