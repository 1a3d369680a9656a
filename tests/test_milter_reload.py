"""``replytrack milter`` reloads on SIGHUP while serving and tells systemd how it is doing.

libmilter would take SIGHUP as a stop; here it re-reads the configuration: a reply that
arrives through a real Postfix after the reload is judged with the new stop scope. A broken
configuration at a reload is refused and the milter serves on. ``NOTIFY_SOCKET`` is a real
unix datagram socket: READY=1 once the milter socket accepts, RELOADING=1/READY=1 around a
reload, STOPPING=1 at SIGTERM.
"""

from __future__ import annotations

import signal
import smtplib
import subprocess
from collections.abc import Callable, Iterator
from email.parser import BytesHeaderParser
from pathlib import Path

import pytest

from replytrack.store.sqlite import SQLiteStore
from replytrack.tokens import Keyring
from tests.support.milter_process import MilterProcess
from tests.support.milter_records import record_sent
from tests.support.postfix import PostfixLab
from tests.test_reload import NotifySocket, wait_until

pytestmark = pytest.mark.timeout(180)

DOMAIN = "mail.test"
ALICE = "alice@prospect.example"
BOB = "bob@prospect.example"


class Milter(MilterProcess):
    """The milter with two mails of one campaign to two people at one company (separate
    threads) recorded, and systemd's notify socket."""

    def __init__(self, tmp_path: Path, notify: NotifySocket) -> None:
        self.tmp_path = tmp_path
        sent: dict[str, str] = {}

        def fill(store: SQLiteStore, keyring: Keyring) -> None:
            sent[ALICE] = record_sent(store, keyring, to=[ALICE], campaign="camp-1", domain=DOMAIN)
            record_sent(store, keyring, to=[BOB], campaign="camp-1", domain=DOMAIN)

        super().__init__(tmp_path, domain=DOMAIN, env={"NOTIFY_SOCKET": notify.path}, fill=fill)
        self.to_alice = sent[ALICE]

    def status(self, recipient: str) -> str:
        store = SQLiteStore(self.db)
        try:
            [enrollment] = store.enrollments(campaign="camp-1", recipient=recipient)
            return enrollment.status
        finally:
            store.close_all()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    sock = NotifySocket()
    yield sock
    sock.close()


@pytest.fixture
def milter(tmp_path: Path, notify_socket: NotifySocket) -> Iterator[Milter]:
    running = Milter(tmp_path, notify_socket)
    yield running
    running.stop()


def reply_from_alice(lab: PostfixLab, in_reply_to: str) -> None:
    data = (
        f"From: <{ALICE}>\r\nTo: <sales@example.test>\r\nSubject: Re: Hello\r\n"
        f"Message-ID: <reply-1@prospect.example>\r\nIn-Reply-To: <{in_reply_to}>\r\n"
        f"References: <{in_reply_to}>\r\n\r\nYes, let us talk on Tuesday.\r\n"
    ).encode()
    with smtplib.SMTP("127.0.0.1", lab.smtp_port, local_hostname="mx.prospect.example") as c:
        c.sendmail(ALICE, ["sales@example.test"], data)


@pytest.mark.postfix
def test_sighup_changes_the_stop_scope_while_serving(
    milter: Milter,
    notify_socket: NotifySocket,
    postfix_lab: Callable[..., PostfixLab],
) -> None:
    notify_socket.wait_for(1, "READY=1")
    # Ready means listening: Postfix, started after us, finds the socket.
    assert milter.accepts()
    lab = postfix_lab(milter=f"inet:127.0.0.1:{milter.port}", milter_default_action="accept")

    # A broken file is refused; the milter serves on with what it had.
    milter.config.write_text(milter.base + 'stop_scope = "everyone"\n')
    milter.proc.send_signal(signal.SIGHUP)
    notify_socket.wait_for(2, "READY=1")
    assert "reload refused" in milter.text() and "milter.stop_scope" in milter.text()
    # Stopping the whole company at a reply, from now on.
    milter.config.write_text(milter.base + 'stop_scope = "domain"\n')
    milter.proc.send_signal(signal.SIGHUP)
    assert notify_socket.wait_for(3, "READY=1") == [
        "READY=1",
        "RELOADING=1",
        "READY=1",
        "RELOADING=1",
        "READY=1",
    ]
    assert "changed: milter_stop_scope" in milter.text()
    assert milter.proc.poll() is None, milter.text()

    reply_from_alice(lab, milter.to_alice)
    lab.wait_for_mail(1, timeout=60)
    [delivered] = lab.maildir()
    header = BytesHeaderParser().parsebytes(delivered).get("X-ReplyTrack", "")
    assert header.startswith("reply; campaign=camp-1"), header
    wait_until(lambda: milter.status(ALICE) == "stopped", what="alice stopped")
    # Bob never replied and was on another thread: only the domain scope stops him.
    assert milter.status(BOB) == "stopped"

    assert milter.stop() == 0, milter.text()
    assert notify_socket.states()[-1] == "STOPPING=1"
    assert "Traceback" not in milter.text()
