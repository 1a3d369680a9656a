"""End to end: a private Postfix on loopback with ``replytrack milter`` (a subprocess) in
``smtpd_milters``, mail delivered to a Maildir; assertions on what was delivered and what
the store holds."""

from __future__ import annotations

import os
import shutil
import smtplib
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email import message_from_bytes
from email.message import Message
from email.utils import formatdate, make_msgid
from pathlib import Path

import pytest

from replytrack.store.sqlite import SQLiteStore
from replytrack.tokens import Keyring, load_keyring, mint
from tests.support.milter_records import DOMAIN, record_sent
from tests.support.postfix import (
    PostfixLab,
    PostfixUnavailable,
    ensure_postfix,
    free_port,
    make_base_dir,
    port_open,
)

pytestmark = [pytest.mark.postfix, pytest.mark.timeout(180)]

LAB_DOMAIN = "example.test"
INBOX = f"sales@{LAB_DOMAIN}"

# A milter process whose engine raises on every mail: a real process with an injected fault.
RAISING_MILTER = (
    "import replytrack.milter.engine as e\n"
    "def boom(self, *a, **k):\n"
    "    raise RuntimeError('injected fault')\n"
    "e.Engine.screen = boom\n"
    "from replytrack.cli import main\n"
    "main()\n"
)


@dataclass
class Site:
    """One running milter (and maybe Postfix) with its store and keys."""

    base: Path
    db: Path
    secret: Path
    keyring: Keyring
    store: SQLiteStore
    env: dict[str, str]
    milter_port: int
    process: subprocess.Popen[bytes] | None = None
    lab: PostfixLab | None = None

    def start_milter(self, code: str | None = None, socket_spec: str | None = None) -> None:
        spec = socket_spec or f"inet:{self.milter_port}@127.0.0.1"
        args = ["milter", "--socket", spec]
        command = (
            [sys.executable, "-c", code, *args]
            if code
            else [sys.executable, "-m", "replytrack", *args]
        )
        log = open(self.base / "milter.log", "ab")  # noqa: SIM115 (kept open for the child)
        self.process = subprocess.Popen(command, env=self.env, stdout=log, stderr=log)
        deadline = time.monotonic() + 20

        def ready() -> bool:
            if spec.startswith("unix:"):
                path = Path(spec[5:])
                return path.exists() and path.stat().st_mode & 0o060 == 0o060
            return port_open(self.milter_port)

        while not ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"milter did not start:\n{self.milter_log()}")
            time.sleep(0.1)

    def stop_milter(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def milter_log(self) -> str:
        path = self.base / "milter.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def send(self, raw: str, *, sender: str, to: str = INBOX) -> None:
        assert self.lab is not None
        with smtplib.SMTP("127.0.0.1", self.lab.smtp_port, local_hostname="client.test") as smtp:
            smtp.sendmail(sender, [to], raw.encode())

    def delivered(self, marker: str, timeout: float = 20) -> Message:
        """The delivered message whose Subject contains ``marker``."""
        assert self.lab is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for data in self.lab.maildir():
                msg = message_from_bytes(data)
                if marker in str(msg.get("Subject", "")):
                    return msg
            time.sleep(0.1)
        raise AssertionError(
            f"{marker!r} not delivered\n{self.lab.log_tail()}\n{self.milter_log()[-3000:]}"
        )

    def status(self, campaign: str, address: str) -> str:
        found = self.store.enrollments(campaign=campaign, recipient=address)
        return found[0].status if found else "none"


def mail(
    *,
    sender: str,
    subject: str,
    in_reply_to: str | None = None,
    references: str | None = None,
    message_id: str | None = None,
    extra: str = "",
    to: str = INBOX,
) -> str:
    lines = [
        f"From: {sender}",
        f"To: {to}",
        f"Subject: {subject}",
        f"Date: {formatdate()}",
        f"Message-ID: {message_id or make_msgid(domain='client.test')}",
    ]
    if in_reply_to:
        lines.append(f"In-Reply-To: {in_reply_to}")
    if references:
        lines.append(f"References: {references}")
    if extra:
        lines.append(extra.rstrip("\r\n"))
    return "\r\n".join(lines) + "\r\n\r\nThanks, let's talk next week.\r\n"


def new_site(**env: str) -> Site:
    try:
        ensure_postfix()
    except PostfixUnavailable as exc:
        pytest.skip(str(exc))
    base = make_base_dir("replytrack-e2e-milter-")
    db, secret = base / "rt.db", base / "rt.secret"
    keyring = load_keyring(secret, create=True)
    store = SQLiteStore(db)
    full_env = {
        **os.environ,
        "REPLYTRACK_DB": str(db),
        "REPLYTRACK_DOMAIN": DOMAIN,
        "REPLYTRACK_SECRET_FILE": str(secret),
        "REPLYTRACK_CONFIG": "/dev/null",
        "REPLYTRACK_LOG_LEVEL": "info",
        "REPLYTRACK_MILTER_JOURNAL": str(base / "spool" / "journal"),
        "REPLYTRACK_MILTER_JOURNAL_FALLBACK": str(base / "run" / "journal"),
        **env,
    }
    return Site(base, db, secret, keyring, store, full_env, free_port())


def with_lab(site: Site, milter: str, **kwargs) -> PostfixLab:
    site.lab = PostfixLab(site.base / "postfix", milter=milter, domain=LAB_DOMAIN, **kwargs)
    site.lab.start()
    return site.lab


def teardown(site: Site) -> None:
    site.stop_milter()
    if site.lab is not None:
        site.lab.stop()
    site.store.close_all()
    if not os.environ.get("REPLYTRACK_PFLAB_KEEP"):
        shutil.rmtree(site.base, ignore_errors=True)


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    """Postfix + the real milter, shared by the scenarios that need a healthy milter."""
    s = new_site()
    try:
        s.start_milter()
        # The production-style setting: Postfix's global default stays tempfail, the
        # replytrack milter alone is marked default_action=accept (fail open).
        with_lab(
            s,
            f"{{ inet:127.0.0.1:{s.milter_port}, default_action=accept }}",
            milter_default_action="tempfail",
        )
        yield s
    finally:
        teardown(s)


def test_direct_reply_is_flagged_and_stops_the_thread(site):
    mid = record_sent(site.store, site.keyring, to=["ann@acme.example", "bob@acme.example"])
    site.send(
        mail(sender="ann@acme.example", subject="direct-reply", in_reply_to=f"<{mid}>"),
        sender="ann@acme.example",
    )
    msg = site.delivered("direct-reply")
    assert msg.get_all("X-ReplyTrack") == ["reply; campaign=spring; match=in-reply-to"]
    assert site.status("spring", "ann@acme.example") == "stopped"
    assert site.status("spring", "bob@acme.example") == "stopped"
    [event] = [e for e in site.store.events(kind="reply") if e.message_id == mid]
    assert event.sender == "ann@acme.example"
    assert event.relation == "original_recipient"
    assert event.queue_id  # the Postfix queue id reached the event


def test_reply_from_the_prospects_other_address(site):
    mid = record_sent(site.store, site.keyring, to=["cleo@acme.example"], campaign="c-other")
    site.send(
        mail(sender="cleo.private@gmail.com", subject="other-address", in_reply_to=f"<{mid}>"),
        sender="cleo.private@gmail.com",
    )
    msg = site.delivered("other-address")
    assert msg["X-ReplyTrack"] == "reply; campaign=c-other; match=in-reply-to"
    assert site.status("c-other", "cleo@acme.example") == "stopped"
    [event] = site.store.events(kind="reply", campaign="c-other")
    assert event.relation == "other"


def test_reply_from_the_cc_person(site):
    mid = record_sent(
        site.store, site.keyring, to=["dora@acme.example"], cc=["ed@acme.example"], campaign="c-cc"
    )
    site.send(
        mail(sender="ed@acme.example", subject="cc-reply", in_reply_to=f"<{mid}>"),
        sender="ed@acme.example",
    )
    assert site.delivered("cc-reply")["X-ReplyTrack"] == "reply; campaign=c-cc; match=in-reply-to"
    assert site.status("c-cc", "dora@acme.example") == "stopped"
    [event] = site.store.events(kind="reply", campaign="c-cc")
    assert event.relation == "cc"


def test_only_references(site):
    mid = record_sent(site.store, site.keyring, to=["fay@acme.example"], campaign="c-ref")
    refs = f"<a1@lists.example>\r\n\t<{mid}> (our mail)\r\n <a2@lists.example>"
    site.send(
        mail(sender="fay@acme.example", subject="only-references", references=refs),
        sender="fay@acme.example",
    )
    msg = site.delivered("only-references")
    assert msg["X-ReplyTrack"] == "reply; campaign=c-ref; match=references"
    assert site.status("c-ref", "fay@acme.example") == "stopped"


def test_forged_token_is_not_a_reply(site):
    mid = record_sent(site.store, site.keyring, to=["gus@acme.example"], campaign="c-forged")
    forged = mint(Keyring.generate(), DOMAIN)  # right shape and domain, wrong key
    site.send(
        mail(sender="mallory@evil.example", subject="forged", in_reply_to=f"<{forged}>"),
        sender="mallory@evil.example",
    )
    msg = site.delivered("forged")
    assert msg["X-ReplyTrack"] is None
    assert site.status("c-forged", "gus@acme.example") == "active"
    assert site.store.events(campaign="c-forged", kind="reply") == []
    assert mid  # the genuine mail exists; only its forged twin was referenced


def test_spoofed_header_from_outside_is_removed(site):
    site.send(
        mail(
            sender="mallory@evil.example",
            subject="spoofed-header",
            extra="X-ReplyTrack: reply; campaign=spring; match=in-reply-to\r\n"
            "X-ReplyTrack: reply; campaign=again; match=weak",
        ),
        sender="mallory@evil.example",
    )
    msg = site.delivered("spoofed-header")
    assert msg.get_all("X-ReplyTrack") is None


def test_own_follow_up_through_the_same_postfix_is_not_flagged(site):
    first = record_sent(site.store, site.keyring, to=["hal@acme.example"], campaign="c-own")
    follow_up = mint(site.keyring, DOMAIN)
    site.send(
        mail(
            sender="sales@vendor.example",
            subject="own-follow-up",
            in_reply_to=f"<{first}>",
            references=f"<{first}>",
            message_id=f"<{follow_up}>",
        ),
        sender="sales@vendor.example",
    )
    msg = site.delivered("own-follow-up")
    assert msg["X-ReplyTrack"] is None
    assert site.status("c-own", "hal@acme.example") == "active"


def test_locked_store_delivers_and_journal_replays(site):
    mid = record_sent(site.store, site.keyring, to=["ivy@acme.example"], campaign="c-lock")
    locker = sqlite3.connect(site.db, timeout=5)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        site.send(
            mail(sender="ivy@acme.example", subject="while-locked", in_reply_to=f"<{mid}>"),
            sender="ivy@acme.example",
        )
        msg = site.delivered("while-locked")
        # Delivered without waiting for the lock and flagged (the match is a read, which the
        # lock does not block); the record waits in the journal.
        assert msg["X-ReplyTrack"] == "reply; campaign=c-lock; match=in-reply-to"
        journal = site.base / "spool" / "journal"
        assert journal.exists() or journal.with_name("journal.replay").exists()
    finally:
        locker.rollback()
        locker.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and site.status("c-lock", "ivy@acme.example") != "stopped":
        time.sleep(0.2)
    assert site.status("c-lock", "ivy@acme.example") == "stopped"
    assert len(site.store.events(kind="reply", campaign="c-lock")) == 1


@pytest.mark.parametrize("failure", ["down", "raising"])
def test_mail_is_delivered_when_the_milter_is_down_or_raising(failure):
    s = new_site()
    try:
        if failure == "raising":
            s.start_milter(RAISING_MILTER)
        # Nothing listens on the port when the milter is down; Postfix's global default
        # stays tempfail, only our milter is marked default_action=accept.
        with_lab(
            s,
            f"{{ inet:127.0.0.1:{s.milter_port}, default_action=accept }}",
            milter_default_action="tempfail",
        )
        mid = record_sent(s.store, s.keyring, to=["jo@acme.example"])
        s.send(
            mail(sender="jo@acme.example", subject=f"milter-{failure}", in_reply_to=f"<{mid}>"),
            sender="jo@acme.example",
        )
        msg = s.delivered(f"milter-{failure}")
        assert msg["X-ReplyTrack"] is None
        if failure == "raising":
            assert "injected fault" in s.milter_log()
    finally:
        teardown(s)


def test_after_a_reply_the_proxy_refuses_the_next_step():
    s = new_site()
    proxy: subprocess.Popen[bytes] | None = None
    try:
        s.start_milter()
        lab = with_lab(s, f"{{ inet:127.0.0.1:{s.milter_port}, default_action=accept }}")
        proxy_port = free_port()
        log = open(s.base / "proxy.log", "ab")  # noqa: SIM115 (kept open for the child)
        proxy = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "replytrack",
                "proxy",
                "--listen",
                f"127.0.0.1:{proxy_port}",
                "--upstream",
                f"127.0.0.1:{lab.smtp_port}",
            ],
            env=s.env,
            stdout=log,
            stderr=log,
        )
        deadline = time.monotonic() + 20
        while not port_open(proxy_port):
            assert proxy.poll() is None and time.monotonic() < deadline, (
                s.base / "proxy.log"
            ).read_text()
            time.sleep(0.1)
        prospect = f"pat@{LAB_DOMAIN}"

        def step(n: int) -> None:
            raw = mail(
                sender="sales@vendor.example",
                subject=f"campaign-step-{n}",
                to=prospect,
                extra=f"X-ReplyTrack-Campaign: proxy-e2e\r\nX-ReplyTrack-Step: {n}",
            )
            with smtplib.SMTP("127.0.0.1", proxy_port, local_hostname="crm.test") as smtp:
                smtp.sendmail("sales@vendor.example", [prospect], raw.encode())

        step(1)
        first = s.delivered("campaign-step-1")
        stamped = first["Message-ID"]
        assert stamped and stamped.strip("<>").endswith("@" + DOMAIN)
        # Our own stamped mail went through the same Postfix and milter: not a reply.
        assert first["X-ReplyTrack"] is None
        s.send(
            mail(sender=prospect, subject="Re: campaign-reply", in_reply_to=stamped),
            sender=prospect,
        )
        assert s.delivered("campaign-reply")["X-ReplyTrack"].startswith("reply; campaign=proxy-e2e")
        assert s.status("proxy-e2e", prospect) == "stopped"
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            step(2)
        code, text = refused.value.recipients[prospect]
        assert code == 550, text
        time.sleep(1)
        assert not any(b"campaign-step-2" in m for m in lab.maildir())
    except smtplib.SMTPDataError as exc:
        # Refused at end of data rather than per recipient: still refused, never relayed.
        assert exc.smtp_code == 550, exc
        assert s.lab is not None
        assert not any(b"campaign-step-2" in m for m in s.lab.maildir())
    finally:
        if proxy is not None and proxy.poll() is None:
            proxy.terminate()
            try:
                proxy.wait(15)
            except subprocess.TimeoutExpired:
                proxy.kill()
        teardown(s)


def test_store_connections_do_not_grow_with_mail(site):
    """libmilter calls from C threads; per-thread store connections must not pile up."""
    assert site.process is not None
    pid = site.process.pid

    def db_handles() -> int:
        fd_dir = Path(f"/proc/{pid}/fd")
        count = 0
        for fd in fd_dir.iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            count += target == str(site.db)
        return count

    for n in range(15):
        site.send(
            mail(sender=f"n{n}@stranger.example", subject=f"leak-{n}", in_reply_to="<a@b.example>"),
            sender=f"n{n}@stranger.example",
        )
    site.delivered("leak-14")
    # Mails one after another share one pooled connection; with the replay thread, the
    # webhook sender and the main thread a handful at most, never one per mail.
    assert db_handles() <= 8


def test_replies_under_load_are_all_flagged_in_real_time(site):
    """Under concurrent load every reply is decided while Postfix waits: each copy flagged,
    nothing left to the journal. (With store work handed to 4 worker threads, 4 replies in
    10 found them all busy at 10 sessions: journaled, delivered without X-ReplyTrack.)"""
    assert site.lab is not None
    journaled_before = site.milter_log().count("journaled for replay")
    mid = record_sent(site.store, site.keyring, to=["lee@load.example"], campaign="c-load")
    raw = mail(sender="lee@load.example", subject="under-load", in_reply_to=f"<{mid}>")
    eml = site.base / "under-load.eml"
    # smtp-source sends each line with its own CR LF: the file has bare LF.
    eml.write_text(raw.replace("\r\n", "\n"))
    copies = 200
    result = subprocess.run(
        [
            *("smtp-source", "-s", "20", "-m", str(copies), "-F", str(eml)),
            *("-f", "lee@load.example", "-t", INBOX, "-M", "client.test"),
            f"127.0.0.1:{site.lab.smtp_port}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    deadline = time.monotonic() + 60
    while True:
        arrived = [
            m for m in map(message_from_bytes, site.lab.maildir()) if m["Subject"] == "under-load"
        ]
        if len(arrived) == copies or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(arrived) == copies
    flags = [m.get_all("X-ReplyTrack") for m in arrived]
    assert flags == [["reply; campaign=c-load; match=in-reply-to"]] * copies
    assert site.milter_log().count("journaled for replay") == journaled_before
    assert site.status("c-load", "lee@load.example") == "stopped"
    # The same reply many times over is one event.
    assert len([e for e in site.store.events(kind="reply") if e.campaign == "c-load"]) == 1


def test_reply_over_a_unix_socket():
    """The fast transport (no Nagle, no delayed ACK): Postfix reaches the socket as user
    postfix, the reply is flagged."""
    s = new_site()
    try:
        sock = s.base / "milter" / "replytrack.sock"
        sock.parent.mkdir()
        sock.parent.chmod(0o755)
        s.start_milter(socket_spec=f"unix:{sock}")
        with_lab(s, f"{{ unix:{sock}, default_action=accept }}")
        mid = record_sent(s.store, s.keyring, to=["kim@acme.example"], campaign="c-unix")
        s.send(
            mail(sender="kim@acme.example", subject="unix-reply", in_reply_to=f"<{mid}>"),
            sender="kim@acme.example",
        )
        assert (
            s.delivered("unix-reply")["X-ReplyTrack"] == "reply; campaign=c-unix; match=in-reply-to"
        )
        assert s.status("c-unix", "kim@acme.example") == "stopped"
    finally:
        teardown(s)


def test_reply_is_notified_by_the_milter_process():
    """The milter runs the webhook sender itself: a reply through Postfix reaches the
    campaign system as a signed POST, without a separate `replytrack notify`."""
    import hashlib
    import hmac
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    posts: list[tuple[dict[str, str], bytes]] = []  # header names lowercased

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            posts.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    s = new_site(
        REPLYTRACK_NOTIFY_WEBHOOKS=f"http://127.0.0.1:{server.server_port}/hook",
        REPLYTRACK_NOTIFY_SECRET="hook-secret",
    )
    try:
        s.start_milter()
        with_lab(s, f"{{ inet:127.0.0.1:{s.milter_port}, default_action=accept }}")
        mid = record_sent(s.store, s.keyring, to=["ann@acme.example"])
        s.send(
            mail(sender="ann@acme.example", subject="notified", in_reply_to=f"<{mid}>"),
            sender="ann@acme.example",
        )
        s.delivered("notified")
        deadline = time.monotonic() + 30
        while not any(json.loads(b).get("kind") == "reply" for _, b in posts):
            assert time.monotonic() < deadline, f"no reply webhook\n{s.milter_log()[-3000:]}"
            time.sleep(0.1)
        headers, body = next((h, b) for h, b in posts if json.loads(b).get("kind") == "reply")
        event = json.loads(body)
        assert event["message_id"] == mid
        assert event["sender"] == "ann@acme.example"
        assert event["campaign"] == "spring"
        stamp = headers["x-replytrack-timestamp"]
        expected = hmac.new(b"hook-secret", stamp.encode() + b"." + body, hashlib.sha256)
        assert headers["x-replytrack-signature"] == "sha256=" + expected.hexdigest()
    finally:
        teardown(s)
        server.shutdown()
        server.server_close()
