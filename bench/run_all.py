"""The one benchmark command: every configuration, interleaved in one run, one table.

Usage: .venv/bin/python bench/run_all.py [--rounds 3] [--sessions 1,10,50] [--quick]
                                         [--skip store,memory,milter,extra]

The VMs this runs on stall for seconds at a time (see ../shared/MEASURED.md), so rates are
only compared between configurations measured back to back: each round runs A B C (and the
milter trio) at each session count before the next round starts, and the table reports
medians over rounds and the ratios of medians. Beside mails/s it reports machine CPU
milliseconds per mail (busy jiffies from /proc/stat over the run, idle background
subtracted), which the stalls do not distort.

Parts, all with Postfix's ``smtp-source`` as the client (4 KB mails, a new connection per
mail unless ``--reuse``) and ``smtp-sink`` as the final upstream:

* outbound: ``smtp-source -> smtp-sink`` (direct, the ceiling), ``smtp-source -> Postfix
  relay -> smtp-sink``, ``smtp-source -> replytrack proxy -> smtp-sink``;
* inbound: Postfix accepting and discarding mail with no milter, with a no-op pymilter
  milter, with the same no-op compiled in C (the floor of any milter on this machine, see
  milter_bench.py), and with the replytrack milter on a store of 1 M recorded IDs; the mails are
  replies (In-Reply-To and References naming a recorded mail), so every one is looked up;
* store lookups and inserts at 10 k, 1 M and 10 M IDs (``store_bench``);
* proxy memory at 100 sessions and with 25 MB mails (``memory_bench``);
* the other helpers' benches (``proxy_bench.py``, ``milter_bench.py``) when present, run as
  they are, their tables appended;
* with ``--postgresql`` (on by default when PostgreSQL's server binaries and psycopg are
  here): the store lookups on PostgreSQL too, in the same interleaved rounds as SQLite, and
  ``pg_bench.py`` (proxy and milter on PostgreSQL against SQLite, two milters on one
  PostgreSQL, executor against AsyncConnectionPool) on a private server with fsync on.

Goals: proxy >= 1.0x Postfix relay; milter >= 0.9x no milter; lookups flat (<= 1.5x).
A PNG chart of mails/s against sessions is written to bench/out/throughput.png.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from soak import ProxyProcess, Sink, free_port, machine_busy, wait_port  # noqa: E402

from tests.support.env import clean_environ  # noqa: E402
from tests.support.install import replytrack_init  # noqa: E402

OUT = HERE / "out"
SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"

NOOP_MILTER = """
import sys
import Milter

class Noop(Milter.Base):
    '''Does nothing. DATA is answered, as the replytrack milter does on TCP: a milter that
    leaves it unanswered waits ~40 ms per mail for a delayed ACK (see milter_bench.py).'''

    def data(self):
        return Milter.CONTINUE

    def eom(self):
        return Milter.ACCEPT

Milter.factory = Noop
Milter.set_flags(0)
Milter.runmilter("noop", sys.argv[1], timeout=30)
"""


def log(text: str) -> None:
    """Progress on stderr; the table goes to stdout."""
    print(text, file=sys.stderr, flush=True)


@dataclass
class Sample:
    """One smtp-source run."""

    rate: float  # mails/s as the client saw them accepted
    cpu_ms: float  # CPU of the server-side processes (not the client) per mail
    seconds: float
    e2e_rate: float  # mails/s until the last one left a queueing MTA (= rate when lockstep)


@dataclass
class Results:
    """Samples per (configuration, sessions)."""

    samples: dict[tuple[str, int], list[Sample]] = field(default_factory=lambda: defaultdict(list))

    def median(self, name: str, sessions: int, what: str = "rate") -> float:
        """The median of one figure over the rounds (NaN when never measured)."""
        values = [getattr(s, what) for s in self.samples.get((name, sessions), [])]
        return statistics.median(values) if values else float("nan")


def _proc_times(pid: int) -> tuple[int, float]:
    """(parent pid, own + reaped children's CPU seconds) of a live process."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text.rpartition(")")[2].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[1]), sum(int(v) for v in fields[11:15]) / ticks


def tree_cpu(roots: list[int]) -> float:
    """CPU seconds of processes ``roots`` and all their live descendants.

    A live process's own times plus those of its reaped children (cutime, cstime) count
    each CPU second once: a dead child is in its parent's c-times, a live one in its own.
    Postfix's daemons are children of its master, so the master's tree is all of Postfix.
    Measuring the parts under test, and not the whole machine, keeps other tenants of the
    VM out of the figure.
    """
    table: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                table[int(entry.name)] = _proc_times(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    wanted = {r for r in roots if r in table}
    grew = True
    while grew:
        grew = False
        for pid, (ppid, _) in table.items():
            if ppid in wanted and pid not in wanted:
                wanted.add(pid)
                grew = True
    return sum(table[p][1] for p in wanted)


def background_busy(seconds: float = 2.0) -> float:
    """Busy CPU seconds per second of the machine before the run (other tenants)."""
    b0, t0 = machine_busy()[0], time.monotonic()
    time.sleep(seconds)
    return (machine_busy()[0] - b0) / (time.monotonic() - t0)


def smtp_source(
    port: int,
    count: int,
    sessions: int,
    *,
    roots: list[int],
    postfix: object | None = None,
    size: int = 4096,
    reuse: bool = False,
    message_file: Path | None = None,
) -> Sample:
    """Run smtp-source against 127.0.0.1:port; mails/s and server-side CPU ms per mail.

    With ``postfix`` (a queueing MTA in the path) the CPU window lasts until its queue is
    empty, so its deliveries count, as the proxy's lockstep relaying does.
    """
    cmd = [SMTP_SOURCE, "-s", str(sessions), "-m", str(count), "-M", "client.bench.test"]
    cmd += ["-f", "sales@sender.example", "-t", "p1@example.test"]
    if message_file is not None:
        cmd += ["-F", str(message_file)]
    else:
        cmd += ["-l", str(size)]
    if reuse:
        cmd.append("-d")
    cmd.append(f"127.0.0.1:{port}")
    c0, t0 = tree_cpu(roots), time.monotonic()
    result = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=900)
    seconds = time.monotonic() - t0
    if result.returncode != 0:
        raise RuntimeError(f"smtp-source to port {port} failed: {result.stderr.strip()[-300:]}")
    e2e = seconds
    if postfix is not None:
        try:
            postfix.wait_queue_empty(timeout=120)  # type: ignore[attr-defined]
        except Exception as exc:
            log(f"port {port}: queue did not drain: {exc}")
        e2e = time.monotonic() - t0
    cpu = tree_cpu(roots) - c0
    return Sample(
        rate=count / seconds, cpu_ms=cpu * 1000 / count, seconds=seconds, e2e_rate=count / e2e
    )


def reply_message(workdir: Path, store_db: Path | None) -> Path:
    """A reply naming a recorded mail (from the 1 M store when there is one)."""
    recorded = "unrecorded.0@bench.replytrack.test"
    if store_db is not None and store_db.exists():
        import sqlite3

        conn = sqlite3.connect(f"file:{store_db}?mode=ro", uri=True)
        row = conn.execute("SELECT message_id FROM messages WHERE id = 500000").fetchone()
        conn.close()
        if row:
            recorded = row[0]
    # LF line ends: smtp-source -F adds its own CR LF, so CR LF in the file would arrive
    # as CR CR LF and the whole mail would read as one header.
    text = (
        "From: Prospect <r1@d1.example>\n"
        "To: Sales <sales@sender.example>\n"
        "Subject: Re: Quick question\n"
        "Message-ID: <reply.bench@d1.example>\n"
        f"In-Reply-To: <{recorded}>\n"
        f"References: <older.1@elsewhere.example> <{recorded}>\n"
        "\n" + "Sounds good, let us talk on Tuesday.\n" * 100
    )
    path = workdir / "reply.eml"
    path.write_text(text)
    return path


class Lab:
    """The running parts of one benchmark run, stopped together."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.labs: list[object] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.sinks: list[Sink] = []
        self.proxies: list[ProxyProcess] = []

    def sink(self) -> Sink:
        sink = Sink(self.workdir / f"sink{len(self.sinks)}", dump=False)
        sink.workdir.mkdir(parents=True, exist_ok=True)
        self.sinks.append(sink.start())
        return sink

    def postfix(self, **kwargs: object) -> object:
        from tests.support.postfix import PostfixLab, ensure_postfix, make_base_dir

        ensure_postfix()
        lab = PostfixLab(make_base_dir("replytrack-bench-"), **kwargs)  # type: ignore[arg-type]
        self.labs.append(lab)
        return lab.start()

    def process(self, cmd: list[str], env: dict[str, str] | None = None) -> None:
        logfile = open(self.workdir / f"proc{len(self.procs)}.log", "ab")  # noqa: SIM115
        self.procs.append(
            subprocess.Popen(cmd, stdout=logfile, stderr=logfile, env=env, start_new_session=True)
        )
        logfile.close()

    def stop(self) -> None:
        for proxy in self.proxies:
            proxy.stop()
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        for lab in self.labs:
            try:
                lab.stop()  # type: ignore[attr-defined]
                shutil.rmtree(lab.base, ignore_errors=True)  # type: ignore[attr-defined]
            except Exception as exc:  # a lab that fails to stop must not hide the results
                log(f"postfix lab stop failed: {exc}")
        for sink in self.sinks:
            sink.stop()


Target = tuple[int, object | None, list[int]]


def _master(lab: object) -> list[int]:
    pid = lab.master_pid()  # type: ignore[attr-defined]
    return [pid] if pid else []


def outbound_targets(lab: Lab) -> dict[str, Target]:
    """direct / postfix relay / proxy, each ending in its own smtp-sink."""
    direct = lab.sink()
    relay_sink = lab.sink()
    postfix = lab.postfix(
        mode="relay",
        relay=f"127.0.0.1:{relay_sink.port}",
        extra_main={"default_process_limit": 200, "smtpd_client_connection_count_limit": 0},
    )
    proxy_sink = lab.sink()
    proxy_dir = lab.workdir / "proxy"
    proxy_dir.mkdir()
    proxy = ProxyProcess(proxy_dir, proxy_sink.port).start()
    lab.proxies.append(proxy)
    return {
        "smtp-sink direct": (direct.port, None, [direct.pid]),
        "Postfix relay": (
            postfix.smtp_port,  # type: ignore[attr-defined]
            postfix,
            [*_master(postfix), relay_sink.pid],
        ),
        "replytrack proxy": (proxy.port, None, [proxy.pid, proxy_sink.pid]),
    }


def _compile_c_noop(workdir: Path) -> Path | None:
    """milter_bench's no-op milter in C (None, said in the log, when it cannot be built)."""
    from milter_bench import compile_c_noop

    try:
        return compile_c_noop(workdir)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", None) or exc
        log(f"no-op C milter not built, inbound runs without it: {str(detail).strip()}")
        return None


def inbound_targets(lab: Lab, store_db: Path | None) -> dict[str, Target]:
    """Postfix discard with no milter, a no-op pymilter milter, the same no-op in C (the
    floor of any milter), the replytrack milter."""
    targets: dict[str, Target] = {}
    extra = {"default_process_limit": 200, "smtpd_client_connection_count_limit": 0}
    none = lab.postfix(mode="discard", extra_main=extra)
    targets["Postfix, no milter"] = (none.smtp_port, none, _master(none))  # type: ignore[attr-defined]
    noop_port = free_port()
    lab.process([sys.executable, "-c", NOOP_MILTER, f"inet:{noop_port}@127.0.0.1"])
    if wait_port(noop_port):
        noop = lab.postfix(mode="discard", milter=f"inet:127.0.0.1:{noop_port}", extra_main=extra)
        targets["Postfix + no-op milter"] = (
            noop.smtp_port,  # type: ignore[attr-defined]
            noop,
            [*_master(noop), lab.procs[-1].pid],
        )
    # The same no-op compiled in C on libmilter: the floor any milter pays here.
    cnoop = _compile_c_noop(lab.workdir)
    if cnoop is not None:
        cnoop_port = free_port()
        lab.process([str(cnoop), f"inet:{cnoop_port}@127.0.0.1"])
        if wait_port(cnoop_port):
            floor = lab.postfix(
                mode="discard", milter=f"inet:127.0.0.1:{cnoop_port}", extra_main=extra
            )
            targets["Postfix + no-op C milter"] = (
                floor.smtp_port,  # type: ignore[attr-defined]
                floor,
                [*_master(floor), lab.procs[-1].pid],
            )
    milter_dir = lab.workdir / "milter"
    milter_dir.mkdir()
    db = milter_dir / "replytrack.db"
    if store_db is not None and store_db.exists():
        shutil.copyfile(store_db, db)
    port = free_port()
    env = clean_environ()
    env.update(
        REPLYTRACK_DB=str(db),
        REPLYTRACK_DOMAIN="mail.bench.test",
        REPLYTRACK_SECRET_FILE=str(milter_dir / "replytrack.secret"),
    )
    # A copied store holds mail signed with another key: the bench starts a new one.
    replytrack_init("--new-key", env=env, cwd=milter_dir)
    lab.process(
        [sys.executable, "-m", "replytrack", "milter", "--socket", f"inet:{port}@127.0.0.1"],
        env=env,
    )
    milter_pid = lab.procs[-1].pid
    if wait_port(port, timeout=60):
        rt = lab.postfix(mode="discard", milter=f"inet:127.0.0.1:{port}", extra_main=extra)
        label = "Postfix + replytrack milter" + (" (1M IDs)" if store_db else "")
        targets[label] = (rt.smtp_port, rt, [*_master(rt), milter_pid])  # type: ignore[attr-defined]
    else:
        log("replytrack milter did not start; inbound runs without it")
    return targets


def interleave(
    targets: dict[str, Target],
    sessions: list[int],
    rounds: int,
    counts: dict[int, int],
    results: Results,
    *,
    reuse: bool,
    message_file: Path | None = None,
) -> None:
    """Round after round: every session count, every target, back to back."""
    for r in range(rounds):
        for s in sessions:
            for name, (port, postfix, roots) in targets.items():
                sample = smtp_source(
                    port,
                    counts[s],
                    s,
                    roots=roots,
                    postfix=postfix,
                    reuse=reuse,
                    message_file=message_file,
                )
                results.samples[(name, s)].append(sample)
                log(
                    f"round {r + 1}/{rounds} sessions {s:>3} {name:<34}"
                    f" {sample.rate:8.1f} mails/s {sample.cpu_ms:6.2f} ms CPU/mail"
                    f" (end to end {sample.e2e_rate:.1f}/s)"
                )


def print_throughput(title: str, results: Results, names: list[str], sessions: list[int]) -> None:
    print(f"\n{title}: median mails/s (CPU ms per mail of the server-side processes)")
    header = f"{'configuration':>34} | " + " | ".join(f"{s:>3} sessions   " for s in sessions)
    print(header)
    print("-" * len(header))
    for name in names:
        cells = [
            f"{results.median(name, s):7.1f} ({results.median(name, s, 'cpu_ms'):5.2f})"
            for s in sessions
        ]
        print(f"{name:>34} | " + " | ".join(cells))
        queued = [x for s in sessions for x in results.samples.get((name, s), [])]
        if any(abs(x.e2e_rate - x.rate) > 0.01 * x.rate for x in queued):
            e2e = [f"{results.median(name, s, 'e2e_rate'):7.1f}        " for s in sessions]
            print(f"{'... until its queue was empty':>34} | " + " | ".join(e2e))


def chart(results: Results, outbound: list[str], inbound: list[str], sessions: list[int]) -> Path:
    """mails/s against sessions, outbound and inbound side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    OUT.mkdir(exist_ok=True)
    fig, axes = plt.subplots(1, 2 if inbound else 1, figsize=(12 if inbound else 7, 4.5))
    axes = axes if inbound else [axes]
    for ax, names, title in ((axes[0], outbound, "outbound (4 KB mails)"),) + (
        ((axes[1], inbound, "inbound, Postfix accept+discard"),) if inbound else ()
    ):
        for name in names:
            ys = [results.median(name, s) for s in sessions]
            lows = [min((x.rate for x in results.samples[(name, s)]), default=0) for s in sessions]
            highs = [max((x.rate for x in results.samples[(name, s)]), default=0) for s in sessions]
            ax.plot(sessions, ys, marker="o", label=name)
            ax.fill_between(sessions, lows, highs, alpha=0.15)
        ax.set_xlabel("concurrent SMTP sessions")
        ax.set_ylabel("mails/s (median, band: min-max)")
        ax.set_title(title)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(sessions)
        ax.set_xticklabels([str(s) for s in sessions])
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = OUT / "throughput.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_extra(script: str, args: list[str]) -> None:
    """Another helper's bench, run as it is; its output appended."""
    path = HERE / script
    if not path.exists():
        return
    log(f"running {script} {' '.join(args)}")
    result = subprocess.run(
        [sys.executable, str(path), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
    )
    print(f"\n--- {script} (exit {result.returncode}) ---")
    print(result.stdout.rstrip())
    if result.returncode != 0:
        print(result.stderr.rstrip()[-1500:])


def postgresql_rows(summary: dict[str, float], smallest: int) -> list[tuple[str, str, str, str]]:
    """The PostgreSQL lines of the ratio table (none when it was not measured)."""
    rows: list[tuple[str, str, str, str]] = []
    if "pg_lookup_ratio" in summary:
        ratio = summary["pg_lookup_ratio"]
        rows.append(
            (
                f"PostgreSQL lookup {smallest:,} -> {int(summary['pg_largest']):,} IDs",
                f"{ratio:.2f}x",
                "<= 1.5x",
                "met" if ratio <= 1.5 else "NOT met",
            )
        )
    # summary key prefix -> (label, goal: least ratio or None)
    measures = {
        "proxy_pg_ratio": ("proxy PostgreSQL / SQLite, {} sessions", 0.8),
        "milter_pg_ratio": ("milter PostgreSQL / SQLite, {} sessions", 0.8),
        "two_milters_ratio": ("2 milters on one PostgreSQL / 1, {} s.", None),
        "async_over_executor": ("AsyncConnectionPool / executor, {} tasks", None),
    }
    for key, value in sorted(summary.items()):
        kind, _, sessions = key.rpartition("_")
        if kind in measures:
            label, goal = measures[kind]
            verdict = "" if goal is None else ("met" if value >= goal else "NOT met")
            goal_text = "-" if goal is None else f">= {goal}x"
            rows.append((label.format(sessions), f"{value:.2f}x", goal_text, verdict))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sessions", default="1,10,50")
    parser.add_argument("--reuse", action="store_true", help="clients reuse connections")
    parser.add_argument("--quick", action="store_true", help="fewer mails, smaller stores")
    parser.add_argument("--skip", default="", help="comma list of: store,memory,milter,extra")
    parser.add_argument("--store-dir", type=Path, default=Path("/tmp/replytrack-store-bench"))
    parser.add_argument(
        "--postgresql",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also PostgreSQL (default: when its binaries and psycopg are installed)",
    )
    args = parser.parse_args(argv)
    if args.postgresql is None or args.postgresql:
        import pg_server

        reason = pg_server.available()
        if reason and args.postgresql:
            parser.error(f"--postgresql: {reason}")
        if reason:
            log(f"PostgreSQL parts left out: {reason}")
        args.postgresql = reason is None
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    sessions = [int(s) for s in args.sessions.split(",")]
    scale = 0.25 if args.quick else 1.0
    counts = {s: int(max(200, min(2000, 300 * s)) * scale) for s in sessions}
    store_sizes = [10_000, 100_000, 1_000_000] if args.quick else [10_000, 1_000_000, 10_000_000]

    summary: dict[str, float] = {}
    workdir = Path(tempfile.mkdtemp(prefix="replytrack-bench-"))
    results = Results()
    store_db: Path | None = None
    if "store" not in skip or "milter" not in skip:
        import store_bench

        log("building the stores (reused when kept from an earlier run)")
        paths = store_bench.build_stores(
            store_bench.fits(store_sizes, args.store_dir), args.store_dir
        )
        store_db = paths.get(1_000_000) or paths.get(max(paths))
    lab = Lab(workdir)
    outbound: list[str] = []
    inbound: list[str] = []
    try:
        background = background_busy()
        log(f"machine busy before the run: {background * 100:.0f}% of one CPU (other tenants)")
        summary["background_busy"] = background
        targets = outbound_targets(lab)
        outbound = list(targets)
        interleave(targets, sessions, args.rounds, counts, results, reuse=args.reuse)
        if "milter" not in skip:
            in_targets = inbound_targets(lab, store_db)
            inbound = list(in_targets)
            interleave(
                in_targets,
                [s for s in sessions if s > 1] or sessions,
                args.rounds,
                counts,
                results,
                reuse=args.reuse,
                message_file=reply_message(workdir, store_db),
            )
    finally:
        lab.stop()

    print_throughput("outbound", results, outbound, sessions)
    in_sessions = [s for s in sessions if s > 1] or sessions
    if inbound:
        print_throughput("inbound", results, inbound, in_sessions)
    if "store" not in skip:
        backend = "both" if args.postgresql else "sqlite"
        summary.update(store_bench.run(store_sizes, args.store_dir, backend=backend, keep=True))
    if "memory" not in skip:
        import memory_bench

        summary.update(memory_bench.run(100, 6.0 if args.quick else 25.0))
    if "extra" not in skip:
        quick = ["--mails", "300", "--rounds", "1"] if args.quick else []
        run_extra("proxy_bench.py", quick)
        run_extra("milter_bench.py", [*quick, "--ids", "100000"] if args.quick else [])

    if args.postgresql:
        import pg_bench

        log("running pg_bench (PostgreSQL against SQLite)")
        summary.update(
            pg_bench.run(
                list(pg_bench.PARTS),
                [s for s in sessions if s > 1] or sessions,
                args.rounds,
                250 if args.quick else 1000,
                100_000 if args.quick else 1_000_000,
            )
        )

    # --- the table of ratios -----------------------------------------------------------------
    rows: list[tuple[str, str, str, str]] = []
    for s in sessions:
        proxy = results.median("replytrack proxy", s)
        relay = results.median("Postfix relay", s)
        # The proxy answers 250 only once the mail is relayed (lockstep), Postfix as soon as
        # it is queued. Its relay rate is the rate at which mail left its queue; the rate
        # at which it queued is shown beside it (a queue cannot outrun its relay for long).
        relayed = results.median("Postfix relay", s, "e2e_rate")
        direct = results.median("smtp-sink direct", s)
        ratio = proxy / relayed
        cpu = results.median("replytrack proxy", s, "cpu_ms") / max(
            results.median("Postfix relay", s, "cpu_ms"), 1e-9
        )
        rows.append(
            (
                f"proxy / Postfix relay, {s} sessions",
                f"{ratio:.2f}x (CPU {cpu:.2f}x; {proxy / relay:.2f}x its queueing rate)",
                ">= 1.0x",
                "met" if ratio >= 1.0 else "NOT met",
            )
        )
        rows.append((f"proxy / smtp-sink direct, {s} sessions", f"{proxy / direct:.2f}x", "-", ""))
    milter_name = next((n for n in inbound if "replytrack" in n), None)
    for s in in_sessions if inbound else []:
        none = results.median("Postfix, no milter", s)
        if milter_name:
            ratio = results.median(milter_name, s) / none
            rows.append(
                (
                    f"replytrack milter / no milter, {s} sessions",
                    f"{ratio:.2f}x",
                    ">= 0.9x",
                    "met" if ratio >= 0.9 else "NOT met",
                )
            )
        if "Postfix + no-op milter" in inbound:
            ratio = results.median("Postfix + no-op milter", s) / none
            rows.append((f"no-op pymilter / no milter, {s} sessions", f"{ratio:.2f}x", "-", ""))
        if "Postfix + no-op C milter" in inbound:
            floor = results.median("Postfix + no-op C milter", s)
            rows.append(
                (f"no-op C milter / no milter, {s} sessions", f"{floor / none:.2f}x", "-", "")
            )
            if milter_name:
                rows.append(
                    (
                        f"replytrack milter / no-op C milter, {s} sessions",
                        f"{results.median(milter_name, s) / floor:.2f}x",
                        "-",
                        "",
                    )
                )
    if "lookup_ratio" in summary:
        ratio = summary["lookup_ratio"]
        rows.append(
            (
                f"store lookup {min(store_sizes):,} -> {int(summary['largest']):,} IDs",
                f"{ratio:.2f}x",
                "<= 1.5x",
                "met" if ratio <= 1.5 else "NOT met",
            )
        )
    rows += postgresql_rows(summary, min(store_sizes))
    if "copies_per_big_mail" in summary:
        copies = summary["copies_per_big_mail"]
        rows.append(
            (
                "proxy memory per big mail in flight",
                f"{copies:.1f} copies",
                "<= 3 copies",
                "met" if copies <= 3 else "NOT met",
            )
        )
        rows.append(
            ("proxy peak RSS at 100 sessions", f"{summary['peak_mib_sessions']:.0f} MiB", "-", "")
        )
    print("\nratios (medians of interleaved rounds)")
    print(f"{'measure':>44} | {'value':>20} | {'goal':>11} | verdict")
    print("-" * 92)
    for name, value, goal, verdict in rows:
        print(f"{name:>44} | {value:>20} | {goal:>11} | {verdict}")
    if outbound:
        print(f"\nchart: {chart(results, outbound, inbound, sessions)}")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
