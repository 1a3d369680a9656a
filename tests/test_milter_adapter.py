"""The pymilter adapter driven by pymilter's own test context (``Milter.testctx``): what is
negotiated, when the mail is accepted, which headers change, and that faults accept."""

from __future__ import annotations

import io
import logging
import socket
import threading
import time

import Milter

# Importing Milter.test makes NOREPLY read as CONTINUE, as pymilter's own tests expect.
import Milter.test
import pytest
from Milter.testctx import TestCtx as MilterTestCtx

from replytrack.config import Config
from replytrack.milter import adapter, store_calls
from replytrack.milter.engine import Engine
from replytrack.milter.journal import Journal
from replytrack.store import StoreError
from tests.support.milter_records import DOMAIN, record_sent


def eml(headers: list[tuple[str, str]], body: str = "Thanks, call me.\n") -> io.BytesIO:
    text = "".join(f"{n}: {v}\n" for n, v in headers) + "\n" + body
    return io.BytesIO(text.encode())


class TestCtx(MilterTestCtx):
    """pymilter's test context, with SKIP from the body callback meaning what it means in
    libmilter: no more body, go on to end of message."""

    __test__ = False

    def _feed_body(self, bfp):
        rc = super()._feed_body(bfp)
        return Milter.CONTINUE if rc == Milter.SKIP else rc


@pytest.fixture
def journal(tmp_path) -> Journal:
    return Journal(tmp_path / "journal.jsonl")


@pytest.fixture
def milter_for(journal):
    created = []

    def make(engine: Engine, *, tcp: bool = False) -> TestCtx:
        adapter.install(engine, journal, tcp=tcp)
        ctx = TestCtx()
        created.append(ctx)
        assert ctx._connect() == Milter.CONTINUE
        return ctx

    yield make
    for ctx in created:
        ctx._close()


class BodySpy(adapter.ReplyTrackMilter):
    """Counts body chunks and end-of-message calls the adapter receives."""

    bodies = 0
    eoms = 0

    def body(self, chunk):
        type(self).bodies += 1
        return super().body(chunk)

    def eom(self):
        type(self).eoms += 1
        return super().eom()


def test_negotiates_only_needed_callbacks(store, keyring, milter_for):
    ctx = milter_for(Engine(Config(domain=DOMAIN), keyring, store))
    proto = ctx._protocol
    for skipped in (Milter.P_NOCONNECT, Milter.P_NOHELO, Milter.P_NODATA, Milter.P_NOUNKNOWN):
        assert proto & skipped, hex(skipped)
    for noreply in (Milter.P_NR_MAIL, Milter.P_NR_RCPT, Milter.P_NR_HDR):
        assert proto & noreply, hex(noreply)
    for wanted in (Milter.P_NOMAIL, Milter.P_NORCPT, Milter.P_NOHDRS, Milter.P_NOEOH):
        assert not proto & wanted, hex(wanted)
    assert not proto & Milter.P_NR_EOH  # end of headers is the one answer per mail
    assert adapter.FLAGS == Milter.ADDHDRS | Milter.CHGHDRS


def test_over_tcp_data_is_answered_to_avoid_the_delayed_ack_stall(store, keyring, milter_for):
    ctx = milter_for(Engine(Config(domain=DOMAIN), keyring, store), tcp=True)
    proto = ctx._protocol
    assert not proto & Milter.P_NODATA
    assert not proto & Milter.P_NR_DATA
    # Everything else as over a unix socket: replying to more callbacks only adds round
    # trips once DATA is answered (measured in bench/milter_bench.py).
    for noreply in (Milter.P_NR_MAIL, Milter.P_NR_RCPT, Milter.P_NR_HDR):
        assert proto & noreply, hex(noreply)
    assert proto & Milter.P_NOCONNECT and proto & Milter.P_NOHELO
    assert not proto & Milter.P_NOEOH and not proto & Milter.P_NR_EOH


def test_unrelated_mail_accepted_at_end_of_headers_without_body(store, keyring, milter_for):
    record_sent(store, keyring, to=["ann@acme.example"])
    ctx = milter_for(Engine(Config(domain=DOMAIN), keyring, store))
    BodySpy.bodies = BodySpy.eoms = 0
    Milter.factory = BodySpy
    ctx._close()
    assert ctx._connect() == Milter.CONTINUE
    rc = ctx._feedFile(
        eml([("From", "stranger@else.example"), ("Subject", "hi"), ("In-Reply-To", "<a@b>")]),
        "stranger@else.example",
        "sales@vendor.example",
    )
    assert rc == Milter.ACCEPT
    assert BodySpy.bodies == 0 and BodySpy.eoms == 0
    assert not ctx._headerschanged


def test_reply_is_flagged_and_spoofed_copies_removed(store, keyring, milter_for):
    mid = record_sent(store, keyring, to=["ann@acme.example"])
    ctx = milter_for(Engine(Config(domain=DOMAIN), keyring, store))
    rc = ctx._feedFile(
        eml(
            [
                ("From", "Ann <ann@acme.example>"),
                ("Subject", "Re: Hello"),
                ("Message-ID", "<r1@acme.example>"),
                ("In-Reply-To", f"<{mid}>"),
                ("X-ReplyTrack", "reply; campaign=fake; match=weak"),
            ]
        ),
        "ann@acme.example",
        "sales@vendor.example",
    )
    assert rc == Milter.ACCEPT
    assert ctx._msg.get_all("X-ReplyTrack") == ["reply; campaign=spring; match=in-reply-to"]
    assert store.enrollments(recipient="ann@acme.example")[0].status == "stopped"
    assert len(store.events(kind="reply")) == 1


def test_spoofed_header_on_unrelated_mail_is_removed_not_flagged(store, keyring, milter_for):
    ctx = milter_for(Engine(Config(domain=DOMAIN), keyring, store))
    rc = ctx._feedFile(
        eml(
            [
                ("From", "stranger@else.example"),
                ("Subject", "hi"),
                ("X-ReplyTrack", "reply; campaign=fake; match=in-reply-to"),
            ]
        ),
        "stranger@else.example",
        "sales@vendor.example",
    )
    assert rc == Milter.ACCEPT
    assert ctx._msg.get_all("X-ReplyTrack") is None
    assert store.events() == []


def test_authenticated_submission_is_not_a_reply(store, keyring, milter_for):
    mid = record_sent(store, keyring, to=["ann@acme.example"])
    ctx = milter_for(Engine(Config(domain=DOMAIN), keyring, store))
    ctx._setsymval("{auth_authen}", "ann")
    rc = ctx._feedFile(
        eml([("From", "ann@acme.example"), ("In-Reply-To", f"<{mid}>")]),
        "ann@acme.example",
        "sales@vendor.example",
    )
    assert rc == Milter.ACCEPT
    assert store.enrollments(recipient="ann@acme.example")[0].status == "active"


class Exploding(Engine):
    def screen(self, msg, **kwargs):
        raise RuntimeError("boom")


class ExplodingAtEnd(Engine):
    def decide(self, msg, screening, **kwargs):
        raise RuntimeError("boom")


@pytest.mark.parametrize("engine_class", [Exploding, ExplodingAtEnd])
def test_exceptions_accept_strip_and_journal_the_mail(
    store, keyring, milter_for, journal, engine_class, caplog
):
    mid = record_sent(store, keyring, to=["ann@acme.example"])
    ctx = milter_for(engine_class(Config(domain=DOMAIN), keyring, store))
    with caplog.at_level(logging.ERROR, logger="replytrack.milter"):
        rc = ctx._feedFile(
            eml(
                [
                    ("From", "ann@acme.example"),
                    ("In-Reply-To", f"<{mid}>"),
                    ("X-ReplyTrack", "reply; campaign=fake; match=weak"),
                ]
            ),
            "ann@acme.example",
            "sales@vendor.example",
        )
    assert rc == Milter.ACCEPT
    assert "journaling the mail" in caplog.text
    # The verdict is not lost: the mail waits in the journal, and no outside copy of our
    # header gets through.
    assert journal.backlog() == 1
    assert ctx._msg.get_all("X-ReplyTrack") is None
    assert journal.replay(Engine(Config(domain=DOMAIN), keyring, store).process) == 1
    assert store.enrollments(recipient="ann@acme.example")[0].status == "stopped"


class LockedStore:
    """Every store call fails like a locked database (fault injection)."""

    def __getattr__(self, name):
        def fail(*args, **kwargs):
            raise StoreError("database is locked")

        return fail


def test_locked_store_journals_and_accepts(keyring, milter_for, journal):
    ctx = milter_for(Engine(Config(domain=DOMAIN), keyring, LockedStore()))  # type: ignore[arg-type]
    rc = ctx._feedFile(
        eml([("From", "ann@acme.example"), ("Message-ID", "<q@acme>"), ("In-Reply-To", "<x@y>")]),
        "ann@acme.example",
        "sales@vendor.example",
    )
    assert rc == Milter.ACCEPT
    assert journal.backlog() == 1


def test_write_failure_at_end_of_message_journals(store, keyring, milter_for, journal):
    mid = record_sent(store, keyring, to=["ann@acme.example"])

    class ReadOnlyWrites(Engine):
        def apply(self, verdict):
            raise StoreError("attempt to write a readonly database")

    ctx = milter_for(ReadOnlyWrites(Config(domain=DOMAIN), keyring, store))
    rc = ctx._feedFile(
        eml(
            [("From", "ann@acme.example"), ("Message-ID", "<q2@acme>"), ("In-Reply-To", f"<{mid}>")]
        ),
        "ann@acme.example",
        "sales@vendor.example",
    )
    assert rc == Milter.ACCEPT
    assert journal.backlog() == 1
    engine = Engine(Config(domain=DOMAIN), keyring, store)
    assert journal.replay(engine.process) == 1
    assert store.enrollments(recipient="ann@acme.example")[0].status == "stopped"


# A query that never ends on its own: SQLite counts forever.
ENDLESS = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT max(x) FROM n"


@pytest.mark.timeout(30)
def test_runaway_store_query_is_interrupted_then_journaled(
    store, keyring, milter_for, journal, monkeypatch
):
    mid = record_sent(store, keyring, to=["ann@acme.example"])
    monkeypatch.setattr(store_calls, "STORE_CALL_TIMEOUT", 0.3)
    # Fault injection: the lookup runs a statement that would never finish.
    real_find_sent = store.find_sent
    monkeypatch.setattr(store, "find_sent", lambda ids: store.query(ENDLESS))
    ctx = milter_for(Engine(Config(domain=DOMAIN), keyring, store))
    started = time.monotonic()
    rc = ctx._feedFile(
        eml(
            [("From", "ann@acme.example"), ("Message-ID", "<s@acme>"), ("In-Reply-To", f"<{mid}>")]
        ),
        "ann@acme.example",
        "sales@vendor.example",
    )
    # Accepted within the bound, journaled for replay.
    assert time.monotonic() - started < 3
    assert rc == Milter.ACCEPT
    assert journal.backlog() == 1
    monkeypatch.setattr(store, "find_sent", real_find_sent)
    engine = Engine(Config(domain=DOMAIN), keyring, store)
    assert journal.replay(engine.process) == 1
    assert store.enrollments(recipient="ann@acme.example")[0].status == "stopped"


def test_tcp_listener_gets_nodelay_and_accepted_connections_inherit_it():
    # libmilter owns its sockets; the adapter finds the listener by port and sets
    # TCP_NODELAY, which Linux copies to every connection accepted from it. Without it
    # the ACCEPT after ADDHEADER at end of message waits for a delayed ACK (40 ms a mail).
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert adapter.set_listener_nodelay(port)
        assert listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = listener.accept()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            client.close()


def test_missing_listener_only_logs(caplog):
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))  # bound, not listening: not a listener to change
        port = bound.getsockname()[1]
        with caplog.at_level(logging.WARNING, logger="replytrack.milter"):
            assert not adapter.set_listener_nodelay(port)
    assert "TCP_NODELAY not set" in caplog.text


@pytest.mark.timeout(30)
def test_stuck_store_journals_further_mail_at_once(
    store, keyring, milter_for, journal, monkeypatch
):
    mid = record_sent(store, keyring, to=["ann@acme.example"])
    monkeypatch.setattr(store_calls, "MAX_IN_STORE", 1)
    release = threading.Event()
    inside = threading.Event()
    screened = []

    class Stuck(Engine):
        def screen(self, msg, **kwargs):
            screened.append(msg.queue_id)
            inside.set()
            release.wait(10)  # a store stuck on a hung disk (fault injection)
            return super().screen(msg, **kwargs)

    engine = Stuck(Config(domain=DOMAIN), keyring, store)
    first_ctx, second_ctx = milter_for(engine), milter_for(engine)

    def mail(n: int) -> io.BytesIO:
        return eml(
            [
                ("From", "ann@acme.example"),
                ("Message-ID", f"<busy{n}@acme>"),
                ("In-Reply-To", f"<{mid}>"),
            ]
        )

    results = {}
    first = threading.Thread(
        target=lambda: results.setdefault(
            1, first_ctx._feedFile(mail(1), "ann@acme.example", "sales@vendor.example")
        )
    )
    first.start()
    assert inside.wait(10)
    # The second mail does not wait behind the stuck one: journaled at once.
    assert (
        second_ctx._feedFile(mail(2), "ann@acme.example", "sales@vendor.example") == Milter.ACCEPT
    )
    assert journal.backlog() == 1
    assert len(screened) == 1
    release.set()
    first.join(10)
    # The first finished normally once the store came back: a reply, recorded and stopped.
    assert results[1] == Milter.ACCEPT
    assert journal.backlog() == 1
    assert [e.kind for e in store.events()] == ["reply"]
