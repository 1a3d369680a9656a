"""Proxy memory: peak RSS at 100 concurrent sessions and with 25 MB mails.

Usage: .venv/bin/python bench/memory_bench.py [--sessions 100] [--big-mb 25]

Each scenario runs against a fresh ``replytrack proxy`` process (the peak, VmHWM in
/proc/PID/status, only ever grows) relaying to Postfix's ``smtp-sink``:

* idle: the proxy after one small mail (the baseline);
* sessions: ``--sessions`` clients at once, each sending 4 KB mails while the sink answers
  DATA slowly, so that all sessions are open together;
* one big mail: a single ``--big-mb`` MB mail;
* big mails x4: four such mails at once.

For the big mails the table shows how many copies of the mail the growth over the baseline
amounts to. The proxy rebuilds only the header block and streams the body upstream from
the received bytes, so it should hold about one copy of each mail in flight; the goal
printed is at most 3.
"""

from __future__ import annotations

import argparse
import shutil
import smtplib
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from soak import ProxyProcess, Sink, make_message, peak_rss_kib

COPIES_GOAL = 3.0


def _send(port: int, data: bytes, count: int, errors: list[str]) -> None:
    try:
        with smtplib.SMTP("127.0.0.1", port, local_hostname="client.bench.test", timeout=300) as c:
            for _ in range(count):
                c.sendmail("sales@sender.example", ["p@example.test"], data)
    except (smtplib.SMTPException, OSError) as exc:
        errors.append(f"{type(exc).__name__}: {exc}")


def big_message(megabytes: float) -> bytes:
    """A mail of about ``megabytes`` MB: a text body of 76-character lines."""
    head = make_message("big", size=0)
    line = b"x" * 76 + b"\r\n"
    return head + line * int(megabytes * 1024 * 1024 / len(line))


def scenario(name: str, clients: int, data: bytes, per_client: int, delay: float | None) -> dict:
    """Fresh proxy and sink; run the clients; return the proxy's peak RSS and errors."""
    workdir = Path(tempfile.mkdtemp(prefix="replytrack-mem-"))
    sink = Sink(workdir, dump=False, delay=delay).start()
    proxy = ProxyProcess(workdir, sink.port).start()
    errors: list[str] = []
    try:
        _send(proxy.port, make_message("warm"), 1, errors)
        baseline = peak_rss_kib(proxy.pid)
        started = time.monotonic()
        threads = [
            threading.Thread(target=_send, args=(proxy.port, data, per_client, errors))
            for _ in range(clients)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
        peak = peak_rss_kib(proxy.pid)
    finally:
        proxy.stop()
        sink.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "name": name,
        "baseline_mib": baseline / 1024,
        "peak_mib": peak / 1024,
        "growth_mib": (peak - baseline) / 1024,
        "mails": clients * per_client,
        "seconds": elapsed,
        "errors": errors,
        "size": len(data),
        "in_flight": clients,
    }


def run(sessions: int = 100, big_mb: float = 25.0) -> dict[str, float]:
    """Run all scenarios, print the table; returns headline figures for run_all."""
    big = big_message(big_mb)
    results = [
        scenario("idle", 1, make_message("small"), 1, None),
        scenario(f"{sessions} sessions", sessions, make_message("small"), 3, 1),
        scenario(f"one {big_mb:g} MB mail", 1, big, 1, None),
        scenario(f"{big_mb:g} MB mails x4", 4, big, 1, None),
    ]
    print("\nmemory bench: replytrack proxy peak RSS (VmHWM), fresh process per scenario")
    print(
        f"{'scenario':>18} | {'baseline MiB':>12} | {'peak MiB':>8} | {'growth MiB':>10} |"
        f" {'copies/mail':>11} | errors"
    )
    print("-" * 84)
    summary: dict[str, float] = {}
    worst_copies = 0.0
    for r in results:
        copies = ""
        if r["size"] > 1024 * 1024:
            per_mail = r["growth_mib"] * 1024 * 1024 / r["size"] / r["in_flight"]
            worst_copies = max(worst_copies, per_mail)
            copies = f"{per_mail:.1f}"
        errors = f"{len(r['errors'])}" + (f" ({r['errors'][0][:60]})" if r["errors"] else "")
        print(
            f"{r['name']:>18} | {r['baseline_mib']:12.1f} | {r['peak_mib']:8.1f} |"
            f" {r['growth_mib']:10.1f} | {copies:>11} | {errors}"
        )
        summary[f"peak_mib:{r['name']}"] = r["peak_mib"]
    summary["copies_per_big_mail"] = worst_copies
    summary["peak_mib_sessions"] = results[1]["peak_mib"]
    verdict = "met" if worst_copies <= COPIES_GOAL else "NOT met"
    print(
        f"goal: a {big_mb:g} MB mail costs at most {COPIES_GOAL:g} copies of itself:"
        f" {worst_copies:.1f} ({verdict})"
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--big-mb", type=float, default=25.0)
    args = parser.parse_args(argv)
    run(args.sessions, args.big_mb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
