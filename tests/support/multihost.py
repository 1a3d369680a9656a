"""``replytrack proxy`` and ``replytrack milter`` as real processes on one shared store, for
the multi-host tests: each process gets its own environment (store URL, shared key file,
its own journal paths, ``REPLYTRACK_CONFIG=/dev/null`` so no config file is ever read).

Usage::

    env = daemon_env(base, db=pg_url, secret=base / "rt.secret")
    milter = Daemon.milter(base / "mx-a", env, port=free_port()).start()
    proxy = Daemon.proxy(base / "relay", env, port=free_port(), upstream="127.0.0.1:2525")
    ...
    milter.stop()
"""

from __future__ import annotations

import os
import smtplib
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from tests.support.net import port_open
from tests.support.postfix import wait_until

# Every test message goes to this domain (the Postfix labs deliver it to their Maildir)
# and every stamped Message-ID carries ID_DOMAIN.
LAB_DOMAIN = "example.test"
ID_DOMAIN = "track.example.test"


def daemon_env(db: str, secret: Path, **more: str) -> dict[str, str]:
    """The environment of a replytrack process on store ``db`` with key file ``secret``."""
    return {
        **os.environ,
        "REPLYTRACK_CONFIG": "/dev/null",
        "REPLYTRACK_DB": db,
        "REPLYTRACK_SECRET_FILE": str(secret),
        "REPLYTRACK_DOMAIN": ID_DOMAIN,
        "REPLYTRACK_LOG_LEVEL": "info",
        # A crash (a segfault in a C extension) leaves every thread's Python stack in the log.
        "PYTHONFAULTHANDLER": "1",
        **more,
    }


class Daemon:
    """One replytrack daemon process with its own directory and log file."""

    def __init__(self, name: str, base: Path, args: list[str], env: Mapping[str, str], port: int):
        self.name = name
        self.base = base
        self.args = args
        self.env = dict(env)
        self.port = port
        self.log_path = base / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def milter(cls, name: str, base: Path, env: Mapping[str, str], *, port: int) -> Daemon:
        """A milter with journal and fallback journal in ``base`` (never /var/spool)."""
        base.mkdir(parents=True, exist_ok=True)
        own = {
            **env,
            "REPLYTRACK_MILTER_JOURNAL": str(base / "spool" / "journal"),
            "REPLYTRACK_MILTER_JOURNAL_FALLBACK": str(base / "run" / "journal"),
        }
        (base / "spool").mkdir(exist_ok=True)
        (base / "run").mkdir(exist_ok=True)
        return cls(name, base, ["milter", "--socket", f"inet:{port}@127.0.0.1"], own, port)

    @classmethod
    def proxy(
        cls, name: str, base: Path, env: Mapping[str, str], *, port: int, upstream: str
    ) -> Daemon:
        """A proxy with one worker process relaying to ``upstream``."""
        base.mkdir(parents=True, exist_ok=True)
        args = ["proxy", "--listen", f"127.0.0.1:{port}", "--upstream", upstream, "--workers", "1"]
        return cls(name, base, args, env, port)

    @property
    def journal(self) -> Path:
        return Path(self.env["REPLYTRACK_MILTER_JOURNAL"])

    def journal_backlog(self) -> int:
        """Entries waiting in the journal (also those moved aside for a replay)."""
        total = 0
        for path in (self.journal, self.journal.with_name(self.journal.name + ".replay")):
            if path.exists():
                total += sum(1 for line in path.read_bytes().splitlines() if line.strip())
        return total

    def start(self, timeout: float = 30) -> Daemon:
        """Start the process and wait until it listens; RuntimeError with its log if not."""
        log = open(self.log_path, "ab")  # noqa: SIM115 (kept open for the child)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "replytrack", *self.args],
            env=self.env,
            stdout=log,
            stderr=log,
            cwd=self.base,
        )
        log.close()
        process = self.process
        if not wait_until(lambda: port_open(self.port) or process.poll() is not None, timeout):
            raise RuntimeError(f"{self.name} not listening on {self.port}:\n{self.log()}")
        if process.poll() is not None:
            raise RuntimeError(f"{self.name} exited at start:\n{self.log()}")
        return self

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a grace period (libmilter takes a while to exit)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def campaign_mail(
    *, to: str, subject: str, campaign: str, step: int, sender: str = f"sales@{LAB_DOMAIN}"
) -> bytes:
    """A campaign step as an engine submits it to the proxy."""
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"X-ReplyTrack-Campaign: {campaign}\r\nX-ReplyTrack-Step: {step}\r\n"
        "\r\nHello, an offer for you.\r\n"
    ).encode()


def reply_mail(*, sender: str, subject: str, in_reply_to: str, message_id: str) -> bytes:
    """A person's reply to a mail we sent (threaded by In-Reply-To and References)."""
    return (
        f"From: {sender}\r\nTo: sales@{LAB_DOMAIN}\r\nSubject: {subject}\r\n"
        f"Message-ID: {message_id}\r\nIn-Reply-To: {in_reply_to}\r\nReferences: {in_reply_to}\r\n"
        "\r\nSounds good, call me tomorrow.\r\n"
    ).encode()


def submit(port: int, sender: str, recipients: list[str], data: bytes) -> tuple[int, str]:
    """Send one mail over SMTP to 127.0.0.1:port; the reply that decided it (code, text):
    the DATA reply, or the first refusal of MAIL, every RCPT, or DATA itself."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=60) as smtp:
        smtp.ehlo()
        code, text = smtp.mail(sender)
        if code != 250:
            return code, text.decode(errors="replace")
        refusals = []
        for rcpt in recipients:
            code, text = smtp.rcpt(rcpt)
            if code not in (250, 251):
                refusals.append((code, text.decode(errors="replace")))
        if len(refusals) == len(recipients):
            smtp.rset()
            return refusals[0]
        try:
            code, text = smtp.data(data)
        except smtplib.SMTPDataError as exc:
            error = exc.smtp_error
            if isinstance(error, bytes):
                error = error.decode(errors="replace")
            return exc.smtp_code, error
        return code, text.decode(errors="replace")
