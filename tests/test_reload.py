# ruff: noqa: F811  (pytest fixtures imported from tests.support.upstream are parameters)
"""Reloading and systemd notification of the daemons, as processes with real sockets.

SIGHUP while clients send through the proxy: every mail gets 250 and arrives, the new
settings (another upstream) take effect, nothing is dropped; a broken configuration at a
reload is refused and the proxy keeps serving; settings that take a restart are said so.
``NOTIFY_SOCKET`` is a real unix datagram socket: READY=1 only once the socket accepts,
RELOADING=1/READY=1 around a reload, STOPPING=1 at the end, for the proxy and the milter.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from replytrack.store.sqlite import SQLiteStore
from tests.conftest import free_port
from tests.support.env import clean_environ
from tests.support.install import replytrack_init
from tests.support.upstream import RecordingUpstream, upstream  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(240)

MAIL_FROM = "sales@vendor.example"


def wait_until(predicate: Callable[[], bool], timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class NotifySocket:
    """What systemd listens on for sd_notify: a unix datagram socket (short path: the
    limit for a socket path is 108 bytes)."""

    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="rt-notify-")
        self.path = os.path.join(self.directory, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.received: list[str] = []

    def states(self) -> list[str]:
        """Every line received so far (STATUS= lines left out)."""
        with contextlib.suppress(TimeoutError):
            while True:
                self.received.extend(self.sock.recv(4096).decode().splitlines())
        return [s for s in self.received if not s.startswith(("STATUS=", "MONOTONIC_USEC="))]

    def wait_for(self, count: int, what: str) -> list[str]:
        wait_until(lambda: self.states().count(what) >= count, what=f"{count} x {what}")
        return self.states()

    def close(self) -> None:
        self.sock.close()
        shutil.rmtree(self.directory, ignore_errors=True)


class Proxy:
    """``replytrack --config FILE proxy`` with its settings in a real config file."""

    def __init__(self, tmp_path: Path, upstream: str, *, workers: int, **env: str) -> None:
        self.tmp_path = tmp_path
        self.port = free_port()
        self.config = tmp_path / "replytrack.toml"
        self.log = tmp_path / "proxy.log"
        self.db = tmp_path / "replytrack.db"
        self.workers = workers
        self.write(upstream=upstream)
        environ = clean_environ(**env)
        replytrack_init(env={**environ, "REPLYTRACK_CONFIG": str(self.config)}, cwd=tmp_path)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "replytrack", "--config", str(self.config), "proxy"],
                cwd=tmp_path,
                env=environ,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )

    def write(self, *, upstream: str, listen: str = "", extra: str = "") -> None:
        self.config.write_text(
            f'db = "{self.tmp_path / "replytrack.db"}"\n'
            'domain = "track.example.com"\n'
            "[proxy]\n"
            f'listen = "{listen or f"127.0.0.1:{self.port}"}"\n'
            f'upstream = "{upstream}"\n'
            f"workers = {self.workers}\n" + extra
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def hangup_and_wait(self, said: str, count: int) -> None:
        """SIGHUP, then wait until the log says ``said`` for the ``count``-th time."""
        self.proc.send_signal(signal.SIGHUP)
        wait_until(
            lambda: self.text().count(said) >= count or self.proc.poll() is not None,
            what=said,
        )
        assert self.proc.poll() is None, self.text()

    def send(self, marker: str) -> None:
        with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as client:
            client.sendmail(MAIL_FROM, ["prospect@example.net"], mail(marker))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode


def mail(marker: str) -> bytes:
    return (
        f"Message-ID: <{marker}@client.test>\r\nX-ReplyTrack-Campaign: reload\r\n"
        f"Subject: {marker}\r\n\r\n{marker}\r\n"
    ).encode()


@pytest.fixture
def second_upstream() -> Iterator[RecordingUpstream]:
    with RecordingUpstream() as other:
        yield other


@pytest.fixture
def proxies() -> Iterator[list[Proxy]]:
    started: list[Proxy] = []
    yield started
    for proxy in started:
        proxy.stop()


class Load:
    """Clients sending through the proxy until stopped: several one mail per session, one
    keeping its session open for many mails. Records every outcome."""

    def __init__(self, port: int, clients: int = 6) -> None:
        self.port = port
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.outcomes: dict[str, str] = {}
        self.threads = [
            threading.Thread(target=self._one_per_session, args=(n,)) for n in range(clients)
        ]
        self.threads.append(threading.Thread(target=self._one_session))

    def _note(self, marker: str, outcome: str) -> None:
        with self.lock:
            self.outcomes[marker] = outcome

    def _one_per_session(self, client: int) -> None:
        n = 0
        while not self.stopping.is_set():
            n += 1
            marker = f"c{client}m{n}"
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=60) as smtp:
                    smtp.sendmail(MAIL_FROM, [f"p{client}@example.net"], mail(marker))
                self._note(marker, "250")
            except (smtplib.SMTPException, OSError) as exc:
                self._note(marker, repr(exc))

    def _one_session(self) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", self.port, timeout=60) as smtp:
                n = 0
                while not self.stopping.is_set():
                    n += 1
                    marker = f"long{n}"
                    try:
                        smtp.sendmail(MAIL_FROM, ["long@example.net"], mail(marker))
                        self._note(marker, "250")
                    except smtplib.SMTPException as exc:
                        self._note(marker, repr(exc))
                    time.sleep(0.02)
        except (smtplib.SMTPException, OSError) as exc:
            self._note("long-session", repr(exc))

    def sent(self) -> int:
        with self.lock:
            return len(self.outcomes)

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(90)


def received_markers(*upstreams: RecordingUpstream) -> list[str]:
    found = []
    for up in upstreams:
        for arrival in up.received:
            for line in arrival.data.split(b"\r\n"):
                if line.startswith(b"Subject: "):
                    found.append(line[9:].decode())
    return found


@pytest.mark.parametrize(
    ("workers", "said"),
    [
        (2, "reloaded: every worker uses the new configuration"),
        (1, "reloaded: new sessions use the new configuration"),
    ],
)
def test_sighup_under_load_drops_no_session(
    tmp_path: Path,
    upstream: RecordingUpstream,
    second_upstream: RecordingUpstream,
    proxies: list[Proxy],
    workers: int,
    said: str,
) -> None:
    proxy = Proxy(tmp_path, upstream.address, workers=workers)
    proxies.append(proxy)
    wait_until(lambda: "proxy listening on" in proxy.text(), what="start")
    wait_until(lambda: _connects(proxy.port), what="listening")
    with Load(proxy.port) as load:
        for n in range(1, 4):
            wanted = load.sent() + 10
            wait_until(lambda: load.sent() >= wanted, what="mails before the reload")  # noqa: B023
            # Each reload moves relaying to the other upstream.
            target = second_upstream if n % 2 else upstream
            proxy.write(upstream=target.address)
            proxy.hangup_and_wait(said, n)
        before = load.sent()
        wait_until(lambda: load.sent() >= before + 10, what="mails after the last reload")
    outcomes = load.outcomes
    assert {o for o in outcomes.values()} == {"250"}, [o for o in outcomes.values() if o != "250"]
    assert "long-session" not in outcomes
    # Every mail that got 250 arrived, once, and is recorded as relayed.
    arrived = received_markers(upstream, second_upstream)
    assert sorted(arrived) == sorted(outcomes)
    store = SQLiteStore(proxy.db)
    try:
        assert {m.status for m in store.messages(limit=100_000)} == {"relayed"}
        assert len(store.messages(limit=100_000)) == len(outcomes)
    finally:
        store.close_all()
    # The new upstream took mail (the reload took effect) and the last mails went there.
    assert second_upstream.received
    proxy.send("after-reloads")
    assert "after-reloads" in received_markers(second_upstream)
    assert proxy.stop() == 0, proxy.text()
    assert "Traceback" not in proxy.text()


def _connects(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def test_a_broken_config_at_reload_is_refused_and_the_proxy_serves_on(
    tmp_path: Path, upstream: RecordingUpstream, proxies: list[Proxy]
) -> None:
    proxy = Proxy(tmp_path, upstream.address, workers=2)
    proxies.append(proxy)
    wait_until(lambda: "accept mail" in proxy.text(), what="start")
    proxy.config.write_text("[proxy\nlisten = ")
    proxy.hangup_and_wait("reload refused", 1)
    assert "cannot read config file" in proxy.text()
    # A setting that cannot work (AUTH without TLS) is refused the same way.
    proxy.write(upstream=upstream.address, extra=f'auth_file = "{tmp_path / "users"}"\n')
    proxy.hangup_and_wait("reload refused", 2)
    assert "proxy.auth_file needs proxy.tls_cert" in proxy.text()
    proxy.send("after-broken-reloads")
    # A new listening address takes a restart: said, and the old one serves on.
    other = free_port()
    proxy.write(upstream=upstream.address, listen=f"127.0.0.1:{other}")
    proxy.hangup_and_wait("every worker uses the new configuration", 1)
    assert "reload: proxy.listen changed" in proxy.text()
    assert "takes a restart" in proxy.text()
    proxy.send("after-listen-change")
    assert not _connects(other)
    assert received_markers(upstream) == ["after-broken-reloads", "after-listen-change"]
    assert proxy.stop() == 0, proxy.text()


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    sock = NotifySocket()
    yield sock
    sock.close()


def test_proxy_tells_systemd_ready_reloading_stopping(
    tmp_path: Path, upstream: RecordingUpstream, proxies: list[Proxy], notify_socket: NotifySocket
) -> None:
    proxy = Proxy(tmp_path, upstream.address, workers=2, NOTIFY_SOCKET=notify_socket.path)
    proxies.append(proxy)
    notify_socket.wait_for(1, "READY=1")
    # Ready means every worker accepts: mail goes through at once.
    proxy.send("at-ready")
    assert received_markers(upstream) == ["at-ready"]
    proxy.proc.send_signal(signal.SIGHUP)
    states = notify_socket.wait_for(2, "READY=1")
    assert states == ["READY=1", "RELOADING=1", "READY=1"]
    assert proxy.stop() == 0, proxy.text()
    assert notify_socket.states() == ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"]


def test_single_process_proxy_tells_systemd_ready(
    tmp_path: Path, upstream: RecordingUpstream, proxies: list[Proxy], notify_socket: NotifySocket
) -> None:
    proxy = Proxy(tmp_path, upstream.address, workers=1, NOTIFY_SOCKET=notify_socket.path)
    proxies.append(proxy)
    notify_socket.wait_for(1, "READY=1")
    proxy.send("at-ready")
    assert received_markers(upstream) == ["at-ready"]
    assert proxy.stop() == 0, proxy.text()
    assert notify_socket.states() == ["READY=1", "STOPPING=1"]
