# ruff: noqa: F811  (pytest fixtures imported from tests.test_hostile are parameters)
"""Bad input gets a clear, correct answer (issue 13 items 7, 8 and 10): metadata that breaks
the campaign id rule is refused with 550 5.6.0, bytes that can never be relayed are a
permanent 5xx (never a 451 to retry forever), every reply carries an enhanced status code,
mail data holding NUL is refused, and a campaign id recorded before the rule cannot add a
parameter to the X-ReplyTrack header. Raw sockets, as an attacker's client would send."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from urllib.parse import unquote

import pytest

from replytrack.config import Config
from replytrack.milter.engine import Engine
from replytrack.proxy.testing import ThreadedProxy
from replytrack.store.sqlite import SQLiteStore
from replytrack.tokens import Keyring
from tests.support.faults import FaultUpstream, make_message
from tests.support.milter_records import record_sent
from tests.test_hostile import DOMAIN, Raw, code_of, proxy, raw, reply_from, upstream  # noqa: F401

pytestmark = pytest.mark.timeout(60)


def _store(tmp_path: Path) -> SQLiteStore:
    """The store the ``proxy`` fixture records into, opened for reading."""
    return SQLiteStore(tmp_path / "rt.db")


def _send(client: Raw, data: bytes, *, sender: bytes = b"sales@sender.example") -> str:
    """One transaction on an open connection; the reply to the end of DATA."""
    assert client.cmd(b"MAIL FROM:<" + sender + b">\r\n").startswith("250")
    assert client.cmd(b"RCPT TO:<prospect@example.test>\r\n").startswith("250")
    assert client.cmd(b"DATA\r\n").startswith("354")
    return client.cmd(data + b".\r\n")


# --- item 7: campaign metadata ------
@pytest.mark.parametrize(
    "fields",
    [
        # Blank: relayed before as if it were one-to-one mail, so no suppression check ran.
        b"X-ReplyTrack-Campaign:    \r\n",
        b"X-ReplyTrack-Campaign:\r\n",
        # Would have been echoed into the inbound X-ReplyTrack header as extra parameters.
        b"X-ReplyTrack-Campaign: spring; match=in-reply-to\r\n",
        b"X-ReplyTrack-Campaign: spring 2026\r\n",
        # Arabic-Indic three, read as 3 before.
        "X-ReplyTrack-Campaign: spring\r\nX-ReplyTrack-Step: \u0663\r\n".encode(),
    ],
)
def test_bad_campaign_metadata_is_refused_with_550_5_6_0(
    proxy: ThreadedProxy, upstream: FaultUpstream, tmp_path: Path, fields: bytes
) -> None:
    message = make_message("bad-meta", campaign=None).replace(
        b"\r\n\r\n", b"\r\n" + fields + b"\r\n", 1
    )
    client = raw(proxy.port)
    reply = _send(client, message)
    code, enhanced = code_of(reply)
    assert (code, enhanced) == (550, "5.6.0"), reply
    assert "X-ReplyTrack-" in reply  # the reason names the header
    # The next, good mail on the same connection goes through.
    code, _ = code_of(_send(client, make_message("good")))
    client.close()
    assert code == 250
    [arrival] = upstream.received()
    assert arrival.header("Subject") == "good"
    assert [m.campaign for m in _store(tmp_path).messages()] == ["camp-1"]


def test_legacy_campaign_id_adds_no_parameter_to_x_replytrack(tmp_path: Path) -> None:
    """A campaign id recorded before the rule (it may hold anything) is written so that the
    header keeps exactly its three parts and one line."""
    legacy = "spring; match=forged\r\nX-Injected: yes"
    keyring = Keyring.generate()
    store = SQLiteStore(tmp_path / "rt.db")
    ours = record_sent(store, keyring, to=["prospect@example.test"], campaign=legacy, domain=DOMAIN)
    engine = Engine(Config(db=str(tmp_path / "rt.db"), domain=DOMAIN), keyring, store)
    msg = reply_from(f"<{ours}>", in_reply_to=f"<{ours}>")
    verdict = engine.decide(msg, engine.screen(msg))
    assert verdict.kind == "reply" and verdict.add_header is not None
    header = verdict.add_header
    assert "\r" not in header and "\n" not in header
    parts = [p.strip() for p in header.split(";")]
    assert len(parts) == 3 and parts[0] == "reply" and parts[2].startswith("match=")
    name, _, value = parts[1].partition("=")
    assert name == "campaign*" and unquote(value.removeprefix("utf-8''")) == legacy
    # A valid id reads as the README shows it.
    other = record_sent(
        store, keyring, to=["lee@example.test"], campaign="fall-2026", domain=DOMAIN
    )
    msg = reply_from(f"<{other}>", in_reply_to=f"<{other}>")
    header = engine.decide(msg, engine.screen(msg)).add_header or ""
    assert header.startswith("reply; campaign=fall-2026; match=")
    store.close_all()


# --- item 8: permanent errors for permanently bad input ------
@pytest.mark.parametrize(
    ("commands", "expected"),
    [
        ([b"MAIL FROM:<\xff\xfe@example.com> SMTPUTF8\r\n"], (553, "5.1.7")),
        ([b"MAIL FROM:<\xff\xfe@example.com>\r\n"], (553, "5.1.7")),
        (
            [b"MAIL FROM:<a@example.com> SMTPUTF8\r\n", b"RCPT TO:<\xc3(@example.test>\r\n"],
            (553, "5.1.3"),
        ),
    ],
)
def test_invalid_utf8_in_a_path_is_a_permanent_refusal(
    proxy: ThreadedProxy,
    upstream: FaultUpstream,
    caplog: pytest.LogCaptureFixture,
    commands: list[bytes],
    expected: tuple[int, str],
) -> None:
    client = raw(proxy.port)
    with caplog.at_level(logging.INFO):
        replies = [client.cmd(c) for c in commands]
        assert code_of(replies[-1]) == expected, replies
        assert "UTF-8" in replies[-1]
        # The session goes on: a good transaction still works.
        assert client.cmd(b"RSET\r\n").startswith("250 2.0.0")
        assert code_of(_send(client, make_message("after")))[0] == 250
    client.close()
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert [a.header("Subject") for a in upstream.received()] == ["after"]


_ENHANCED = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}( |$)")


def test_every_reply_carries_an_enhanced_status_code(
    proxy: ThreadedProxy, upstream: FaultUpstream
) -> None:
    """RFC 2034 3 (4): every 2xx, 4xx and 5xx reply line but the greeting and the replies to
    HELO and EHLO starts its text with an RFC 3463 code; 3xx (354) is not covered. HELP's
    replies are 2xx and 5xx, so they carry one too. aiosmtpd's own replies included."""
    client = Raw("127.0.0.1", proxy.port)
    assert client.greeting.startswith("220 ")  # the greeting: exempt
    coded: list[tuple[bytes, str]] = []

    def send(line: bytes, *, exempt: bool = False) -> str:
        reply = client.cmd(line)
        if not exempt:
            coded.append((line, reply))
        return reply

    send(b"HELO client.test\r\n", exempt=True)
    for line in [
        b"NOOP\r\n",
        b"NOOP anything\r\n",
        b"HELP\r\n",
        b"HELP MAIL\r\n",
        b"HELP NOSUCH\r\n",
        b"VRFY\r\n",
        b"VRFY <someone@example.test>\r\n",
        b"VRFY <\xff\r\n",
        b"EXPN staff\r\n",
        b"FOO bar\r\n",
        b"\r\n",
        b"\xff\xfe\r\n",
        b"X" * 70_000 + b"\r\n",
        b"AUTH PLAIN\r\n",
        b"STARTTLS\r\n",
        b"RSET now\r\n",
        b"QUIT now\r\n",
        b"DATA\r\n",
        b"RCPT TO:<p@example.test>\r\n",
    ]:
        send(line)
    ehlo = send(b"EHLO client.test\r\n", exempt=True)
    assert "ENHANCEDSTATUSCODES" in ehlo
    for line in [
        b"HELO\r\n",
        b"MAIL FROM:<\xff\xfe@example.com> SMTPUTF8\r\n",
        b"MAIL FROM: sales@sender.example\r\n",
        b"MAIL FROM:<a\x00b@sender.example>\r\n",
        b"MAIL FROM:<sales@sender.example> BODY=9BIT\r\n",
        b"MAIL FROM:<sales@sender.example> SIZE=999999999999\r\n",
        b"MAIL FROM:<sales@sender.example> SMTPUTF8=yes\r\n",
        b"MAIL FROM:<sales@sender.example> FOO=BAR\r\n",
        b"MAIL FROM:<sales@sender.example>\r\n",
        b"MAIL FROM:<sales@sender.example>\r\n",
        b"RCPT TO:<\xff@example.test>\r\n",
        b"RCPT TO:<p@example.test> FOO=1\r\n",
        b"RCPT TO:<prospect@example.test>\r\n",
    ]:
        send(line)
    assert client.cmd(b"DATA\r\n").startswith("354")  # 3xx: exempt
    send(b"Subject: x\r\n\r\n" + b"y" * 70_000 + b"\r\n.\r\n")  # line too long
    send(b"DATA\r\n")  # the transaction ended with the refusal
    send(b"MAIL FROM:<sales@sender.example>\r\n")
    send(b"RCPT TO:<prospect@example.test>\r\n")
    assert client.cmd(b"DATA\r\n").startswith("354")
    send(b"Subject: nul\r\n\r\na\x00b\r\n.\r\n")
    send(b"QUIT\r\n")
    client.sock.close()

    missing = [
        (command[:40], line)
        for command, reply in coded
        for line in reply.split("\r\n")
        if not _ENHANCED.match(line[4:])
    ]
    assert missing == [], missing
    # Nothing in that session was a 451 (no internal error) and nothing went upstream.
    assert not [reply for _, reply in coded if reply.startswith("451")]
    assert upstream.received() == []


# --- item 10: NUL in mail data ------
def test_nul_in_data_is_refused_and_the_connection_goes_on(
    proxy: ThreadedProxy, upstream: FaultUpstream, tmp_path: Path
) -> None:
    """The SMTP-smuggling scanner's "<CR><LF><NUL>.<CR><LF>": the whole mail is refused
    (a server that drops NUL before looking for the end would see two mails), nothing is
    relayed or recorded, and the next mail on the same connection goes through."""
    smuggled = (
        b"From: sales@sender.example\r\nSubject: first\r\n\r\nhello\r\n\x00.\r\n"
        b"MAIL FROM:<ceo@victim.example>\r\nRCPT TO:<target@example.test>\r\nDATA\r\n"
        b"Subject: smuggled\r\n\r\nwire the money\r\n"
    )
    client = raw(proxy.port)
    reply = _send(client, smuggled)
    assert code_of(reply) == (554, "5.6.0") and "NUL" in reply, reply
    assert upstream.received() == []
    assert _store(tmp_path).messages() == []
    # Clean state: a new transaction, and nothing of the refused one, reaches the upstream.
    reply = _send(client, make_message("clean"))
    client.close()
    assert code_of(reply) == (250, "2.0.0"), reply
    [arrival] = upstream.received()
    assert arrival.mail_from == "sales@sender.example"
    assert arrival.rcpt_tos == ("prospect@example.test",)
    assert arrival.header("Subject") == "clean" and b"\x00" not in arrival.data
    assert [m.subject for m in _store(tmp_path).messages()] == ["clean"]
