"""Parts that misbehave on demand, for the fault tests and the soak.

* :class:`FaultUpstream`: a real aiosmtpd server on loopback that records what it accepted
  and can be switched, between mails, to answer slowly, to drop the connection after DATA,
  or to refuse with a 4xx/5xx.
* :func:`small_tmpfs` and :func:`fill_disk`: a real tiny filesystem (tmpfs, needs root)
  filled to the last byte under a live store, so SQLite itself reports "database or disk
  is full".
* :func:`set_immutable`: store files even root cannot write (a read-only store, live).
* :func:`hold_exclusive_lock`: another connection holding the store's write lock.

Fakes only where a real part cannot produce the fault on demand.
"""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.support.net import free_port, wait_port  # noqa: F401 (re-exported for tests)


@dataclass(frozen=True)
class Arrival:
    """One message the upstream accepted (answered 250 to)."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (None when absent)."""
        return BytesHeaderParser().parsebytes(self.data).get(name)

    def headers(self, name: str) -> list[str]:
        """All values of header ``name``."""
        return BytesHeaderParser().parsebytes(self.data).get_all(name) or []


class _Handler:
    def __init__(self, upstream: FaultUpstream) -> None:
        self.upstream = upstream

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        import asyncio

        up = self.upstream
        up.data_started.set()
        mode = up.mode
        if mode == "slow":
            await asyncio.sleep(up.delay)
        elif mode == "queued-slow":
            # The mail is queued at once and only the answer is late, as with an MTA whose
            # client vanished after the final dot: the mail goes out all the same.
            up.record(envelope)
            await asyncio.sleep(up.delay)
            return "250 2.0.0 Ok: queued"
        elif mode == "drop":
            # Close without an answer, as a crashing or overloaded server does.
            if server.transport is not None:
                server.transport.abort()
            return "421 4.3.0 gone"
        elif mode == "tempfail":
            return "451 4.3.0 upstream says try later"
        elif mode == "reject":
            return "554 5.7.1 upstream refuses this"
        up.record(envelope)
        return "250 2.0.0 Ok: queued"


class FaultUpstream:
    """A recording SMTP upstream on loopback whose behaviour a test switches.

    ``mode`` is ``accept`` (record, 250), ``slow`` (sleep ``delay`` s, then record, 250),
    ``queued-slow`` (record, then sleep ``delay`` s before the 250),
    ``drop`` (abort the connection after the message, record nothing), ``tempfail`` (451)
    or ``reject`` (554).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port or free_port()
        self.mode = "accept"
        self.delay = 0.0
        self.lock = threading.Lock()
        self.arrivals: list[Arrival] = []
        self.data_started = threading.Event()
        self.controller: Controller | None = None

    def start(self) -> FaultUpstream:
        """Listen (idempotent)."""
        if self.controller is None:
            self.controller = Controller(
                _Handler(self),
                hostname=self.host,
                port=self.port,
                server_hostname="upstream.test",
                data_size_limit=64 * 1024 * 1024,
                decode_data=False,
            )
            self.controller.start()
        return self

    def stop(self) -> None:
        """Stop listening (the port then refuses connections: "upstream down")."""
        if self.controller is not None:
            with contextlib.suppress(Exception):
                self.controller.stop()
            self.controller = None

    def set(self, mode: str, delay: float = 0.0) -> None:
        """Switch behaviour for the next messages."""
        self.mode = mode
        self.delay = delay
        self.data_started.clear()

    def record(self, envelope: Envelope) -> None:
        """Keep a mail as arrived."""
        content = envelope.original_content or envelope.content or b""
        if isinstance(content, str):
            content = content.encode("utf-8", "surrogateescape")
        with self.lock:
            self.arrivals.append(
                Arrival(
                    mail_from=envelope.mail_from or "",
                    rcpt_tos=tuple(envelope.rcpt_tos),
                    data=bytes(content),
                )
            )

    def received(self) -> list[Arrival]:
        """A copy of what arrived so far."""
        with self.lock:
            return list(self.arrivals)

    def __enter__(self) -> FaultUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- store faults -------------------------------------------------------------------------------
def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=False)


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str = "4m") -> Iterator[Path | None]:
    """Mount a tmpfs of ``size`` at ``where``; yields None when mounting is not permitted."""
    where.mkdir(parents=True, exist_ok=True)
    result = _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where))
    if result.returncode != 0:
        yield None
        return
    try:
        yield where
    finally:
        if _run("umount", str(where)).returncode != 0:
            _run("umount", "-l", str(where))


def set_immutable(paths: list[Path], on: bool) -> bool:
    """``chattr +i`` / ``-i``: even root cannot write a file so marked (ext4 and most Linux
    filesystems). Writes through descriptors already open fail too, which makes a live store
    read-only underneath its connections. Returns False when the filesystem refuses."""
    flag = "+i" if on else "-i"
    existing = [str(p) for p in paths if p.exists()]
    return _run("chattr", flag, *existing).returncode == 0


def fill_disk(where: Path, leave: int = 0) -> Path:
    """Fill the filesystem at ``where`` with a ballast file until (almost) nothing is free."""
    ballast = where / "ballast"
    chunk = b"\0" * 65536
    with open(ballast, "wb", buffering=0) as out:
        with contextlib.suppress(OSError):
            while True:
                out.write(chunk)
        with contextlib.suppress(OSError):
            while True:
                out.write(b"\0" * 512)
    if leave:
        with open(ballast, "r+b") as out:
            out.truncate(max(0, ballast.stat().st_size - leave))
    return ballast


@contextlib.contextmanager
def hold_exclusive_lock(db: Path) -> Iterator[sqlite3.Connection]:
    """Another process-like connection holds the store's write lock until the block ends."""
    conn = sqlite3.connect(str(db), isolation_level=None, timeout=5)
    conn.execute("BEGIN EXCLUSIVE")
    try:
        yield conn
    finally:
        conn.execute("ROLLBACK")
        conn.close()


# --- mail ------------------------------------------------------------------------------------
MARKER_HEADER = "X-Test-Marker"


def make_message(marker: str, *, campaign: str | None = "camp-1", size: int = 512) -> bytes:
    """A small mail carrying ``marker`` in its Subject and in X-Test-Marker."""
    head = [
        "From: Sales <sales@sender.example>",
        "To: Prospect <prospect@example.test>",
        f"Subject: {marker}",
        f"{MARKER_HEADER}: {marker}",
        f"Message-ID: <{marker}@client.example>",
    ]
    if campaign:
        head.append(f"X-ReplyTrack-Campaign: {campaign}")
    body = ("hello " * (size // 6 + 1))[:size]
    return ("\r\n".join(head) + "\r\n\r\n" + body + "\r\n").encode()
