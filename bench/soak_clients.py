"""Client sessions for the soak's fault mode: campaign mail retried as an MTA retries it.

Each mail has its own To and Cc address, so the enrollments it makes are its own, and each
attempt its own ``X-Test-Marker``, so the copy that arrived upstream is tied to the attempt
whose client got ``250``. The Message-ID stays the same across attempts, as an MTA keeps it.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import smtplib
import threading
import time
from dataclasses import dataclass, field

CAMPAIGN = "soak"


def recipients_of(mail: str) -> tuple[str, str]:
    """The To and Cc address of ``mail``: unique, so its enrollments are its own."""
    return f"to-{mail}@example.test", f"cc-{mail}@example.test"


def fault_message(mail: str, marker: str, size: int) -> bytes:
    """A campaign mail; the Message-ID is the mail's, ``marker`` names the attempt."""
    to, cc = recipients_of(mail)
    head = [
        "From: Sales <sales@sender.example>",
        f"To: Prospect <{to}>",
        f"Cc: Colleague <{cc}>",
        f"Subject: soak {mail}",
        f"X-Test-Marker: {marker}",
        f"Message-ID: <{mail}@client.example>",
        f"X-ReplyTrack-Campaign: {CAMPAIGN}",
    ]
    line = "The quick brown fox jumps over the lazy dog, again and again.\r\n"
    body = (line * (size // len(line) + 1))[:size]
    return ("\r\n".join(head) + "\r\n\r\n" + body + "\r\n").encode()


@dataclass
class FaultTally:
    """What the clients were told: each attempt, and each mail's last answer."""

    final: dict[str, tuple[int | None, str]] = field(default_factory=dict)
    attempts: list[tuple[float, int | None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, mail: str, marker: str, code: int | None) -> None:
        """Remember one attempt's answer (None: the connection broke)."""
        with self.lock:
            self.attempts.append((time.monotonic(), code))
            self.final[mail] = (code, marker)


def send_attempt(client: smtplib.SMTP, mail: str, marker: str, size: int) -> int:
    """MAIL, RCPT (To and Cc), DATA on an open session; the final reply code."""
    code, _ = client.mail("sales@sender.example")
    if code == 250:
        for rcpt in recipients_of(mail):
            code, _ = client.rcpt(rcpt)
            if code not in (250, 251):
                break
    if code in (250, 251):
        try:
            code, _ = client.data(fault_message(mail, marker, size))
        except smtplib.SMTPDataError as exc:
            code = exc.smtp_code
    if code != 250:
        client.rset()
    return code


def fault_client(
    port: int,
    session: int,
    *,
    size: int,
    per_connection: int,
    tally: FaultTally,
    load_over: threading.Event,
    give_up: threading.Event,
    rng: random.Random,
) -> None:
    """Send new mails until ``load_over``; retry each on 4xx or a broken connection."""
    client: smtplib.SMTP | None = None
    used = 0
    for n in itertools.count():
        if load_over.is_set():
            break
        mail = f"s{session:02d}-{n:06d}"
        for attempt in itertools.count(1):
            marker = f"{mail}.{attempt}"
            code: int | None = None
            try:
                if client is None:
                    client = smtplib.SMTP("127.0.0.1", port, "client.bench.test", timeout=120)
                    client.ehlo()
                    used = 0
                code = send_attempt(client, mail, marker, size)
            except (smtplib.SMTPException, OSError):
                if client is not None:
                    client.close()
                client = None
            tally.note(mail, marker, code)
            if code is not None and (code == 250 or code >= 500):
                break
            # A real MTA backs off for minutes; the soak keeps the same shape, shorter.
            if give_up.wait(rng.uniform(0.2, 1.0)):
                break
        used += 1
        if client is not None and used >= per_connection:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                client.quit()
            client.close()
            client = None
    if client is not None:
        with contextlib.suppress(smtplib.SMTPException, OSError):
            client.quit()
        client.close()


def code_class(code: int | None) -> str:
    """250, 4xx, 5xx or broken."""
    return "broken" if code is None else "250" if code == 250 else f"{code // 100}xx"
