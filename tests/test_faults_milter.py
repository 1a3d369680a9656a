"""The milter fails open in a real Postfix: killed while Postfix delivers, mail is still
delivered (``default_action=accept``); a verdict the store could not take is journaled and,
after the milter is killed and restarted, replayed; when the store's filesystem turns
read-only under it, the reply is still flagged and its verdict kept in the second journal
location, or in the log when no location is writable, and replayed from there; spoofed
``X-ReplyTrack`` headers from outside never reach the mailbox.

Each test runs ``replytrack milter`` as a subprocess (so SIGKILL is a real crash) beside a
private loopback Postfix delivering to a Maildir.
"""

from __future__ import annotations

import contextlib
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
from replytrack.milter.journal import LOG_MARKER
from replytrack.store.sqlite import SQLiteStore
from replytrack.tokens import Keyring
from tests.support.faults import free_port, hold_exclusive_lock, set_immutable, wait_port
from tests.support.milter_records import record_sent
from tests.support.postfix import PostfixLab

pytestmark = [pytest.mark.postfix, pytest.mark.timeout(150)]

DOMAIN = "mail.test"


class MilterProcess:
    """``replytrack milter`` on a loopback port with its own store, key file and journal."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        # The journal beside the store, as it once was by default: one filesystem for both.
        self.store_dir = workdir / "store"
        self.store_dir.mkdir(exist_ok=True)
        self.db = self.store_dir / "rt.db"
        self.journal = self.store_dir / "rt.journal"
        self.fallback = workdir / "run" / "journal"
        self.secret = workdir / "rt.secret"
        self.log = workdir / "milter.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("REPLYTRACK_")}
        env.update(
            REPLYTRACK_CONFIG="/dev/null",
            REPLYTRACK_DB=str(self.db),
            REPLYTRACK_DOMAIN=DOMAIN,
            REPLYTRACK_SECRET_FILE=str(self.secret),
            REPLYTRACK_MILTER_JOURNAL=str(self.journal),
            REPLYTRACK_MILTER_JOURNAL_FALLBACK=str(self.fallback),
        )
        return env

    def start(self) -> MilterProcess:
        cmd = [sys.executable, "-m", "replytrack", "milter"]
        cmd += ["--socket", f"inet:{self.port}@127.0.0.1"]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=log, env=self.env(), start_new_session=True
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


@contextlib.contextmanager
def read_only_store(proc: MilterProcess, *more: Path) -> Iterator[None]:
    """The store's directory and files immutable (``chattr +i``: root cannot write them
    either), with ``more`` paths; skips where the filesystem does not support it.

    The ``-shm`` file stays writable: SQLite writes it through a shared mapping, and an
    immutable one kills the writing process with SIGBUS (a crash, not the fault we test).
    """
    paths = [proc.store_dir, proc.db, proc.db.with_name("rt.db-wal"), proc.journal, *more]
    if not set_immutable(paths, True):
        set_immutable(paths, False)
        pytest.skip("chattr +i is not supported on this filesystem")
    try:
        yield
    finally:
        set_immutable(paths, False)


def flags(lab: PostfixLab, marker: str) -> list[str]:
    parser = BytesHeaderParser()
    return parser.parsebytes(delivered(lab)[marker]).get_all("X-ReplyTrack") or []


def stopped(db: Path) -> bool:
    store = SQLiteStore(db)
    try:
        [enrollment] = store.enrollments(campaign="camp-1")
        return enrollment.status == "stopped"
    finally:
        store.close_all()


def test_read_only_store_filesystem_journals_elsewhere_then_replays(
    lab: PostfixLab, milter: tuple[MilterProcess, str]
) -> None:
    proc, ours = milter
    # A first mail: the milter's store connection is open before the filesystem turns.
    assert send(lab, mail("warm-up", sender=STRANGER), sender=STRANGER) == 250
    lab.wait_for_mail(1, timeout=40)
    with read_only_store(proc):
        assert send(lab, mail("ro-reply", in_reply_to=ours)) == 250
        lab.wait_for_mail(2, timeout=40)
        # The match was read: the reply is flagged although it could not be recorded.
        assert flags(lab, "ro-reply") == ["reply; campaign=camp-1; match=in-reply-to"]
        assert wait_until(lambda: proc.fallback.exists(), 10), proc.log_tail()
        assert not proc.journal.exists()
        assert "journaled for replay in " + str(proc.fallback) in proc.log.read_text()
    # Access is back: the milter replays the second location by itself.
    assert wait_until(lambda: len(reply_events(proc.db)) == 1, 30), proc.log_tail()
    assert stopped(proc.db)
    assert wait_until(lambda: not proc.fallback.exists(), 10)
    assert "verdict lost" not in proc.log.read_text()


def test_no_journal_location_writable_log_line_replayed_by_hand(
    lab: PostfixLab, milter: tuple[MilterProcess, str]
) -> None:
    proc, ours = milter
    assert send(lab, mail("warm-up", sender=STRANGER), sender=STRANGER) == 250
    lab.wait_for_mail(1, timeout=40)
    proc.fallback.parent.mkdir()
    with read_only_store(proc, proc.fallback.parent):
        assert send(lab, mail("logged-reply", in_reply_to=ours)) == 250
        lab.wait_for_mail(2, timeout=40)
        assert flags(lab, "logged-reply") == ["reply; campaign=camp-1; match=in-reply-to"]
        assert wait_until(lambda: LOG_MARKER in proc.log.read_text(), 10), proc.log_tail()
    proc.stop()
    assert not proc.journal.exists() and not proc.fallback.exists()
    assert reply_events(proc.db) == [] and not stopped(proc.db)
    replay = [sys.executable, "-m", "replytrack", "journal", "replay", "--from-log", str(proc.log)]
    for _ in range(2):  # twice is once
        done = subprocess.run(replay, env=proc.env(), capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
    assert "already recorded" in done.stdout
    assert stopped(proc.db)
    [event] = reply_events(proc.db)
    assert event.message_id == ours  # type: ignore[attr-defined]
