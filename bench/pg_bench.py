#!/usr/bin/env python3
"""PostgreSQL against SQLite through the daemons, interleaved in one run (root, by hand).

    .venv/bin/python bench/pg_bench.py                 # everything, 3 rounds, 10 and 50 sessions
    .venv/bin/python bench/pg_bench.py --parts proxy,async --rounds 2 --sessions 10

Parts (one private PostgreSQL for all of them, ``pg_server.py``: fsync on):

* ``proxy``: ``smtp-source -> replytrack proxy -> smtp-sink``, one proxy on a SQLite store
  and one on a PostgreSQL database, each relaying to its own smtp-sink; each round runs both
  back to back. CPU per mail is given for the proxy's process tree, PostgreSQL's server
  processes, the sink and smtp-source separately (the last two are what both stores share
  on the two cores: ``pg_floor.py`` uses them to bound the ratio).
  ``--old-tree DIR`` (a copy of an earlier tree: ``cp -a replytrack DIR/``) adds both
  proxies run from that tree, interleaved with this tree's: before and after in one run.
* ``async``: how the proxy should call PostgreSQL from its event loop. The proxy runs each
  PostgreSQL call in its thread executor (4 threads, the store's thread-safe pool); the
  alternative is psycopg's ``AsyncConnectionPool`` awaited on the loop. Both run the same
  statements, a proxy-like pair per "mail": ``blocked_enrollments`` (its one SELECT) and one
  short write transaction (``remember_ooo``: BEGIN, upsert, COMMIT), from N concurrent
  tasks on one loop (uvloop, as the proxy runs). Nothing in ``replytrack/store`` changes:
  the async variant is written here.
* ``milter``: Postfix accepting and discarding mail, each instance with its own milter:
  the no-op C milter (the floor of any milter, milter_bench.py), replytrack's milter on
  SQLite, replytrack's milter on PostgreSQL, and two replytrack milters (two Postfix
  instances) on the same PostgreSQL database loaded at once (the aggregate rate). The
  stores hold ``--ids`` recorded mails; the mails name foreign IDs in In-Reply-To and
  References (looked up, not found: the common inbound case, one ``find_sent`` a mail).

The VM stalls and other helpers share it: only figures of one run compare, as ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import pg_server  # noqa: E402
from run_all import SMTP_SOURCE, Lab, log, tree_cpu  # noqa: E402
from soak import ProxyProcess, free_port, wait_port  # noqa: E402

from tests.support.install import replytrack_init  # noqa: E402

PARTS = ("proxy", "async", "milter")


@dataclass
class Sample:
    rate: float  # mails/s (all loads together)
    cpu: dict[str, float]  # CPU ms per mail, per group of processes


@dataclass
class Results:
    samples: dict[tuple[str, int], list[Sample]] = field(default_factory=lambda: defaultdict(list))

    def rate(self, name: str, sessions: int) -> float:
        values = [s.rate for s in self.samples.get((name, sessions), [])]
        return statistics.median(values) if values else float("nan")

    def cpu(self, name: str, sessions: int, group: str) -> float:
        values = [s.cpu.get(group, 0.0) for s in self.samples.get((name, sessions), [])]
        return statistics.median(values) if values else float("nan")


@dataclass
class Config:
    """One configuration: the ports loaded at once, the Postfix labs to drain, CPU groups."""

    ports: list[int]
    groups: dict[str, list[int]]
    labs: list[Any] = field(default_factory=list)


def load(cfg: Config, count: int, sessions: int, message: Path | None) -> Sample:
    """``count`` mails with ``sessions`` sessions into each port at once (one smtp-source
    each); the rate is all mails over the time until the last load ended."""
    before = {g: tree_cpu(roots) for g, roots in cfg.groups.items()}
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    procs = []
    for port in cfg.ports:
        cmd = [SMTP_SOURCE, "-s", str(sessions), "-m", str(count), "-M", "client.bench.test"]
        cmd += ["-f", "someone@sender.example", "-t", "sales@bench.example"]
        cmd += ["-F", str(message)] if message else ["-l", "4096"]
        procs.append(
            subprocess.Popen(
                [*cmd, f"127.0.0.1:{port}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        )
    for proc in procs:
        _, err = proc.communicate(timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"smtp-source failed: {err.decode(errors='replace')[-300:]}")
    seconds = time.monotonic() - t0
    for lab in cfg.labs:
        lab.wait_queue_empty(timeout=120)
    total = count * len(cfg.ports)
    cpu = {g: (tree_cpu(r) - before[g]) * 1000 / total for g, r in cfg.groups.items()}
    # smtp-source's own CPU (reaped children of this process): with the sink's, what every
    # configuration spends beside the part under test.
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    spent = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    cpu["source"] = spent * 1000 / total
    return Sample(rate=total / seconds, cpu=cpu)


def interleave(
    configs: dict[str, Config],
    sessions: list[int],
    rounds: int,
    count: int,
    results: Results,
    message: Path | None,
) -> None:
    for cfg in configs.values():  # warm-up: pools, page cache, Postfix processes
        load(cfg, 50, 5, message)
    for r in range(rounds):
        for s in sessions:
            for name, cfg in configs.items():
                sample = load(cfg, count, s, message)
                results.samples[(name, s)].append(sample)
                cpu = "  ".join(f"{g} {v:5.2f}" for g, v in sample.cpu.items())
                log(
                    f"round {r + 1}/{rounds} sessions {s:>3} {name:<30}"
                    f" {sample.rate:7.1f} mails/s  CPU ms/mail: {cpu}"
                )


def print_table(title: str, results: Results, names: list[str], sessions: list[int]) -> None:
    print(f"\n{title}: median mails/s; CPU ms per mail by process group")
    for s in sessions:
        for name in names:
            groups = results.samples[(name, s)][0].cpu if results.samples.get((name, s)) else {}
            cpu = ", ".join(f"{g} {results.cpu(name, s, g):.2f}" for g in groups)
            print(f"  {s:>3} sessions  {name:<32} {results.rate(name, s):7.1f}  ({cpu})")


# --- proxy ---------------------------------------------------------------------------------
def proxy_configs(
    lab: Lab,
    server: Any,
    pg_root: int,
    variants: list[str],
    old_tree: Path | None = None,
    rows: int = 0,
) -> dict[str, Config]:
    """SQLite, PostgreSQL, and PostgreSQL with each what-if of pg_variants/ applied; with
    ``old_tree`` (a copy of an earlier tree's directory holding ``replytrack/``) also both
    run from that tree, put first on PYTHONPATH (before and after a change, in one run).
    Each store first holds ``rows`` recorded mails (store_bench's fill, analyzed), as a
    store in use does: a fresh PostgreSQL store plans ``find_sent`` as a sequential scan
    until autovacuum's first ANALYZE, a minute or so, which is most of a short run."""
    import store_bench
    import store_bench_pg

    url = pg_server.create_database(server, "proxy")
    sqlite_filled = None
    if rows:
        store_bench_pg.fill(url, rows)
        sqlite_filled = store_bench.build_stores([rows], lab.workdir / "sqlite-proxy")[rows]
    configs: dict[str, Config] = {}
    runs: list[tuple[str, dict[str, str]]] = [
        ("proxy, SQLite", {}),
        ("proxy, PostgreSQL", {"REPLYTRACK_DB": url}),
    ]
    if old_tree is not None:
        old = os.pathsep.join(filter(None, [str(old_tree), os.environ.get("PYTHONPATH")]))
        runs.append(("proxy, SQLite (old tree)", {"PYTHONPATH": old}))
        old_url = pg_server.create_database(server, "proxy_old")
        if rows:
            store_bench_pg.fill(old_url, rows)
        runs.append(("proxy, PostgreSQL (old tree)", {"REPLYTRACK_DB": old_url, "PYTHONPATH": old}))
    path = os.pathsep.join(filter(None, [str(HERE / "pg_variants"), os.environ.get("PYTHONPATH")]))
    for variant in variants:
        env = {"REPLYTRACK_DB": url, "PYTHONPATH": path, "REPLYTRACK_BENCH_PG_VARIANT": variant}
        runs.append((f"proxy, PostgreSQL +{variant.replace(',', '+')}", env))
    for n, (name, extra) in enumerate(runs):
        workdir = lab.workdir / f"proxy{n}"
        workdir.mkdir()
        # A sink each (the same smtp-sink): one sink refuses connections past its limit
        # once several proxies keep pools of up to 64 upstream connections open.
        sink = lab.sink()
        init: tuple[str, ...] = ()
        if rows:  # the filled stores hold mail signed with no key of ours: a new one
            init = ("--new-key",)
            if "REPLYTRACK_DB" not in extra and sqlite_filled is not None:
                shutil.copyfile(sqlite_filled, workdir / "replytrack.db")
        proxy = ProxyProcess(workdir, sink.port, extra_env=extra, init_args=init).start()
        lab.proxies.append(proxy)
        assert sink.proc is not None
        groups = {"proxy": [proxy.pid], "postgresql": [pg_root], "sink": [sink.proc.pid]}
        configs[name] = Config([proxy.port], groups)
    return configs


# --- milter --------------------------------------------------------------------------------
def milter_configs(lab: Lab, server: Any, pg_root: int, ids: int) -> dict[str, Config]:
    import store_bench
    import store_bench_pg
    from run_all import _compile_c_noop

    extra = {"default_process_limit": 200, "smtpd_client_connection_count_limit": 0}
    configs: dict[str, Config] = {}

    def postfix(port: int) -> Any:
        return lab.postfix(mode="discard", milter=f"inet:127.0.0.1:{port}", extra_main=extra)

    cnoop = _compile_c_noop(lab.workdir)
    if cnoop is not None:
        port = free_port()
        lab.process([str(cnoop), f"inet:{port}@127.0.0.1"])
        if wait_port(port):
            pf = postfix(port)
            configs["no-op C milter"] = Config(
                [pf.smtp_port], {"postfix": [pf.master_pid()], "milter": [lab.procs[-1].pid]}, [pf]
            )
    started = time.monotonic()
    sqlite_db = store_bench.build_stores([ids], lab.workdir / "sqlite")[ids]
    url = pg_server.create_database(server, "milter")
    store_bench_pg.fill(url, ids)
    log(f"milter stores: {ids:,} recorded mails each, {time.monotonic() - started:.0f} s")

    def milter(db: str, workdir: Path, *, init: bool) -> tuple[int, int]:
        workdir.mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("REPLYTRACK_")}
        env.update(
            REPLYTRACK_DB=db,
            REPLYTRACK_DOMAIN="mail.bench.test",
            REPLYTRACK_SECRET_FILE=str(lab.workdir / f"{Path(db).stem}.secret"),
            REPLYTRACK_CONFIG="/dev/null",
            REPLYTRACK_LOG_LEVEL="warning",
            REPLYTRACK_MILTER_JOURNAL=str(workdir / "journal"),
        )
        if init:  # the filled store holds mail signed with no key of ours: a new key
            replytrack_init("--new-key", env=env, cwd=workdir)
        port = free_port()
        cmd = [sys.executable, "-m", "replytrack", "milter", "--socket", f"inet:{port}@127.0.0.1"]
        lab.process(cmd, env=env)
        if not wait_port(port, timeout=60):
            raise RuntimeError(f"milter on {db} did not start: see {lab.workdir}")
        return port, lab.procs[-1].pid

    port, pid = milter(str(sqlite_db), lab.workdir / "milter-sqlite", init=True)
    pf = postfix(port)
    configs["milter, SQLite"] = Config(
        [pf.smtp_port],
        {"postfix": [pf.master_pid()], "milter": [pid], "postgresql": [pg_root]},
        [pf],
    )
    port_a, pid_a = milter(url, lab.workdir / "milter-pg-a", init=True)
    port_b, pid_b = milter(url, lab.workdir / "milter-pg-b", init=False)
    pf_a, pf_b = postfix(port_a), postfix(port_b)
    configs["milter, PostgreSQL"] = Config(
        [pf_a.smtp_port],
        {"postfix": [pf_a.master_pid()], "milter": [pid_a], "postgresql": [pg_root]},
        [pf_a],
    )
    configs["2 milters, one PostgreSQL"] = Config(
        [pf_a.smtp_port, pf_b.smtp_port],
        {
            "postfix": [pf_a.master_pid(), pf_b.master_pid()],
            "milter": [pid_a, pid_b],
            "postgresql": [pg_root],
        },
        [pf_a, pf_b],
    )
    return configs


# --- executor against AsyncConnectionPool ----------------------------------------------------
WRITE_OOO = (
    "INSERT INTO ooo (address, until, updated_at) VALUES (%s,%s,%s) ON CONFLICT (address)"
    " DO UPDATE SET until = excluded.until, updated_at = excluded.updated_at"
)


async def _executor_mode(url: str, tasks: int, calls: int) -> None:
    from replytrack.store import open_store

    store = open_store(url)
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=4)  # as the proxy's
    loop = asyncio.get_running_loop()

    async def worker(n: int) -> None:
        for i in range(calls):
            await loop.run_in_executor(
                executor, store.blocked_enrollments, "camp-1", [f"r{i}@d1.example"]
            )
            await loop.run_in_executor(executor, store.remember_ooo, f"t{n}@x.example", 1.0)

    try:
        await asyncio.gather(*(worker(n) for n in range(tasks)))
    finally:
        executor.shutdown()
        store.close_all()


async def _async_mode(url: str, tasks: int, calls: int) -> None:
    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool

    from replytrack.do_not_contact import lookup_keys
    from replytrack.store.postgresql.outbound import _BLOCKED as BLOCKED

    pool: AsyncConnectionPool[AsyncConnection[Any]] = AsyncConnectionPool(
        url, min_size=10, max_size=10, kwargs={"autocommit": True}, open=False
    )
    await pool.open(wait=True)

    async def worker(n: int) -> None:
        for i in range(calls):
            async with pool.connection() as conn:
                wanted, domains, digests = lookup_keys([f"r{i}@d1.example"], None)
                cur = await conn.execute(
                    BLOCKED,
                    {
                        "campaign": "camp-1",
                        "wanted": wanted,
                        "dnc_addresses": wanted,
                        "dnc_domains": domains,
                        "dnc_digests": digests,
                    },
                )
                await cur.fetchall()
            async with pool.connection() as conn, conn.transaction():
                await conn.execute(WRITE_OOO, (f"t{n}@x.example", 1.0, time.time()))

    try:
        await asyncio.gather(*(worker(n) for n in range(tasks)))
    finally:
        await pool.close()


def run_async(url: str, pg_root: int, sessions: list[int], rounds: int, calls: int) -> Results:
    """Both modes, interleaved; a sample is one round, its "mails" the read+write pairs."""
    try:
        import uvloop

        run: Callable[[Any], Any] = uvloop.run
    except ImportError:
        run = asyncio.run
    modes = {"executor (store API)": _executor_mode, "AsyncConnectionPool": _async_mode}
    results = Results()
    for r in range(rounds + 1):  # the first round warms up and is not counted
        for s in sessions:
            per_task = max(20, calls // s)
            for name, mode in modes.items():
                pg0, c0, t0 = tree_cpu([pg_root]), time.process_time(), time.monotonic()
                run(mode(url, s, per_task))
                seconds = time.monotonic() - t0
                n = per_task * s
                cpu = {
                    "client": (time.process_time() - c0) * 1000 / n,
                    "postgresql": (tree_cpu([pg_root]) - pg0) * 1000 / n,
                }
                if r:
                    results.samples[(name, s)].append(Sample(n / seconds, cpu))
                    log(
                        f"round {r}/{rounds} tasks {s:>3} {name:<22} {n / seconds:7.1f} pairs/s"
                        f"  client {cpu['client']:.2f}  server {cpu['postgresql']:.2f} ms/pair"
                    )
    return results


# --- all -------------------------------------------------------------------------------------
def run(
    parts: list[str],
    sessions: list[int],
    rounds: int,
    count: int,
    ids: int,
    settings: dict[str, str] | None = None,
    variants: list[str] | None = None,
    old_tree: Path | None = None,
    proxy_rows: int = 100_000,
) -> dict[str, float]:
    """The chosen parts, their tables printed; the headline ratios returned (for run_all).
    ``settings``: postgresql.conf overrides (what-if runs, e.g. synchronous_commit=off)."""
    server = pg_server.start(settings=settings)
    pg_root = pg_server.server_pid(server)
    workdir = Path(tempfile.mkdtemp(prefix="replytrack-pg-bench-"))
    lab = Lab(workdir)
    summary: dict[str, float] = {}
    results = Results()
    try:
        if "async" in parts:
            url = pg_server.create_database(server, "probe")
            async_results = run_async(url, pg_root, sessions, rounds, 2000)
            names = list(dict.fromkeys(n for n, _ in async_results.samples))
            print_table(
                "executor against AsyncConnectionPool (pairs/s)", async_results, names, sessions
            )
            for s in sessions:
                ratio = async_results.rate(names[1], s) / async_results.rate(names[0], s)
                summary[f"async_over_executor_{s}"] = ratio
                print(f"  {s:>3} tasks  AsyncConnectionPool / executor: rate {ratio:.2f}x")
        if "proxy" in parts:
            configs = proxy_configs(lab, server, pg_root, variants or [], old_tree, proxy_rows)
            interleave(configs, sessions, rounds, count, results, None)
            print_table("proxy", results, list(configs), sessions)
            for s in sessions:
                ratio = results.rate("proxy, PostgreSQL", s) / results.rate("proxy, SQLite", s)
                summary[f"proxy_pg_ratio_{s}"] = ratio
                print(f"  {s:>3} sessions  proxy on PostgreSQL / on SQLite: rate {ratio:.2f}x")
                if old_tree is not None:
                    old = results.rate("proxy, PostgreSQL (old tree)", s) / results.rate(
                        "proxy, SQLite (old tree)", s
                    )
                    print(f"  {s:>3} sessions  old tree, PostgreSQL / SQLite: rate {old:.2f}x")
        if "milter" in parts:
            from milter_bench import message_file

            message = workdir / "inbound.eml"
            message_file(message, 4096)
            configs = milter_configs(lab, server, pg_root, ids)
            in_sessions = [s for s in sessions if s > 1] or sessions
            interleave(configs, in_sessions, rounds, count, results, message)
            print_table("milter", results, list(configs), in_sessions)
            for s in in_sessions:
                pg = results.rate("milter, PostgreSQL", s)
                summary[f"milter_pg_ratio_{s}"] = pg / results.rate("milter, SQLite", s)
                summary[f"two_milters_ratio_{s}"] = (
                    results.rate("2 milters, one PostgreSQL", s) / pg
                )
                print(
                    f"  {s:>3} sessions  milter on PostgreSQL / on SQLite: rate"
                    f" {summary[f'milter_pg_ratio_{s}']:.2f}x; two milters on one PostgreSQL"
                    f" (aggregate) / one: {summary[f'two_milters_ratio_{s}']:.2f}x"
                )
    finally:
        lab.stop()
        pg_server.stop(server)
        shutil.rmtree(workdir, ignore_errors=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--parts", default=",".join(PARTS), help="comma list of: proxy,async,milter"
    )
    parser.add_argument("--sessions", default="10,50")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mails", type=int, default=1000, help="per load, per round")
    parser.add_argument("--ids", type=int, default=1_000_000, help="recorded mails, milter stores")
    parser.add_argument(
        "--proxy-rows", type=int, default=100_000, help="recorded mails, proxy stores (0: empty)"
    )
    parser.add_argument(
        "--pg-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="what-if: a postgresql.conf setting (e.g. synchronous_commit=off)",
    )
    parser.add_argument(
        "--variants",
        default="",
        help="what-ifs of pg_variants/sitecustomize.py as extra proxies (e.g."
        " async-settle,lean-settle,async-settle+lean-settle: '+' combines)",
    )
    parser.add_argument(
        "--old-tree",
        type=Path,
        help="a copy of an earlier tree (the directory holding replytrack/): its proxies run"
        " beside this tree's, interleaved",
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("run as root: the private Postfix's master must start as root")
    reason = pg_server.available()
    if reason:
        raise SystemExit(f"no PostgreSQL here: {reason}")
    parts = [p for p in args.parts.split(",") if p in PARTS]
    sessions = [int(s) for s in args.sessions.split(",")]
    settings = dict(s.split("=", 1) for s in args.pg_setting)
    if settings:
        print(f"PostgreSQL what-if settings: {settings}")
    variants = [v.replace("+", ",") for v in args.variants.split(",") if v]
    if args.old_tree is not None and not (args.old_tree / "replytrack").is_dir():
        raise SystemExit(f"--old-tree: no replytrack/ in {args.old_tree}")
    run(
        parts,
        sessions,
        args.rounds,
        args.mails,
        args.ids,
        settings,
        variants,
        args.old_tree,
        args.proxy_rows,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
