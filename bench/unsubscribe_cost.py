#!/usr/bin/env python3
"""What issue 14 costs the daemons: the proxy's unsubscribe headers on against off, and the
milter's CPU per matched reply with intent labelling against without, in one run (run by
hand as root, not in CI; the goal is a cost within 5 %).

    .venv/bin/python bench/unsubscribe_cost.py                    # 6 rounds, 2,000 mails
    .venv/bin/python bench/unsubscribe_cost.py --rounds 8 --sessions 10,50 --parts proxy
    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.on .venv/bin/python \
        bench/unsubscribe_cost.py --loop stamp-on --repeat 200     # and stamp-off, 0

Proxy: two ``replytrack proxy`` daemons as users run them (one worker per CPU, their own
SQLite stores), one with ``[unsubscribe]`` at its default (campaign mail gets
``List-Unsubscribe``; the token is derived from the stamped Message-ID), one with
``REPLYTRACK_UNSUBSCRIBE_ENABLED=false``; both relay to the same ``smtp-sink`` and are loaded
by ``smtp-source`` with proxy_bench.py's 4 KB campaign mail. Before the rounds, each
configuration is checked in-process against a recording upstream: the header is there, or
not.

Milter: one private Postfix (discard delivery) and two ``replytrack milter`` processes on
identical stores (``--ids`` recorded mails, milter_bench.py's), one as shipped, one with the
classifier's intent hook replaced by one that labels nothing; the load is milter_bench.py
``--replies``' 4 KB reply to a recorded, signed Message-ID (matched, body classified, event
recorded once, then deduplicated). Postfix is switched between them with a reload.

Each round runs both sides of a pair back to back, the order alternating between rounds
(on, off; off, on; ...). Printed per load: mails/s (wall clock, noisy on a shared VM), CPU
ms per mail of the measured daemon's processes read from ``/proc`` (the proxy's supervisor
and workers; the milter process), and machine-wide CPU ms per mail; then medians and the
on/off ratios of the medians. ``--parts inproc`` times the added work itself in this
process (CPU time); ``--loop stamp-on|stamp-off`` only stamps the mail ``--repeat`` times
(for callgrind; the intent's side is ``intent_cost.py --mode on|off --mail 0``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import smtplib
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import milter_bench  # noqa: E402 (bench/ is the script's own directory)
import proxy_bench  # noqa: E402

from replytrack.config import load_config  # noqa: E402
from replytrack.proxy.testing import ThreadedProxy  # noqa: E402
from replytrack.store.sqlite import SQLiteStore  # noqa: E402
from replytrack.tokens import load_keyring  # noqa: E402
from tests.support.install import replytrack_init  # noqa: E402
from tests.support.postfix import PostfixLab, free_port, make_base_dir, port_open  # noqa: E402
from tests.support.upstream import RecordingUpstream, SmtpSink  # noqa: E402

HZ = os.sysconf("SC_CLK_TCK")
PROXY_DOMAIN = "track.bench.example"

# ``replytrack milter`` whose classifier labels no intent (everything else as shipped).
RT_NO_INTENT = r"""
import replytrack.classify as classifier
classifier._intent = lambda ctx: None
from replytrack.cli import main
main()
"""

Sample = tuple[float, float, float]  # mails/s, daemon CPU ms/mail, machine CPU ms/mail


def tree_cpu(pid: int) -> int:
    """CPU ticks (user + system) of process ``pid`` and every live descendant."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            total += milter_bench.process_cpu(current)
            with open(f"/proc/{current}/task/{current}/children") as children:
                todo += [int(c) for c in children.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def measure(load: Callable[[], float], pid: int, mails: int) -> Sample:
    """Run ``load`` (returns wall seconds); the rate and CPU per mail it cost."""
    busy0, own0 = milter_bench.cpu_busy(), tree_cpu(pid)
    seconds = load()
    per_mail = 1000 / HZ / mails
    return (
        mails / seconds,
        (tree_cpu(pid) - own0) * per_mail,
        (milter_bench.cpu_busy() - busy0) * per_mail,
    )


# --- proxy ---------------------------------------------------------------------------------
def proxy_env(work: Path, enabled: bool) -> dict[str, str]:
    return {
        **os.environ,
        "REPLYTRACK_CONFIG": "none",
        "REPLYTRACK_DB": str(work / "replytrack.db"),
        "REPLYTRACK_SECRET_FILE": str(work / "replytrack.secret"),
        "REPLYTRACK_DOMAIN": PROXY_DOMAIN,
        "REPLYTRACK_PROXY_POOL_SIZE": "64",
        "REPLYTRACK_UNSUBSCRIBE_ENABLED": "true" if enabled else "false",
    }


def check_headers(env: dict[str, str], msg: Path, enabled: bool) -> None:
    """The configuration a daemon with ``env`` runs adds List-Unsubscribe iff ``enabled``."""
    config = load_config(env=env, overrides={"db": env["REPLYTRACK_DB"] + ".check"})
    store = SQLiteStore(config.db)
    keyring = load_keyring(env["REPLYTRACK_SECRET_FILE"], create=False)
    with RecordingUpstream() as upstream:
        config = load_config(
            env=env,
            overrides={
                "db": config.db,
                "proxy_listen": "127.0.0.1:0",
                "proxy_upstream": upstream.address,
            },
        )
        proxy = ThreadedProxy(config, store=store, keyring=keyring).start()
        try:
            with smtplib.SMTP("127.0.0.1", proxy.port) as client:
                client.sendmail(
                    "sales@vendor.example", ["prospect@bench.example"], msg.read_bytes()
                )
        finally:
            proxy.stop()
        [got] = upstream.received
    store.close_all()
    if (b"\nList-Unsubscribe: <mailto:" in got.data) != enabled:
        raise SystemExit(f"unsubscribe {'on' if enabled else 'off'}: header check failed")


def start_proxy(
    work: Path, env: dict[str, str], sink_port: int
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    replytrack_init(env=env, cwd=work)
    log = open(work / "proxy.log", "ab")  # noqa: SIM115 (kept open for the child)
    args = ["proxy", "--listen", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{sink_port}"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "replytrack", *args], env=env, cwd=work, stdout=log, stderr=log
    )
    deadline = time.monotonic() + 30
    while not port_open(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"proxy did not start, see {work / 'proxy.log'}")
        time.sleep(0.1)
    return proc, port


def bench_proxy(base: Path, args: argparse.Namespace, results: dict[str, list[Sample]]) -> None:
    msg = base / "campaign.eml"
    proxy_bench.message_file(msg, args.size)
    sink = SmtpSink().start()
    procs: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    try:
        for name, enabled in (("headers on", True), ("headers off", False)):
            work = base / name.replace(" ", "-")
            work.mkdir()
            env = proxy_env(work, enabled)
            procs[name] = start_proxy(work, env, sink.port)
            check_headers(env, msg, enabled)
        for sessions in [int(s) for s in args.sessions.split(",")]:
            for _, port in procs.values():
                proxy_bench.run_source(port, 100, sessions, msg)  # warm-up, not counted
            for round_no in range(args.rounds):
                names = list(procs) if round_no % 2 == 0 else list(reversed(procs))
                for name in names:
                    proc, port = procs[name]

                    def load(port: int = port, sessions: int = sessions) -> float:
                        return proxy_bench.run_source(port, args.mails, sessions, msg)

                    sample = measure(load, proc.pid, args.mails)
                    results.setdefault(f"proxy s={sessions} {name}", []).append(sample)
                    report(round_no, f"proxy s={sessions} {name}", sample, "proxy")
    finally:
        for proc, _ in procs.values():
            proc.terminate()
            proc.wait(30)
        sink.stop()


# --- milter --------------------------------------------------------------------------------
def bench_milter(
    base: Path, lab_dir: Path, args: argparse.Namespace, results: dict[str, list[Sample]]
) -> None:
    secret = base / "rt.secret"
    load_keyring(secret, create=True)
    first = base / "intent-on.db"
    milter_bench.fill_store(first, args.ids)
    recorded = milter_bench.record_stamped_id(first, secret, max(1, args.ids // 2))
    second = base / "intent-off.db"
    shutil.copyfile(first, second)
    msg = base / "reply.eml"
    milter_bench.reply_file(msg, recorded, args.size)
    lab = PostfixLab(
        lab_dir,
        mode="discard",
        domain="bench.example",
        extra_main={
            "smtpd_client_connection_count_limit": 0,
            "smtpd_client_connection_rate_limit": 0,
            "default_process_limit": 200,
        },
    )
    milters: dict[str, tuple[subprocess.Popen[bytes], str, Path]] = {}
    try:
        for name, db, code in (("intent on", first, None), ("intent off", second, RT_NO_INTENT)):
            port = free_port()
            env = {
                **os.environ,
                "REPLYTRACK_CONFIG": "none",
                "REPLYTRACK_DB": str(db),
                "REPLYTRACK_DOMAIN": milter_bench.DOMAIN,
                "REPLYTRACK_SECRET_FILE": str(secret),
                "REPLYTRACK_LOG_LEVEL": "warning",
                "REPLYTRACK_MILTER_JOURNAL": str(base / f"{db.stem}.journal"),
                "REPLYTRACK_MILTER_JOURNAL_FALLBACK": str(base / f"{db.stem}.journal-run"),
            }
            entry = ["-c", code] if code else ["-m", "replytrack"]
            log = open(base / f"{db.stem}.log", "ab")  # noqa: SIM115 (kept open for the child)
            proc = subprocess.Popen(
                [sys.executable, *entry, "milter", "--socket", f"inet:{port}@127.0.0.1"],
                env=env,
                stdout=log,
                stderr=log,
            )
            deadline = time.monotonic() + 30
            while not port_open(port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"milter {name} did not start, see {log.name}")
                time.sleep(0.1)
            milters[name] = (proc, f"{{ inet:127.0.0.1:{port}, default_action=accept }}", db)
        lab.start()
        for sessions in [int(s) for s in args.sessions.split(",")]:
            for round_no in range(args.rounds):
                names = list(milters) if round_no % 2 == 0 else list(reversed(milters))
                for name in names:
                    proc, spec, _ = milters[name]
                    lab.milter = spec
                    lab.reload()
                    time.sleep(1.0)
                    milter_bench.run_source(lab.smtp_port, 20, 5, msg)  # the new smtpd settles
                    lab.wait_queue_empty(60)
                    mark = len(lab.log())

                    def load(sessions: int = sessions) -> float:
                        seconds = milter_bench.run_source(lab.smtp_port, args.mails, sessions, msg)
                        lab.wait_queue_empty(120)
                        return seconds

                    sample = measure(load, proc.pid, args.mails)
                    if "Milter service" in lab.log()[mark:]:
                        raise SystemExit(f"{name}: Postfix could not reach the milter")
                    results.setdefault(f"milter s={sessions} {name}", []).append(sample)
                    report(round_no, f"milter s={sessions} {name}", sample, "milter")
        for name, (_, _, db) in milters.items():
            intents = {e.detail.get("intent") for e in SQLiteStore(db).events(kind="reply")}
            print(f"{name}: recorded reply intents {sorted(map(str, intents))}")
    finally:
        for proc, _, _ in milters.values():
            proc.terminate()
            proc.wait(30)
        lab.stop()


def cpu_best(call: Callable[[], object], number: int) -> float:
    """Best of five timeit runs of ``call`` by this process's CPU time, us a call."""
    runs = timeit.repeat(call, number=number, repeat=5, timer=time.process_time)
    return 1e6 * min(runs) / number


# --- in process ----------------------------------------------------------------------------
def stamp_loop(base: Path, args: argparse.Namespace) -> None:
    """Stamp the bench's campaign mail ``--repeat`` times, links on or off (callgrind)."""
    from replytrack import unsubscribe
    from replytrack.proxy.stamp import stamp
    from replytrack.tokens import mint

    keyring = load_keyring(base / "loop.secret", create=True)
    options = unsubscribe.Options(keyring=keyring, address=f"unsubscribe@{PROXY_DOMAIN}")
    links = options if args.loop == "stamp-on" else None
    mail = base / "loop-campaign.eml"
    proxy_bench.message_file(mail, args.size)
    data = mail.read_bytes().replace(b"\n", b"\r\n")
    message_id = mint(keyring, PROXY_DOMAIN).strip("<>")
    for _ in range(args.repeat):
        stamp(data, message_id, unsubscribe=links)


def in_process(base: Path, args: argparse.Namespace) -> dict[str, float]:
    """The feature's own work timed in this process (best of five timeit runs of CPU time,
    so that being descheduled on a busy machine does not count; us a mail):
    the proxy's ``stamp()`` of the bench's campaign mail with and without unsubscribe
    links, and ``classify()`` of the bench's reply with and without the intent hook."""
    import intent_cost

    import replytrack.classify as classifier
    from replytrack import unsubscribe
    from replytrack.classify import _mime
    from replytrack.proxy.stamp import stamp
    from replytrack.tokens import mint

    keyring = load_keyring(base / "inproc.secret", create=True)
    options = unsubscribe.Options(keyring=keyring, address=f"unsubscribe@{PROXY_DOMAIN}")
    mail = base / "inproc-campaign.eml"
    proxy_bench.message_file(mail, args.size)
    data = mail.read_bytes().replace(b"\n", b"\r\n")
    message_id = mint(keyring, PROXY_DOMAIN).strip("<>")
    assert b"List-Unsubscribe" in stamp(data, message_id, unsubscribe=options).head
    reply = base / "inproc-reply.eml"
    milter_bench.reply_file(reply, message_id, args.size)
    raw = reply.read_bytes()
    head, _, body = raw.partition(b"\n\n")
    headers = [
        (name, value.strip())
        for name, _, value in (line.decode().partition(":") for line in head.splitlines())
    ]
    assert _mime.view(headers, body).own_text()
    with_intent = classifier._intent
    figures = {
        "stamp, headers on": cpu_best(lambda: stamp(data, message_id, unsubscribe=options), 2000),
        "stamp, headers off": cpu_best(lambda: stamp(data, message_id), 2000),
        "classify, intent on": cpu_best(lambda: classifier.classify(headers, body), 500),
    }
    classifier._intent = intent_cost._no_intent
    try:
        figures["classify, intent off"] = cpu_best(lambda: classifier.classify(headers, body), 500)
    finally:
        classifier._intent = with_intent
    for name, micros in figures.items():
        print(f"in process: {name:<22} {micros:7.1f} us a mail", flush=True)
    return figures


# --- output --------------------------------------------------------------------------------
def report(round_no: int, label: str, sample: Sample, who: str) -> None:
    rate, own, machine = sample
    print(
        f"round {round_no + 1} {label:<28} {rate:8.1f} mails/s  {who} {own:5.2f}"
        f"  machine {machine:5.2f} CPU ms/mail",
        flush=True,
    )


def summary(results: dict[str, list[Sample]]) -> None:
    print("\nmedians over rounds (mails/s, daemon CPU ms/mail, machine CPU ms/mail)")
    med = {
        label: tuple(statistics.median(s[i] for s in samples) for i in range(3))
        for label, samples in results.items()
    }
    for label, (rate, own, machine) in med.items():
        print(f"  {label:<28} {rate:8.1f}  {own:5.2f}  {machine:5.2f}")
    print("cost of the feature (on / off of the medians; CPU above 1.00 is the cost)")
    for label in med:
        for on, off in (("headers on", "headers off"), ("intent on", "intent off")):
            if label.endswith(on):
                other = med[label[: -len(on)] + off]
                mine = med[label]
                # Each round's pair ran back to back: the ratio within a round is the
                # least disturbed by the load drifting between rounds.
                pairs = sorted(
                    a[1] / b[1]
                    for a, b in zip(results[label], results[label[: -len(on)] + off], strict=True)
                )
                print(
                    f"  {label[: -len(on)]}{on}/off: rate {mine[0] / other[0]:5.3f}x"
                    f"  daemon CPU {mine[1] / other[1]:5.3f}x"
                    f"  machine CPU {mine[2] / other[2]:5.3f}x"
                    f"; daemon CPU within each round: median {statistics.median(pairs):5.3f}x"
                    f" ({pairs[0]:.2f}-{pairs[-1]:.2f})"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="inproc,proxy,milter")
    parser.add_argument("--mails", type=int, default=2000)
    parser.add_argument("--sessions", default="10")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--ids", type=int, default=200_000)
    parser.add_argument("--loop", choices=("stamp-on", "stamp-off"))
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    if args.loop:
        loop_dir = Path(tempfile.mkdtemp(prefix="rt-stamp-loop-"))
        try:
            stamp_loop(loop_dir, args)
        finally:
            shutil.rmtree(loop_dir, ignore_errors=True)
        return
    if os.geteuid() != 0:
        raise SystemExit("needs root (the private Postfix's master runs as root)")
    print(f"uptime: {os.getloadavg()} (load averages 1, 5, 15 min) at start")
    base = make_base_dir("replytrack-unsubscribe-cost-")
    work = Path(tempfile.mkdtemp(prefix="rt-", dir=base))
    results: dict[str, list[Sample]] = {}
    figures: dict[str, float] = {}
    try:
        parts = args.parts.split(",")
        if "inproc" in parts:
            figures = in_process(work, args)
        if "proxy" in parts:
            bench_proxy(work, args, results)
        if "milter" in parts:
            # Postfix's daemons must traverse the lab's directory: not under the 0700 work.
            bench_milter(work, base / "postfix", args, results)
    finally:
        print(f"uptime: {os.getloadavg()} at end")
        if not os.environ.get("REPLYTRACK_PFLAB_KEEP"):
            shutil.rmtree(base, ignore_errors=True)
    summary(results)
    if figures:
        added_stamp = figures["stamp, headers on"] - figures["stamp, headers off"]
        added_intent = figures["classify, intent on"] - figures["classify, intent off"]
        print(f"in process: headers add {added_stamp:.1f} us a mail, intent {added_intent:.1f} us")
        for label, samples in results.items():
            added = added_stamp if label.endswith("headers off") else added_intent
            if label.endswith("off"):
                base_cpu = statistics.median(s[1] for s in samples) * 1000
                print(
                    f"  = {100 * added / base_cpu:4.1f} % of the {label} daemon's"
                    f" {base_cpu:.0f} us CPU a mail"
                )


if __name__ == "__main__":
    main()
