"""Soak: 100 k mails through ``replytrack proxy`` into a recording upstream, reconciled.

Usage: .venv/bin/python bench/soak.py [--count 100000] [--sessions 10] [--per-connection 100]

Client sessions reuse their connections (``--per-connection`` mails each, then a new one).
The upstream is Postfix's ``smtp-sink`` dumping every mail to a file (C, so the recorder does
not steal CPU from the proxy). At the end three lists are compared, mail by mail (each mail
carries a unique marker in ``X-Test-Marker`` and in its own Message-ID, which the proxy
records as the original Message-ID):

* what each client was told (250, 4xx, 5xx, connection broken),
* what arrived upstream,
* what the store recorded.

The promise: zero mails answered 250 that did not arrive, zero answered 250 that were not
recorded. Mails that arrived without a 250 (the client was told to retry) are counted too.
Exit status 0 when the promise holds, 1 when it does not.

The helpers here (``ProxyProcess``, ``Sink``, ``cpu_seconds``) are shared with the other
benchmarks in this directory.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import smtplib
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.env import clean_environ  # noqa: E402
from tests.support.install import replytrack_init  # noqa: E402
from tests.support.net import free_port, wait_port  # noqa: E402

MARKER = "X-Test-Marker"


def tree_pids(root: int) -> list[int]:
    """``root`` and its live descendants (the proxy's supervisor and its workers)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if stat[0] != "Z":
                parents[int(entry.name)] = int(stat[1])
    found = [root] if root in parents else []
    for pid in found:  # grows while walked: breadth first
        found.extend(child for child, parent in parents.items() if parent == pid)
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process tree: each live process's own time and that
    of its reaped children, so every CPU second counts once."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for member in tree_pids(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        # utime, stime, cutime, cstime are fields 14-17; after the ")" split they start at 11.
        total += sum(int(v) for v in fields[11:15])
    return total / ticks


def machine_busy() -> tuple[float, float]:
    """(busy, all) CPU seconds of the whole machine, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    busy = values[0] + values[1] + values[2] + values[5] + values[6]
    return busy / ticks, sum(values) / ticks


def peak_rss_kib(pid: int) -> int:
    """VmHWM (peak resident set) of a process tree in KiB: the sum of each process's peak
    (for the proxy, supervisor and workers), an upper bound on the tree's peak."""
    total = 0
    for member in tree_pids(pid):
        try:
            lines = Path(f"/proc/{member}/status").read_text().splitlines()
        except OSError:
            continue
        total += next((int(x.split()[1]) for x in lines if x.startswith("VmHWM:")), 0)
    return total


class Sink:
    """Postfix's smtp-sink on loopback, optionally dumping every mail to one file."""

    def __init__(self, workdir: Path, *, dump: bool = True, delay: float | None = None) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.dump = workdir / "sink.dump" if dump else None
        self.delay = delay
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Sink:
        """Start and wait for the port."""
        exe = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
        if not Path(exe).exists():
            raise SystemExit("smtp-sink not found: install the Debian package postfix")
        cmd = [exe, "-c", "-h", "sink.bench.test"]
        if os.geteuid() == 0:
            cmd += ["-u", "nobody"]
        if self.dump is not None:
            self.workdir.chmod(0o777)
            cmd += ["-D", str(self.dump)]
        if self.delay:
            cmd += ["-w", str(max(1, round(self.delay)))]
        cmd += [f"127.0.0.1:{self.port}", "1024"]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        if not wait_port(self.port, timeout=30):
            raise SystemExit("smtp-sink did not start")
        return self

    @property
    def pid(self) -> int:
        """The sink's process id."""
        assert self.proc is not None
        return self.proc.pid

    def markers(self) -> Counter[str]:
        """How often each marker arrived (from the dump file)."""
        if self.dump is None or not self.dump.exists():
            return Counter()
        text = self.dump.read_bytes()
        return Counter(
            m.decode() for m in re.findall(rb"(?mi)^" + MARKER.encode() + rb": *(\S+)", text)
        )

    def stop(self) -> None:
        """Stop (by our own PID)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class ProxyProcess:
    """``replytrack proxy`` as a subprocess with its own store, key file and log."""

    def __init__(
        self,
        workdir: Path,
        upstream_port: int,
        *,
        listen_host: str = "127.0.0.1",
        extra_env: dict[str, str] | None = None,
        extra_args: list[str] | None = None,
        init_args: tuple[str, ...] = (),
    ) -> None:
        self.workdir = workdir
        # ``replytrack init``'s options (``--new-key`` for a store filled beforehand).
        self.init_args = init_args
        self.port = free_port()
        self.listen_host = listen_host
        self.upstream_port = upstream_port
        self.db = workdir / "replytrack.db"
        self.log = workdir / "proxy.log"
        self.extra_env = extra_env or {}
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        """The environment the proxy runs with."""
        env = clean_environ()
        env.update(
            {
                "REPLYTRACK_DB": str(self.db),
                "REPLYTRACK_DOMAIN": "mail.bench.test",
                "REPLYTRACK_SECRET_FILE": str(self.workdir / "replytrack.secret"),
                "REPLYTRACK_HOSTNAME": "proxy.bench.test",
                **self.extra_env,
            }
        )
        return env

    def start(self, timeout: float = 30) -> ProxyProcess:
        """Start and wait until it accepts connections."""
        cmd = [
            sys.executable,
            "-m",
            "replytrack",
            "proxy",
            "--listen",
            f"{self.listen_host}:{self.port}",
            "--upstream",
            f"127.0.0.1:{self.upstream_port}",
            *self.extra_args,
        ]
        # Only init creates the store and the key; the proxy refuses to start without them.
        replytrack_init(*self.init_args, env=self.env(), cwd=self.workdir)
        log = open(self.log, "ab")  # noqa: SIM115 - the child keeps it open
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=log, env=self.env(), cwd=self.workdir, start_new_session=True
        )
        log.close()
        if not wait_port(self.port, self.listen_host, timeout):
            self.stop()
            raise RuntimeError(f"replytrack proxy did not start: {self.log_tail()}")
        return self

    @property
    def pid(self) -> int:
        """The proxy's process id."""
        assert self.proc is not None
        return self.proc.pid

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the proxy's log."""
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL to the whole proxy, supervisor and workers, no goodbye (the fault tests'
        crash). It runs in its own session, so its process group is the proxy alone."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            # The workers are gone too once the group is empty.
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    os.killpg(self.proc.pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.02)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def recorded_markers(self) -> set[str]:
        """Markers of every mail the store recorded (from the client's Message-ID)."""
        return recorded_markers(self.db)


def recorded_markers(db: Path) -> set[str]:
    """Markers recorded in a store: the client's Message-ID is ``<marker@client.example>``."""
    if not db.exists():
        return set()
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        rows = conn.execute(
            "SELECT original_message_id FROM messages WHERE original_message_id IS NOT NULL"
        ).fetchall()
    finally:
        conn.close()
    return {r[0].partition("@")[0] for r in rows if r[0].endswith("@client.example")}


def make_message(marker: str, *, size: int = 4096, campaign: str | None = "soak") -> bytes:
    """A campaign mail of about ``size`` bytes carrying ``marker``."""
    head = [
        "From: Sales <sales@sender.example>",
        f"To: Prospect <p{hash(marker) % 5000}@example.test>",
        f"Subject: soak {marker}",
        f"{MARKER}: {marker}",
        f"Message-ID: <{marker}@client.example>",
    ]
    if campaign:
        head.append(f"X-ReplyTrack-Campaign: {campaign}")
    line = "The quick brown fox jumps over the lazy dog, again and again.\r\n"
    body = (line * (size // len(line) + 1))[:size]
    return ("\r\n".join(head) + "\r\n\r\n" + body + "\r\n").encode()


@dataclass
class ClientTally:
    """What the clients were told, marker by marker."""

    replies: dict[str, int | None] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, marker: str, code: int | None) -> None:
        """Remember the final answer for one mail."""
        with self.lock:
            self.replies[marker] = code


def send_one(client: smtplib.SMTP, marker: str, data: bytes) -> int:
    """MAIL, RCPT, DATA on an open session; the final reply code (RSET after a refusal)."""
    code, _ = client.mail("sales@sender.example")
    if code != 250:
        client.rset()
        return code
    code, _ = client.rcpt(f"p{hash(marker) % 5000}@example.test")
    if code not in (250, 251):
        client.rset()
        return code
    try:
        code, _ = client.data(data)
    except smtplib.SMTPDataError as exc:
        client.rset()
        return exc.smtp_code
    return code


def client_worker(
    port: int,
    markers: list[str],
    per_connection: int,
    size: int,
    tally: ClientTally,
    host: str = "127.0.0.1",
) -> None:
    """Send ``markers`` over sessions of ``per_connection`` mails each."""
    index = 0
    while index < len(markers):
        try:
            client = smtplib.SMTP(host, port, local_hostname="client.bench.test", timeout=120)
        except OSError:
            tally.note(markers[index], None)
            index += 1
            time.sleep(0.05)
            continue
        try:
            client.ehlo("client.bench.test")
            for _ in range(per_connection):
                if index >= len(markers):
                    break
                marker = markers[index]
                index += 1
                try:
                    tally.note(marker, send_one(client, marker, make_message(marker, size=size)))
                except (smtplib.SMTPServerDisconnected, OSError):
                    tally.note(marker, None)
                    break
            with contextlib.suppress(smtplib.SMTPException, OSError):
                client.quit()
        except (smtplib.SMTPException, OSError):
            pass
        finally:
            client.close()


def run_clients(
    port: int,
    count: int,
    sessions: int,
    per_connection: int,
    size: int,
    prefix: str,
    host: str = "127.0.0.1",
) -> ClientTally:
    """``count`` mails over ``sessions`` parallel client threads."""
    tally = ClientTally()
    markers = [f"{prefix}{i:07d}" for i in range(count)]
    threads = [
        threading.Thread(
            target=client_worker,
            args=(port, markers[s::sessions], per_connection, size, tally, host),
            daemon=True,
        )
        for s in range(sessions)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return tally


def settle(read: callable, timeout: float = 60) -> object:  # type: ignore[valid-type]
    """Call ``read`` until its result stops changing for a second."""
    last = read()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = read()
        if now == last:
            return now
        last = now
    return last


def soak(count: int, sessions: int, per_connection: int, size: int) -> int:
    """Run the soak, print the reconciliation, return the exit status."""
    workdir = Path(tempfile.mkdtemp(prefix="replytrack-soak-"))
    sink = Sink(workdir).start()
    proxy = ProxyProcess(workdir, sink.port).start()
    try:
        cpu0, busy0, wall0 = cpu_seconds(proxy.pid), machine_busy()[0], time.monotonic()
        tally = run_clients(proxy.port, count, sessions, per_connection, size, "m")
        wall = time.monotonic() - wall0
        cpu = cpu_seconds(proxy.pid) - cpu0
        busy = machine_busy()[0] - busy0
        rss = peak_rss_kib(proxy.pid)
        arrived: Counter[str] = settle(sink.markers)  # type: ignore[assignment]
    finally:
        proxy.stop()
        sink.stop()
    recorded = recorded_markers(proxy.db)
    replies = Counter(
        "broken" if c is None else f"{c // 100}xx" if c != 250 else "250"
        for c in tally.replies.values()
    )
    accepted = {m for m, c in tally.replies.items() if c == 250}
    lost = accepted - set(arrived)
    unrecorded = accepted - recorded
    arrived_without_250 = set(arrived) - accepted
    duplicates = {m for m, n in arrived.items() if n > 1}
    recorded_not_arrived = recorded - set(arrived)
    ok = not lost and not unrecorded and len(tally.replies) == count
    print(f"\nsoak: {count:,} mails of {size} B, {sessions} sessions, {per_connection} per conn")
    rows = [
        ("mails sent", f"{len(tally.replies):,}"),
        ("client replies", ", ".join(f"{k}: {v:,}" for k, v in sorted(replies.items()))),
        ("arrived upstream", f"{sum(arrived.values()):,} ({len(arrived):,} distinct)"),
        ("recorded in store", f"{len(recorded):,}"),
        ("250 but not arrived (lost)", f"{len(lost):,}"),
        ("250 but not recorded", f"{len(unrecorded):,}"),
        ("arrived without 250", f"{len(arrived_without_250):,}"),
        ("recorded, not arrived", f"{len(recorded_not_arrived):,}"),
        ("arrived twice", f"{len(duplicates):,}"),
        ("wall time", f"{wall:.1f} s ({count / wall:.0f} mails/s)"),
        ("proxy CPU per mail", f"{cpu * 1000 / count:.2f} ms"),
        ("machine CPU per mail", f"{busy * 1000 / count:.2f} ms"),
        ("proxy peak RSS", f"{rss / 1024:.0f} MiB"),
        ("verdict", "zero lost: PASS" if ok else "PROMISE BROKEN: FAIL"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key:<{width}} | {value}")
    if not ok:
        print(f"  proxy log tail:\n{proxy.log_tail()}")
        print(f"  examples lost: {sorted(lost)[:5]} unrecorded: {sorted(unrecorded)[:5]}")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--per-connection", type=int, default=100)
    parser.add_argument("--size", type=int, default=4096)
    faults = parser.add_argument_group("fault mode (bench/soak_faults.py)")
    faults.add_argument(
        "--faults",
        action="store_true",
        help="lock the store, fill its disk, pin its log at random moments; --count is unused",
    )
    faults.add_argument("--duration", type=float, default=45.0, help="seconds of load")
    faults.add_argument("--seed", type=int, help="fault schedule seed (default: random)")
    faults.add_argument("--tmpfs-size", default="256m", help="size of the store's tmpfs")
    args = parser.parse_args(argv)
    if args.faults:
        from soak_faults import run_fault_soak

        return run_fault_soak(
            duration=args.duration,
            sessions=args.sessions,
            per_connection=args.per_connection,
            size=args.size,
            seed=args.seed,
            tmpfs_size=args.tmpfs_size,
        )
    return soak(args.count, args.sessions, args.per_connection, args.size)


if __name__ == "__main__":
    sys.exit(main())
