"""The store's business rules (replytrack.store.rules), pure functions, without a database.
Both backends call them; tests/test_store_backends.py checks that each does."""

from __future__ import annotations

import pytest

from replytrack.store import rules
from replytrack.store.records import (
    ACTIVE,
    BOUNCED,
    CAMPAIGN_STOPPED,
    PAUSED,
    STOPPED,
    CampaignStop,
    Enrollment,
    Event,
    OutboundRecipient,
    OutboundRecord,
    StatusChange,
)

NOW = 1_760_000_000.0


def enrollment(status: str, *, reason: str | None = None, until: float | None = None) -> Enrollment:
    return Enrollment("spring", "ann@example.com", status, reason, NOW - 100, until)


def change(status: str, reason: str = "why", until: float | None = None) -> StatusChange:
    return StatusChange("spring", "ann@example.com", status, reason, until)


def record(*recipients: OutboundRecipient, campaign: str | None = "spring") -> OutboundRecord:
    return OutboundRecord(
        message_id="m@ours",
        original_message_id=None,
        campaign=campaign,
        step=2,
        sender="sales@ours.example",
        from_address=None,
        subject=None,
        size=1,
        status="relaying",
        recipients=recipients,
        created_at=NOW,
    )


# --- who is blocked -----------------------------------------------------------------------------


def test_a_campaign_stop_outranks_every_recipient_state() -> None:
    stop = CampaignStop(reason="paused by sales", since=NOW - 5, updated_by="ops")
    blocked = rules.blocked_recipients(
        "spring",
        ["new@example.com", "ann@example.com", "ann@example.com"],
        stop=stop,
        enrollments=[enrollment(ACTIVE)],
        now=NOW,
    )
    assert sorted(blocked) == ["ann@example.com", "new@example.com"]
    assert {e.status for e in blocked.values()} == {STOPPED}
    assert blocked["new@example.com"].reason == f"{CAMPAIGN_STOPPED}: paused by sales"
    assert (blocked["ann@example.com"].since, blocked["ann@example.com"].updated_by) == (
        NOW - 5,
        "ops",
    )
    bare = rules.blocked_recipients(
        "spring", ["x@y.org"], stop=CampaignStop(None, None, None), enrollments=[], now=NOW
    )
    assert (bare["x@y.org"].reason, bare["x@y.org"].since) == (CAMPAIGN_STOPPED, NOW)


def test_without_a_campaign_stop_each_enrollment_decides() -> None:
    found = [
        Enrollment("spring", "stopped@x.org", STOPPED, "reply", NOW),
        Enrollment("spring", "bounced@x.org", BOUNCED, "5.1.1", NOW),
        Enrollment("spring", "away@x.org", PAUSED, "ooo", NOW, until=NOW + 60),
        Enrollment("spring", "back@x.org", PAUSED, "ooo", NOW, until=NOW - 60),
        Enrollment("spring", "open@x.org", PAUSED, "by hand", NOW),
        Enrollment("spring", "active@x.org", ACTIVE, None, NOW),
    ]
    blocked = rules.blocked_recipients(
        "spring", [e.recipient for e in found], stop=None, enrollments=found, now=NOW
    )
    assert sorted(blocked) == ["away@x.org", "bounced@x.org", "open@x.org", "stopped@x.org"]


# --- what a recorded mail does ------------------------------------------------------------------


def test_a_campaign_mail_enrolls_the_recipients_it_was_sent_to() -> None:
    mail = record(
        OutboundRecipient("zed@x.org", "to", True),
        OutboundRecipient("ann@x.org", "cc", False),
        OutboundRecipient("ann@x.org", "bcc", True),
        OutboundRecipient("gone@x.org", "to", True, status="suppressed", reason="replied"),
        OutboundRecipient("refused@x.org", "to", True, status="refused", reason="550"),
    )
    assert rules.enrolled_by(mail) == ["ann@x.org", "zed@x.org"]
    assert rules.enrolled_by(record(OutboundRecipient("a@x.org", "to", True), campaign=None)) == []


@pytest.mark.parametrize(
    ("old", "new", "records"),
    [
        (None, "relayed", True),
        (None, "suppressed", True),
        (None, "relaying", False),
        ("relaying", "relayed", True),
        ("relaying", "unconfirmed", True),
        ("relaying", "failed", False),
        ("relayed", "relayed", False),
        ("unconfirmed", "relayed", False),
    ],
)
def test_suppressions_are_recorded_once_when_a_mail_is_settled(
    old: str | None, new: str, records: bool
) -> None:
    assert rules.records_suppressions(old, new) is records


def test_suppression_events_name_each_recipient_left_out() -> None:
    events = rules.suppression_events(
        message_id="m@ours",
        campaign="spring",
        sender="sales@ours.example",
        step=3,
        created_at=NOW,
        recipients=[
            OutboundRecipient("zed@x.org", "to", True, status="suppressed", reason="bounced"),
            OutboundRecipient("sent@x.org", "to", True),
            OutboundRecipient("ann@x.org", "cc", False, status="suppressed", reason="replied"),
        ],
    )
    assert [(e.kind, e.recipient, e.detail) for e in events] == [
        ("suppressed", "ann@x.org", {"reason": "replied", "step": 3}),
        ("suppressed", "zed@x.org", {"reason": "bounced", "step": 3}),
    ]
    assert {(e.message_id, e.campaign, e.sender, e.created_at) for e in events} == {
        ("m@ours", "spring", "sales@ours.example", NOW)
    }


def test_only_a_refused_campaign_mail_takes_back_its_enrollments() -> None:
    assert rules.takes_back_enrollments("relaying", "failed", "spring")
    assert rules.takes_back_enrollments("unconfirmed", "failed", "spring")
    assert not rules.takes_back_enrollments("relaying", "failed", None)
    assert not rules.takes_back_enrollments("relaying", "relayed", "spring")
    assert not rules.takes_back_enrollments("relayed", "failed", "spring")


# --- which status wins --------------------------------------------------------------------------


def test_a_bounce_after_a_reply_keeps_the_reply_stop() -> None:
    held = enrollment(STOPPED, reason="reply from ann@example.com")
    assert rules.settle_status(held, change(BOUNCED), by_hand=False) is None


@pytest.mark.parametrize(
    ("current", "new", "applies"),
    [
        (None, BOUNCED, True),
        (ACTIVE, STOPPED, True),
        (ACTIVE, BOUNCED, True),
        (ACTIVE, PAUSED, True),
        (PAUSED, PAUSED, True),  # a later return date moves the pause
        (PAUSED, STOPPED, True),
        (PAUSED, BOUNCED, True),
        (BOUNCED, STOPPED, True),  # a person answered after all
        (BOUNCED, PAUSED, False),
        (BOUNCED, BOUNCED, False),  # the first bounce's reason and time stay
        (STOPPED, PAUSED, False),
        (STOPPED, STOPPED, False),  # the first reply's reason and time stay
        (STOPPED, ACTIVE, False),
    ],
)
def test_the_milters_own_changes_never_weaken_a_stronger_state(
    current: str | None, new: str, applies: bool
) -> None:
    held = None if current is None else enrollment(current)
    wanted = change(new)
    assert rules.settle_status(held, wanted, by_hand=False) == (wanted if applies else None)


@pytest.mark.parametrize("current", [STOPPED, BOUNCED, PAUSED, ACTIVE])
@pytest.mark.parametrize("new", [ACTIVE, STOPPED, PAUSED])
def test_a_change_by_hand_always_applies(current: str, new: str) -> None:
    wanted = change(new, "by hand")
    assert rules.settle_status(enrollment(current), wanted, by_hand=True) == wanted


def test_who_changes_an_enrollment() -> None:
    for kind in ("reply", "auto_reply", "bounce"):
        assert not rules.changed_by_hand(Event(kind=kind, created_at=NOW))
    for kind in ("stopped", "resumed", "paused"):
        assert rules.changed_by_hand(Event(kind=kind, created_at=NOW))


def test_status_changes_still_read_the_older_tuples() -> None:
    named = StatusChange("spring", "ann@x.org", PAUSED, "ooo", NOW)
    assert rules.status_changes([("spring", "ann@x.org", PAUSED, "ooo", NOW), named]) == [
        named,
        named,
    ]
    assert rules.status_changes([["c", "b@x.org", STOPPED, None, None]]) == [
        StatusChange("c", "b@x.org", STOPPED)
    ]


def test_a_campaign_state_needs_a_campaign_event() -> None:
    rules.check_campaign_status(Event(kind="stopped", created_at=NOW, campaign="c"), STOPPED)
    rules.check_campaign_status(Event(kind="stopped", created_at=NOW), None)
    with pytest.raises(ValueError, match="needs a campaign event"):
        rules.check_campaign_status(Event(kind="stopped", created_at=NOW), STOPPED)
    with pytest.raises(ValueError):
        rules.check_campaign_status(Event(kind="stopped", created_at=NOW, campaign="c"), PAUSED)
