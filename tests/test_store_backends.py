"""The store's behaviour, the same on every backend: each test runs on SQLite and on a
private PostgreSQL (``any_store``). What only one backend does lives in test_store.py
(SQLite) and test_store_postgresql.py."""

from __future__ import annotations

import time
from typing import Any

import pytest

from replytrack.do_not_contact import address_hasher
from replytrack.store import StatusChange, StoreError
from replytrack.store.records import (
    ACTIVE,
    BOUNCED,
    CAMPAIGN_STOPPED,
    DNC_ADDRESS,
    DNC_DOMAIN,
    PAUSED,
    STOPPED,
    Event,
    OutboundRecipient,
    OutboundRecord,
    Suppression,
)
from replytrack.tokens import Keyring

NOW = 1_760_000_000.0


def outbound(
    message_id: str,
    *,
    campaign: str | None = "spring",
    recipients: tuple[OutboundRecipient, ...] | None = None,
    original: str | None = None,
    step: int | None = 1,
    created_at: float = NOW,
    status: str = "relayed",
) -> OutboundRecord:
    if recipients is None:
        recipients = (OutboundRecipient("ann@example.com", "to", True),)
    return OutboundRecord(
        message_id=message_id,
        original_message_id=original,
        campaign=campaign,
        step=step,
        sender="sales@ours.example",
        from_address="sales@ours.example",
        subject="Hello",
        size=1234,
        status=status,
        recipients=recipients,
        created_at=created_at,
        upstream_reply="250 2.0.0 queued",
    )


def to(*names: str) -> tuple[OutboundRecipient, ...]:
    return tuple(OutboundRecipient(f"{name}@example.com", "to", True) for name in names)


# --- outbound ---------------------------------------------------------------------------------


def test_record_outbound_writes_message_recipients_campaign_and_enrollments(
    any_store: Any,
) -> None:
    recipients = (
        OutboundRecipient("ann@example.com", "to", True),
        OutboundRecipient("bob@example.org", "cc", False),
        OutboundRecipient("eve@example.net", "bcc", True),
        OutboundRecipient("old@example.com", "to", True, status="suppressed", reason="replied"),
        OutboundRecipient("gone@example.com", "to", True, status="refused", reason="550"),
    )
    pk = any_store.record_outbound(
        outbound("tok1@ours.example", original="client-1@mua", recipients=recipients, step=2)
    )
    assert pk > 0
    [msg] = any_store.find_sent(["tok1@ours.example"])
    assert msg.id == pk
    assert (msg.campaign, msg.step, msg.original_message_id, msg.status) == (
        "spring",
        2,
        "client-1@mua",
        "relayed",
    )
    assert set(msg.recipients) == set(recipients) and len(msg.recipients) == len(recipients)
    assert [s.campaign for s in any_store.campaign_stats()] == ["spring"]
    enrolled = {e.recipient: e for e in any_store.enrollments(campaign="spring")}
    assert set(enrolled) == {"ann@example.com", "bob@example.org", "eve@example.net"}
    assert all(e.status == ACTIVE and e.since == NOW for e in enrolled.values())
    assert any_store.enrollments(domain="example.org")[0].recipient == "bob@example.org"
    suppressed = any_store.events(kind="suppressed")
    assert [(e.recipient, e.detail) for e in suppressed] == [
        ("old@example.com", {"reason": "replied", "step": 2})
    ]
    assert suppressed[0].message_id == "tok1@ours.example"
    assert any_store.outbox_counts(NOW)["pending"] == 1
    # What waits to be sent is that very event.
    [queued] = any_store.claim_outbox("t", now=NOW, lease_seconds=30, limit=10)
    assert queued.event.id == suppressed[0].id


def test_mail_without_campaign_enrolls_nobody(any_store: Any) -> None:
    any_store.record_outbound(outbound("one@x", campaign=None, step=None))
    assert any_store.enrollments() == []
    assert any_store.campaign_stats() == []
    assert [m.message_id for m in any_store.messages()] == ["one@x"]
    assert any_store.last_message_to("ann@example.com").message_id == "one@x"


def test_later_steps_keep_the_first_enrollment(any_store: Any) -> None:
    any_store.record_outbound(outbound("s1@x", step=1, created_at=NOW))
    any_store.record_outbound(outbound("s2@x", step=2, created_at=NOW + 100))
    [enrollment] = any_store.enrollments()
    assert enrollment.since == NOW
    assert any_store.last_message_to("ann@example.com", "spring").message_id == "s2@x"
    assert any_store.last_message_to("ann@example.com", "other") is None


def test_the_thread_root_is_kept_on_the_enrollment_once(any_store: Any) -> None:
    """A threaded step keeps its Thread-Index root on the recipient's enrollment, whether
    this mail makes the enrollment or it was there already; a later root never replaces it."""
    import base64
    import dataclasses

    from replytrack.store.records import ThreadRoot

    def root(n: int) -> str:
        return base64.b64encode(bytes([n]) * 22).decode("ascii")

    # Made by this mail: ann's enrollment is new.
    first = dataclasses.replace(
        outbound("<t1@ours>", recipients=to("ann")), thread=ThreadRoot("ann@example.com", root(1))
    )
    any_store.record_outbound(first)
    # Already there without a root: bob was enrolled by an unthreaded first step.
    any_store.record_outbound(outbound("<t2@ours>", recipients=to("bob")))
    assert any_store.thread_history("spring", "bob@example.com").index is None
    second = dataclasses.replace(
        outbound("<t3@ours>", recipients=to("bob"), step=2),
        thread=ThreadRoot("bob@example.com", root(2)),
    )
    any_store.record_outbound(second)
    # A later step's root does not replace the first.
    third = dataclasses.replace(
        outbound("<t4@ours>", recipients=to("ann"), step=2),
        thread=ThreadRoot("ann@example.com", root(3)),
    )
    any_store.record_outbound(third)
    assert any_store.thread_history("spring", "ann@example.com").index == root(1)
    assert any_store.thread_history("spring", "bob@example.com").index == root(2)
    [found] = any_store.find_by_thread_guid(bytes([2]) * 16)
    assert found.message_id == "<t3@ours>"


def test_duplicate_message_id_is_a_store_error(any_store: Any) -> None:
    any_store.record_outbound(outbound("dup@x"))
    with pytest.raises(StoreError):
        any_store.record_outbound(outbound("dup@x"))
    assert len(any_store.messages()) == 1
    # The failed write left the store usable.
    any_store.record_outbound(outbound("next@x"))
    assert len(any_store.messages()) == 2


def test_blocked_enrollments(any_store: Any) -> None:
    now = time.time()
    names = ("active", "stopped", "bounced", "future", "past", "open")
    any_store.record_outbound(outbound("m@x", recipients=to(*names)))
    any_store.record_event(
        Event(kind="reply", created_at=now, actor="test"),
        set_status=[
            StatusChange("spring", "stopped@example.com", STOPPED, "replied"),
            StatusChange("spring", "bounced@example.com", BOUNCED, "5.1.1"),
            StatusChange("spring", "future@example.com", PAUSED, "ooo", now + 3600),
            StatusChange("spring", "past@example.com", PAUSED, "ooo", now - 3600),
            StatusChange("spring", "open@example.com", PAUSED, "by hand"),
        ],
    )
    everyone = [f"{n}@example.com" for n in (*names, "stranger")]
    blocked = any_store.blocked_enrollments("spring", everyone)
    assert set(blocked) == {
        "stopped@example.com",
        "bounced@example.com",
        "future@example.com",
        "open@example.com",
    }
    assert blocked["stopped@example.com"].reason == "replied"
    assert any_store.blocked_enrollments("autumn", everyone) == {}


def test_a_campaign_stopped_as_a_whole_blocks_everyone(any_store: Any) -> None:
    any_store.record_outbound(outbound("m@x"))
    any_store.record_event(
        Event(
            kind="stopped", created_at=NOW, campaign="spring", actor="ops", detail={"reason": "r"}
        ),
        campaign_status=STOPPED,
    )
    blocked = any_store.blocked_enrollments("spring", ["ann@example.com", "new@example.org"])
    assert set(blocked) == {"ann@example.com", "new@example.org"}
    assert blocked["new@example.org"].reason == f"{CAMPAIGN_STOPPED}: r"
    assert blocked["new@example.org"].updated_by == "ops"
    [stats] = any_store.campaign_stats("spring")
    assert (stats.status, stats.reason) == (STOPPED, "r")
    any_store.record_event(
        Event(kind="resumed", created_at=NOW + 1, campaign="spring", actor="ops"),
        campaign_status=ACTIVE,
    )
    assert any_store.blocked_enrollments("spring", ["ann@example.com"]) == {}


def test_find_sent_by_stamped_and_original_ids(any_store: Any) -> None:
    for i in range(600):
        any_store.record_outbound(
            outbound(f"tok{i}@ours", original=f"mua{i}@client", created_at=NOW + i)
        )
    wanted = [f"tok{i}@ours" for i in range(0, 600, 2)] + [
        f"mua{i}@client" for i in range(1, 600, 2)
    ]
    wanted += [f"unknown{i}@nowhere" for i in range(100)] + wanted[:10]
    found = any_store.find_sent(wanted)
    assert len(found) == 600
    assert [m.created_at for m in found] == sorted((m.created_at for m in found), reverse=True)
    assert {m.message_id for m in found} == {f"tok{i}@ours" for i in range(600)}
    assert all(m.recipients for m in found)
    assert any_store.find_sent([]) == []


def test_two_mails_with_the_same_client_id_both_match(any_store: Any) -> None:
    # A client that resends with its original Message-ID: a reply belongs to both mails.
    any_store.record_outbound(outbound("first@ours", original="same@client", created_at=NOW))
    any_store.record_outbound(outbound("second@ours", original="same@client", created_at=NOW + 1))
    found = any_store.find_sent(["same@client"])
    assert [m.message_id for m in found] == ["second@ours", "first@ours"]


def test_text_that_is_not_utf8_is_recorded_not_refused(any_store: Any) -> None:
    # Header bytes that are not UTF-8 reach us as surrogate escapes; a database cannot encode
    # them, and a mail must not be refused forever because of its Subject.
    record = outbound("s@x", original="caf\udce9@mua")
    record = OutboundRecord(**{**record.__dict__, "subject": "Caf\udce9 \udcff"})
    any_store.record_outbound(record)
    [msg] = any_store.find_sent(["caf\udce9@mua"])
    assert msg.message_id == "s@x"
    assert "Caf" in (msg.subject or "")
    any_store.record_event(
        Event(kind="reply", created_at=NOW, sender="x\udcff@y", inbound_message_id="\udcff@z")
    )
    assert any_store.events(kind="reply")[0].sender is not None


# --- record first, relay second ---------------------------------------------------------------


SUPPRESSED_OLD = OutboundRecipient(
    "old@example.com", "to", True, status="suppressed", reason="replied"
)


def test_a_relaying_mail_enrolls_at_once_and_suppresses_once_relayed(any_store: Any) -> None:
    pk = any_store.record_outbound(
        outbound("r@x", status="relaying", recipients=(*to("ann"), SUPPRESSED_OLD), step=2)
    )
    assert [e.recipient for e in any_store.enrollments()] == ["ann@example.com"]
    assert any_store.events(kind="suppressed") == []
    any_store.set_message_status(pk, "relayed", "250 2.0.0 ok")
    assert [m.status for m in any_store.messages()] == ["relayed"]
    assert len(any_store.enrollments()) == 1
    suppressed = any_store.events(kind="suppressed")
    assert [(e.recipient, e.message_id, e.campaign, e.detail) for e in suppressed] == [
        ("old@example.com", "r@x", "spring", {"reason": "replied", "step": 2})
    ]
    assert any_store.outbox_counts(NOW)["pending"] == 1


def test_a_refused_mail_records_no_suppression(any_store: Any) -> None:
    pk = any_store.record_outbound(
        outbound("r@x", status="relaying", recipients=(*to("ann"), SUPPRESSED_OLD))
    )
    any_store.set_message_status(pk, "failed", "554 5.7.1 no")
    assert any_store.events(kind="suppressed") == []
    assert any_store.enrollments() == []


def test_a_refused_mail_takes_back_only_the_enrollments_it_made(any_store: Any) -> None:
    any_store.record_outbound(outbound("m1@x", recipients=to("old"), created_at=NOW))
    pk = any_store.record_outbound(
        outbound("m2@x", status="relaying", recipients=to("old", "new"), created_at=NOW + 10)
    )
    assert {e.recipient for e in any_store.enrollments()} == {
        "old@example.com",
        "new@example.com",
    }
    any_store.set_message_status(pk, "failed", "554 5.7.1 no")
    assert {e.recipient for e in any_store.enrollments()} == {"old@example.com"}
    assert [m.status for m in any_store.messages(status="failed")] == ["failed"]


def test_a_refused_mail_keeps_an_enrollment_that_changed_since(any_store: Any) -> None:
    # A reply that stopped the recipient meanwhile is not undone by the refusal.
    pk = any_store.record_outbound(outbound("m@x", status="relaying", recipients=to("ann")))
    any_store.record_event(
        Event(kind="reply", created_at=NOW + 5, campaign="spring"),
        set_status=[StatusChange("spring", "ann@example.com", STOPPED, "replied")],
    )
    any_store.set_message_status(pk, "failed", "554 5.7.1 no")
    assert [(e.recipient, e.status) for e in any_store.enrollments()] == [
        ("ann@example.com", STOPPED)
    ]


def test_mails_left_relaying_become_unconfirmed_and_count_as_sent(any_store: Any) -> None:
    any_store.record_outbound(
        outbound("old@x", status="relaying", created_at=NOW, recipients=(*to("a"), SUPPRESSED_OLD))
    )
    any_store.record_outbound(outbound("new@x", status="relaying", created_at=NOW + 100))
    any_store.record_outbound(outbound("done@x", status="relayed", created_at=NOW))
    assert any_store.count_relaying(NOW + 50) == 1
    assert any_store.reconcile_relaying(NOW + 50) == 1
    assert any_store.count_relaying(NOW + 50) == 0
    status = {m.message_id: m.status for m in any_store.messages()}
    assert status == {"old@x": "unconfirmed", "new@x": "relaying", "done@x": "relayed"}
    [stats] = any_store.campaign_stats("spring")
    assert stats.sent == 2  # relayed and unconfirmed, not the one still relaying
    # An unconfirmed mail is still matched by a reply, and its suppressions are recorded.
    assert [m.message_id for m in any_store.find_sent(["old@x"])] == ["old@x"]
    assert [(e.recipient, e.message_id) for e in any_store.events(kind="suppressed")] == [
        ("old@example.com", "old@x")
    ]


# --- events and enrollments -------------------------------------------------------------------


def test_record_event_with_dedupe_key_records_once(any_store: Any) -> None:
    any_store.record_outbound(outbound("m@x"))
    event = Event(kind="reply", created_at=NOW, campaign="spring", sender="ann@example.com")
    change = [StatusChange("spring", "ann@example.com", STOPPED, "replied")]
    assert any_store.record_event(event, dedupe_key="queue-1", set_status=change) is not None
    [enrollment] = any_store.enrollments()
    assert enrollment.status == STOPPED and enrollment.updated_by == "reply"
    # Someone resumes by hand; a replay of the same verdict must not stop again.
    any_store.record_event(
        Event(kind="resumed", created_at=NOW + 10, actor="ops"),
        set_status=[StatusChange("spring", "ann@example.com", ACTIVE, "by hand")],
        notify=False,
    )
    assert any_store.record_event(event, dedupe_key="queue-1", set_status=change) is None
    assert any_store.enrollments()[0].status == ACTIVE
    assert len(any_store.events(kind="reply")) == 1
    assert any_store.outbox_counts(NOW)["pending"] == 1  # notify=False queued nothing
    # Without a key the same event is recorded each time.
    assert any_store.record_event(event) is not None
    assert any_store.record_event(event) is not None
    assert len(any_store.events(kind="reply")) == 3


def test_set_status_upserts_enrollments(any_store: Any) -> None:
    any_store.record_event(
        Event(kind="stopped", created_at=NOW, actor="ops"),
        set_status=[StatusChange("never-mailed", "x@example.com", STOPPED, "by hand")],
    )
    [enrollment] = any_store.enrollments_of("x@example.com")
    assert (enrollment.campaign, enrollment.status, enrollment.updated_by) == (
        "never-mailed",
        STOPPED,
        "ops",
    )
    any_store.record_event(
        Event(kind="paused", created_at=NOW + 5),
        set_status=[StatusChange("never-mailed", "x@example.com", PAUSED, "ooo", NOW + 99)],
    )
    [enrollment] = any_store.enrollments_of("x@example.com")
    assert (enrollment.status, enrollment.until, enrollment.since) == (PAUSED, NOW + 99, NOW + 5)


def test_enrollment_filters_and_order(any_store: Any) -> None:
    any_store.record_outbound(outbound("a@x", recipients=to("Zed", "amy", "bob")))
    any_store.record_outbound(outbound("b@x", campaign="autumn", recipients=to("amy")))
    any_store.record_event(
        Event(kind="reply", created_at=NOW),
        set_status=[StatusChange("spring", "bob@example.com", STOPPED, "replied")],
    )
    listed = [(e.campaign, e.recipient) for e in any_store.enrollments()]
    # Bytewise order, as SQLite sorts: upper case first.
    assert listed == [
        ("autumn", "amy@example.com"),
        ("spring", "Zed@example.com"),
        ("spring", "amy@example.com"),
        ("spring", "bob@example.com"),
    ]
    assert [e.recipient for e in any_store.enrollments(status=[STOPPED, PAUSED])] == [
        "bob@example.com"
    ]
    assert len(any_store.enrollments(campaign="spring", status=ACTIVE, limit=1)) == 1
    assert [e.campaign for e in any_store.enrollments_of("amy@example.com")] == [
        "autumn",
        "spring",
    ]


def test_enrollment_domains_are_lowercase_and_filtered_regardless_of_case(
    any_store: Any,
) -> None:
    # Domains are case-insensitive (RFC 5321 2.4): each backend stores them lowercase, however
    # the address was written, and finds them by --domain in any case.
    mixed = (OutboundRecipient("Pat@Them.Example", "to", True),)
    any_store.record_outbound(outbound("d1@ours.example", recipients=mixed))
    any_store.record_event(
        Event(kind="stopped", created_at=NOW, actor="ops"),
        set_status=[StatusChange("autumn", "Kim@Them.EXAMPLE", STOPPED, "by hand")],
    )
    for asked in ("them.example", "THEM.example"):
        found = any_store.enrollments(domain=asked)
        assert [(e.campaign, e.recipient) for e in found] == [
            ("autumn", "Kim@Them.EXAMPLE"),
            ("spring", "Pat@Them.Example"),
        ], asked
    # The milter's header-less match asks by the sender's domain, lowercased.
    sent = any_store.recent_campaign_mail("them.example", since=NOW - 60)
    assert [m.message_id for m in sent] == ["d1@ours.example"]


def test_reactivate_due(any_store: Any) -> None:
    any_store.record_event(
        Event(kind="paused", created_at=NOW),
        set_status=[
            StatusChange("c", "due@example.com", PAUSED, "ooo", NOW + 10),
            StatusChange("c", "later@example.com", PAUSED, "ooo", NOW + 1000),
            StatusChange("c", "open@example.com", PAUSED, "by hand"),
            StatusChange("c", "stopped@example.com", STOPPED, "replied"),
        ],
    )
    assert any_store.reactivate_due(NOW + 10) == 1
    status = {e.recipient: (e.status, e.until) for e in any_store.enrollments()}
    assert status == {
        "due@example.com": (ACTIVE, None),
        "later@example.com": (PAUSED, NOW + 1000),
        "open@example.com": (PAUSED, None),
        "stopped@example.com": (STOPPED, None),
    }
    assert any_store.reactivate_due(NOW + 10) == 0


def test_ooo_memory(any_store: Any) -> None:
    assert any_store.ooo_until("a@example.com") is None
    any_store.remember_ooo("a@example.com", NOW + 50)
    any_store.remember_ooo("a@example.com", NOW + 70)
    assert any_store.ooo_until("a@example.com") == NOW + 70


def test_campaign_stats(any_store: Any) -> None:
    people = to("p0", "p1", "p2", "p3")
    any_store.record_outbound(outbound("s1@x", recipients=people, created_at=NOW))
    any_store.record_outbound(outbound("s2@x", recipients=people[:2], created_at=NOW + 60))
    any_store.record_outbound(outbound("f@x", status="failed", created_at=NOW + 70))
    any_store.record_outbound(outbound("o@x", campaign="other", created_at=NOW + 80))
    for sender in ("p0@example.com", "p0@example.com", "p1@example.com"):
        any_store.record_event(
            Event(kind="reply", created_at=NOW + 90, campaign="spring", sender=sender),
            set_status=[StatusChange("spring", sender, STOPPED, "replied")],
        )
    any_store.record_event(
        Event(kind="bounce", created_at=NOW + 95, campaign="spring"),
        set_status=[StatusChange("spring", "p2@example.com", BOUNCED, "5.1.1")],
    )
    [spring] = any_store.campaign_stats("spring")
    assert (spring.sent, spring.recipients, spring.replied, spring.stopped) == (2, 5, 2, 2)
    assert (spring.bounced, spring.active, spring.paused, spring.suppressed) == (1, 2, 0, 0)
    assert (spring.first_sent, spring.last_sent) == (NOW, NOW + 70)
    assert [s.campaign for s in any_store.campaign_stats()] == ["other", "spring"]


def test_listing_filters(any_store: Any) -> None:
    any_store.record_outbound(outbound("a@x", created_at=NOW))
    any_store.record_outbound(outbound("b@x", created_at=NOW + 10, campaign="other"))
    assert [m.message_id for m in any_store.messages()] == ["b@x", "a@x"]
    assert [m.message_id for m in any_store.messages(campaign="spring")] == ["a@x"]
    assert [m.message_id for m in any_store.messages(since=NOW + 5)] == ["b@x"]
    assert [m.message_id for m in any_store.messages(limit=1)] == ["b@x"]
    any_store.record_event(Event(kind="reply", created_at=NOW, campaign="spring"))
    any_store.record_event(Event(kind="bounce", created_at=NOW + 1, campaign="other"))
    assert [e.kind for e in any_store.events()] == ["bounce", "reply"]
    assert [e.kind for e in any_store.events(campaign="spring")] == ["reply"]
    assert [e.kind for e in any_store.events(kind="bounce", since=NOW)] == ["bounce"]
    assert [e.kind for e in any_store.events(limit=1)] == ["bounce"]


def test_recipient_filter_is_applied_before_the_limit(any_store: Any) -> None:
    """--recipient is in the query: ``limit=1`` gives the address's newest row even when
    newer rows for others come first."""
    cc = (OutboundRecipient("cy@example.com", "cc", True),)
    any_store.record_outbound(outbound("ann@x", recipients=to("ann", "bob") + cc))
    for n in range(5):
        any_store.record_outbound(outbound(f"bob{n}@x", recipients=to("bob"), created_at=NOW + n))
    for address in ("ann@example.com", "cy@example.com"):
        [mine] = any_store.messages(recipient=address, limit=1)
        assert mine.message_id == "ann@x"
    assert len(any_store.messages(recipient="bob@example.com")) == 6
    assert any_store.messages(recipient="nobody@example.com") == []
    assert [m.message_id for m in any_store.messages(recipient="bob@example.com", limit=2)] == [
        "bob4@x",
        "bob3@x",
    ]

    # An event concerns its recipient, its sender, and the addresses a stop listed.
    events = [
        Event(kind="reply", created_at=NOW, sender="ann@example.com"),
        Event(kind="bounce", created_at=NOW + 1, recipient="ann@example.com"),
        Event(kind="stopped", created_at=NOW + 2, detail={"recipients": ["ann@example.com"]}),
        Event(kind="reply", created_at=NOW + 3, detail={"stopped": ["ann@example.com"]}),
        # A detail that names her elsewhere, or holds no list, does not.
        Event(kind="reply", created_at=NOW + 4, detail={"subject": "ann@example.com"}),
        Event(kind="stopped", created_at=NOW + 5, detail={"recipients": "ann@example.com"}),
        Event(kind="stopped", created_at=NOW + 6, detail={"stopped": {"ann@example.com": 1}}),
    ]
    for event in events:
        any_store.record_event(event)
    for n in range(5):
        any_store.record_event(Event(kind="reply", created_at=NOW + 10 + n, sender="bob@x.org"))
    concerning = any_store.events(recipient="ann@example.com")
    assert [e.created_at - NOW for e in concerning] == [3, 2, 1, 0]
    [newest] = any_store.events(recipient="ann@example.com", limit=1)
    assert newest.created_at == NOW + 3
    [first] = any_store.events(recipient="ann@example.com", kind="reply", since=NOW - 1, limit=1)
    assert first.created_at == NOW + 3
    assert len(any_store.events(recipient="bob@x.org", limit=10)) == 5


def test_event_breaking_a_rule_is_an_error_not_a_silent_skip(any_store: Any) -> None:
    with pytest.raises(StoreError):
        any_store.record_event(Event(kind=None, created_at=NOW), dedupe_key="k")  # type: ignore[arg-type]
    assert any_store.events() == []


def test_event_detail_and_evidence_round_trip(any_store: Any) -> None:
    event = Event(
        kind="reply",
        created_at=NOW,
        campaign="spring",
        message_id="m@x",
        inbound_message_id="in@y",
        sender="ann@example.com",
        recipient="ann@example.com",
        relation="original_recipient",
        evidence=("in-reply-to", "references[2]"),
        detail={"intent": "positive", "nested": {"n": 1}},
        queue_id="4ABC",
        actor="milter",
    )
    event_id = any_store.record_event(event)
    [back] = any_store.events()
    assert back == Event(**{**event.__dict__, "id": event_id})


# --- outbox -----------------------------------------------------------------------------------


def reply_events(store: Any, count: int) -> None:
    for n in range(count):
        store.record_event(Event(kind="reply", created_at=NOW + n, campaign="spring"))


def test_outbox_lease_keeps_two_senders_apart(any_store: Any) -> None:
    reply_events(any_store, 2)
    now = NOW + 100
    a = any_store.claim_outbox("a", now=now, lease_seconds=30, limit=10)
    assert [i.event.created_at for i in a] == [NOW, NOW + 1]  # oldest first
    assert any_store.claim_outbox("b", now=now, lease_seconds=30, limit=10) == []
    # A sender that died loses its lease when it runs out.
    b = any_store.claim_outbox("b", now=now + 31, lease_seconds=30, limit=10)
    assert sorted(i.id for i in b) == sorted(i.id for i in a)
    # The late finish of the dead sender does not undo b's lease.
    any_store.finish_outbox_attempt(a[0].id, "a", now=now, delivered=False, next_attempt_at=now)
    assert any_store.claim_outbox("c", now=now + 32, lease_seconds=30, limit=10) == []


def test_outbox_delivery_retry_and_dead_rows(any_store: Any) -> None:
    reply_events(any_store, 3)
    now = NOW + 100
    first, second, third = any_store.claim_outbox("s", now=now, lease_seconds=30, limit=10)
    any_store.mark_outbox_url_delivered(first.id, "https://a.example/hook", now)
    any_store.mark_outbox_url_delivered(first.id, "https://a.example/hook", now)
    any_store.finish_outbox_attempt(first.id, "s", now=now, delivered=True)
    any_store.mark_outbox_url_delivered(second.id, "https://a.example/hook", now)
    any_store.finish_outbox_attempt(
        second.id, "s", now=now, delivered=False, next_attempt_at=now + 60, error="timeout"
    )
    any_store.finish_outbox_attempt(third.id, "s", now=now, delivered=False, dead=True)
    assert any_store.outbox_counts(now) == {"pending": 1, "due": 0, "dead": 1, "delivered": 1}
    assert any_store.claim_outbox("s", now=now + 30, lease_seconds=30) == []
    [again] = any_store.claim_outbox("s", now=now + 60, lease_seconds=30)
    assert (again.id, again.attempts) == (second.id, 1)
    assert again.delivered_urls == frozenset({"https://a.example/hook"})
    any_store.finish_outbox_attempt(again.id, "s", now=now + 60, delivered=True)
    assert any_store.retry_dead_outbox(now + 70) == 1
    [revived] = any_store.claim_outbox("s", now=now + 70, lease_seconds=30)
    assert (revived.id, revived.attempts) == (third.id, 0)


# --- maintenance ------------------------------------------------------------------------------


def test_prune_drops_old_rows_and_keeps_pending_events(any_store: Any) -> None:
    any_store.record_outbound(outbound("old@ours", original="old@client", created_at=NOW))
    any_store.record_outbound(outbound("new@ours", created_at=NOW + 100))
    any_store.record_event(Event(kind="reply", created_at=NOW, campaign="spring"))
    any_store.record_event(Event(kind="bounce", created_at=NOW + 1, campaign="spring"))
    [delivered] = any_store.claim_outbox("s", now=NOW + 200, lease_seconds=30)
    any_store.finish_outbox_attempt(delivered.id, "s", now=NOW + 200, delivered=True)
    dry = any_store.prune(NOW + 50, dry_run=True)
    assert dry == {"messages": 1, "events": 1, "outbox": 1}
    assert len(any_store.messages()) == 2
    assert any_store.prune(NOW + 50) == dry
    assert [m.message_id for m in any_store.messages()] == ["new@ours"]
    assert any_store.find_sent(["old@ours", "old@client"]) == []
    # The bounce's notification is still pending: it stays.
    assert [e.kind for e in any_store.events()] == ["bounce"]
    assert any_store.prune(NOW + 50) == {"messages": 0, "events": 0, "outbox": 0}


def test_check_writable_passes_and_leaves_nothing(any_store: Any) -> None:
    any_store.check_writable()
    assert any_store.ooo_until("write-probe@doctor.replytrack.invalid") is None


def test_a_bounce_after_a_reply_keeps_the_reply_stop_and_records_the_bounce(
    any_store: Any,
) -> None:
    # The milter decides outside the write (on another MX host, or from its journal later),
    # so a bounce decided while the enrollment was active can land after the reply's stop.
    any_store.record_outbound(outbound("m@x", recipients=to("ann", "bob")))
    reply = "reply from ann@example.com"
    any_store.record_event(
        Event(kind="reply", created_at=NOW + 1, campaign="spring", sender="ann@example.com"),
        set_status=[StatusChange("spring", "ann@example.com", STOPPED, reply)],
    )
    bounce = any_store.record_event(
        Event(kind="bounce", created_at=NOW + 2, campaign="spring", recipient="ann@example.com"),
        set_status=[
            StatusChange("spring", "ann@example.com", BOUNCED, "bounced permanently"),
            StatusChange("spring", "bob@example.com", BOUNCED, "bounced permanently"),
        ],
    )
    assert bounce is not None
    held = {e.recipient: e for e in any_store.enrollments(campaign="spring")}
    assert (held["ann@example.com"].status, held["ann@example.com"].reason) == (STOPPED, reply)
    assert held["ann@example.com"].since == NOW + 1
    assert held["bob@example.com"].status == BOUNCED
    assert [e.recipient for e in any_store.events(kind="bounce")] == ["ann@example.com"]
    # A person may still undo it by hand.
    any_store.record_event(
        Event(kind="resumed", created_at=NOW + 3, campaign="spring", actor="ops"),
        set_status=[StatusChange("spring", "ann@example.com", ACTIVE, "by hand")],
    )
    assert any_store.enrollments(recipient="ann@example.com")[0].status == ACTIVE


def test_export_gives_every_row_in_listing_order(
    any_store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pages of three rows (SQLite reads a page at a time): times tie across page ends.
    monkeypatch.setattr("replytrack.store.sqlite.listing.EXPORT_PAGE", 3)
    for i in range(8):
        campaign = "spring" if i % 3 else "autumn"
        any_store.record_outbound(
            outbound(f"m{i}@x", campaign=campaign, recipients=to(f"p{i}"), created_at=NOW + i // 2)
        )
        any_store.record_event(
            Event(kind="reply", created_at=NOW + i // 2, campaign=campaign, sender=f"p{i}@x")
        )

    def ids(items: Any) -> list[Any]:
        return [getattr(item, "message_id", None) or getattr(item, "id", None) for item in items]

    assert ids(any_store.export_messages()) == ids(any_store.messages())
    assert len(ids(any_store.export_messages())) == 8
    assert ids(any_store.export_messages(campaign="spring", since=NOW + 2)) == ids(
        any_store.messages(campaign="spring", since=NOW + 2)
    )
    assert [m.recipients for m in any_store.export_messages()] == [
        m.recipients for m in any_store.messages()
    ]
    assert ids(any_store.export_events()) == ids(any_store.events())
    assert len(ids(any_store.export_events(campaign="autumn"))) == 3
    exported = list(any_store.export_enrollments())
    assert exported == any_store.enrollments() and len(exported) == 8
    assert [
        e.recipient for e in any_store.export_enrollments(campaign="autumn", since=NOW + 3)
    ] == ["p6@example.com"]


# --- do-not-contact ---------------------------------------------------------------------------


def dnc(value: str, *, reason: str | None = "asked", kind: str | None = None) -> Suppression:
    kind = kind or (DNC_ADDRESS if "@" in value else DNC_DOMAIN)
    return Suppression(kind=kind, value=value, reason=reason, actor="ops", created_at=NOW)


def test_do_not_contact_entries_add_list_check_remove(any_store: Any) -> None:
    any_store.use_hasher(address_hasher(Keyring.generate()))
    added = any_store.add_suppressions(
        [dnc("ann@example.com"), dnc("example.org"), dnc("ann@example.com", reason="again")]
    )
    assert added == 2
    assert any_store.add_suppressions([dnc("example.org")]) == 0
    listed = {(e.kind, e.value, e.reason, e.actor) for e in any_store.suppressions()}
    assert listed == {
        (DNC_ADDRESS, "ann@example.com", "asked", "ops"),
        (DNC_DOMAIN, "example.org", "asked", "ops"),
    }
    found = any_store.suppressed(
        ["ann@example.com", "bob@example.com", "eve@example.org", "joe@mail.example.org"]
    )
    assert set(found) == {"ann@example.com", "eve@example.org", "joe@mail.example.org"}
    assert found["joe@mail.example.org"].value == "example.org"
    assert any_store.remove_suppression(DNC_DOMAIN, "example.org") is True
    assert any_store.remove_suppression(DNC_DOMAIN, "example.org") is False
    assert set(any_store.suppressed(["ann@example.com", "eve@example.org"])) == {"ann@example.com"}


def test_do_not_contact_blocks_in_every_campaign_with_its_reason(any_store: Any) -> None:
    any_store.record_outbound(outbound("m@x", recipients=to("ann", "bob")))
    any_store.add_suppressions([dnc("ann@example.com", reason="unsubscribed"), dnc("example.net")])
    for campaign in ("spring", "never-sent-before"):
        blocked = any_store.blocked_enrollments(
            campaign, ["ann@example.com", "bob@example.com", "cy@example.net"]
        )
        assert set(blocked) == {"ann@example.com", "cy@example.net"}
        assert blocked["ann@example.com"].status == STOPPED
        assert blocked["ann@example.com"].reason.startswith("do-not-contact")
        assert "unsubscribed" in blocked["ann@example.com"].reason
        assert blocked["cy@example.net"].reason.startswith("do-not-contact (domain example.net)")
    # The list names the person even where the whole campaign is stopped.
    any_store.record_event(
        Event(kind="stopped", created_at=NOW, campaign="spring", actor="ops"),
        campaign_status=STOPPED,
    )
    blocked = any_store.blocked_enrollments("spring", ["ann@example.com", "bob@example.com"])
    assert blocked["ann@example.com"].reason.startswith("do-not-contact")
    assert blocked["bob@example.com"].reason.startswith(CAMPAIGN_STOPPED)


def test_forget_erases_the_person_and_keeps_them_unmailable(any_store: Any) -> None:
    keys = Keyring.generate()
    any_store.use_hasher(address_hasher(keys))
    any_store.record_outbound(outbound("alone@x", recipients=to("ann")))
    any_store.record_outbound(outbound("shared@x", recipients=to("ann", "bob"), campaign="fall"))
    any_store.record_event(
        Event(kind="reply", created_at=NOW, campaign="spring", sender="ann@example.com"),
        set_status=[StatusChange("spring", "ann@example.com", STOPPED, "replied")],
    )
    any_store.record_event(
        Event(
            kind="bounce",
            created_at=NOW,
            campaign="fall",
            sender="mailer-daemon@example.com",
            evidence=("failed:ann@example.com",),
        )
    )
    any_store.remember_ooo("ann@example.com", NOW + 3600)
    any_store.add_suppressions([dnc("ann@example.com", reason="asked by phone")])
    assert any_store.outbox_counts(NOW)["pending"] == 2

    counts = any_store.forget("ann@example.com", actor="dpo", now=NOW + 5)
    assert counts["recipients"] == 2 and counts["messages"] == 1 and counts["events"] == 2
    assert counts["enrollments"] == 2 and counts["notifications"] == 2
    assert [m.message_id for m in any_store.messages()] == ["shared@x"]
    assert [r.address for r in any_store.messages()[0].recipients] == ["bob@example.com"]
    assert [e.recipient for e in any_store.enrollments()] == ["bob@example.com"]
    assert any_store.ooo_until("ann@example.com") is None
    assert any_store.outbox_counts(NOW)["pending"] == 0
    [erased] = any_store.events(kind="erased")
    assert erased.actor == "dpo" and "ann" not in str(erased.to_json())
    [entry] = any_store.suppressions()
    assert (entry.value, entry.reason, entry.erased) == (None, "asked by phone", True)
    assert "ann" not in str(entry.to_json())
    # Still unmailable in every campaign, through the hash alone.
    blocked = any_store.blocked_enrollments("winter", ["ann@example.com", "bob@example.com"])
    assert set(blocked) == {"ann@example.com"}
    assert blocked["ann@example.com"].reason.startswith("do-not-contact")
    # The operator can still take the entry off by naming the address.
    assert any_store.remove_suppression(DNC_ADDRESS, "ann@example.com") is True


def test_forget_needs_the_hasher(any_store: Any) -> None:
    with pytest.raises(StoreError, match="key file"):
        any_store.forget("ann@example.com", actor="dpo", now=NOW)


def test_an_erased_entry_outlives_a_key_rotation(any_store: Any) -> None:
    old = Keyring.generate()
    any_store.use_hasher(address_hasher(old))
    any_store.forget("ann@example.com", actor="dpo", now=NOW)
    rotated = Keyring(keys=(Keyring.generate().current, *old.keys))
    any_store.use_hasher(address_hasher(rotated))
    assert set(any_store.blocked_enrollments("c", ["ann@example.com"])) == {"ann@example.com"}
