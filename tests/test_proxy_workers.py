# ruff: noqa: F811  (pytest fixtures imported from tests.support.upstream are parameters)
"""``replytrack proxy`` with several worker processes on one listening socket: every worker
serves, a dead worker is replaced, SIGTERM stops them all, a killed supervisor leaves no
worker behind, and the metrics are the workers' sum."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from replytrack.config import Config
from replytrack.proxy import daemon, supervisor
from replytrack.store.sqlite import SQLiteStore
from tests.conftest import free_port
from tests.support.env import clean_environ
from tests.support.install import replytrack_init
from tests.support.upstream import RecordingUpstream, upstream  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(120)


class ProxyRun:
    """``replytrack proxy --workers N`` in its own session, its log in a file."""

    def __init__(self, tmp_path: Path, upstream_address: str, *args: str, **env: str) -> None:
        self.port = free_port()
        self.log = tmp_path / "proxy.log"
        self.db = tmp_path / "replytrack.db"
        environ = clean_environ()
        environ.update(REPLYTRACK_DB=str(self.db), REPLYTRACK_DOMAIN="track.example.com", **env)
        replytrack_init(env=environ, cwd=tmp_path)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "replytrack",
                    "proxy",
                    "--listen",
                    f"127.0.0.1:{self.port}",
                    "--upstream",
                    upstream_address,
                    *args,
                ],
                cwd=tmp_path,
                env=environ,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def workers(self, count: int, timeout: float = 20) -> list[int]:
        """The pids of the running workers, once there are ``count`` that serve."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.text()
            pids = children(self.proc.pid)
            if len(pids) == count and self.text().count("proxy listening on") >= count + 1:
                return pids
            time.sleep(0.05)
        raise AssertionError(f"expected {count} workers:\n{self.text()}")

    def send(self, marker: str) -> None:
        with smtplib.SMTP("127.0.0.1", self.port, timeout=20) as client:
            client.sendmail(
                "sales@vendor.example",
                ["prospect@example.net"],
                f"Message-ID: <{marker}@client.test>\r\nX-ReplyTrack-Campaign: w\r\n\r\n"
                f"{marker}\r\n".encode(),
            )

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (zombies left out)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry))
    return sorted(found)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def served_by(log: str, marker: str) -> str:
    """The worker ("w0", "w1") whose log line names the mail ``marker``."""
    [line] = [x for x in log.splitlines() if f"original=<{marker}@client.test>" in x]
    match = re.search(r"\[(w\d+)c[0-9a-f]+\]", line)
    assert match, line
    return match.group(1)


@pytest.fixture
def run(tmp_path: Path, upstream: RecordingUpstream) -> Iterator[list[ProxyRun]]:
    started: list[ProxyRun] = []
    yield started
    for proxy in started:
        proxy.stop()


def start(run: list[ProxyRun], tmp_path: Path, upstream: RecordingUpstream, *a: str, **e: str):
    proxy = ProxyRun(tmp_path, upstream.address, *a, **e)
    run.append(proxy)
    return proxy


def test_every_worker_accepts_from_the_one_socket(
    tmp_path: Path, upstream: RecordingUpstream, run: list[ProxyRun]
) -> None:
    metrics_port = free_port()
    proxy = start(
        run,
        tmp_path,
        upstream,
        "--workers",
        "2",
        REPLYTRACK_PROXY_METRICS_LISTEN=f"127.0.0.1:{metrics_port}",
    )
    first, second = proxy.workers(2)
    # With one worker stopped, only the other can take the connection, and the other way
    # round: both serve from the same listening socket.
    os.kill(first, signal.SIGSTOP)
    try:
        proxy.send("while-first-stopped")
    finally:
        os.kill(first, signal.SIGCONT)
    os.kill(second, signal.SIGSTOP)
    try:
        proxy.send("while-second-stopped")
    finally:
        os.kill(second, signal.SIGCONT)
    for n in range(6):
        proxy.send(f"any-{n}")
    log = proxy.text()
    assert {served_by(log, "while-first-stopped"), served_by(log, "while-second-stopped")} == {
        "w0",
        "w1",
    }
    assert len(upstream.received) == 8
    store = SQLiteStore(proxy.db)
    assert sorted(m.status for m in store.messages()) == ["relayed"] * 8
    store.close_all()
    # /metrics is the sum over both workers.
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics") as response:
        exposed = response.read().decode()
    assert 'replytrack_proxy_mails_total{result="relayed"} 8.0' in exposed, exposed

    proxy.proc.send_signal(signal.SIGTERM)
    assert proxy.proc.wait(45) == 0, proxy.text()
    assert not alive(first) and not alive(second)
    assert "Traceback" not in proxy.text()


def test_sigterm_stops_everything_after_a_storm_of_sigchld(
    tmp_path: Path, upstream: RecordingUpstream, run: list[ProxyRun]
) -> None:
    # The supervisor hears SIGCHLD whenever a worker stops, continues or exits. Its signal
    # handlers run between any two bytecodes of its main loop; one that took a lock the
    # loop held (threading.Event) hung the supervisor for good, deaf to SIGTERM. A signal
    # pending at nearly every bytecode makes hitting such a window near certain, not rare.
    proxy = start(run, tmp_path, upstream, "--workers", "2")
    workers = proxy.workers(2)
    for _ in range(SIGCHLD_STORM):
        os.kill(proxy.proc.pid, signal.SIGCHLD)
    assert proxy.proc.poll() is None, proxy.text()
    proxy.send("after-the-storm")
    proxy.proc.send_signal(signal.SIGTERM)
    try:
        status = proxy.proc.wait(45)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the supervisor did not act on SIGTERM:\n{proxy.text()}") from None
    assert status == 0, proxy.text()
    assert not any(alive(p) for p in workers)
    assert "Traceback" not in proxy.text()
    assert [r.rcpt_tos for r in upstream.received] == [["prospect@example.net"]]
    store = SQLiteStore(proxy.db)
    assert [m.status for m in store.messages()] == ["relayed"]
    store.close_all()


# Enough that a handler taking a lock the main loop holds hangs the supervisor nearly every
# run, few enough to send in under a second.
SIGCHLD_STORM = 200_000


def test_a_dead_worker_is_replaced(
    tmp_path: Path, upstream: RecordingUpstream, run: list[ProxyRun]
) -> None:
    proxy = start(run, tmp_path, upstream, "--workers", "2")
    first, second = proxy.workers(2)
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        pids = children(proxy.proc.pid)
        if len(pids) == 2 and first not in pids:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(proxy.text())
    assert second in pids
    assert re.search(rf"worker \d \(pid {first}\) exited with status -9", proxy.text())
    for n in range(4):
        proxy.send(f"after-{n}")
    assert len(upstream.received) == 4


def test_workers_stop_with_a_killed_supervisor(
    tmp_path: Path, upstream: RecordingUpstream, run: list[ProxyRun]
) -> None:
    proxy = start(run, tmp_path, upstream, "--workers", "2")
    workers = proxy.workers(2)
    proxy.send("before")
    os.kill(proxy.proc.pid, signal.SIGKILL)
    proxy.proc.wait(10)
    deadline = time.monotonic() + 20
    while any(alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in workers), "a worker outlived its supervisor"
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", proxy.port), timeout=2):
        pass


@pytest.mark.parametrize(
    ("args", "env", "said"),
    [
        (["--workers", "65"], {}, "--workers"),
        ([], {"REPLYTRACK_PROXY_WORKERS": "-1"}, "proxy.workers"),
        ([], {"REPLYTRACK_PROXY_EVENT_LOOP": "twisted"}, "proxy.event_loop"),
    ],
)
def test_bad_worker_settings_are_refused(
    tmp_path: Path, args: list[str], env: dict[str, str], said: str
) -> None:
    environ = clean_environ()
    environ.update(REPLYTRACK_DB=str(tmp_path / "replytrack.db"), **env)
    result = subprocess.run(
        [sys.executable, "-m", "replytrack", "proxy", "--listen", "127.0.0.1:0", *args],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert said in result.stderr.decode() and "Traceback" not in result.stderr.decode()


def test_a_worker_that_keeps_dying_at_once_stops_the_proxy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The store vanished after the command checked it: every worker fails as it starts.
    monkeypatch.setattr(supervisor, "RESTART_BACKOFF_MIN", 0.01)
    monkeypatch.setattr(supervisor, "RESTART_BACKOFF_MAX", 0.02)
    config = Config(db=str(tmp_path / "gone" / "replytrack.db"), domain="track.example.com")
    sockets = daemon.bind("127.0.0.1", 0)
    started = time.monotonic()
    with caplog.at_level("INFO", logger="replytrack.proxy"):
        status = supervisor.Supervisor(config, sockets, 2).run()
    assert status == 1
    assert "giving up" in caplog.text
    assert caplog.text.count("started (pid") >= supervisor.QUICK_DEATHS_MAX
    assert time.monotonic() - started < 60
    # The listening socket is closed with it: nobody is left to answer there.
    assert all(s.fileno() == -1 for s in sockets)
