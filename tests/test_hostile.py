"""Hostile input: each attack is refused or neutralised, with its SMTP reply asserted and
what reached the upstream (or the store) checked.

Proxy cases talk raw SMTP over a socket (smtplib would clean up what the attacker sends).
The relay attempt from a foreign address uses a network namespace joined to this machine by
a veth pair: a second, private address on the same host, not the Internet.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from replytrack import tokens
from replytrack.config import Config
from replytrack.milter.engine import Engine, Inbound
from replytrack.proxy.testing import ThreadedProxy
from replytrack.store.sqlite import SQLiteStore
from replytrack.tokens import Keyring
from tests.support.faults import FaultUpstream, make_message
from tests.support.milter_records import record_sent

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def upstream() -> Iterator[FaultUpstream]:
    up = FaultUpstream().start()
    yield up
    up.stop()


@pytest.fixture
def proxy(tmp_path: Path, upstream: FaultUpstream) -> Iterator[ThreadedProxy]:
    config = Config(
        db=str(tmp_path / "rt.db"),
        domain="mail.test",
        hostname="proxy.test",
        proxy_listen="127.0.0.1:0",
        proxy_upstream=f"127.0.0.1:{upstream.port}",
        proxy_timeout=5.0,
    )
    store = SQLiteStore(tmp_path / "rt.db")
    with ThreadedProxy(config, store=store, keyring=Keyring.generate()) as running:
        yield running
    store.close_all()


class Raw:
    """A raw SMTP client: sends exactly the bytes given, reads whole replies."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.buffer = b""
        self.greeting = self.reply()

    def reply(self) -> str:
        """One complete (possibly multi-line) reply."""
        while True:
            lines = self.buffer.split(b"\r\n")
            for i, line in enumerate(lines[:-1]):
                if len(line) >= 4 and line[3:4] == b" ":
                    text = b"\r\n".join(lines[: i + 1])
                    self.buffer = b"\r\n".join(lines[i + 1 :])
                    return text.decode(errors="replace")
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; had {self.buffer!r}")
            self.buffer += chunk

    def cmd(self, line: bytes) -> str:
        self.sock.sendall(line)
        return self.reply()

    def close(self) -> None:
        try:
            self.sock.sendall(b"QUIT\r\n")
            self.reply()
        except OSError:
            pass
        self.sock.close()


def raw(port: int) -> Raw:
    client = Raw("127.0.0.1", port)
    assert client.cmd(b"EHLO attacker.test\r\n").startswith("250")
    return client


def code_of(reply: str) -> tuple[int, str]:
    """(code, enhanced status) of the last line of a reply."""
    last = reply.splitlines()[-1]
    parts = last[4:].split(" ", 1)
    return int(last[:3]), parts[0] if parts and parts[0][:1].isdigit() else ""


# --- SMTP smuggling ------
SMUGGLED = (
    b"MAIL FROM:<ceo@victim.example>\r\nRCPT TO:<target@example.test>\r\nDATA\r\n"
    b"From: ceo@victim.example\r\nSubject: smuggled\r\n\r\nwire the money\r\n"
)


@pytest.mark.parametrize("fake_end", [b"\n.\r\n", b"\r.\r\n", b"\n.\n", b"\r\n.\n", b"\r\n.\r"])
def test_smuggling_gives_at_most_one_message(
    proxy: ThreadedProxy, upstream: FaultUpstream, fake_end: bytes
) -> None:
    client = raw(proxy.port)
    assert client.cmd(b"MAIL FROM:<sales@sender.example>\r\n").startswith("250")
    assert client.cmd(b"RCPT TO:<prospect@example.test>\r\n").startswith("250")
    assert client.cmd(b"DATA\r\n").startswith("354")
    payload = (
        b"From: sales@sender.example\r\nSubject: innocent\r\n\r\nhello"
        + fake_end
        + SMUGGLED
        + b"\r\n.\r\n"
    )
    client.sock.sendall(payload)
    replies = [client.reply()]
    # Whatever follows the real end is read as commands; a smuggled transaction would
    # answer here. Collect what comes within a moment, then look upstream.
    client.sock.settimeout(1.0)
    try:
        while True:
            replies.append(client.reply())
    except (TimeoutError, OSError, ConnectionError):
        pass
    client.sock.close()
    code, enhanced = code_of(replies[0])
    arrivals = upstream.received()
    assert len(arrivals) <= 1, [a.data[:200] for a in arrivals]
    assert all(a.mail_from == "sales@sender.example" for a in arrivals)
    assert all(b"smuggled" not in a.data.split(b"\r\n\r\n", 1)[0] for a in arrivals)
    if code == 250:
        assert enhanced == "2.0.0"
        assert len(arrivals) == 1
        # The smuggled lines stayed inside the one body, not a message of their own.
        assert b"wire the money" in arrivals[0].data
    else:
        assert 500 <= code < 600 and enhanced.startswith("5."), replies
        assert arrivals == []


# --- envelope addresses ------
@pytest.mark.parametrize(
    ("verb", "address", "enhanced"),
    [
        (b"MAIL FROM:", b"<a\x00b@sender.example>", "5.1.7"),
        (b"MAIL FROM:", b"<a\rb@sender.example>", "5.1.7"),
        (b"MAIL FROM:", b"<a\nRCPT TO:<x@example.test>@sender.example>", "5.1.7"),
        (b"RCPT TO:", b"<p\x00q@example.test>", "5.1.3"),
        (b"RCPT TO:", b"<p\rq@example.test>", "5.1.3"),
        (b"RCPT TO:", b"<p\nDATA@example.test>", "5.1.3"),
        # The stdlib address parser raises IndexError on a lone "<": a client's syntax
        # error all the same, never a 4xx to retry forever, never a 500.
        (b"MAIL FROM:", b"<", "5.1.7"),
        (b"RCPT TO:", b"<", "5.1.3"),
    ],
)
def test_control_characters_in_envelope_refused(
    proxy: ThreadedProxy, upstream: FaultUpstream, verb: bytes, address: bytes, enhanced: str
) -> None:
    client = raw(proxy.port)
    if verb.startswith(b"RCPT"):
        assert client.cmd(b"MAIL FROM:<sales@sender.example>\r\n").startswith("250")
    reply = client.cmd(verb + address + b"\r\n")
    code, got = code_of(reply)
    assert code == 501 and got == enhanced, reply
    client.close()
    assert upstream.received() == []


# --- big header blocks ------
def test_64k_header_block(proxy: ThreadedProxy, upstream: FaultUpstream) -> None:
    """A 64 KiB header block (many fields, one long folded one) is relayed with its
    fields intact and exactly one Message-ID, or refused with a clear 5xx."""
    fields = [f"X-Filler-{i}: {'v' * 60}".encode() for i in range(700)]
    folded = b"X-Long: " + b"\r\n ".join([b"w" * 70] * 200)
    head = b"\r\n".join([b"From: sales@sender.example", b"Subject: big head", *fields, folded])
    assert len(head) >= 64 * 1024
    client = raw(proxy.port)
    client.cmd(b"MAIL FROM:<sales@sender.example>\r\n")
    client.cmd(b"RCPT TO:<prospect@example.test>\r\n")
    assert client.cmd(b"DATA\r\n").startswith("354")
    reply = client.cmd(head + b"\r\n\r\nbody\r\n.\r\n")
    client.close()
    code, enhanced = code_of(reply)
    arrivals = upstream.received()
    if code == 250:
        [arrival] = arrivals
        assert enhanced == "2.0.0"
        assert len(arrival.headers("Message-ID")) == 1
        assert len(arrival.headers("X-Long")) == 1
        assert all(f in arrival.data for f in (fields[0], fields[-1], folded))
    else:
        assert code in (552, 554) and enhanced.startswith("5."), reply
        assert arrivals == []


# --- spoofed X-ReplyTrack on the way out ------
def test_proxy_removes_spoofed_x_replytrack(proxy: ThreadedProxy, upstream: FaultUpstream) -> None:
    message = make_message("spoof").replace(
        b"\r\n\r\n",
        b"\r\nX-ReplyTrack: reply; campaign=evil; match=in-reply-to\r\n"
        b"x-replytrack-step: 3\r\n\r\n",
        1,
    )
    client = raw(proxy.port)
    client.cmd(b"MAIL FROM:<sales@sender.example>\r\n")
    client.cmd(b"RCPT TO:<prospect@example.test>\r\n")
    client.cmd(b"DATA\r\n")
    code, enhanced = code_of(client.cmd(message + b".\r\n"))
    client.close()
    assert (code, enhanced) == (250, "2.0.0")
    [arrival] = upstream.received()
    head = arrival.data.split(b"\r\n\r\n", 1)[0].lower()
    assert b"x-replytrack" not in head


# --- milter engine: long References, forged tokens ------
DOMAIN = "mail.test"


class CountingStore(SQLiteStore):
    """The real store, counting lookups (to show forged tokens never cause one)."""

    lookups = 0

    def find_sent(self, message_ids):  # type: ignore[no-untyped-def]
        self.lookups += 1
        return super().find_sent(message_ids)


@pytest.fixture
def engine_parts(tmp_path: Path) -> tuple[Engine, CountingStore, Keyring, str]:
    keyring = Keyring.generate()
    store = CountingStore(tmp_path / "rt.db")
    ours = record_sent(
        store,
        keyring,
        to=["prospect@example.test"],
        campaign="camp-1",
        sender="sales@sender.example",
        domain=DOMAIN,
    )
    config = Config(db=str(tmp_path / "rt.db"), domain=DOMAIN, milter_weak_match=False)
    return Engine(config, keyring, store), store, keyring, ours


def reply_from(references: str, *, in_reply_to: str | None = None) -> Inbound:
    headers = [
        ("From", "Prospect <prospect@example.test>"),
        ("To", "sales@sender.example"),
        ("Subject", "Re: Quick question"),
        ("Message-ID", f"<r{time.monotonic_ns()}@example.test>"),
        ("References", references),
    ]
    if in_reply_to is not None:
        headers.append(("In-Reply-To", in_reply_to))
    return Inbound(
        envelope_from="prospect@example.test",
        recipients=["sales@sender.example"],
        headers=headers,
        body=b"Yes, let us talk.\r\n",
    )


@pytest.mark.parametrize("position", [0, 1, 500, 998, 999])
def test_thousand_id_references_matches_at_any_position(
    engine_parts: tuple[Engine, CountingStore, Keyring, str], position: int
) -> None:
    engine, store, _, ours = engine_parts
    chain = [f"<{i}.{position}@elsewhere.example>" for i in range(999)]
    chain.insert(position, f"<{ours}>")
    msg = reply_from("\r\n ".join(chain))
    screening = engine.screen(msg)
    verdict = engine.decide(msg, screening)
    assert verdict.kind == "reply", (verdict.kind, verdict.evidence)
    assert ours in verdict.matched or any(ours in e for e in verdict.evidence)
    # Bounded: one store call for the whole chain, not one per ID.
    assert store.lookups <= 2


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-1],  # truncated by one
        lambda t: t[:20],  # truncated hard
        lambda t: t[:5] + ("a" if t[5] != "a" else "b") + t[6:],  # one character changed
        lambda t: t.upper(),  # case flipped
        lambda t: t + "a",  # extended
    ],
    ids=["truncated-1", "truncated-20", "flipped-char", "uppercase", "extended"],
)
def test_forged_tokens_match_nothing_without_lookup(
    engine_parts: tuple[Engine, CountingStore, Keyring, str], mangle: Callable[[str], str]
) -> None:
    engine, store, _, ours = engine_parts
    token, _, domain = ours.partition("@")
    forged = f"{mangle(token)}@{domain}"
    assert not tokens.verify(engine.keyring, forged)
    msg = reply_from(f"<{forged}>", in_reply_to=f"<{forged}>")
    before = store.lookups
    verdict = engine.decide(msg, engine.screen(msg))
    assert verdict.kind != "reply", verdict.evidence
    assert not verdict.stopped
    # A token that still has our shape is screened out before any lookup; a mangled one
    # that lost the shape may be looked up as someone's own ID, and matches nothing.
    if len(mangle(token)) == tokens.TOKEN_LEN and mangle(token)[0] == tokens.VERSION:
        assert store.lookups == before
        assert any(e.startswith("forged-token") for e in verdict.evidence), verdict.evidence
    assert store.enrollments(campaign="camp-1")[0].status == "active"


def test_token_of_another_installation_matches_nothing(
    engine_parts: tuple[Engine, CountingStore, Keyring, str],
) -> None:
    engine, store, _, _ = engine_parts
    foreign = tokens.mint(Keyring.generate(), DOMAIN)
    before = store.lookups
    msg = reply_from(f"<{foreign}>", in_reply_to=f"<{foreign}>")
    verdict = engine.decide(msg, engine.screen(msg))
    assert verdict.kind != "reply"
    assert store.lookups == before


# --- relay attempt from a foreign address (network namespace) ------
def _ip(*args: str, ns: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = ["ip", *args] if ns is None else ["ip", "netns", "exec", ns, "ip", *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


@pytest.fixture
def foreign_peer() -> Iterator[tuple[str, str, str]]:
    """(namespace, our address, the peer's address): a veth pair into a new namespace."""
    tag = f"{os.getpid() % 10000}{time.monotonic_ns() % 100}"
    ns, ours_if, peer_if = f"rth{tag}", f"rta{tag}", f"rtb{tag}"
    subnet = 200 + os.getpid() % 50
    ours, peer = f"10.231.{subnet}.1", f"10.231.{subnet}.2"
    if _ip("netns", "add", ns).returncode != 0:
        pytest.skip("ip netns is not permitted here (needs root and CAP_SYS_ADMIN)")
    try:
        steps = [
            (("link", "add", ours_if, "type", "veth", "peer", "name", peer_if), None),
            (("link", "set", peer_if, "netns", ns), None),
            (("addr", "add", f"{ours}/24", "dev", ours_if), None),
            (("link", "set", ours_if, "up"), None),
            (("addr", "add", f"{peer}/24", "dev", peer_if), ns),
            (("link", "set", peer_if, "up"), ns),
            (("link", "set", "lo", "up"), ns),
        ]
        for args, where in steps:
            result = _ip(*args, ns=where)
            assert result.returncode == 0, f"ip {' '.join(args)}: {result.stderr}"
        yield ns, ours, peer
    finally:
        _ip("link", "del", ours_if)
        _ip("netns", "del", ns)


CLIENT = """
import smtplib, sys
c = smtplib.SMTP(sys.argv[1], int(sys.argv[2]), local_hostname="outsider.test", timeout=10)
c.ehlo("outsider.test")
code, text = c.mail("spammer@outsider.example")
print(code, text.decode())
if code == 250:
    code, text = c.rcpt("victim@example.test")
    print(code, text.decode())
    if code == 250:
        try:
            code, text = c.data(b"Subject: spam\\r\\n\\r\\nbuy now\\r\\n")
        except smtplib.SMTPDataError as exc:
            code, text = exc.smtp_code, exc.smtp_error
        print(code, text.decode())
c.quit()
"""


def _run_client_in(ns: str, host: str, port: int) -> list[str]:
    result = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", CLIENT, host, str(port)],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()


@pytest.mark.parametrize(("allow", "relayed"), [("192.168.77.0/24", False), ("peer", True)])
def test_relay_from_peer_not_on_allowlist(
    tmp_path: Path,
    upstream: FaultUpstream,
    foreign_peer: tuple[str, str, str],
    allow: str,
    relayed: bool,
) -> None:
    ns, ours, peer = foreign_peer
    allowlist = [f"{peer}/32"] if allow == "peer" else [allow]
    config = Config(
        db=str(tmp_path / "rt.db"),
        domain="mail.test",
        hostname="proxy.test",
        proxy_listen=f"{ours}:0",
        proxy_upstream=f"127.0.0.1:{upstream.port}",
        proxy_allow=allowlist,
    )
    store = SQLiteStore(tmp_path / "rt.db")
    with ThreadedProxy(config, store=store, keyring=Keyring.generate()) as running:
        lines = _run_client_in(ns, ours, running.port)
    if relayed:
        # The control: the same client, allowed, gets through (the setup works).
        assert lines[-1].startswith("250"), lines
        assert len(upstream.received()) == 1
        return
    code, enhanced = code_of(lines[-1].split(" ", 1)[0] + " " + lines[-1].split(" ", 1)[1])
    assert code == 554 and enhanced == "5.7.1", lines
    assert upstream.received() == []
    assert store.messages() == []
