"""The notification sender against a real HTTP receiver on loopback."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from replytrack import metrics
from replytrack.config import Config
from replytrack.notify import Sender, backoff, start_sender_thread
from replytrack.store import Event, StatusChange
from replytrack.store.sqlite import SQLiteStore
from tests.conftest import free_port
from tests.support.env import clean_environ

SECRET = "s3cret-for-tests"
REPLYTRACK = Path(sys.executable).with_name("replytrack")


@dataclass
class Received:
    event_id: str
    timestamp: str
    signature: str
    body: bytes
    status: int
    authorization: str = ""


@dataclass
class Receiver:
    """A webhook endpoint: answers with the scripted statuses in turn, then 200."""

    url: str
    statuses: list[int] = field(default_factory=list)
    requests: list[Received] = field(default_factory=list)
    # When set, the request with this index (0-based) blocks until ``release`` is set.
    hang_on: int | None = None
    arrived: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ok_ids(self) -> list[int]:
        with self.lock:
            return [json.loads(r.body)["id"] for r in self.requests if r.status == 200]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    box: dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            rec = box["r"]
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with rec.lock:
                index = len(rec.requests)
                status = rec.statuses.pop(0) if rec.statuses else 200
                rec.requests.append(
                    Received(
                        self.headers.get("X-ReplyTrack-Event-Id", ""),
                        self.headers.get("X-ReplyTrack-Timestamp", ""),
                        self.headers.get("X-ReplyTrack-Signature", ""),
                        body,
                        status,
                        self.headers.get("Authorization", ""),
                    )
                )
            if index == rec.hang_on:
                rec.arrived.set()
                rec.release.wait(30)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    box["r"] = Receiver(url=f"http://127.0.0.1:{server.server_port}/hook")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield box["r"]
    box["r"].release.set()
    server.shutdown()
    server.server_close()


def _config(tmp_path: Path, *urls: str, **more: object) -> Config:
    values: dict[str, object] = {
        "db": str(tmp_path / "replytrack.db"),
        "domain": "mail.example.com",
        "notify_webhooks": list(urls),
        "notify_secret": SECRET,
        "notify_timeout": 5.0,
    }
    values.update(more)
    return Config(**values)  # type: ignore[arg-type]


def _reply(store: SQLiteStore, n: int = 1) -> int:
    event_id = store.record_event(
        Event(
            kind="reply",
            created_at=1_790_000_000.0 + n,
            campaign="spring",
            message_id=f"m{n}@mail.example.com",
            inbound_message_id=f"r{n}@x.org",
            sender="ann@x.org",
            recipient="ann@x.org",
            relation="original_recipient",
            evidence=("in-reply-to",),
        ),
        set_status=[StatusChange("spring", "ann@x.org", "stopped", "reply")],
    )
    assert event_id is not None
    return event_id


def _wait(condition: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_signed_event_is_delivered(
    tmp_path: Path, store: SQLiteStore, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    event_id = _reply(store)
    sender = Sender(_config(tmp_path, receiver.url), store)
    with caplog.at_level(logging.INFO, logger="replytrack.notify"):
        assert sender.deliver_due() == 1
    (got,) = receiver.requests
    # The receiver's view: the signature verifies over "<timestamp>.<body>" with the secret.
    expected = hmac.new(
        SECRET.encode(), got.timestamp.encode() + b"." + got.body, hashlib.sha256
    ).hexdigest()
    assert got.signature == f"sha256={expected}"
    assert abs(int(got.timestamp) - time.time()) < 300
    assert got.event_id == str(event_id)
    doc = json.loads(got.body)
    assert doc["id"] == event_id
    assert doc["kind"] == "reply"
    assert doc["campaign"] == "spring"
    assert doc["message_id"] == "m1@mail.example.com"
    assert doc["sender"] == "ann@x.org"
    assert doc["recipient"] == "ann@x.org"
    assert doc["relation"] == "original_recipient"
    assert doc["evidence"] == ["in-reply-to"]
    assert doc["created_at"] == "2026-09-21T14:13:21Z"
    assert store.outbox_counts() == {"pending": 0, "due": 0, "dead": 0, "delivered": 1}
    # One structured log line per attempt, with the event id and the URL host.
    (line,) = [r.getMessage() for r in caplog.records if "url_host=" in r.getMessage()]
    assert f"event={event_id}" in line and "url_host=127.0.0.1:" in line
    assert "result=delivered" in line
    assert sender.deliver_due() == 0 and len(receiver.requests) == 1


def test_url_credentials_are_split_once_when_the_sender_is_configured(
    tmp_path: Path, store: SQLiteStore, receiver: Receiver
) -> None:
    """``user:password@`` becomes an Authorization header when the sender is built, and
    every post carries it; the outbox still knows the URL as configured."""
    url = receiver.url.replace("http://", "http://hook%40crm:p%3Ass@")
    sender = Sender(_config(tmp_path, url), store)
    [hook] = sender.webhooks
    assert (hook.url, hook.target) == (url, receiver.url)
    basic = "Basic " + base64.b64encode(b"hook@crm:p:ss").decode("ascii")
    assert hook.auth == {"Authorization": basic}
    _reply(store, 1)
    _reply(store, 2)
    assert sender.deliver_due() == 2
    assert [r.authorization for r in receiver.requests] == [basic, basic]
    assert store.outbox_counts()["delivered"] == 2
    assert sender.deliver_due() == 0 and len(receiver.requests) == 2


def test_retry_after_500_delivers_once(
    tmp_path: Path, store: SQLiteStore, receiver: Receiver
) -> None:
    receiver.statuses = [500]
    event_id = _reply(store)
    sender = start_sender_thread(
        _config(tmp_path, receiver.url), store, retry_base=0.05, retry_cap=0.1, poll_interval=0.05
    )
    assert sender is not None
    try:
        _wait(lambda: store.outbox_counts()["delivered"] == 1)
    finally:
        sender.stop(timeout=10)
    assert [r.status for r in receiver.requests] == [500, 200]
    assert receiver.ok_ids() == [event_id]
    assert {r.event_id for r in receiver.requests} == {str(event_id)}


def test_each_url_gets_it_once_even_when_another_fails(
    tmp_path: Path, store: SQLiteStore, receiver: Receiver
) -> None:
    # A second URL that refuses connections: the first one must not be posted again.
    dead_url = f"http://127.0.0.1:{free_port()}/hook"
    _reply(store)
    sender = Sender(_config(tmp_path, receiver.url, dead_url, notify_max_attempts=3), store,
                    retry_base=0.01, retry_cap=0.01)  # fmt: skip
    for _ in range(3):
        sender.deliver_due()
        time.sleep(0.02)
    assert len(receiver.requests) == 1
    counts = store.outbox_counts()
    assert counts["dead"] == 1 and counts["pending"] == 0


def test_gives_up_after_max_attempts(
    tmp_path: Path, store: SQLiteStore, receiver: Receiver
) -> None:
    receiver.statuses = [500] * 10
    _reply(store)
    dead_before = metrics.NOTIFY_DEAD._value.get()
    sender = Sender(
        _config(tmp_path, receiver.url, notify_max_attempts=3),
        store,
        retry_base=0.01,
        retry_cap=0.01,
    )
    for _ in range(5):
        sender.deliver_due()
        time.sleep(0.02)
    assert len(receiver.requests) == 3
    assert store.outbox_counts()["dead"] == 1
    assert metrics.NOTIFY_DEAD._value.get() == dead_before + 1


def test_lease_keeps_two_senders_apart(store: SQLiteStore) -> None:
    _reply(store, 1)
    _reply(store, 2)
    now = time.time()
    a = store.claim_outbox("a", now=now, lease_seconds=30, limit=10)
    assert len(a) == 2
    assert store.claim_outbox("b", now=now, lease_seconds=30, limit=10) == []
    # A sender that died loses its lease when it runs out.
    b = store.claim_outbox("b", now=now + 31, lease_seconds=30, limit=10)
    assert sorted(i.id for i in b) == sorted(i.id for i in a)
    # The late finish of the dead sender does not undo b's lease.
    store.finish_outbox_attempt(a[0].id, "a", now=now, delivered=False, next_attempt_at=now)
    assert store.claim_outbox("c", now=now + 32, lease_seconds=30, limit=10) == []


def test_backoff_grows_with_jitter_and_cap() -> None:
    waits = [backoff(n, base=10, cap=3600) for n in range(1, 12)]
    assert 5 <= waits[0] <= 10
    assert 40 <= waits[3] <= 80
    assert all(w <= 3600 for w in waits)
    assert len({backoff(3, base=10, cap=3600) for _ in range(20)}) > 1


def test_no_webhooks_no_thread(tmp_path: Path, store: SQLiteStore) -> None:
    assert start_sender_thread(_config(tmp_path), store) is None


@pytest.mark.timeout(120)
def test_killed_sender_loses_nothing(
    tmp_path: Path, store: SQLiteStore, receiver: Receiver
) -> None:
    ids = [_reply(store, n) for n in range(1, 6)]
    receiver.hang_on = 2  # the third POST blocks: the sender is killed while it waits
    env = clean_environ()
    env.update(
        REPLYTRACK_DB=str(tmp_path / "replytrack.db"),
        REPLYTRACK_DOMAIN="mail.example.com",
        REPLYTRACK_NOTIFY_WEBHOOKS=receiver.url,
        REPLYTRACK_NOTIFY_SECRET=SECRET,
        # The lease of a killed sender lasts timeout + 5 s; keep the test short.
        REPLYTRACK_NOTIFY_TIMEOUT="2",
    )
    cmd = [str(REPLYTRACK), "notify", "--poll", "0.1", "--retry-base", "0.1", "--retry-cap", "0.2"]
    first = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert receiver.arrived.wait(60), "the sender never reached the third event"
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    receiver.release.set()
    assert store.outbox_counts()["delivered"] < 5

    second = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        _wait(lambda: store.outbox_counts()["delivered"] == 5, timeout=60)
    finally:
        second.terminate()
        _, errors = second.communicate(timeout=10)
    assert second.returncode == 0, errors
    # At least once: every event arrived with a 200; the one in flight may arrive twice.
    assert set(receiver.ok_ids()) == set(ids)
    assert "url_host=127.0.0.1" in errors


def test_redirect_is_not_delivery(tmp_path: Path, store: SQLiteStore, receiver: Receiver) -> None:
    # urllib would follow a 302 with a body-less GET; the event must be posted again instead.
    receiver.statuses = [302]
    _reply(store)
    sender = Sender(_config(tmp_path, receiver.url), store, retry_base=0.01, retry_cap=0.01)
    sender.deliver_due()
    assert store.outbox_counts()["delivered"] == 0
    time.sleep(0.02)
    sender.deliver_due()
    assert [r.status for r in receiver.requests] == [302, 200]
    assert store.outbox_counts()["delivered"] == 1


def test_two_sender_threads_share_the_outbox(
    tmp_path: Path, store: SQLiteStore, receiver: Receiver
) -> None:
    # As when the milter and the proxy both run a sender on one store: no row twice.
    ids = [_reply(store, n) for n in range(1, 31)]
    config = _config(tmp_path, receiver.url)
    senders = [start_sender_thread(config, store, poll_interval=0.02) for _ in range(2)]
    try:
        _wait(lambda: store.outbox_counts()["delivered"] == 30)
    finally:
        for sender in senders:
            assert sender is not None
            sender.stop(timeout=10)
    assert sorted(receiver.ok_ids()) == sorted(ids)
    assert len(receiver.requests) == 30


def test_retry_dead_gives_dead_events_a_fresh_start(
    tmp_path: Path, store: SQLiteStore, receiver: Receiver
) -> None:
    from click.testing import CliRunner

    from replytrack.cli import cli

    receiver.statuses = [500]
    _reply(store)
    Sender(
        _config(tmp_path, receiver.url, notify_max_attempts=1), store, retry_base=0.01
    ).deliver_due()
    assert store.outbox_counts()["dead"] == 1
    env = {
        "REPLYTRACK_DB": str(tmp_path / "replytrack.db"),
        "REPLYTRACK_NOTIFY_WEBHOOKS": receiver.url,
        "REPLYTRACK_NOTIFY_SECRET": SECRET,
    }
    done = CliRunner().invoke(cli, ["notify", "--once", "--retry-dead"], env=env)
    assert done.exit_code == 0, done.output
    assert "retrying 1 dead event(s)" in done.output
    counts = store.outbox_counts()
    assert counts["dead"] == 0 and counts["delivered"] == 1
    assert receiver.ok_ids() != []
