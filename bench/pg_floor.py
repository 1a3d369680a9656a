#!/usr/bin/env python3
"""What one proxy mail costs on PostgreSQL at the least, against SQLite (by hand).

    .venv/bin/python bench/pg_floor.py                       # 5 rounds x 2,000 mails
    .venv/bin/python bench/pg_floor.py --shared-ms 2.4       # and the bound on the rate ratio

The proxy's store calls for one mail, made from one thread in this process, interleaved
(one private PostgreSQL, ``pg_server.py``: fsync on; one SQLite file in /tmp):

* ``one-to-one``: a mail that keeps the client's Message-ID (``proxy.stamp = campaign``, no
  campaign header; pg_bench's mail): ``find_sent``, ``record_outbound``,
  ``set_message_status``;
* ``campaign``: step 1 of a campaign: ``blocked_enrollments``, ``record_outbound`` (which
  enrolls), ``set_message_status``.

Each is made through the SQLite store, through the PostgreSQL store, and (one-to-one only)
as the PostgreSQL store's own statements and parameters sent straight through one psycopg
connection (``driver``: no pool, no row mapping, the least psycopg can do with them), and
as three prepared ``SELECT 1`` (``protocol``: three round trips and nothing else). CPU is
this process's (the client), the server backends' that serve its connections (``backend``:
what the statements cost the server) and the whole server's process tree (``server``: also
the autovacuum, checkpoints and WAL writing they cause, whose timing is luck: medians).

Both stores first hold ``--rows`` recorded mails (store_bench's fill, analyzed), as a
store in use does: on a fresh, never-analyzed PostgreSQL store the planner's generic plan
for ``find_sent`` is a sequential scan until autovacuum's first ANALYZE.

The bound: on two cores shared by the proxy, the sink, smtp-source and (for PostgreSQL) the
server, the rate is set by the CPU a mail costs all of them. With ``--shared-ms S`` (the
SQLite proxy's CPU a mail plus the sink's and smtp-source's, from ``pg_bench.py --parts
proxy``) the best rate ratio PostgreSQL / SQLite the proxy could reach is printed, if its
store calls cost no more than this floor: S / (S - SQLite's calls + client + server).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import pg_server  # noqa: E402
from run_all import _proc_times, tree_cpu  # noqa: E402

from replytrack.store import open_store  # noqa: E402
from replytrack.store.base import Store  # noqa: E402
from replytrack.store.records import OutboundRecipient, OutboundRecord  # noqa: E402

Mail = Callable[[int], None]
# The upstream's reply a relayed mail is settled with.
SETTLED = "250 2.0.0 Ok: queued as 4F2A1"


def record(i: int, *, run: str, campaign: str | None) -> OutboundRecord:
    """Mail ``i`` of a run: one recipient, as the proxy records it before relaying."""
    return OutboundRecord(
        message_id=f"{run}.{i}.floor@client.example",
        original_message_id=None,
        campaign=campaign,
        step=1 if campaign else None,
        sender="sales@ours.example",
        from_address="sales@ours.example",
        subject="Quick question",
        size=4096,
        status="relaying",
        recipients=(OutboundRecipient(f"p{run}.{i}@them.example", "to", True, status="sent"),),
        created_at=time.time(),
        thread=None,
    )


def store_mail(store: Store, run: str, campaign: str | None = None) -> Mail:
    """One mail's calls as the proxy makes them: the read before recording (the client's
    kept ID for one-to-one mail, the blocked check for campaign mail), record, settle."""

    def mail(i: int) -> None:
        rec = record(i, run=run, campaign=campaign)
        if campaign is None:
            store.find_sent([rec.message_id])
        else:
            store.blocked_enrollments(campaign, [r.address for r in rec.recipients])
        pk = store.record_outbound(rec)
        store.set_message_status(pk, "relayed", SETTLED)

    return mail


def driver(url: str, run: str) -> tuple[Mail, Callable[[], None]]:
    """The PostgreSQL store's one-to-one statements, straight through one connection."""
    import psycopg
    from psycopg.rows import tuple_row

    from replytrack.store.postgresql.outbound import (
        _PLAIN_SETTLE,
        _RECORD,
        plain_settle_params,
        record_params,
    )
    from replytrack.store.postgresql.store import FIND_SENT

    conn = psycopg.connect(url, autocommit=True, application_name="replytrack-floor")
    cur = conn.cursor(row_factory=tuple_row)

    def mail(i: int) -> None:
        rec = record(i, run=run, campaign=None)
        cur.execute(FIND_SENT, ([rec.message_id], [rec.message_id]), prepare=True).fetchall()
        row = cur.execute(_RECORD, record_params(rec), prepare=True).fetchone()
        assert row is not None
        params = plain_settle_params(row[0], "relayed", SETTLED)
        cur.execute(_PLAIN_SETTLE, params, prepare=True).fetchone()

    return mail, conn.close


def protocol(url: str) -> tuple[Mail, Callable[[], None]]:
    import psycopg

    conn = psycopg.connect(url, autocommit=True, application_name="replytrack-floor")
    cur = conn.cursor()

    def mail(i: int) -> None:
        for _ in range(3):
            cur.execute("SELECT 1", prepare=True).fetchone()

    return mail, conn.close


@dataclass
class Sample:
    client: float
    backend: float
    server: float
    rate: float


def backends_cpu(admin: Any) -> float:
    """CPU seconds of the server backends serving this process's connections (the
    stores' pools are named ``replytrack``, the driver's ``replytrack-floor``)."""
    pids = admin.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'replytrack%'"
    ).fetchall()
    total = 0.0
    for (pid,) in pids:
        try:
            total += _proc_times(pid)[1]
        except OSError:
            continue
    return total


def measure(mail: Mail, start: int, count: int, root: int, admin: Any) -> Sample:
    """Client, backend and server CPU ms a mail and mails/s of ``count`` mails."""
    client0, server0, wall0 = time.process_time(), tree_cpu([root]), time.monotonic()
    backend0 = backends_cpu(admin)
    for i in range(start, start + count):
        mail(i)
    wall = time.monotonic() - wall0
    client = (time.process_time() - client0) * 1000 / count
    backend = (backends_cpu(admin) - backend0) * 1000 / count
    server = (tree_cpu([root]) - server0) * 1000 / count
    return Sample(client, backend, server, count / wall)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mails", type=int, default=2000, help="per variant, per round")
    parser.add_argument("--rows", type=int, default=100_000, help="recorded mails beforehand")
    parser.add_argument(
        "--shared-ms",
        type=float,
        help="SQLite proxy + sink + smtp-source CPU ms a mail (pg_bench.py): print the bound",
    )
    args = parser.parse_args(argv)
    reason = pg_server.available()
    if reason:
        raise SystemExit(f"no PostgreSQL here: {reason}")
    server = pg_server.start()
    workdir = Path(tempfile.mkdtemp(prefix="replytrack-pg-floor-"))
    closers: list[Callable[[], None]] = []
    try:
        root = pg_server.server_pid(server)
        url = pg_server.create_database(server, "floor")
        import store_bench
        import store_bench_pg

        store_bench_pg.fill(url, args.rows)
        sqlite_path = store_bench.build_stores([args.rows], workdir)[args.rows]
        import psycopg

        admin = psycopg.connect(server.url("postgres"), autocommit=True)
        closers.append(admin.close)
        pg = open_store(url)
        sqlite = open_store(str(sqlite_path))
        drive, close = driver(url, "d")
        closers.append(close)
        ping, close = protocol(url)
        closers.append(close)
        variants: dict[str, Mail] = {
            "one-to-one, SQLite store": store_mail(sqlite, "s"),
            "one-to-one, PostgreSQL store": store_mail(pg, "p"),
            "one-to-one, PostgreSQL driver": drive,
            "3 round trips (SELECT 1)": ping,
            "campaign, SQLite store": store_mail(sqlite, "cs", "spring-floor"),
            "campaign, PostgreSQL store": store_mail(pg, "cp", "spring-floor"),
        }
        for mail in variants.values():  # warm-up: prepared statements, caches
            mail(10**8)
        samples: dict[str, list[Sample]] = defaultdict(list)
        for r in range(args.rounds):
            for name, mail in variants.items():
                sample = measure(mail, r * args.mails, args.mails, root, admin)
                samples[name].append(sample)
                print(
                    f"round {r + 1}/{args.rounds} {name:<32} client {sample.client:.3f}"
                    f"  backend {sample.backend:.3f}  server {sample.server:.3f} ms a mail"
                    f"  {sample.rate:6.0f} mails/s",
                    file=sys.stderr,
                    flush=True,
                )
        med = {
            name: Sample(
                *(statistics.median(column) for column in zip(*map(astuple, got), strict=True))
            )
            for name, got in samples.items()
        }
        print(f"\nStore calls of one proxy mail, medians of {args.rounds} rounds (CPU ms a mail)")
        print(f"  {'':<32} {'client':>7} {'backend':>8} {'server':>7} {'mails/s':>8}")
        for name, m in med.items():
            print(f"  {name:<32} {m.client:7.3f} {m.backend:8.3f} {m.server:7.3f} {m.rate:8.0f}")
        if args.shared_ms:
            shared = args.shared_ms
            lite = med["one-to-one, SQLite store"].client
            print(
                f"\nBound on the proxy's rate, PostgreSQL / SQLite (shared {shared:.2f} ms;"
                " server: its backends only, the least it can cost):"
            )
            for name in ("one-to-one, PostgreSQL store", "one-to-one, PostgreSQL driver"):
                m = med[name]
                bound = shared / (shared - lite + m.client + m.backend)
                print(f"  store calls as cheap as '{name}': <= {bound:.2f}x")
            client = med["3 round trips (SELECT 1)"].client
            backend = med["one-to-one, PostgreSQL driver"].backend
            bound = shared / (shared - lite + client + backend)
            print(f"  client at the protocol floor, the driver's backend: <= {bound:.2f}x")
    finally:
        for close in closers:
            close()
        pg_server.stop(server)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
