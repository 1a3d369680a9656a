"""The milter's decision as a pure function: hand-built classifications and store facts, no
database. What the store does with a verdict is tested in test_milter_engine.py."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt

import pytest

from replytrack.classify import Classification
from replytrack.config import Config
from replytrack.milter import decision
from replytrack.milter import match as matching
from replytrack.milter.decision import NO_FACTS, Facts, decide, reads
from replytrack.milter.engine import Engine
from replytrack.milter.inbound import Inbound
from replytrack.milter.match import Match
from replytrack.proxy import threading
from replytrack.store.records import (
    ACTIVE,
    BOUNCED,
    PAUSED,
    STOPPED,
    Enrollment,
    OutboundRecipient,
    SentMessage,
    StatusChange,
)
from replytrack.tokens import Keyring, mint

DOMAIN = "track.example.com"
NOW = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC).timestamp()
CONFIG = Config(domain=DOMAIN)
PERSON = Classification("human", ("no-automation-signal",))
SENT = SentMessage(
    id=1,
    message_id=f"h{'x' * 20}@{DOMAIN}",
    original_message_id=None,
    campaign="spring",
    step=1,
    sender="sales@vendor.example",
    from_address="sales@vendor.example",
    subject="Hello",
    created_at=NOW - 86400,
    status="relayed",
    recipients=(
        OutboundRecipient("ann@acme.example", "to", True),
        OutboundRecipient("bob@acme.example", "cc", True),
    ),
)
MATCHED = Match(method="in-reply-to", sent=(SENT,), evidence=("in-reply-to:stamped",))


def enrolled(recipient: str, status: str = ACTIVE, campaign: str = "spring") -> Enrollment:
    return Enrollment(campaign, recipient, status, None, NOW - 86400)


def mail(sender: str = "ann@acme.example", envelope: str | None = None, **headers: str) -> Inbound:
    fields = {"From": f"<{sender}>", "Subject": "Re: Hello", "Message-ID": "<in-1@acme.example>"}
    fields.update({k.replace("_", "-"): v for k, v in headers.items()})
    return Inbound(
        envelope_from=sender if envelope is None else envelope,
        headers=list(fields.items()),
        queue_id="QID1",
    )


def test_a_persons_answer_to_our_mail_is_a_reply_that_stops_the_thread():
    facts = Facts(MATCHED, (enrolled("ann@acme.example"), enrolled("bob@acme.example")))
    verdict = decide(mail(), PERSON, facts, CONFIG, now=NOW)
    assert verdict.kind == "reply"
    assert verdict.matched == [SENT.message_id] and verdict.method == "in-reply-to"
    assert verdict.relation == "original_recipient"
    assert verdict.stopped == ["ann@acme.example", "bob@acme.example"]
    assert verdict.set_status == (
        StatusChange("spring", "ann@acme.example", STOPPED, "reply from ann@acme.example"),
        StatusChange("spring", "bob@acme.example", STOPPED, "reply from ann@acme.example"),
    )
    assert verdict.add_header == "reply; campaign=spring; match=in-reply-to"
    assert verdict.notify and verdict.ooo is None
    assert verdict.event is not None and verdict.event.kind == "reply"
    assert verdict.event.message_id == SENT.message_id
    assert verdict.event.detail["stopped"] == verdict.stopped
    assert verdict.dedupe_key == "inbound:in-1@acme.example"


def test_a_reply_stops_only_active_and_paused_enrollments():
    facts = Facts(
        MATCHED, (enrolled("ann@acme.example", PAUSED), enrolled("bob@acme.example", BOUNCED))
    )
    verdict = decide(mail(), PERSON, facts, CONFIG, now=NOW)
    assert verdict.kind == "reply" and verdict.stopped == ["ann@acme.example"]


def test_domain_scope_stops_colleagues_from_the_facts():
    facts = Facts(MATCHED, (enrolled("ann@acme.example"), enrolled("cy@acme.example")))
    config = Config(domain=DOMAIN, milter_stop_scope="domain")
    verdict = decide(mail(), PERSON, facts, config, now=NOW)
    assert verdict.scope == "domain"
    assert verdict.stopped == ["ann@acme.example", "cy@acme.example"]


def test_a_person_answering_nothing_of_ours_is_unrelated():
    verdict = decide(mail(), PERSON, NO_FACTS, CONFIG, now=NOW)
    assert verdict.kind == "unrelated"
    assert verdict.event is None and verdict.set_status == () and verdict.add_header is None


def test_our_own_follow_up_in_the_thread_is_never_a_reply():
    facts = Facts(MATCHED, (enrolled("ann@acme.example"),))
    verdict = decide(mail("sales@vendor.example"), PERSON, facts, CONFIG, now=NOW)
    assert verdict.kind == "unrelated"
    assert "own-sender" in verdict.evidence
    assert verdict.event is None and verdict.stopped == [] and verdict.add_header is None
    assert reads("sales@vendor.example", PERSON, MATCHED, CONFIG) == decision.Reads()


def test_our_own_stamped_mail_is_never_a_reply_even_without_a_store():
    keyring = Keyring.generate()
    engine = Engine(CONFIG, keyring, None)
    msg = mail("sales@vendor.example", Message_ID=f"<{mint(keyring, DOMAIN)}>")
    screening = engine.screen(msg)
    assert screening.skip_reason == "own-message" and screening.accept_now
    verdict = engine.decide(msg, screening)
    assert verdict.kind == "unrelated" and verdict.event is None


def test_a_machine_the_classifier_took_for_a_person_is_no_reply():
    facts = Facts(MATCHED, (enrolled("ann@acme.example"),))
    verdict = decide(mail(envelope=""), PERSON, facts, CONFIG, now=NOW)
    assert verdict.kind == "unrelated"
    assert "never-reply:null-sender" in verdict.evidence
    assert verdict.stopped == [] and verdict.event is None


def test_out_of_office_pauses_the_sender_until_return_and_stops_nothing():
    away = Classification(
        "auto_reply", ("subject:out-of-office",), "out_of_office", dt.date(2026, 12, 8)
    )
    facts = Facts(MATCHED, (enrolled("ann@acme.example"), enrolled("bob@acme.example")))
    verdict = decide(mail(), away, facts, CONFIG, now=NOW)
    until = dt.datetime(2026, 12, 8, tzinfo=dt.UTC).timestamp()
    assert verdict.kind == "auto_reply" and verdict.stopped == []
    assert verdict.paused_until == until
    assert verdict.set_status == (
        StatusChange("spring", "ann@acme.example", PAUSED, "out of office", until),
    )
    assert verdict.ooo == ("ann@acme.example", until)
    assert verdict.event is not None and verdict.event.detail["paused_until"] == until
    # A pause goes to the webhooks with the date the engine may send again.
    assert verdict.notify
    assert verdict.event.to_json()["detail"]["resume_at"] == "2026-12-08T00:00:00Z"


def test_an_out_of_office_that_pauses_nobody_is_not_notified():
    away = Classification(
        "auto_reply", ("subject:out-of-office",), "out_of_office", dt.date(2026, 12, 8)
    )
    # The sender is not enrolled (a colleague's absence notice): nothing pauses.
    facts = Facts(MATCHED, (enrolled("bob@acme.example"),))
    verdict = decide(mail("carl@acme.example"), away, facts, CONFIG, now=NOW)
    assert verdict.kind == "auto_reply" and verdict.set_status == ()
    assert not verdict.notify


def test_an_auto_reply_to_nothing_of_ours_is_named_not_recorded():
    away = Classification("auto_reply", ("subject:out-of-office",), "out_of_office")
    verdict = decide(mail(), away, NO_FACTS, CONFIG, now=NOW)
    assert verdict.kind == "auto_reply" and verdict.event is None and verdict.set_status == ()


def bounce(permanent: bool = True) -> Classification:
    return Classification(
        "bounce",
        ("dsn:failed",),
        failed_recipients=("Ann@Acme.example", "nobody"),
        permanent=permanent,
    )


def test_a_permanent_bounce_of_our_mail_marks_the_recipient_bounced():
    report = mail("mailer-daemon@mx.acme.example", envelope="")
    facts = Facts(
        dataclasses.replace(MATCHED, sent=(dataclasses.replace(SENT, campaign=None),)),
        (enrolled("ann@acme.example", campaign="autumn"), enrolled("bob@acme.example")),
    )
    verdict = decide(report, bounce(), facts, CONFIG, now=NOW)
    assert verdict.kind == "bounce"
    assert verdict.campaign == "autumn"  # the mail had none: the enrollment's
    assert verdict.bounced == ("ann@acme.example",)
    assert verdict.set_status == (
        StatusChange("autumn", "ann@acme.example", BOUNCED, "bounced permanently"),
    )
    assert verdict.notify and verdict.event is not None
    assert verdict.event.detail["failed_recipients"] == ["ann@acme.example"]


def test_a_bounce_naming_none_of_our_mail_is_recorded_and_changes_nothing():
    report = mail("mailer-daemon@mx.acme.example", envelope="")
    facts = Facts(None, (enrolled("ann@acme.example"),))
    verdict = decide(report, bounce(), facts, CONFIG, now=NOW)
    assert verdict.kind == "bounce" and "bounce:unmatched" in verdict.evidence
    assert verdict.set_status == () and verdict.bounced == ()
    assert verdict.event is not None


def test_a_read_receipt_is_recorded_and_changes_nothing():
    receipt = Classification("receipt", ("mdn",))
    facts = Facts(MATCHED, (enrolled("ann@acme.example"),))
    verdict = decide(mail(), receipt, facts, CONFIG, now=NOW)
    assert verdict.kind == "receipt" and verdict.set_status == ()
    assert verdict.event is not None and verdict.event.kind == "receipt"
    assert not verdict.notify


def test_reads_name_only_what_the_decision_looks_at():
    replier = "ann@acme.example"
    assert reads(replier, PERSON, None, CONFIG) == decision.Reads()
    assert reads(replier, PERSON, MATCHED, CONFIG).pairs == (
        ("spring", "ann@acme.example"),
        ("spring", "bob@acme.example"),
    )
    domain = Config(domain=DOMAIN, milter_stop_scope="domain")
    assert reads(replier, PERSON, MATCHED, domain).domains == (("spring", "acme.example"),)
    assert reads(replier, bounce(), None, CONFIG).addresses == ("ann@acme.example",)


def test_a_verdict_cannot_be_changed_after_the_decision():
    verdict = decide(mail(), PERSON, NO_FACTS, CONFIG, now=NOW)
    with pytest.raises(dataclasses.FrozenInstanceError):
        verdict.kind = "reply"  # type: ignore[misc]


# --- evidence without threading headers --------------------------------------------------------
def test_a_reply_matched_by_thread_index_is_recorded_as_such():
    found = Match(method="thread-index", sent=(SENT,), evidence=("thread-index:0102",))
    facts = Facts(found, (enrolled("ann@acme.example"), enrolled("bob@acme.example")))
    verdict = decide(mail("ann@home.example"), PERSON, facts, CONFIG, now=NOW)
    assert verdict.kind == "reply" and verdict.method == "thread-index"
    assert verdict.add_header == "reply; campaign=spring; match=thread-index"
    assert "thread-index:0102" in verdict.evidence
    assert verdict.event is not None and verdict.event.detail["match"] == "thread-index"


def test_a_colleagues_answer_matched_by_subject_stops_the_thread():
    found = Match(method="subject", sent=(SENT,), evidence=("subject:domain:acme.example",))
    facts = Facts(found, (enrolled("ann@acme.example"), enrolled("bob@acme.example")))
    verdict = decide(mail("carl@acme.example"), PERSON, facts, CONFIG, now=NOW)
    assert verdict.kind == "reply" and verdict.method == "subject"
    assert verdict.relation == "other_address_same_domain"
    assert verdict.stopped == ["ann@acme.example", "bob@acme.example"]
    assert verdict.event is not None and verdict.event.evidence[-1] == "subject:domain:acme.example"


def test_our_own_mail_matched_by_subject_is_never_a_reply():
    found = Match(method="subject", sent=(SENT,), evidence=())
    verdict = decide(mail("sales@vendor.example"), PERSON, Facts(found), CONFIG, now=NOW)
    assert verdict.kind == "unrelated" and "own-sender" in verdict.evidence


def test_thread_guid_reads_outlooks_index_and_ignores_what_is_not_one():
    guid = bytes(range(1, 17))
    root = threading.index_root(NOW, guid)
    grown = base64.b64encode(threading.thread_index(root, [(NOW + 60, "x")])).decode()
    assert matching.thread_guid([("Thread-Index", grown)]) == guid
    assert matching.thread_guid([("thread-index", f" {grown[:20]}\r\n {grown[20:]}")]) == guid
    for bad in ("not base64!", base64.b64encode(b"short").decode(), base64.b64encode(bytes(22))):
        assert matching.thread_guid([("Thread-Index", str(bad))]) is None
    assert matching.thread_guid([]) is None


def test_match_thread_index_asks_the_store_by_guid_and_a_miss_is_no_match():
    guid = bytes(range(1, 17))
    header = [("Thread-Index", base64.b64encode(threading.index_root(NOW, guid)).decode())]
    asked: list[bytes] = []

    def find(g: bytes) -> list[SentMessage]:
        asked.append(g)
        return [SENT] if g == guid else []

    found = matching.match_thread_index(header, find)
    assert found is not None and found.method == "thread-index" and found.sent == (SENT,)
    assert asked == [guid]
    other = [("Thread-Index", base64.b64encode(threading.index_root(NOW, b"x" * 16)).decode())]
    assert matching.match_thread_index(other, find) is None


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Re: Hello", "hello"),
        ("AW: RE: hello", "hello"),
        ("SV: VS: Antw: Hello", "hello"),
        ("Réf. : RV: Fwd: Hello", "hello"),
        ("RE[2]:  Hello ", "hello"),
        ("=?utf-8?q?AW=3A_Hello?=", "hello"),
    ],
)
def test_answer_subject_strips_reply_prefixes(subject: str, expected: str):
    assert matching.answer_subject(subject) == (expected, True)
    assert matching.answer_subject("Hello") == ("hello", False)


def test_subject_domain_only_for_headerless_mail_from_a_company_domain():
    assert matching.subject_domain([], "carl@acme.example") == "acme.example"
    assert matching.subject_domain([], "carl@gmail.com") is None
    assert matching.subject_domain([], "carl@mail.corp.example", ["corp.example"]) is None
    assert matching.subject_domain([("References", "<a@b>")], "carl@acme.example") is None
    assert matching.subject_domain([("In-Reply-To", "<a@b>")], "carl@acme.example") is None


def test_the_header_names_the_campaign_and_a_reply_to_one_to_one_mail_names_none():
    """A reply to one-to-one mail belongs to no campaign: its header has no campaign
    parameter, so it cannot be read as a campaign called "none" (which gets its own)."""
    solo = dataclasses.replace(SENT, campaign=None)
    facts = Facts(Match("in-reply-to", (solo,), ("in-reply-to:stamped",)), ())
    verdict = decide(mail(), PERSON, facts, CONFIG, now=NOW)
    assert verdict.kind == "reply" and verdict.add_header == "reply; match=in-reply-to"
    named_none = dataclasses.replace(SENT, campaign="none")
    facts = Facts(Match("in-reply-to", (named_none,), ("in-reply-to:stamped",)), ())
    verdict = decide(mail(), PERSON, facts, CONFIG, now=NOW)
    assert verdict.add_header == "reply; campaign=none; match=in-reply-to"


def test_match_subject_takes_campaign_mail_with_the_answered_subject():
    other = dataclasses.replace(SENT, id=2, message_id="other@x", subject="Pricing")
    one_to_one = dataclasses.replace(SENT, id=3, message_id="solo@x", campaign=None)
    ours = dataclasses.replace(SENT, id=4, message_id="ours@x", sender="sue@acme.example")

    def recent(domain: str) -> list[SentMessage]:
        assert domain == "acme.example"
        return [other, one_to_one, ours, SENT]

    found = matching.match_subject("carl@acme.example", "AW: Hello", "acme.example", recent)
    assert found is not None and found.method == "subject" and found.sent == (SENT,)
    assert found.evidence == ("subject:domain:acme.example", f"subject:answers:<{SENT.message_id}>")
    assert matching.match_subject("carl@acme.example", "Hello", "acme.example", recent) is None
    assert matching.match_subject("carl@acme.example", "Re: Bye", "acme.example", recent) is None
    # The addressed person themselves: weak evidence's to judge, not the subject's.
    assert matching.match_subject("ann@acme.example", "Re: Hello", "acme.example", recent) is None
