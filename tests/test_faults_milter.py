"""The milter fails open in a real Postfix: killed while Postfix delivers, mail is still
delivered (``default_action=accept``); a verdict the store could not take is journaled and,
after the milter is killed and restarted, replayed; spoofed ``X-ReplyTrack`` headers from
outside never reach the mailbox.

Each test runs ``replytrack milter`` as a subprocess (so SIGKILL is a real crash) beside a
private loopback Postfix delivering to a Maildir.
"""

from __future__ import annotations

import os
import signal
import smtplib
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from email.parser import BytesHeaderParser
from pathlib import Path

import pytest

from replytrack import tokens
from replytrack.store.sqlite import SQLiteStore
from replytrack.tokens import Keyring
from tests.support.faults import free_port, hold_exclusive_lock, wait_port
from tests.support.milter_records import record_sent
from tests.support.postfix import PostfixLab

pytestmark = [pytest.mark.postfix, pytest.mark.timeout(150)]

DOMAIN = "mail.test"


class MilterProcess:
    """``replytrack milter`` on a loopback port with its own store, key file and journal."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.db = workdir / "rt.db"
        self.journal = workdir / "rt.journal"
        self.secret = workdir / "rt.secret"
        self.log = workdir / "milter.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> MilterProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("REPLYTRACK_")}
        env.update(
            REPLYTRACK_DB=str(self.db),
            REPLYTRACK_DOMAIN=DOMAIN,
            REPLYTRACK_SECRET_FILE=str(self.secret),
            REPLYTRACK_MILTER_JOURNAL=str(self.journal),
        )
        cmd = [sys.executable, "-m", "replytrack", "milter"]
        cmd += ["--socket", f"inet:{self.port}@127.0.0.1"]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=log, env=env, start_new_session=True
            )
        assert wait_port(self.port, timeout=30), self.log_tail()
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@pytest.fixture
def milter(tmp_path: Path) -> Iterator[tuple[MilterProcess, str]]:
    """A milter whose store holds one recorded campaign mail; yields it and that mail's ID."""
    proc = MilterProcess(tmp_path)
    keyring = Keyring.generate()
    tokens.write_keyring(proc.secret, keyring)
    store = SQLiteStore(proc.db)
    ours = record_sent(
        store,
        keyring,
        to=["prospect@prospect.example"],
        campaign="camp-1",
        sender="sales@sender.example",
        domain=DOMAIN,
    )
    store.close_all()
    proc.start()
    yield proc, ours
    proc.stop()


@pytest.fixture
def lab(postfix_lab: Callable[..., PostfixLab], milter: tuple[MilterProcess, str]) -> PostfixLab:
    return postfix_lab(milter=f"inet:127.0.0.1:{milter[0].port}", milter_default_action="accept")


PROSPECT = "prospect@prospect.example"
STRANGER = "someone@elsewhere.example"


def mail(
    marker: str, *, in_reply_to: str | None = None, extra: str = "", sender: str = PROSPECT
) -> bytes:
    lines = [
        f"From: <{sender}>",
        "To: Sales <sales@example.test>",
        f"Subject: {marker}",
        f"Message-ID: <{marker}@prospect.example>",
        f"X-Test-Marker: {marker}",
    ]
    if in_reply_to:
        lines += [f"In-Reply-To: <{in_reply_to}>", f"References: <{in_reply_to}>"]
    if extra:
        lines.append(extra)
    return ("\r\n".join(lines) + "\r\n\r\nYes, let us talk on Tuesday.\r\n").encode()


def send(lab: PostfixLab, data: bytes, sender: str = PROSPECT) -> int:
    """One mail into Postfix; its final reply code."""
    with smtplib.SMTP("127.0.0.1", lab.smtp_port, local_hostname="mx.prospect.example") as c:
        c.ehlo("mx.prospect.example")
        try:
            c.sendmail(sender, ["sales@example.test"], data)
        except smtplib.SMTPResponseException as exc:
            return exc.smtp_code
    return 250


def delivered(lab: PostfixLab) -> dict[str, bytes]:
    parser = BytesHeaderParser()
    return {parser.parsebytes(m).get("X-Test-Marker", ""): m for m in lab.maildir()}


def reply_events(db: Path) -> list[object]:
    store = SQLiteStore(db)
    try:
        return store.events(kind="reply")
    finally:
        store.close_all()


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def test_milter_killed_while_postfix_delivers(
    lab: PostfixLab, milter: tuple[MilterProcess, str]
) -> None:
    proc, ours = milter
    codes: dict[str, int] = {}

    def sender() -> None:
        for i in range(12):
            # Strangers' mail: nothing to match, the milter only classifies it.
            codes[f"m{i}"] = send(lab, mail(f"m{i}", sender=STRANGER), sender=STRANGER)
            time.sleep(0.05)

    thread = threading.Thread(target=sender)
    thread.start()
    assert wait_until(lambda: len(codes) >= 4, 30)
    proc.kill()  # mid-stream: some mails in the middle of the milter conversation
    thread.join(60)
    assert codes == {f"m{i}": 250 for i in range(12)}, (codes, lab.log_tail())
    lab.wait_for_mail(12, timeout=40)
    assert set(delivered(lab)) >= {f"m{i}" for i in range(12)}
    # Restarted, the milter does its job again.
    proc.start()
    assert send(lab, mail("after", in_reply_to=ours)) == 250
    lab.wait_for_mail(13, timeout=40)
    assert wait_until(lambda: len(reply_events(proc.db)) == 1, 20), proc.log_tail()


def test_journaled_verdict_replayed_after_kill_and_restart(
    lab: PostfixLab, milter: tuple[MilterProcess, str]
) -> None:
    proc, ours = milter
    with hold_exclusive_lock(proc.db):
        # The store cannot take the verdict: the mail is delivered anyway and journaled.
        assert send(lab, mail("locked-reply", in_reply_to=ours)) == 250
        lab.wait_for_mail(1, timeout=40)
        assert wait_until(lambda: proc.journal.exists() and proc.journal.stat().st_size, 10), (
            proc.log_tail()
        )
        proc.kill()  # before any replay could succeed
    assert reply_events(proc.db) == []
    proc.start()
    assert wait_until(lambda: len(reply_events(proc.db)) == 1, 30), proc.log_tail()
    [event] = reply_events(proc.db)
    assert event.message_id == ours  # type: ignore[attr-defined]
    store = SQLiteStore(proc.db)
    try:
        [enrollment] = store.enrollments(campaign="camp-1")
        assert enrollment.status == "stopped"
    finally:
        store.close_all()
    # Replayed once: a second restart does not record it again.
    proc.stop()
    proc.start()
    time.sleep(1.0)
    assert len(reply_events(proc.db)) == 1


def test_spoofed_x_replytrack_never_reaches_the_mailbox(
    lab: PostfixLab, milter: tuple[MilterProcess, str]
) -> None:
    _, ours = milter
    spoof = "X-ReplyTrack: reply; campaign=evil; match=in-reply-to"
    unrelated = mail("unrelated-spoof", extra=spoof, sender=STRANGER)
    assert send(lab, unrelated, sender=STRANGER) == 250
    assert send(lab, mail("reply-spoof", in_reply_to=ours, extra=spoof)) == 250
    lab.wait_for_mail(2, timeout=40)
    parser = BytesHeaderParser()
    got = {k: parser.parsebytes(v).get_all("X-ReplyTrack") or [] for k, v in delivered(lab).items()}
    assert got["unrelated-spoof"] == [], got
    [flag] = got["reply-spoof"]
    assert "campaign=camp-1" in flag and "evil" not in flag, got
