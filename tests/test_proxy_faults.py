# ruff: noqa: F811  (pytest fixtures imported from tests.support.upstream are parameters)
"""The proxy fails closed: upstream refusals pass through with their codes, everything else
is a 451, never a 250 for mail that was not relayed and never a 500.

Faults come from a misbehaving aiosmtpd upstream, from Postfix's ``smtp-sink`` with its
``-f`` / ``-r`` / ``-q`` / ``-w`` options, and (only where no real part can fail on cue) from
a store that refuses writes.
"""

from __future__ import annotations

import smtplib
import socket
import threading
import time
from pathlib import Path

import pytest

from replytrack.proxy import handler as proxy_handler
from replytrack.proxy.testing import ThreadedProxy
from replytrack.store import OutboundRecord, StoreError
from replytrack.store.sqlite import SQLiteStore
from tests.conftest import free_port
from tests.support.upstream import (  # noqa: F401  (fixtures)
    RecordingUpstream,
    SmtpSink,
    proxy,
    start_proxy,
    upstream,
)

pytestmark = pytest.mark.timeout(60)

MAIL = b"From: a@example.org\r\nTo: b@example.net\r\nMessage-ID: <c1@x.test>\r\n\r\nbody\r\n"


def statuses(store: SQLiteStore) -> list[tuple[str, str | None]]:
    rows = store.conn.execute("SELECT status, upstream_reply FROM messages ORDER BY id")
    return [(r["status"], r["upstream_reply"]) for r in rows]


def test_upstream_refuses_sender_code_passes_through(
    proxy: ThreadedProxy, upstream: RecordingUpstream, store: SQLiteStore
) -> None:
    upstream.faults.mail_reply = "553 5.7.1 sender not allowed here"
    with smtplib.SMTP("127.0.0.1", proxy.port) as client:
        client.ehlo()
        code, text = client.mail("a@example.org")
    assert (code, text) == (553, b"5.7.1 sender not allowed here")
    assert upstream.received == [] and statuses(store) == []


def test_upstream_refuses_one_recipient_the_client_hears_it(
    proxy: ThreadedProxy, upstream: RecordingUpstream, store: SQLiteStore
) -> None:
    upstream.faults.rcpt_replies = {"gone@example.net": "550 5.1.1 no such user"}
    with smtplib.SMTP("127.0.0.1", proxy.port) as client:
        client.ehlo()
        client.mail("a@example.org")
        assert client.rcpt("gone@example.net") == (550, b"5.1.1 no such user")
        assert client.rcpt("b@example.net")[0] == 250
        assert client.data(MAIL)[0] == 250
    [got] = upstream.received
    assert got.rcpt_tos == ["b@example.net"]
    [msg] = store.messages()
    recipients = {r.address: (r.status, r.reason) for r in msg.recipients}
    assert recipients["gone@example.net"] == ("refused", "550 5.1.1 no such user")
    assert recipients["b@example.net"] == ("sent", None)


def test_upstream_tempfails_a_recipient_with_its_own_code(
    proxy: ThreadedProxy, upstream: RecordingUpstream
) -> None:
    upstream.faults.rcpt_replies = {"full@example.net": "452 4.2.2 mailbox full"}
    with smtplib.SMTP("127.0.0.1", proxy.port) as client:
        client.ehlo()
        client.mail("a@example.org")
        assert client.rcpt("full@example.net") == (452, b"4.2.2 mailbox full")


@pytest.mark.parametrize(
    ("reply", "code", "text"),
    [
        ("554 5.6.0 content refused", 554, b"5.6.0 content refused"),
        ("451 4.3.0 try later", 451, b"4.3.0 try later"),
        # An upstream without enhanced codes gets one added, by class.
        ("550 go away", 550, b"5.0.0 go away"),
    ],
)
def test_upstream_refuses_data_code_passes_through_and_mail_is_failed(
    proxy: ThreadedProxy,
    upstream: RecordingUpstream,
    store: SQLiteStore,
    reply: str,
    code: int,
    text: bytes,
) -> None:
    upstream.faults.data_reply = reply
    with (
        pytest.raises(smtplib.SMTPDataError) as err,
        smtplib.SMTP("127.0.0.1", proxy.port) as client,
    ):
        client.sendmail("a@example.org", ["b@example.net"], MAIL)
    assert (err.value.smtp_code, err.value.smtp_error) == (code, text)
    assert upstream.received == []
    [(status, said)] = statuses(store)
    assert status == "failed" and said is not None and said.startswith(str(code))


def test_upstream_drops_the_connection_after_data(
    proxy: ThreadedProxy, upstream: RecordingUpstream, store: SQLiteStore
) -> None:
    upstream.faults.drop_after_data = True
    with (
        pytest.raises(smtplib.SMTPDataError) as err,
        smtplib.SMTP("127.0.0.1", proxy.port) as client,
    ):
        client.sendmail("a@example.org", ["b@example.net"], MAIL)
    assert err.value.smtp_code == 451 and err.value.smtp_error.startswith(b"4.4.2")
    # No answer is not a refusal: the upstream may have queued the mail, so it stays in
    # matching and suppression as "unconfirmed" (the client retries all the same).
    assert statuses(store)[0][0] == "unconfirmed"
    # The broken connection is not reused: the next mail goes through on a new one.
    upstream.faults.drop_after_data = False
    with smtplib.SMTP("127.0.0.1", proxy.port) as client:
        assert client.sendmail("a@example.org", ["b@example.net"], MAIL) == {}
    assert len(upstream.received) == 1
    assert statuses(store)[1][0] == "relayed"


def test_upstream_slower_than_the_timeout(
    start_proxy, upstream: RecordingUpstream, store: SQLiteStore
) -> None:
    proxy = start_proxy(upstream.address, proxy_timeout=0.5)
    upstream.faults.data_delay = 2.0
    with (
        pytest.raises(smtplib.SMTPDataError) as err,
        smtplib.SMTP("127.0.0.1", proxy.port) as client,
    ):
        client.sendmail("a@example.org", ["b@example.net"], MAIL)
    assert err.value.smtp_code == 451 and err.value.smtp_error.startswith(b"4.4.2")
    assert statuses(store)[0][0] == "unconfirmed"


def test_upstream_down(start_proxy, store: SQLiteStore) -> None:
    proxy = start_proxy(f"127.0.0.1:{free_port()}")
    with smtplib.SMTP("127.0.0.1", proxy.port) as client:
        client.ehlo()
        code, text = client.mail("a@example.org")
    assert code == 451 and text.startswith(b"4.4.1")
    assert statuses(store) == []


class FailingStore(SQLiteStore):
    """A store whose disk 'fills up': the fault a real SQLite file cannot give on cue."""

    fail_record = True

    def record_outbound(self, record: OutboundRecord) -> int:
        if self.fail_record:
            raise StoreError("store write failed: database or disk is full")
        return super().record_outbound(record)


def test_store_down_before_data_means_451_and_nothing_relayed(
    start_proxy, upstream: RecordingUpstream, tmp_path: Path
) -> None:
    failing = FailingStore(tmp_path / "failing.db")
    proxy = start_proxy(upstream.address, proxy_store=failing)
    with (
        pytest.raises(smtplib.SMTPDataError) as err,
        smtplib.SMTP("127.0.0.1", proxy.port) as client,
    ):
        client.sendmail("a@example.org", ["b@example.net"], MAIL)
    assert err.value.smtp_code == 451 and err.value.smtp_error.startswith(b"4.3.0")
    assert upstream.received == []
    # The upstream transaction was reset, not left for the next client.
    assert "RSET" in upstream.handler.commands
    failing.fail_record = False
    with smtplib.SMTP("127.0.0.1", proxy.port) as client:
        assert client.sendmail("a@example.org", ["b@example.net"], MAIL) == {}
    assert len(upstream.received) == 1
    failing.close_all()


def test_unexpected_error_in_data_is_451_not_500(
    proxy: ThreadedProxy,
    upstream: RecordingUpstream,
    store: SQLiteStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(data: bytes, message_id: str) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(proxy_handler, "stamp", broken)
    with (
        pytest.raises(smtplib.SMTPDataError) as err,
        smtplib.SMTP("127.0.0.1", proxy.port) as client,
    ):
        client.sendmail("a@example.org", ["b@example.net"], MAIL)
    assert err.value.smtp_code == 451 and err.value.smtp_error.startswith(b"4.3.0")
    assert upstream.received == [] and statuses(store) == []


def test_error_outside_our_hooks_is_451_not_aiosmtpds_500(
    proxy: ThreadedProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: object) -> str:
        raise RuntimeError("a bug")

    monkeypatch.setattr(proxy.server.handler, "handle_NOOP", broken, raising=False)
    # Hooks are looked up at the first connection, which this is.
    with smtplib.SMTP("127.0.0.1", proxy.port) as client:
        code, text = client.noop()
    assert code == 451 and text.startswith(b"4.3.0")


# --- Postfix's smtp-sink as a misbehaving upstream -------------------------------------------


def sink_send(proxy: ThreadedProxy) -> tuple[int, bytes]:
    try:
        with smtplib.SMTP("127.0.0.1", proxy.port) as client:
            client.sendmail("a@example.org", ["b@example.net"], MAIL)
    except smtplib.SMTPResponseException as exc:
        return exc.smtp_code, exc.smtp_error
    except smtplib.SMTPRecipientsRefused as exc:
        [(code, text)] = exc.recipients.values()
        return code, text
    return 250, b""


@pytest.mark.parametrize(
    ("faults", "code", "status"),
    [
        ({"hard": "mail"}, 5, None),
        ({"soft": "rcpt"}, 4, None),
        ({"hard": "."}, 5, "failed"),
        ({"soft": "."}, 4, "failed"),
        ({"disconnect": "."}, 4, "unconfirmed"),
        ({}, 2, "relayed"),
    ],
)
def test_smtp_sink_faults(
    start_proxy, store: SQLiteStore, faults: dict[str, str], code: int, status: str | None
) -> None:
    with SmtpSink(**faults) as sink:
        proxy = start_proxy(sink.address)
        got, _ = sink_send(proxy)
    assert got // 100 == code
    assert [s for s, _ in statuses(store)] == ([status] if status else [])


def test_smtp_sink_slow_past_the_timeout(start_proxy, store: SQLiteStore) -> None:
    with SmtpSink(delay=3) as sink:
        proxy = start_proxy(sink.address, proxy_timeout=1.0)
        got, text = sink_send(proxy)
    assert got == 451 and text.startswith(b"4.4.2")
    assert [s for s, _ in statuses(store)] == ["unconfirmed"]


def test_shutdown_finishes_the_mail_in_flight(
    start_proxy, upstream: RecordingUpstream, store: SQLiteStore
) -> None:
    proxy = start_proxy(upstream.address)
    upstream.faults.data_delay = 1.0
    outcome: list[object] = []

    def client() -> None:
        try:
            with smtplib.SMTP("127.0.0.1", proxy.port) as c:
                outcome.append(c.sendmail("a@example.org", ["b@example.net"], MAIL))
        except Exception as exc:  # pragma: no cover - reported by the assertion below
            outcome.append(exc)

    thread = threading.Thread(target=client)
    thread.start()
    deadline = time.monotonic() + 10
    while "DATA" not in upstream.handler.commands and time.monotonic() < deadline:
        time.sleep(0.01)
    # A second client, already connected, tries to start a transaction during shutdown.
    late = smtplib.SMTP("127.0.0.1", proxy.port)
    late.ehlo()
    stopper = threading.Thread(target=proxy.stop, kwargs={"grace": 10})
    stopper.start()
    while not proxy.server.handler.stopping:
        time.sleep(0.01)
    assert late.mail("late@example.org")[0] == 421
    late.close()
    stopper.join(timeout=20)
    thread.join(timeout=10)
    assert outcome == [{}]
    assert len(upstream.received) == 1
    assert [s for s, _ in statuses(store)] == ["relayed"]


def test_client_leaving_after_the_dot_does_not_strand_the_mail(
    proxy: ThreadedProxy, upstream: RecordingUpstream, store: SQLiteStore
) -> None:
    upstream.faults.data_delay = 0.5
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=20) as sock:
        reader = sock.makefile("rb")
        for line in (
            None,
            b"EHLO c.test\r\n",
            b"MAIL FROM:<a@example.org>\r\n",
            b"RCPT TO:<b@example.net>\r\n",
            b"DATA\r\n",
        ):
            if line:
                sock.sendall(line)
            while reader.readline()[3:4] == b"-":
                pass
        sock.sendall(MAIL + b".\r\n")
        # Gone before the reply (the file object holds the socket open until closed too).
        reader.close()
        sock.shutdown(socket.SHUT_RDWR)
    deadline = time.monotonic() + 20
    while [s for s, _ in statuses(store)] != ["relayed"] and time.monotonic() < deadline:
        time.sleep(0.05)
    # The relay ran to its end: recorded, relayed, settled; the upstream connection was
    # given back, not left mid-command.
    assert [s for s, _ in statuses(store)] == ["relayed"]
    assert len(upstream.received) == 1
    upstream.faults.data_delay = 0
    with smtplib.SMTP("127.0.0.1", proxy.port) as client:
        assert client.sendmail("a@example.org", ["b@example.net"], MAIL) == {}
    assert upstream.handler.connections == 1


def test_upstream_refusing_the_data_command_leaves_the_connection_fit_for_the_next_mail(
    proxy: ThreadedProxy, upstream: RecordingUpstream, store: SQLiteStore
) -> None:
    # The upstream refuses DATA itself (before 354), which leaves its transaction open.
    upstream.faults.data_command_reply = "451 4.3.0 data refused for now"
    with (
        pytest.raises(smtplib.SMTPDataError) as err,
        smtplib.SMTP("127.0.0.1", proxy.port) as client,
    ):
        client.sendmail("a@example.org", ["b@example.net"], MAIL)
    assert (err.value.smtp_code, err.value.smtp_error) == (451, b"4.3.0 data refused for now")
    upstream.faults.data_command_reply = None
    # Another client gets the pooled connection: its mail must go through, not meet a
    # "503 nested MAIL command" left over from the first transaction.
    with smtplib.SMTP("127.0.0.1", proxy.port) as client:
        client.sendmail("c@example.org", ["d@example.net"], MAIL)
    [got] = upstream.received
    assert (got.mail_from, got.rcpt_tos) == ("c@example.org", ["d@example.net"])
    assert upstream.handler.connections == 1
    assert [s for s, _ in statuses(store)] == ["failed", "relayed"]


def test_client_leaving_while_mail_is_in_flight_upstream_closes_that_connection(
    proxy: ThreadedProxy, upstream: RecordingUpstream, store: SQLiteStore
) -> None:
    upstream.faults.mail_delay = 1.0
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(b"EHLO client.test\r\n")
        while reader.readline()[3:4] == b"-":
            pass
        sock.sendall(b"MAIL FROM:<a@example.org>\r\n")
        deadline = time.monotonic() + 10
        while "MAIL" not in upstream.handler.commands and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "MAIL" in upstream.handler.commands
        # The socket only closes once its file object is closed too.
        reader.close()
    # The client hung up before the upstream answered MAIL: the upstream transaction is
    # half open, so the proxy must close that connection, neither pool nor forget it.
    deadline = time.monotonic() + 10
    while upstream.handler.closed < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert upstream.handler.closed == 1
    assert len(proxy.server.pool._idle) == 0
    upstream.faults.mail_delay = 0.0
    with smtplib.SMTP("127.0.0.1", proxy.port) as client:
        client.sendmail("c@example.org", ["d@example.net"], MAIL)
    [got] = upstream.received
    assert got.mail_from == "c@example.org"
    assert store.messages()[0].sender == "c@example.org"
