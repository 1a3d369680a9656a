"""Store lookup and insert cost at 10 k, 1 M and 10 M recorded Message-IDs.

Usage: .venv/bin/python bench/store_bench.py [--sizes 10000,1000000,10000000] [--dir /tmp/...]

What it measures, per store size:

* reply (hit): ``find_sent`` with what a reply carries (its In-Reply-To plus a short
  References chain: one of our recorded IDs at a random position among foreign IDs); the
  recorded mail is picked uniformly from the whole store, the worst case for caching;
* miss: ``find_sent`` of four foreign IDs only (most IDs the milter looks up are foreign:
  our own tokens are verified by HMAC first);
* insert: ``record_outbound`` of one campaign mail, one committed transaction each, the call
  the proxy makes before it answers 250.

Lookups go through ``message_keys`` (schema 4: a 64-bit key per stamped and client ID).
The stores are filled fast (``executemany`` in large transactions, journal off while
filling) and then reopened through ``SQLiteStore`` as production opens them (WAL). Each size
is a separate file so the rounds run interleaved (10 k, 1 M, 10 M, 10 k, ...) and VM stalls
hit every size alike; a kept store of an older schema is migrated (timed) before use. The
goal: lookups flat, at most 1.5x from the smallest to the largest.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import random
import shutil
import sqlite3
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from replytrack.store import OutboundRecipient, OutboundRecord
from replytrack.store.sqlite import SQLiteStore, message_key

DOMAIN = "bench.replytrack.test"
CAMPAIGNS = 100
ADDRESSES = 200_000
# Bytes of disk per recorded message with its recipient, indexes and lookup keys (measured
# ~456 at 10 M).
BYTES_PER_ROW = 450


def bench_msgid(i: int) -> str:
    """The i-th recorded Message-ID: deterministic, so lookups can name hits without a list.

    Shaped like ours (a 45-character lowercase base32 token) and spread like ours (random
    keys, not sequential ones, so the unique index sees realistic page splits).
    """
    digest = hashlib.blake2b(i.to_bytes(8, "big"), digest_size=26).digest()
    token = base64.b32encode(digest).decode("ascii").rstrip("=").lower()[:45]
    return f"{token}@{DOMAIN}"


def client_msgid(i: int) -> str:
    """The client's own Message-ID of the i-th mail (half of them have one)."""
    return f"{i:x}.{i * 2654435761 % 2**32:08x}@client.example"


def foreign_msgid(rng: random.Random) -> str:
    """An ID we never recorded (someone else's mail in the thread)."""
    return f"{rng.getrandbits(96):024x}@elsewhere.example"


def fill(path: Path, start: int, stop: int, *, batch: int = 200_000) -> None:
    """Add rows ``start``..``stop`` (messages with one recipient each) to the store at path."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    # Bulk load: the store file is scratch, so no journal and no fsync while filling.
    conn.execute("PRAGMA journal_mode = OFF")
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -1000000")
    now = time.time() - 86400 * 30
    if start == 0:
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT OR IGNORE INTO campaigns (campaign, created_at) VALUES (?, ?)",
            [(f"camp-{c}", now) for c in range(CAMPAIGNS)],
        )
        conn.executemany(
            "INSERT OR IGNORE INTO enrollments (campaign, recipient, domain, status, reason,"
            " since, created_at) VALUES (?,?,?,'active',NULL,?,?)",
            [
                (
                    f"camp-{a % CAMPAIGNS}",
                    f"r{a}@d{a % 1000}.example",
                    f"d{a % 1000}.example",
                    now,
                    now,
                )
                for a in range(ADDRESSES)
            ],
        )
        conn.execute("COMMIT")
    for lo in range(start, stop, batch):
        hi = min(stop, lo + batch)
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO messages (id, message_id, original_message_id, campaign, step, sender,"
            " from_address, subject, created_at, status, size, upstream_reply)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                (
                    i + 1,
                    bench_msgid(i),
                    client_msgid(i) if i % 2 else None,
                    f"camp-{i % CAMPAIGNS}",
                    1 + i % 5,
                    "sales@bench.example",
                    "sales@bench.example",
                    "Quick question",
                    now + i * 0.001,
                    "relayed",
                    4096,
                    "250 2.0.0 Ok",
                )
                for i in range(lo, hi)
            ),
        )
        # The lookup keys, as record_outbound writes them (stamped and client IDs).
        conn.executemany(
            "INSERT OR IGNORE INTO message_keys (key, message) VALUES (?, ?)",
            sorted(
                [(message_key(bench_msgid(i)), i + 1) for i in range(lo, hi)]
                + [(message_key(client_msgid(i)), i + 1) for i in range(lo, hi) if i % 2]
            ),
        )
        conn.executemany(
            "INSERT INTO recipients (message, address, role, envelope, status, reason)"
            " VALUES (?,?,?,?,?,NULL)",
            (
                (i + 1, f"r{i % ADDRESSES}@d{i % ADDRESSES % 1000}.example", "to", 1, "sent")
                for i in range(lo, hi)
            ),
        )
        conn.execute("COMMIT")
    conn.close()


def reusable(path: Path, size: int) -> bool:
    """True when ``path`` holds exactly the ``size`` filled rows (kept by an earlier --keep).

    Rows that an earlier measurement inserted (ids above ``size``) are deleted first.
    """
    if not path.exists():
        return False
    try:
        conn = sqlite3.connect(str(path), isolation_level=None)
        conn.create_function(
            "rt_message_key", 1, lambda m: None if m is None else message_key(m), deterministic=True
        )
        try:
            top = conn.execute("SELECT count(*), max(id) FROM messages WHERE id <= ?", (size,))
            count, highest = top.fetchone()
            if count != size or highest != size:
                return False
            conn.execute("BEGIN")
            if conn.execute("PRAGMA user_version").fetchone()[0] >= 4:
                conn.execute(
                    "DELETE FROM message_keys WHERE (key, message) IN (SELECT"
                    " rt_message_key(message_id), id FROM messages WHERE id > ?)",
                    (size,),
                )
            conn.execute("DELETE FROM recipients WHERE message > ?", (size,))
            conn.execute("DELETE FROM messages WHERE id > ?", (size,))
            conn.execute("COMMIT")
            return True
        finally:
            conn.close()
    except sqlite3.Error:
        return False


def build_stores(sizes: list[int], workdir: Path) -> dict[int, Path]:
    """One store file per size; each grows from the previous one's copy."""
    workdir.mkdir(parents=True, exist_ok=True)
    paths: dict[int, Path] = {}
    previous: tuple[int, Path] | None = None
    for size in sorted(sizes):
        path = workdir / f"store-{size}.db"
        if reusable(path, size):
            print(f"  reusing {path} ({size:,} rows)", file=sys.stderr)
            # A store of an older schema upgrades as production's would: timed.
            started = time.monotonic()
            store = SQLiteStore(path)
            if time.monotonic() - started > 1:
                print(
                    f"  migrated {path} to schema {store.schema_version()} in"
                    f" {time.monotonic() - started:.1f} s",
                    file=sys.stderr,
                )
            store.close_all()
            paths[size] = path
            previous = (size, path)
            continue
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        started = time.monotonic()
        if previous is None:
            SQLiteStore(path).close_all()  # the schema, as production creates it
            done = 0
        else:
            shutil.copyfile(previous[1], path)
            done = previous[0]
        fill(path, done, size)
        # Reopen as production does (WAL) and let SQLite gather index statistics.
        conn = sqlite3.connect(str(path))
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("ANALYZE")
        conn.close()
        print(
            f"  filled {size:>11,} rows in {time.monotonic() - started:6.1f} s"
            f" ({path.stat().st_size / 1e6:,.0f} MB)",
            file=sys.stderr,
        )
        paths[size] = path
        previous = (size, path)
    return paths


@dataclass
class Samples:
    """Per-operation times in microseconds, collected over interleaved rounds."""

    lookup: list[float] = field(default_factory=list)
    miss: list[float] = field(default_factory=list)
    insert: list[float] = field(default_factory=list)
    cpu_lookup: list[float] = field(default_factory=list)
    cpu_miss: list[float] = field(default_factory=list)
    found: int = 0
    expected: int = 0


def _round(store: SQLiteStore, size: int, samples: Samples, rng: random.Random, ops: int) -> None:
    refs_per_reply = 4
    # Lookups of a reply: In-Reply-To (ours) + References (ours somewhere among foreign IDs).
    queries = []
    for _ in range(ops):
        ours = bench_msgid(rng.randrange(size))
        chain = [foreign_msgid(rng) for _ in range(refs_per_reply - 1)]
        chain.insert(rng.randrange(refs_per_reply), ours)
        queries.append(([ours, *chain], ours))
    t0, c0 = time.perf_counter(), time.process_time()
    hits = 0
    for ids, ours in queries:
        found = store.find_sent(ids)
        hits += any(m.message_id == ours for m in found)
    t1, c1 = time.perf_counter(), time.process_time()
    samples.lookup.append((t1 - t0) / ops * 1e6)
    samples.cpu_lookup.append((c1 - c0) / ops * 1e6)
    samples.found += hits
    samples.expected += ops
    misses = [[foreign_msgid(rng) for _ in range(refs_per_reply)] for _ in range(ops)]
    t0, c0 = time.perf_counter(), time.process_time()
    for ids in misses:
        store.find_sent(ids)
    t1, c1 = time.perf_counter(), time.process_time()
    samples.miss.append((t1 - t0) / ops * 1e6)
    samples.cpu_miss.append((c1 - c0) / ops * 1e6)
    inserts = max(1, ops // 4)
    records = []
    for _ in range(inserts):
        n = rng.getrandbits(62)
        records.append(
            OutboundRecord(
                message_id=f"ins{n:x}@{DOMAIN}",
                original_message_id=None,
                campaign=f"camp-{n % CAMPAIGNS}",
                step=1,
                sender="sales@bench.example",
                from_address="sales@bench.example",
                subject="Quick question",
                size=4096,
                status="relayed",
                recipients=(OutboundRecipient(f"new{n:x}@d{n % 1000}.example", "to", True),),
                created_at=time.time(),
            )
        )
    t0 = time.perf_counter()
    for record in records:
        store.record_outbound(record)
    samples.insert.append((time.perf_counter() - t0) / inserts * 1e6)


def measure(
    paths: dict[int, Path],
    *,
    rounds: int,
    ops: int,
    seed: int = 7,
    pragmas: list[str] | None = None,
) -> dict[int, Samples]:
    """Interleaved rounds over all sizes; returns the samples per size.

    ``pragmas`` (e.g. ``mmap_size=1073741824``) are applied to each store's connection
    first: a what-if knob for tuning, off by default so the figures are the shipped store's.
    """
    rng = random.Random(seed)
    stores = {size: SQLiteStore(path) for size, path in paths.items()}
    for store in stores.values():
        for pragma in pragmas or []:
            store.conn.execute(f"PRAGMA {pragma}")
    results = {size: Samples() for size in paths}
    try:
        # Every file read once into the page cache, as a server's store is when it has the
        # memory for it: otherwise the 10 M file (4.6 GB) is compared partly from disk, or
        # from pages the earlier parts of run_all.py pushed out (reply 2.51x in one such
        # run, 1.09-1.31x warm on the same machine that hour), and the figure measures the
        # page cache instead of the store.
        for path in paths.values():
            _read_through(path)
        # One warm-up round so every file's upper index pages are in SQLite's cache.
        for size, store in stores.items():
            _round(store, size, Samples(), rng, ops)
        for _ in range(rounds):
            for size, store in stores.items():
                _round(store, size, results[size], rng, ops)
    finally:
        for store in stores.values():
            store.close_all()
    return results


def _read_through(path: Path, block: int = 8 << 20) -> None:
    """Read a file from start to end (into the page cache), discarding what is read."""
    buffer = bytearray(block)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buffer):
            pass


def fits(sizes: list[int], workdir: Path) -> list[int]:
    """The sizes whose files (all of them together, copies included) fit on the disk."""
    workdir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(workdir).free
    kept: list[int] = []
    for size in sorted(sizes):
        if (sum(kept) + size) * BYTES_PER_ROW * 1.2 > free:
            print(
                f"store_bench: skipping {size:,} rows: {free / 1e9:.1f} GB free in {workdir}",
                file=sys.stderr,
            )
            break
        kept.append(size)
    return kept


def run(
    sizes: list[int],
    workdir: Path,
    *,
    rounds: int = 5,
    ops: int = 2000,
    keep: bool = False,
    pragmas: list[str] | None = None,
) -> dict[str, float]:
    """Build, measure, print the table; returns the headline figures for run_all."""
    sizes = fits(sizes, workdir)
    paths = build_stores(sizes, workdir)
    try:
        results = measure(paths, rounds=rounds, ops=ops, pragmas=pragmas)
    finally:
        if not keep:
            for path in paths.values():
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{path}{suffix}").unlink(missing_ok=True)
    smallest = min(results)
    base = statistics.median(results[smallest].lookup)
    base_ins = statistics.median(results[smallest].insert)
    tuned = f", PRAGMA {', '.join(pragmas)}" if pragmas else ""
    print(f"\nstore bench: {rounds} interleaved rounds x {ops} ops per size (median){tuned}")
    base_miss = statistics.median(results[smallest].miss)
    print(
        f"{'recorded IDs':>13} | {'reply us':>8} | {'cpu us':>6} | {'miss us':>7} |"
        f" {'cpu us':>6} | {'insert us':>9} | {'reply x':>7} | {'miss x':>6} |"
        f" {'insert x':>8} | hits"
    )
    print("-" * 100)
    summary: dict[str, float] = {}
    for size in sorted(results):
        s = results[size]
        lookup = statistics.median(s.lookup)
        miss = statistics.median(s.miss)
        insert = statistics.median(s.insert)
        print(
            f"{size:>13,} | {lookup:8.1f} | {statistics.median(s.cpu_lookup):6.1f} |"
            f" {miss:7.1f} | {statistics.median(s.cpu_miss):6.1f} | {insert:9.1f} |"
            f" {lookup / base:6.2f}x | {miss / base_miss:5.2f}x | {insert / base_ins:7.2f}x |"
            f" {s.found}/{s.expected}"
        )
        summary[f"lookup_us_{size}"] = lookup
        summary[f"miss_us_{size}"] = miss
        summary[f"insert_us_{size}"] = insert
    largest = max(results)
    ratio = statistics.median(results[largest].lookup) / base
    summary["lookup_ratio"] = ratio
    summary["miss_ratio"] = statistics.median(results[largest].miss) / base_miss
    summary["largest"] = largest
    verdict = "met" if ratio <= 1.5 else "NOT met"
    print(
        f"goal: lookups flat, <= 1.5x from {smallest:,} to {largest:,}: reply {ratio:.2f}x"
        f" ({verdict}), miss {summary['miss_ratio']:.2f}x"
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,1000000,10000000")
    parser.add_argument("--dir", default="/tmp/replytrack-store-bench", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ops", type=int, default=2000)
    parser.add_argument("--keep", action="store_true", help="keep the store files")
    parser.add_argument("--build-only", action="store_true", help="fill and keep, no timing")
    parser.add_argument(
        "--pragma", action="append", default=[], help="what-if: PRAGMA for each connection"
    )
    args = parser.parse_args(argv)
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    if args.build_only:
        build_stores(fits(sizes, args.dir), args.dir)
        return 0
    run(sizes, args.dir, rounds=args.rounds, ops=args.ops, keep=args.keep, pragmas=args.pragma)
    return 0


if __name__ == "__main__":
    sys.exit(main())
