"""Answers that carry no usable threading headers, against each store backend: Outlook's
Thread-Index naming one of our threads (weaker evidence), and a header-less answer from a
colleague at the prospect's domain whose subject answers a recent campaign mail (the
weakest). Also the webhook an out-of-office pause queues, with the resume date."""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest

from replytrack.config import Config
from replytrack.milter.engine import Engine
from replytrack.notify import payload
from replytrack.proxy import threading
from replytrack.store.records import ACTIVE, PAUSED, STOPPED, ThreadRoot, iso_time
from replytrack.tokens import Keyring, mint
from tests.support.milter_records import DOMAIN, inbound, record_mail, record_sent, reply_headers

GUID = bytes(range(1, 17))


def make_engine(store: Any, keyring: Keyring, **settings: Any) -> Engine:
    return Engine(Config(domain=DOMAIN, **settings), keyring, store)


def status(store: Any, campaign: str, address: str) -> str:
    found = store.enrollments(campaign=campaign, recipient=address)
    return found[0].status if found else "none"


def record_threaded(
    store: Any,
    keyring: Keyring,
    *,
    to: str,
    guid: bytes = GUID,
    campaign: str = "spring",
    subject: str = "Hello",
    created_at: float | None = None,
) -> tuple[str, bytes]:
    """Record a first step that started an Outlook thread, as the proxy does; its stamped
    Message-ID and the 22-byte root kept on the enrollment."""
    sent_at = time.time() - 3600 if created_at is None else created_at
    root = threading.index_root(sent_at, guid)
    message_id = mint(keyring, DOMAIN)
    record_mail(
        store,
        message_id,
        campaign,
        to,
        sender="sales@vendor.example",
        at=sent_at,
        subject=subject,
        thread=ThreadRoot(to, base64.b64encode(root).decode("ascii")),
    )
    return message_id, root


def outlook_index(root: bytes) -> str:
    """The Thread-Index of Outlook's answer in a thread: the root and one child block."""
    return base64.b64encode(threading.thread_index(root, [(time.time(), "reply")])).decode()


# --- the store's two reads ----------------------------------------------------------------------
def test_find_by_thread_guid_gives_the_threads_newest_mail(any_store: Any, keyring: Keyring):
    first, _ = record_threaded(any_store, keyring, to="ann@acme.example")
    later = record_sent(any_store, keyring, to=["ann@acme.example"], step=2)
    record_threaded(any_store, keyring, to="cat@other.example", guid=bytes(range(2, 18)))
    found = any_store.find_by_thread_guid(GUID)
    assert [s.message_id for s in found] == [later]
    assert first != later
    assert any_store.find_by_thread_guid(bytes(16 * [0xEE])) == []


def test_recent_campaign_mail_to_a_domain(any_store: Any, keyring: Keyring):
    now = time.time()
    spring = record_sent(any_store, keyring, to=["ann@acme.example"])
    record_sent(any_store, keyring, to=["ann@acme.example"], campaign=None)  # one-to-one
    record_sent(any_store, keyring, to=["cat@other.example"], campaign="autumn")
    found = any_store.recent_campaign_mail("acme.example", since=now - 3600)
    assert [s.message_id for s in found] == [spring]
    assert found[0].recipients[0].address == "ann@acme.example"
    assert any_store.recent_campaign_mail("acme.example", since=now + 60) == []
    assert any_store.recent_campaign_mail("nobody.example", since=now - 3600) == []


# --- Outlook's thread key -------------------------------------------------------------------------
def test_a_reply_carrying_only_our_thread_index_matches(any_store: Any, keyring: Keyring):
    mid, root = record_threaded(any_store, keyring, to="ann@acme.example")
    headers = reply_headers(
        "ann.private@elsewhere.example",
        subject="RE: something else",
        extra=[("Thread-Index", outlook_index(root)), ("Thread-Topic", "Hello")],
    )
    verdict = make_engine(any_store, keyring).process(
        inbound("ann.private@elsewhere.example", headers)
    )
    assert verdict.kind == "reply" and verdict.method == "thread-index"
    assert verdict.matched == [mid]
    assert verdict.add_header == "reply; campaign=spring; match=thread-index"
    assert status(any_store, "spring", "ann@acme.example") == STOPPED
    [event] = any_store.events(kind="reply")
    assert event.detail["match"] == "thread-index"
    assert f"thread-index:{GUID.hex()}" in event.evidence


def test_a_thread_index_of_another_conversation_is_no_evidence(any_store: Any, keyring: Keyring):
    record_threaded(any_store, keyring, to="ann@acme.example")
    # Outlook substituted its own GUID: nothing matches, and nothing is held against the
    # mail either (it is just unrelated mail).
    other = threading.index_root(time.time(), bytes(16 * [0x5A]))
    headers = reply_headers(
        "ann.private@elsewhere.example", extra=[("Thread-Index", outlook_index(other))]
    )
    verdict = make_engine(any_store, keyring).process(
        inbound("ann.private@elsewhere.example", headers)
    )
    assert verdict.kind == "unrelated" and verdict.matched == []
    assert status(any_store, "spring", "ann@acme.example") == ACTIVE
    assert any_store.events(kind="reply") == []


# --- header-less answers from a colleague ---------------------------------------------------
def test_a_colleagues_headerless_answer_with_the_subject_is_caught(
    any_store: Any, keyring: Keyring
):
    mid = record_sent(any_store, keyring, to=["ann@acme.example"])
    headers = reply_headers("bob@acme.example", subject="AW: Re:  hello", message_id="<c1@acme>")
    verdict = make_engine(any_store, keyring).process(inbound("bob@acme.example", headers))
    assert verdict.kind == "reply" and verdict.method == "subject"
    assert verdict.matched == [mid] and verdict.relation == "other_address_same_domain"
    assert status(any_store, "spring", "ann@acme.example") == STOPPED
    [event] = any_store.events(kind="reply")
    assert event.sender == "bob@acme.example" and event.detail["match"] == "subject"
    assert "subject:domain:acme.example" in event.evidence


@pytest.mark.parametrize(
    ("sender", "subject", "settings"),
    [
        ("carl@gmail.com", "Re: Hello", {}),  # free mail: the domain says nothing
        ("bob@acme.example", "Re: Pricing for next year", {}),  # answers something else
        ("bob@acme.example", "Hello", {}),  # no reply prefix: answers nothing
        ("bob@acme.example", "Re: Hello", {"milter_subject_match": False}),
        ("sue@vendor.example", "Re: Hello", {}),  # one of ours, at the seller's domain
    ],
)
def test_headerless_answers_that_are_not_caught(
    any_store: Any, keyring: Keyring, sender: str, subject: str, settings: dict[str, Any]
):
    # Campaign mail to a prospect at acme, one at a free-mail provider, and (a test send)
    # one at the seller's own domain.
    record_sent(any_store, keyring, to=["ann@acme.example", "bob@gmail.com"])
    record_sent(any_store, keyring, to=["zed@vendor.example"], sender="sales@vendor.example")
    headers = reply_headers(sender, subject=subject, message_id="<c2@x>")
    verdict = make_engine(any_store, keyring, **settings).process(inbound(sender, headers))
    assert verdict.kind == "unrelated" and verdict.matched == []
    assert status(any_store, "spring", "ann@acme.example") == ACTIVE
    assert status(any_store, "spring", "zed@vendor.example") == ACTIVE
    assert any_store.events(kind="reply") == []


@pytest.mark.parametrize(("days", "kind"), [(1, "unrelated"), (14, "reply")])
def test_the_subject_match_window(any_store: Any, keyring: Keyring, days: int, kind: str):
    record_threaded(any_store, keyring, to="ann@acme.example", created_at=time.time() - 2 * 86400)
    headers = reply_headers("bob@acme.example", subject="Re: Hello", message_id="<c3@acme>")
    engine = make_engine(any_store, keyring, milter_subject_match_days=days)
    assert engine.process(inbound("bob@acme.example", headers)).kind == kind


def test_a_colleagues_answer_to_someone_elses_thread_is_not_matched_by_subject(
    any_store: Any, keyring: Keyring
):
    record_sent(any_store, keyring, to=["ann@acme.example"])
    headers = reply_headers("bob@acme.example", in_reply_to="<not-ours@acme.example>")
    verdict = make_engine(any_store, keyring).process(inbound("bob@acme.example", headers))
    assert verdict.kind == "unrelated"
    assert status(any_store, "spring", "ann@acme.example") == ACTIVE


# --- the pause webhook ---------------------------------------------------------------------
def test_an_out_of_office_pause_queues_a_webhook_with_the_resume_date(
    any_store: Any, keyring: Keyring
):
    mid = record_sent(any_store, keyring, to=["ann@acme.example"])
    back = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 10 * 86400))
    headers = reply_headers(
        "ann@acme.example",
        in_reply_to=f"<{mid}>",
        subject="Out of Office: Hello",
        extra=[("Auto-Submitted", "auto-replied")],
    )
    body = f"I am out of the office until {back}. I will be back on {back}.\n".encode()
    verdict = make_engine(any_store, keyring).process(
        inbound("ann@acme.example", headers, body=body)
    )
    assert status(any_store, "spring", "ann@acme.example") == PAUSED
    [item] = any_store.claim_outbox("t", now=time.time(), lease_seconds=60, limit=10)
    sent = payload(item.event)
    assert sent["kind"] == "auto_reply" and sent["campaign"] == "spring"
    assert sent["detail"]["resume_at"] == iso_time(verdict.paused_until)
    assert sent["detail"]["resume_at"].startswith(back)
    assert sent["detail"]["paused_until"] == pytest.approx(verdict.paused_until)
