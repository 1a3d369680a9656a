"""The inbound decision, driven directly (no milter protocol): verdicts and what the store
holds afterwards."""

from __future__ import annotations

import dataclasses
import time

import pytest

from replytrack.config import Config
from replytrack.milter.engine import Engine
from replytrack.milter.inbound import Inbound, dedupe_key, never_reply_reason
from replytrack.store import StoreError
from replytrack.store.records import ACTIVE, BOUNCED, PAUSED, STOPPED, Event, StatusChange
from replytrack.tokens import Keyring, mint
from tests.support.milter_records import DOMAIN, inbound, record_sent, reply_headers


def make_engine(store, keyring, **settings) -> Engine:
    return Engine(Config(domain=DOMAIN, **settings), keyring, store)


def status(store, campaign: str, address: str) -> str:
    found = store.enrollments(campaign=campaign, recipient=address)
    return found[0].status if found else "none"


def test_direct_reply_stops_thread_and_records_event(store, keyring):
    mid = record_sent(store, keyring, to=["ann@acme.example", "bob@acme.example"])
    engine = make_engine(store, keyring)
    verdict = engine.process(
        inbound("ann@acme.example", reply_headers("ann@acme.example", in_reply_to=f"<{mid}>"))
    )
    assert verdict.kind == "reply"
    assert verdict.method == "in-reply-to"
    assert verdict.matched == [mid]
    assert verdict.relation == "original_recipient"
    assert verdict.add_header == "reply; campaign=spring; match=in-reply-to"
    assert status(store, "spring", "ann@acme.example") == STOPPED
    assert status(store, "spring", "bob@acme.example") == STOPPED
    events = store.events(kind="reply")
    assert len(events) == 1
    assert events[0].sender == "ann@acme.example"
    assert events[0].message_id == mid
    assert any("in-reply-to:stamped" in e for e in events[0].evidence)


def test_same_inbound_twice_gives_one_event(store, keyring):
    mid = record_sent(store, keyring, to=["ann@acme.example"])
    engine = make_engine(store, keyring)
    msg = inbound("ann@acme.example", reply_headers("ann@acme.example", in_reply_to=f"<{mid}>"))
    engine.process(msg)
    engine.process(msg)
    assert len(store.events(kind="reply")) == 1


def test_dedupe_key_without_message_id_uses_sender_date_subject():
    headers = reply_headers("ann@acme.example", message_id=None)
    a = dedupe_key(inbound("ann@acme.example", headers))
    b = dedupe_key(inbound("ann@acme.example", list(headers)))
    other = dedupe_key(inbound("ann@acme.example", [*headers[:2], ("Subject", "other")]))
    assert a == b
    assert a != other
    assert a.startswith("inbound-hash:")


def test_reply_from_cc_and_other_address(store, keyring):
    mid = record_sent(store, keyring, to=["ann@acme.example"], cc=["carl@acme.example"])
    engine = make_engine(store, keyring)
    cc = engine.decide(
        *(lambda m: (m, engine.screen(m)))(
            inbound("carl@acme.example", reply_headers("carl@acme.example", in_reply_to=f"<{mid}>"))
        )
    )
    assert cc.kind == "reply" and cc.relation == "cc"
    other = engine.process(
        inbound(
            "ann.private@acme.example",
            reply_headers("ann.private@acme.example", references=f"<{mid}>", message_id="<x2@y>"),
        )
    )
    assert other.kind == "reply"
    assert other.relation == "other_address_same_domain"
    assert status(store, "spring", "ann@acme.example") == STOPPED
    assert status(store, "spring", "carl@acme.example") == STOPPED


def test_references_any_position_folded_with_comments_and_no_brackets(store, keyring):
    mid = record_sent(store, keyring, to=["ann@acme.example"])
    chain = " ".join(f"<old{i}@elsewhere.example>" for i in range(300))
    references = f"<a@b.example>\r\n\t{mid} (our mail)\r\n {chain}"
    engine = make_engine(store, keyring)
    verdict = engine.process(
        inbound("ann@acme.example", reply_headers("ann@acme.example", references=references))
    )
    assert verdict.kind == "reply"
    assert verdict.method == "references"


def test_original_client_message_id_matches(store, keyring):
    mid = record_sent(store, keyring, to=["ann@acme.example"], original="client-77@crm.example")
    engine = make_engine(store, keyring)
    verdict = engine.process(
        inbound(
            "ann@acme.example",
            reply_headers("ann@acme.example", in_reply_to="<client-77@crm.example>"),
        )
    )
    assert verdict.kind == "reply"
    assert verdict.matched == [mid]
    assert any(":original:" in e for e in verdict.evidence)


class CountingStore:
    """Wraps a store and records every ID looked up (fault-injection style spy)."""

    def __init__(self, inner):
        self.inner = inner
        self.looked_up: list[str] = []

    def find_sent(self, ids):
        self.looked_up += list(ids)
        return self.inner.find_sent(ids)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_forged_token_is_never_looked_up(store, keyring):
    mid = record_sent(store, keyring, to=["ann@acme.example"])
    local, _, domain = mid.partition("@")
    forged = local[:-1] + ("a" if local[-1] != "a" else "b") + "@" + domain
    spy = CountingStore(store)
    engine = make_engine(spy, keyring, milter_weak_match=False)
    verdict = engine.process(
        inbound("ann@acme.example", reply_headers("ann@acme.example", in_reply_to=f"<{forged}>"))
    )
    assert verdict.kind == "unrelated"
    assert forged not in spy.looked_up
    assert any(e.startswith("forged-token") for e in verdict.evidence)
    assert status(store, "spring", "ann@acme.example") == ACTIVE


def test_weak_match_enrolled_sender(store, keyring):
    mid = record_sent(store, keyring, to=["ann@acme.example"])
    verdict = make_engine(store, keyring).process(
        inbound("ann@acme.example", reply_headers("ann@acme.example", subject="question"))
    )
    assert verdict.kind == "reply"
    assert verdict.method == "weak"
    assert verdict.matched == [mid]
    assert status(store, "spring", "ann@acme.example") == STOPPED


def test_weak_match_off(store, keyring):
    record_sent(store, keyring, to=["ann@acme.example"])
    verdict = make_engine(store, keyring, milter_weak_match=False).process(
        inbound("ann@acme.example", reply_headers("ann@acme.example"))
    )
    assert verdict.kind == "unrelated"
    assert status(store, "spring", "ann@acme.example") == ACTIVE


def test_own_outbound_follow_up_is_not_a_reply(store, keyring):
    first = record_sent(store, keyring, to=["ann@acme.example"])
    follow_up = mint(keyring, DOMAIN)
    headers = reply_headers(
        "sales@vendor.example", in_reply_to=f"<{first}>", message_id=f"<{follow_up}>"
    )
    verdict = make_engine(store, keyring).process(inbound("sales@vendor.example", headers))
    assert verdict.kind == "unrelated"
    assert "own-message" in verdict.evidence
    assert status(store, "spring", "ann@acme.example") == ACTIVE


@pytest.mark.parametrize(
    ("settings", "msg_changes"),
    [
        ({}, {"authenticated": "sales"}),
        ({"milter_internal_domains": ["acme.example"]}, {}),
    ],
)
def test_authenticated_and_internal_are_never_replies(store, keyring, settings, msg_changes):
    mid = record_sent(store, keyring, to=["ann@acme.example"])
    msg = inbound("ann@acme.example", reply_headers("ann@acme.example", in_reply_to=f"<{mid}>"))
    msg = dataclasses.replace(msg, **msg_changes)
    engine = make_engine(store, keyring, **settings)
    screening = engine.screen(msg)
    assert screening.accept_now
    assert engine.process(msg).kind == "unrelated"
    assert status(store, "spring", "ann@acme.example") == ACTIVE


@pytest.mark.parametrize(
    ("envelope", "extra", "reason"),
    [
        ("", [], "null-sender"),
        ("ann@acme.example", [("Auto-Submitted", "auto-replied")], "auto-submitted"),
        (
            "ann@acme.example",
            [("Content-Type", 'multipart/report; report-type="delivery-status"; boundary=x')],
            "multipart-report",
        ),
    ],
)
def test_never_reply_guards(store, keyring, envelope, extra, reason):
    mid = record_sent(store, keyring, to=["ann@acme.example"])
    msg = inbound(
        "ann@acme.example", reply_headers("ann@acme.example", in_reply_to=f"<{mid}>", extra=extra)
    )
    msg = dataclasses.replace(msg, envelope_from=envelope)
    assert never_reply_reason(msg) == reason
    verdict = make_engine(store, keyring).process(msg)
    assert verdict.kind != "reply"
    assert status(store, "spring", "ann@acme.example") != STOPPED


def test_auto_submitted_no_is_still_a_reply(store, keyring):
    mid = record_sent(store, keyring, to=["ann@acme.example"])
    msg = inbound(
        "ann@acme.example",
        reply_headers("ann@acme.example", in_reply_to=f"<{mid}>", extra=[("Auto-Submitted", "no")]),
    )
    assert never_reply_reason(msg) is None
    assert make_engine(store, keyring).process(msg).kind == "reply"


def test_out_of_office_pauses_until_return_date_and_reactivates(store, keyring):
    mid = record_sent(store, keyring, to=["ann@acme.example", "bob@acme.example"])
    headers = reply_headers(
        "ann@acme.example",
        in_reply_to=f"<{mid}>",
        subject="Out of Office: Hello",
        extra=[("Auto-Submitted", "auto-replied")],
    )
    now = time.time()
    back = time.strftime("%Y-%m-%d", time.gmtime(now + 10 * 86400))
    body = f"I am out of the office until {back}. I will be back on {back}.\n".encode()
    verdict = make_engine(store, keyring).process(inbound("ann@acme.example", headers, body=body))
    assert verdict.kind == "auto_reply"
    assert verdict.paused_until is not None
    assert status(store, "spring", "ann@acme.example") == PAUSED
    assert status(store, "spring", "bob@acme.example") == ACTIVE
    assert store.ooo_until("ann@acme.example") == pytest.approx(verdict.paused_until)
    assert store.reactivate_due(verdict.paused_until + 1) == 1
    assert status(store, "spring", "ann@acme.example") == ACTIVE


def test_out_of_office_without_date_uses_default_pause(store, keyring):
    mid = record_sent(store, keyring, to=["ann@acme.example"])
    headers = reply_headers(
        "ann@acme.example",
        in_reply_to=f"<{mid}>",
        subject="Automatic reply: Hello",
        extra=[("Auto-Submitted", "auto-replied")],
    )
    msg = inbound("ann@acme.example", headers, body=b"I am currently out of the office.\n")
    verdict = make_engine(store, keyring, milter_ooo_default_days=3).process(msg)
    assert verdict.kind == "auto_reply"
    assert verdict.paused_until == pytest.approx(msg.received_at + 3 * 86400, abs=5)
    assert status(store, "spring", "ann@acme.example") == PAUSED


def bounce_headers(mid: str) -> list[tuple[str, str]]:
    return [
        ("From", "Mail Delivery System <MAILER-DAEMON@mx.acme.example>"),
        ("To", "sales@vendor.example"),
        ("Subject", "Undelivered Mail Returned to Sender"),
        ("Message-ID", "<bounce-1@mx.acme.example>"),
        ("Auto-Submitted", "auto-replied"),
        ("Content-Type", 'multipart/report; report-type=delivery-status; boundary="B"'),
        ("MIME-Version", "1.0"),
    ]


def bounce_body(mid: str, recipient: str, status_code: str, action: str) -> bytes:
    return (
        "--B\r\nContent-Type: text/plain\r\n\r\nYour mail could not be delivered.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.acme.example\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\nAction: {action}\r\nStatus: {status_code}\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 user unknown\r\n"
        "--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"From: sales@vendor.example\r\nTo: {recipient}\r\n"
        f"Message-ID: <{mid}>\r\nSubject: Hello\r\n"
        "--B--\r\n"
    ).encode()


def test_permanent_bounce_marks_recipient_bounced_everywhere(store, keyring):
    mid = record_sent(store, keyring, to=["gone@acme.example"], campaign="spring")
    record_sent(store, keyring, to=["gone@acme.example"], campaign="autumn")
    msg = dataclasses.replace(
        inbound(
            "", bounce_headers(mid), body=bounce_body(mid, "gone@acme.example", "5.1.1", "failed")
        ),
        envelope_from="",
    )
    verdict = make_engine(store, keyring).process(msg)
    assert verdict.kind == "bounce"
    assert mid in verdict.matched
    assert status(store, "spring", "gone@acme.example") == BOUNCED
    assert status(store, "autumn", "gone@acme.example") == BOUNCED
    assert len(store.events(kind="bounce")) == 1


def test_transient_bounce_is_recorded_only(store, keyring):
    mid = record_sent(store, keyring, to=["slow@acme.example"])
    msg = dataclasses.replace(
        inbound(
            "", bounce_headers(mid), body=bounce_body(mid, "slow@acme.example", "4.2.2", "delayed")
        ),
        envelope_from="",
    )
    verdict = make_engine(store, keyring).process(msg)
    assert verdict.kind == "bounce"
    assert status(store, "spring", "slow@acme.example") == ACTIVE
    assert len(store.events(kind="bounce")) == 1


def test_stop_scope_domain_and_freemail_fallback(store, keyring):
    mid = record_sent(store, keyring, to=["ann@acme.example"])
    record_sent(store, keyring, to=["dan@acme.example"])
    record_sent(store, keyring, to=["eve@other.example"])
    engine = make_engine(store, keyring, milter_stop_scope="domain")
    engine.process(
        inbound("ann@acme.example", reply_headers("ann@acme.example", in_reply_to=f"<{mid}>"))
    )
    assert status(store, "spring", "dan@acme.example") == STOPPED
    assert status(store, "spring", "eve@other.example") == ACTIVE

    gmid = record_sent(store, keyring, to=["x@gmail.com"], campaign="c2")
    record_sent(store, keyring, to=["y@gmail.com"], campaign="c2")
    engine.process(
        inbound(
            "x@gmail.com", reply_headers("x@gmail.com", in_reply_to=f"<{gmid}>", message_id="<g@1>")
        )
    )
    assert status(store, "c2", "x@gmail.com") == STOPPED
    assert status(store, "c2", "y@gmail.com") == ACTIVE


def test_stop_scope_recipient_stops_only_the_replier(store, keyring):
    mid = record_sent(store, keyring, to=["ann@acme.example", "bob@acme.example"])
    make_engine(store, keyring, milter_stop_scope="recipient").process(
        inbound("ann@acme.example", reply_headers("ann@acme.example", in_reply_to=f"<{mid}>"))
    )
    assert status(store, "spring", "ann@acme.example") == STOPPED
    assert status(store, "spring", "bob@acme.example") == ACTIVE


def test_unrelated_mail_is_accepted_at_end_of_headers(store, keyring):
    record_sent(store, keyring, to=["ann@acme.example"])
    engine = make_engine(store, keyring)
    msg = inbound(
        "stranger@else.example", reply_headers("stranger@else.example", in_reply_to="<z@q>")
    )
    screening = engine.screen(msg)
    assert screening.accept_now
    assert not screening.wants_body


def test_spoofed_header_forces_end_of_message(store, keyring):
    engine = make_engine(store, keyring)
    msg = inbound(
        "stranger@else.example",
        reply_headers("stranger@else.example", extra=[("X-ReplyTrack", "reply; campaign=x")]),
    )
    screening = engine.screen(msg)
    assert not screening.accept_now
    assert screening.strip_count == 1
    verdict = engine.decide(msg, screening)
    assert verdict.kind == "unrelated" and verdict.add_header is None


class LockedStore:
    """A store whose every call fails as a locked database would (fault injection)."""

    def __getattr__(self, name):
        def fail(*args, **kwargs):
            raise StoreError("database is locked")

        return fail


def test_store_failure_is_flagged_not_raised_at_screening(keyring):
    engine = Engine(Config(domain=DOMAIN), keyring, LockedStore())  # type: ignore[arg-type]
    msg = inbound("ann@acme.example", reply_headers("ann@acme.example", in_reply_to="<a@b>"))
    screening = engine.screen(msg)
    assert screening.store_failed
    assert not screening.accept_now and screening.wants_body
    with pytest.raises(StoreError):
        engine.process(msg)


def test_inbound_json_round_trip():
    msg = Inbound(
        envelope_from="", recipients=["a@b"], headers=[("Subject", "h\udce9")], body=b"\xff\x00"
    )
    back = Inbound.from_json(msg.to_json())
    assert back == msg
    assert Keyring  # keep the import used for readers: tokens are minted with Keyring


def test_read_receipt_is_recorded_and_stops_nothing(store, keyring):
    mid = record_sent(store, keyring, to=["ann@acme.example"])
    headers = [
        ("From", "ann@acme.example"),
        ("To", "sales@vendor.example"),
        ("Subject", "Read: Hello"),
        ("Message-ID", "<mdn-1@acme.example>"),
        ("In-Reply-To", f"<{mid}>"),
        ("MIME-Version", "1.0"),
        ("Content-Type", 'multipart/report; report-type=disposition-notification; boundary="M"'),
    ]
    body = (
        "--M\r\nContent-Type: text/plain\r\n\r\nYour message was read.\r\n"
        "--M\r\nContent-Type: message/disposition-notification\r\n\r\n"
        "Final-Recipient: rfc822; ann@acme.example\r\n"
        f"Original-Message-ID: <{mid}>\r\n"
        "Disposition: manual-action/MDN-sent-manually; displayed\r\n--M--\r\n"
    ).encode()
    verdict = make_engine(store, keyring).process(inbound("ann@acme.example", headers, body=body))
    assert verdict.kind == "receipt"
    assert verdict.add_header is None
    assert status(store, "spring", "ann@acme.example") == ACTIVE
    assert [e.kind for e in store.events()] == ["receipt"]


def test_message_id_with_undecodable_byte_is_recorded(store, keyring):
    # pymilter hands raw non-UTF-8 header bytes over as surrogate escapes.
    mid = record_sent(store, keyring, to=["ann@acme.example"])
    headers = reply_headers(
        "ann@acme.example", in_reply_to=f"<{mid}>", message_id="<r\udce9ply@prospect.example>"
    )
    engine = make_engine(store, keyring)
    verdict = engine.process(inbound("ann@acme.example", headers))
    assert verdict.kind == "reply"
    assert verdict.dedupe_key is not None
    verdict.dedupe_key.encode("utf-8")
    assert len(store.events(kind="reply")) == 1
    assert status(store, "spring", "ann@acme.example") == STOPPED
    # The same mail again is the same event.
    engine.process(inbound("ann@acme.example", list(headers)))
    assert len(store.events(kind="reply")) == 1


def test_own_manual_follow_up_without_auth_is_not_a_reply(store, keyring):
    # The salesperson answers their own thread through a relay without SMTP AUTH.
    mid = record_sent(store, keyring, to=["ann@acme.example"], sender="sales@vendor.example")
    headers = reply_headers(
        "Sales@Vendor.example", in_reply_to=f"<{mid}>", message_id="<manual-1@vendor.example>"
    )
    verdict = make_engine(store, keyring).process(inbound("sales@vendor.example", headers))
    assert verdict.kind == "unrelated"
    assert "own-sender" in verdict.evidence
    assert status(store, "spring", "ann@acme.example") == ACTIVE
    assert store.events(kind="reply") == []


def test_weak_match_needs_the_envelope_sender_to_be_the_from_address(store, keyring):
    record_sent(store, keyring, to=["bob@acme.example", "carl@acme.example"])
    engine = make_engine(store, keyring)
    # Anyone can write "From: bob": with another envelope sender and no threading, no stop.
    forged = dataclasses.replace(
        inbound("bob@acme.example", reply_headers("bob@acme.example", subject="hi")),
        envelope_from="attacker@evil.example",
    )
    verdict = engine.process(forged)
    assert verdict.kind == "unrelated"
    assert "weak:envelope-differs-from-from" in verdict.evidence
    assert status(store, "spring", "bob@acme.example") == ACTIVE
    assert status(store, "spring", "carl@acme.example") == ACTIVE
    assert store.events() == []
    # The same mail from bob's own envelope (case aside) is weak evidence.
    genuine = dataclasses.replace(forged, envelope_from="Bob@ACME.example")
    verdict = engine.process(genuine)
    assert verdict.kind == "reply" and verdict.method == "weak"
    assert status(store, "spring", "bob@acme.example") == STOPPED


def test_bounce_referencing_none_of_our_mail_changes_no_enrollment(store, keyring):
    record_sent(store, keyring, to=["ann@acme.example"], campaign="spring")
    record_sent(store, keyring, to=["ann@acme.example"], campaign="autumn")
    # A forged report: a permanent failure for ann, returning a mail we never sent.
    msg = dataclasses.replace(
        inbound(
            "",
            bounce_headers("forged@elsewhere.example"),
            body=bounce_body("forged@elsewhere.example", "ann@acme.example", "5.1.1", "failed"),
        ),
        envelope_from="",
    )
    verdict = make_engine(store, keyring).process(msg)
    assert verdict.kind == "bounce"
    assert verdict.matched == []
    assert verdict.bounced == ()
    assert status(store, "spring", "ann@acme.example") == ACTIVE
    assert status(store, "autumn", "ann@acme.example") == ACTIVE
    events = store.events(kind="bounce")
    assert len(events) == 1
    assert "bounce:unmatched" in events[0].evidence


def test_weak_match_stops_the_sender_in_every_campaign_also_when_paused(store, keyring):
    record_sent(store, keyring, to=["ann@acme.example"], campaign="spring")
    record_sent(store, keyring, to=["ann@acme.example"], campaign="autumn")
    # Ann was away: paused in autumn by an earlier out-of-office.
    store.record_event(
        Event(kind="auto_reply", created_at=time.time(), sender="ann@acme.example"),
        set_status=[
            StatusChange("autumn", "ann@acme.example", PAUSED, "out of office", time.time() + 86400)
        ],
    )
    assert status(store, "autumn", "ann@acme.example") == PAUSED
    verdict = make_engine(store, keyring).process(
        inbound("ann@acme.example", reply_headers("ann@acme.example", subject="back: question"))
    )
    assert verdict.kind == "reply" and verdict.method == "weak"
    assert status(store, "spring", "ann@acme.example") == STOPPED
    assert status(store, "autumn", "ann@acme.example") == STOPPED
    assert len(store.events(kind="reply")) == 1


def test_stop_scope_recipient_reply_from_cc_also_stops_the_to_recipients(store, keyring):
    mid = record_sent(
        store, keyring, to=["ann@acme.example"], cc=["carl@acme.example", "dora@acme.example"]
    )
    verdict = make_engine(store, keyring, milter_stop_scope="recipient").process(
        inbound("carl@acme.example", reply_headers("carl@acme.example", in_reply_to=f"<{mid}>"))
    )
    assert verdict.kind == "reply" and verdict.relation == "cc"
    assert status(store, "spring", "carl@acme.example") == STOPPED
    assert status(store, "spring", "ann@acme.example") == STOPPED
    # Another CC'd person is not the mail's addressee.
    assert status(store, "spring", "dora@acme.example") == ACTIVE


def test_a_written_remove_me_lists_its_writer_and_carries_its_intent(store, keyring):
    """The reply's intent reaches check --json, the event and the webhook payload; an
    "unsubscribe" puts the writer alone on the do-not-contact list."""
    mid = record_sent(store, keyring, to=["ann@acme.example", "bob@acme.example"])
    engine = make_engine(store, keyring)
    msg = inbound(
        "ann@acme.example",
        reply_headers("ann@acme.example", in_reply_to=f"<{mid}>"),
        body=b"Please remove me from your mailing list.\n\n> Hello Ann, our offer...\n",
    )
    verdict = engine.process(msg)
    assert verdict.kind == "reply"
    assert verdict.to_json()["intent"] == "unsubscribe"
    [event] = store.events(kind="reply")
    assert event.to_json()["intent"] == "unsubscribe"
    assert [s.value for s in store.suppressions()] == ["ann@acme.example"]
    assert store.blocked_enrollments("autumn", ["bob@acme.example"]) == {}
    engine.process(msg)  # a replay lists nobody twice
    assert len(store.events(kind="unsubscribe")) == 1


def test_a_positive_reply_stops_the_thread_and_lists_nobody(store, keyring):
    mid = record_sent(store, keyring, to=["ann@acme.example"])
    engine = make_engine(store, keyring)
    msg = inbound(
        "ann@acme.example",
        reply_headers("ann@acme.example", in_reply_to=f"<{mid}>"),
        body=b"Sounds good, let's book a call next week.\n\n> To unsubscribe, reply STOP\n",
    )
    verdict = engine.process(msg)
    assert verdict.to_json()["intent"] == "positive"
    assert store.suppressions() == []
    assert status(store, "spring", "ann@acme.example") == STOPPED


def test_a_left_the_organisation_notice_marks_the_address_like_a_bounce(store, keyring):
    """An auto-reply saying the person has left answers our mail: their address gets no
    more mail in any campaign; the colleague who got the same mail is untouched."""
    mid = record_sent(store, keyring, to=["john@acme.example", "mary@acme.example"])
    engine = make_engine(store, keyring)
    headers = reply_headers(
        "john@acme.example", in_reply_to=f"<{mid}>", extra=[("Auto-Submitted", "auto-replied")]
    )
    body = b"John Smith is no longer with Acme. Please contact sales@acme.example instead.\n"
    verdict = engine.process(inbound("john@acme.example", headers, body=body))
    assert (verdict.kind, verdict.subtype) == ("auto_reply", "left_organisation")
    assert status(store, "spring", "john@acme.example") == BOUNCED
    assert status(store, "spring", "mary@acme.example") == ACTIVE
    blocked = store.blocked_enrollments("spring", ["john@acme.example", "mary@acme.example"])
    assert list(blocked) == ["john@acme.example"]
