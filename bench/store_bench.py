"""Store lookup and insert cost at 10 k, 1 M and 10 M recorded Message-IDs.

Usage: .venv/bin/python bench/store_bench.py [--sizes 10000,1000000,10000000] [--dir /tmp/...]
                                             [--backend sqlite|postgresql|both]

``--backend postgresql`` (or ``both``, interleaved with SQLite in the same rounds) fills one
database per size on a private durable PostgreSQL (store_bench_pg.py, pg_server.py) and
adds the server's CPU per call. Besides the reply, miss and insert below, every round also
times a reply found by the client's own Message-ID and ``blocked_enrollments`` (the
proxy's check of two enrolled recipients and one unknown).

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
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

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


# What one round times, per store: a reply's lookup by our stamped ID and by the client's
# own ID (each among foreign IDs), a lookup of foreign IDs only, the proxy's check of
# who is blocked in a campaign, and the proxy's insert.
OPS = ("reply", "original", "miss", "blocked", "insert")
REFS_PER_REPLY = 4


@dataclass
class Samples:
    """Per-call times in microseconds, one value per interleaved round and operation:
    wall time, this process's CPU, and the database server's CPU (PostgreSQL only); and
    the bytes this process read from the disk per call (pages not in the OS page cache)."""

    wall: dict[str, list[float]] = field(default_factory=lambda: {op: [] for op in OPS})
    cpu: dict[str, list[float]] = field(default_factory=lambda: {op: [] for op in OPS})
    server: dict[str, list[float]] = field(default_factory=lambda: {op: [] for op in OPS})
    disk: dict[str, list[float]] = field(default_factory=lambda: {op: [] for op in OPS})
    found: int = 0
    expected: int = 0

    def med(self, op: str, what: str = "wall") -> float:
        values = getattr(self, what)[op]
        return statistics.median(values) if values else float("nan")


@dataclass
class Target:
    """One store under measurement."""

    store: Any
    size: int
    msgid: Callable[[int], str]
    server_cpu: Callable[[], float] | None = None
    # Run before each of this store's rounds, untimed (SQLite: its file read through).
    warm: Callable[[], None] | None = None


def _disk_read() -> int:
    """Bytes this process has read from block devices (page cache misses), or 0 where
    /proc/self/io cannot be read."""
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("read_bytes:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _timed(target: Target, samples: Samples, op: str, calls: list[Callable[[], Any]]) -> list[Any]:
    s0 = target.server_cpu() if target.server_cpu else 0.0
    d0 = _disk_read()
    t0, c0 = time.perf_counter(), time.process_time()
    results = [call() for call in calls]
    t1, c1 = time.perf_counter(), time.process_time()
    n = len(calls)
    samples.wall[op].append((t1 - t0) / n * 1e6)
    samples.cpu[op].append((c1 - c0) / n * 1e6)
    samples.disk[op].append((_disk_read() - d0) / n)
    if target.server_cpu:
        samples.server[op].append((target.server_cpu() - s0) / n * 1e6)
    return results


def _chain(rng: random.Random, ours: str) -> list[str]:
    chain = [foreign_msgid(rng) for _ in range(REFS_PER_REPLY - 1)]
    chain.insert(rng.randrange(REFS_PER_REPLY), ours)
    return chain


def _round(target: Target, samples: Samples, rng: random.Random, ops: int) -> None:
    store, size = target.store, target.size
    stamped = [target.msgid(rng.randrange(size)) for _ in range(ops)]
    found = _timed(
        target,
        samples,
        "reply",
        [partial(store.find_sent, [o, *_chain(rng, o)]) for o in stamped],
    )
    hits = sum(any(m.message_id == o for m in f) for o, f in zip(stamped, found, strict=True))
    # The client's own IDs: every other row has one (odd rows).
    own = [client_msgid(rng.randrange(size // 2) * 2 + 1) for _ in range(ops)]
    found = _timed(
        target, samples, "original", [partial(store.find_sent, _chain(rng, o)) for o in own]
    )
    hits += sum(any(m.original_message_id == o for m in f) for o, f in zip(own, found, strict=True))
    samples.found += hits
    samples.expected += 2 * ops
    misses = [[foreign_msgid(rng) for _ in range(REFS_PER_REPLY)] for _ in range(ops)]
    _timed(target, samples, "miss", [partial(store.find_sent, m) for m in misses])
    checks = []
    for _ in range(ops):
        a = rng.randrange(ADDRESSES - 2 * CAMPAIGNS)
        # Two enrolled recipients of one campaign and one never enrolled.
        addresses = [f"r{b}@d{b % 1000}.example" for b in (a, a + CAMPAIGNS)] + [
            f"new{rng.getrandbits(32):x}@elsewhere.example"
        ]
        checks.append((f"camp-{a % CAMPAIGNS}", addresses))
    _timed(
        target,
        samples,
        "blocked",
        [partial(store.blocked_enrollments, c, a) for c, a in checks],
    )
    records = []
    for _ in range(max(1, ops // 4)):
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
    _timed(target, samples, "insert", [partial(store.record_outbound, r) for r in records])


Key = tuple[str, int]  # (backend, recorded IDs)


def measure(
    targets: dict[Key, Target], *, rounds: int, ops: int, seed: int = 7
) -> dict[Key, Samples]:
    """Interleaved rounds over every store (both backends, every size); samples per store."""
    rng = random.Random(seed)
    results = {key: Samples() for key in targets}
    # One warm-up round so every store's upper index pages are in its cache.
    for target in targets.values():
        if target.warm:
            target.warm()
        _round(target, Samples(), rng, ops)
    for _ in range(rounds):
        for key, target in targets.items():
            if target.warm:
                target.warm()
            _round(target, results[key], rng, ops)
    return results


def _read_through(path: Path, block: int = 8 << 20) -> None:
    """Read a file from start to end (into the page cache), discarding what is read."""
    buffer = bytearray(block)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buffer):
            pass


def fits(sizes: list[int], workdir: Path, *, copies: int = 1) -> list[int]:
    """The sizes whose stores (all of them together, ``copies`` backends) fit on the disk."""
    workdir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(workdir).free
    kept: list[int] = []
    for size in sorted(sizes):
        if (sum(kept) + size) * BYTES_PER_ROW * 1.2 * copies > free:
            print(
                f"store_bench: skipping {size:,} rows: {free / 1e9:.1f} GB free in {workdir}",
                file=sys.stderr,
            )
            break
        kept.append(size)
    return kept


def _sqlite_targets(paths: dict[int, Path], pragmas: list[str] | None) -> dict[Key, Target]:
    # Each file is read through into the page cache before each of its rounds, as a
    # server's store is in memory when it has the memory for it; otherwise the figure
    # measures the page cache instead of the store. Once is not enough on these VMs: the
    # kernel's DAMON pageout scheme (/sys/kernel/mm/damon) drops file pages that went
    # unread for about a minute, at up to 128 MB/s. A 10 M store (4.6 GB) read once and
    # then left while PostgreSQL's stores were filled, or between the rounds of
    # ``--backend both``, was then read partly from disk: reply 3.65x, its CPU per call
    # doubled (2026-12-06); warm the same day 1.17-1.59x. A warm pass costs ~2 s at 10 M.
    targets: dict[Key, Target] = {}
    for size, path in paths.items():
        store = SQLiteStore(path)
        # ``pragmas`` (e.g. ``mmap_size=1073741824``): a what-if knob for tuning, off by
        # default so the figures are the shipped store's.
        for pragma in pragmas or []:
            store.conn.execute(f"PRAGMA {pragma}")
        targets[("sqlite", size)] = Target(
            store, size, bench_msgid, warm=partial(_read_through, path)
        )
    return targets


def run(
    sizes: list[int],
    workdir: Path,
    *,
    backend: str = "sqlite",
    rounds: int = 5,
    ops: int = 2000,
    keep: bool = False,
    pragmas: list[str] | None = None,
) -> dict[str, float]:
    """Build, measure, print the tables; returns the headline figures for run_all.

    ``backend``: ``sqlite``, ``postgresql`` or ``both`` (measured in the same interleaved
    rounds). The SQLite files are kept with ``keep``; the PostgreSQL server is always
    removed afterwards (its databases are rebuilt each run: a few minutes for 10 M).
    """
    backends = ["sqlite", "postgresql"] if backend == "both" else [backend]
    sizes = fits(sizes, workdir, copies=len(backends) * 2 if "postgresql" in backends else 1)
    targets: dict[Key, Target] = {}
    paths: dict[int, Path] = {}
    server = None
    try:
        if "sqlite" in backends:
            paths = build_stores(sizes, workdir)
            targets.update(_sqlite_targets(paths, pragmas))
        if "postgresql" in backends:
            server, pg_targets = _postgresql_targets(sizes, workdir)
            targets.update(pg_targets)
        results = measure(targets, rounds=rounds, ops=ops)
    finally:
        for target in targets.values():
            target.store.close_all()
        if server is not None:
            import pg_server

            pg_server.stop(server)
        if not keep:
            for path in paths.values():
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{path}{suffix}").unlink(missing_ok=True)
    tuned = f", PRAGMA {', '.join(pragmas)}" if pragmas else ""
    print(f"\nstore bench: {rounds} interleaved rounds x {ops} calls per store (median){tuned}")
    summary: dict[str, float] = {}
    for name in backends:
        summary.update(_report(name, {s: r for (b, s), r in results.items() if b == name}))
    if len(backends) == 2:
        _compare(results, sizes)
    return summary


def _postgresql_targets(sizes: list[int], workdir: Path) -> tuple[Any, dict[Key, Target]]:
    import pg_server
    import store_bench_pg
    from run_all import tree_cpu

    from replytrack.store import open_store

    server = pg_server.start(workdir)
    targets: dict[Key, Target] = {}
    try:
        urls = store_bench_pg.build(server, sizes)
        root = pg_server.server_pid(server)
        for size, url in urls.items():
            store_bench_pg.prewarm(url)
            targets[("postgresql", size)] = Target(
                open_store(url), size, store_bench_pg.pg_msgid, lambda: tree_cpu([root])
            )
    except BaseException:
        for target in targets.values():
            target.store.close_all()
        pg_server.stop(server)
        raise
    return server, targets


def _report(backend: str, results: dict[int, Samples]) -> dict[str, float]:
    """One backend's table; its figures (PostgreSQL's prefixed ``pg_``) for run_all."""
    smallest, largest = min(results), max(results)
    base = results[smallest]
    print(f"\n{backend}: us per call (ratio to {smallest:,} recorded IDs)")
    print(f"{'recorded IDs':>13} | " + " | ".join(f"{op:>15}" for op in OPS) + " | hits")
    print("-" * (16 + 18 * len(OPS) + 12))
    for size in sorted(results):
        s = results[size]
        cells = [f"{s.med(op):7.1f} {s.med(op) / base.med(op):5.2f}x" for op in OPS]
        print(
            f"{size:>13,} | " + " | ".join(f"{c:>15}" for c in cells) + f" | {s.found}/{s.expected}"
        )
    server = backend == "postgresql"
    print(f"{backend}: CPU us per call (this process{' / server' if server else ''})")
    for size in sorted(results):
        s = results[size]
        cells = [
            f"{s.med(op, 'cpu'):6.1f}" + (f" / {s.med(op, 'server'):5.1f}" if server else "")
            for op in OPS
        ]
        print(f"{size:>13,} | " + " | ".join(f"{c:>15}" for c in cells))
    if not server:
        _report_disk(backend, results)
    prefix = "pg_" if backend == "postgresql" else ""
    summary: dict[str, float] = {}
    for size, s in results.items():
        summary[f"{prefix}lookup_us_{size}"] = s.med("reply")
        summary[f"{prefix}miss_us_{size}"] = s.med("miss")
        summary[f"{prefix}insert_us_{size}"] = s.med("insert")
    top = results[largest]
    summary[f"{prefix}lookup_ratio"] = top.med("reply") / base.med("reply")
    summary[f"{prefix}original_ratio"] = top.med("original") / base.med("original")
    summary[f"{prefix}miss_ratio"] = top.med("miss") / base.med("miss")
    summary[f"{prefix}blocked_ratio"] = top.med("blocked") / base.med("blocked")
    summary[f"{prefix}largest"] = largest
    ratio = summary[f"{prefix}lookup_ratio"]
    print(
        f"{backend} goal: lookups flat, <= 1.5x from {smallest:,} to {largest:,}:"
        f" reply {ratio:.2f}x ({'met' if ratio <= 1.5 else 'NOT met'}),"
        f" original {summary[f'{prefix}original_ratio']:.2f}x,"
        f" miss {summary[f'{prefix}miss_ratio']:.2f}x,"
        f" blocked {summary[f'{prefix}blocked_ratio']:.2f}x"
    )
    return summary


def _report_disk(backend: str, results: dict[int, Samples]) -> None:
    """Bytes read from the disk per call: warm stores read none. Where lookups do, the
    figures measure the page cache (memory short, or pages pushed out by other work), not
    the store: a store read partly from disk costs 2-4x the CPU per call here."""
    print(f"{backend}: KB read from disk per call (page cache misses)")
    cold = []
    for size in sorted(results):
        s = results[size]
        print(f"{size:>13,} | " + " | ".join(f"{s.med(op, 'disk') / 1024:15.2f}" for op in OPS))
        if any(s.med(op, "disk") > 512 for op in ("reply", "original", "miss")):
            cold.append(f"{size:,}")
    if cold:
        print(
            f"{backend}: WARNING: lookups read from disk at {', '.join(cold)} recorded IDs:"
            " these figures measure the page cache, not the store"
        )


def _compare(results: dict[Key, Samples], sizes: list[int]) -> None:
    print("\npostgresql / sqlite, same rounds: wall time per call (CPU of both sides)")
    print(f"{'recorded IDs':>13} | " + " | ".join(f"{op:>15}" for op in OPS))
    for size in sorted(sizes):
        pg, lite = results.get(("postgresql", size)), results.get(("sqlite", size))
        if pg is None or lite is None:
            continue
        cells = [
            f"{pg.med(op) / lite.med(op):5.2f}x"
            f" ({(pg.med(op, 'cpu') + pg.med(op, 'server')) / lite.med(op, 'cpu'):4.1f}x)"
            for op in OPS
        ]
        print(f"{size:>13,} | " + " | ".join(f"{c:>15}" for c in cells))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,1000000,10000000")
    parser.add_argument("--dir", default="/tmp/replytrack-store-bench", type=Path)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="sqlite")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ops", type=int, default=2000)
    parser.add_argument("--keep", action="store_true", help="keep the SQLite store files")
    parser.add_argument("--build-only", action="store_true", help="fill and keep, no timing")
    parser.add_argument(
        "--pragma", action="append", default=[], help="what-if: PRAGMA for each connection"
    )
    args = parser.parse_args(argv)
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    if args.build_only:
        build_stores(fits(sizes, args.dir), args.dir)
        return 0
    run(
        sizes,
        args.dir,
        backend=args.backend,
        rounds=args.rounds,
        ops=args.ops,
        keep=args.keep,
        pragmas=args.pragma,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
