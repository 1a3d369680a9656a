#!/usr/bin/env python3
"""Outbound proxy throughput against smtp-sink direct and against a Postfix relay, interleaved
in one run (run by hand as root, not in CI).

    .venv/bin/python bench/proxy_bench.py                      # 1,000 mails, 10 and 50 sessions
    .venv/bin/python bench/proxy_bench.py --mails 2000 --rounds 3 --sessions 10

Load comes from Postfix's ``smtp-source`` (a new SMTP connection per mail, 4 KB campaign
mails carrying ``X-ReplyTrack-Campaign``) into three configurations, each ending in the same
``smtp-sink``:

  direct   smtp-source -> smtp-sink (the ceiling: C on both ends, nothing in between)
  proxy    smtp-source -> ``replytrack proxy`` -> smtp-sink (lockstep: every mail is stamped,
           recorded in SQLite and accepted by the sink before the client hears 250)
  postfix  smtp-source -> private Postfix relay (tests/support/postfix.py) -> smtp-sink.
           Postfix answers 250 once the mail is in its queue; its rate is given both at
           acceptance and end to end (until its queue is empty), CPU over the whole drain.

Each round runs the configurations back to back (direct, proxy, postfix, direct, ...), so
ratios compare neighbours; the VM stalls, so compare CPU ms per mail beside mails/s.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import smtp_load  # noqa: E402 (bench/ is the script's own directory)

from tests.support.install import replytrack_init  # noqa: E402
from tests.support.postfix import PostfixLab, free_port, make_base_dir, port_open  # noqa: E402
from tests.support.upstream import SmtpSink  # noqa: E402

HZ = os.sysconf("SC_CLK_TCK")


def cpu_busy() -> int:
    """Machine-wide busy jiffies (user, nice, system, irq, softirq)."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    return fields[0] + fields[1] + fields[2] + fields[5] + fields[6]


def message_file(path: Path, size: int) -> None:
    """A campaign mail as a sales engine hands it to the proxy."""
    header = (
        "From: Sales <sales@vendor.example>\r\n"
        "To: Prospect <prospect@bench.example>\r\n"
        "Subject: Following up on our call\r\n"
        "Date: Wed, 25 Nov 2026 10:00:00 +0000\r\n"
        f"Message-ID: <{secrets.token_hex(8)}@engine.vendor.example>\r\n"
        "X-ReplyTrack-Campaign: bench-campaign\r\n"
        "X-ReplyTrack-Step: 1\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
    )
    line = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n"
    # smtp-source sends each line of the file with CRLF itself: the file must use LF, or
    # every line arrives ending in CR CR LF (and the whole mail parses as one header).
    text = header + "\r\n" + line * max(1, size // len(line))
    path.write_bytes(text.replace("\r\n", "\n").encode())


def run_source(port: int, mails: int, sessions: int, msg: Path) -> float:
    """smtp-source against 127.0.0.1:port; returns wall seconds."""
    return smtp_load.run_source(
        port,
        mails,
        sessions,
        msg,
        sender="sales@vendor.example",
        recipient="prospect@bench.example",
    )


def start_proxy(work: Path, sink_port: int) -> tuple[subprocess.Popen[bytes], int]:
    """``replytrack proxy`` as a user runs it (INFO logging to a file, as in production)."""
    port = free_port()
    env = {
        **os.environ,
        # Never an installed /etc/replytrack/replytrack.toml.
        "REPLYTRACK_CONFIG": "none",
        "REPLYTRACK_DB": str(work / "replytrack.db"),
        "REPLYTRACK_DOMAIN": "track.bench.example",
        "REPLYTRACK_PROXY_POOL_SIZE": "64",
    }
    replytrack_init(env=env, cwd=work)
    log = open(work / "proxy.log", "ab")  # noqa: SIM115 (kept open for the child)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "replytrack",
            "proxy",
            "--listen",
            f"127.0.0.1:{port}",
            "--upstream",
            f"127.0.0.1:{sink_port}",
        ],
        env=env,
        cwd=work,
        stdout=log,
        stderr=log,
    )
    deadline = time.monotonic() + 30
    while not port_open(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"proxy did not start, see {work / 'proxy.log'}")
        time.sleep(0.1)
    return proc, port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mails", type=int, default=1000)
    parser.add_argument("--sessions", default="10,50")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--size", type=int, default=4096)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the private Postfix's master must start as root")

    work = Path(tempfile.mkdtemp(prefix="replytrack-proxy-bench-"))
    msg = work / "mail.eml"
    message_file(msg, args.size)
    sink = SmtpSink().start()
    proxy, proxy_port = start_proxy(work, sink.port)
    lab = PostfixLab(
        make_base_dir(), mode="relay", relay=f"127.0.0.1:{sink.port}", domain="bench.example"
    )
    lab.extra_main.update(
        {
            # A relay tuned for throughput, as an admin would for a campaign relay.
            "smtp_connection_cache_on_demand": "yes",
            "default_destination_concurrency_limit": "50",
            "smtpd_client_connection_count_limit": "0",
            "smtpd_client_connection_rate_limit": "0",
        }
    )
    lab.start()
    ports = {"direct": sink.port, "proxy": proxy_port, "postfix": lab.smtp_port}
    results: dict[tuple[int, str], list[tuple[float, float, float | None]]] = {}
    try:
        for sessions in [int(s) for s in args.sessions.split(",")]:
            # Warm-up (pool, page cache, Postfix processes), not counted.
            for port in ports.values():
                run_source(port, 50, sessions, msg)
            lab.wait_queue_empty(timeout=120)
            for round_no in range(1, args.rounds + 1):
                for name, port in ports.items():
                    busy0, t0 = cpu_busy(), time.monotonic()
                    seconds = run_source(port, args.mails, sessions, msg)
                    e2e: float | None = None
                    if name == "postfix":
                        # CPU and end-to-end time include delivering the queue to the sink.
                        lab.wait_queue_empty(timeout=300)
                        e2e = args.mails / (time.monotonic() - t0)
                    busy1 = cpu_busy()
                    rate = args.mails / seconds
                    cpu_ms = (busy1 - busy0) * 1000 / HZ / args.mails
                    results.setdefault((sessions, name), []).append((rate, cpu_ms, e2e))
                    extra = f"  end-to-end {e2e:7.1f} mails/s" if e2e is not None else ""
                    print(
                        f"round {round_no} sessions={sessions:<3} {name:<8}"
                        f" {rate:8.1f} mails/s  {cpu_ms:6.2f} CPU ms/mail{extra}",
                        flush=True,
                    )
    finally:
        lab.stop()
        proxy.terminate()
        proxy.wait(30)
        sink.stop()

    print("\nmedians (ratios: proxy / baseline, same rounds)")
    for sessions in sorted({s for s, _ in results}):
        med = {
            name: (
                statistics.median(r for r, _, _ in results[(sessions, name)]),
                statistics.median(c for _, c, _ in results[(sessions, name)]),
            )
            for name in ports
        }
        for name, (rate, cpu) in med.items():
            print(f"  sessions={sessions:<3} {name:<8} {rate:8.1f} mails/s  {cpu:6.2f} CPU ms/mail")
        postfix_e2e = statistics.median(e for _, _, e in results[(sessions, "postfix")] if e)
        print(f"  sessions={sessions:<3} postfix  {postfix_e2e:8.1f} mails/s end to end")
        p_rate, p_cpu = med["proxy"]
        for base in ("direct", "postfix"):
            b_rate, b_cpu = med[base]
            print(
                f"  sessions={sessions:<3} proxy/{base:<8} rate {p_rate / b_rate:5.2f}x"
                f"  CPU per mail {p_cpu / b_cpu:5.2f}x"
            )
        print(
            f"  sessions={sessions:<3} proxy/postfix end-to-end rate {p_rate / postfix_e2e:5.2f}x"
        )
    print(f"\nwork dir {work} (proxy.log, replytrack.db)")


if __name__ == "__main__":
    main()
