# ruff: noqa: F811  (pytest fixtures imported from tests.support.upstream are parameters)
"""``replytrack proxy`` as a user runs it: a process that serves until SIGTERM, exits 0."""

from __future__ import annotations

import json
import os
import signal
import smtplib
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from replytrack.notify import verify_signature
from replytrack.store import Event, StatusChange
from replytrack.store.sqlite import SQLiteStore
from tests.conftest import free_port
from tests.support.install import replytrack_init
from tests.support.upstream import RecordingUpstream, upstream  # noqa: F401  (fixture)
from tests.test_notify import SECRET, Receiver, receiver  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(90)


def wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(process.communicate()[1].decode())
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("proxy did not start")


def run_proxy(
    tmp_path: Path, *args: str, init: bool = True, **env: str
) -> subprocess.Popen[bytes]:
    environ = {
        **os.environ,
        "REPLYTRACK_DB": str(tmp_path / "replytrack.db"),
        "REPLYTRACK_DOMAIN": "track.example.com",
        **env,
    }
    if init:
        replytrack_init(env=environ, cwd=tmp_path)
    return subprocess.Popen(
        [sys.executable, "-m", "replytrack", "proxy", *args],
        cwd=tmp_path,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_proxy_command_relays_counts_and_stops_on_sigterm(
    tmp_path: Path, upstream: RecordingUpstream
) -> None:
    port, metrics_port = free_port(), free_port()
    process = run_proxy(
        tmp_path,
        "--listen",
        f"127.0.0.1:{port}",
        "--upstream",
        upstream.address,
        REPLYTRACK_PROXY_METRICS_LISTEN=f"127.0.0.1:{metrics_port}",
    )
    try:
        wait_for_port(port, process)
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.sendmail(
                "a@example.org",
                ["b@example.net"],
                b"Message-ID: <c@x.test>\r\nX-ReplyTrack-Campaign: q1\r\n\r\nbody\r\n",
            )
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics") as response:
            exposed = response.read().decode()
        assert 'replytrack_proxy_mails_total{result="relayed"} 1.0' in exposed
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err.decode()
    log = err.decode()
    [line] = [x for x in log.splitlines() if "result=relayed" in x]
    assert "campaign=q1" in line and "original=<c@x.test>" in line
    assert "Traceback" not in log
    [got] = upstream.received
    store = SQLiteStore(tmp_path / "replytrack.db")
    [msg] = store.messages()
    assert f"<{msg.message_id}>".encode() in got.data
    assert msg.campaign == "q1" and msg.status == "relayed"
    store.close_all()


def test_proxy_command_refuses_an_open_relay(tmp_path: Path) -> None:
    process = run_proxy(tmp_path, "--listen", "0.0.0.0:0", init=False)
    _, err = process.communicate(timeout=30)
    assert process.returncode != 0
    assert "open relay" in err.decode() and "Traceback" not in err.decode()
    assert not (tmp_path / "replytrack.db").exists()


def test_proxy_command_reports_a_busy_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = run_proxy(tmp_path, "--listen", f"127.0.0.1:{port}")
        _, err = process.communicate(timeout=30)
    assert process.returncode != 0
    assert "cannot listen" in err.decode() and "Traceback" not in err.decode()


def test_proxy_command_notifies_a_suppression(
    tmp_path: Path, upstream: RecordingUpstream, receiver: Receiver
) -> None:
    store = SQLiteStore(tmp_path / "replytrack.db")
    store.record_event(
        Event(kind="stopped", created_at=time.time(), campaign="q1", recipient="b@example.net"),
        set_status=[StatusChange("q1", "b@example.net", "stopped", "asked by phone")],
        notify=False,
    )
    port = free_port()
    process = run_proxy(
        tmp_path,
        "--listen",
        f"127.0.0.1:{port}",
        "--upstream",
        upstream.address,
        REPLYTRACK_NOTIFY_WEBHOOKS=receiver.url,
        REPLYTRACK_NOTIFY_SECRET=SECRET,
    )
    try:
        wait_for_port(port, process)
        mail = b"Message-ID: <c@x.test>\r\nX-ReplyTrack-Campaign: q1\r\n\r\nbody\r\n"
        with smtplib.SMTP("127.0.0.1", port) as client, pytest.raises(smtplib.SMTPDataError) as err:
            client.sendmail("a@example.org", ["b@example.net"], mail)
        assert err.value.smtp_code == 550
        deadline = time.monotonic() + 30
        while not receiver.requests and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr.decode()
    assert upstream.received == []
    (got,) = receiver.requests
    assert verify_signature(SECRET, got.timestamp, got.body, got.signature)
    doc = json.loads(got.body)
    assert (doc["kind"], doc["campaign"], doc["recipient"]) == ("suppressed", "q1", "b@example.net")
    assert store.outbox_counts()["delivered"] == 1
    store.close_all()
