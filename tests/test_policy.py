"""Relations, stop scopes, free-mail and internal domains, out-of-office pauses (pure)."""

from __future__ import annotations

import datetime as dt

from replytrack.milter import policy
from replytrack.store.records import (
    ACTIVE,
    BOUNCED,
    PAUSED,
    STOPPED,
    Enrollment,
    OutboundRecipient,
    SentMessage,
)


def sent(*recipients: tuple[str, str]) -> SentMessage:
    return SentMessage(
        id=1,
        message_id="t@track.example.com",
        original_message_id=None,
        campaign="c",
        step=1,
        sender="s@vendor.example",
        from_address=None,
        subject=None,
        created_at=0.0,
        status="relayed",
        recipients=tuple(OutboundRecipient(a, role, True) for a, role in recipients),
    )


def enrolled(address: str, status: str = ACTIVE, campaign: str = "c") -> Enrollment:
    return Enrollment(campaign=campaign, recipient=address, status=status, reason=None, since=0.0)


MAIL = sent(("ann@acme.example", "to"), ("carl@acme.example", "cc"), ("bo@bcc.example", "bcc"))


def test_relation():
    assert policy.relation("ANN@acme.example", MAIL) == policy.ORIGINAL_RECIPIENT
    assert policy.relation("bo@bcc.example", MAIL) == policy.ORIGINAL_RECIPIENT
    assert policy.relation("carl@acme.example", MAIL) == policy.CC
    assert policy.relation("ann2@acme.example", MAIL) == policy.SAME_DOMAIN
    assert policy.relation("zed@else.example", MAIL) == policy.OTHER
    gmail = sent(("a@gmail.com", "to"))
    assert policy.relation("b@gmail.com", gmail) == policy.OTHER


def test_thread_scope_stops_recipients_and_enrolled_replier_only_if_stoppable():
    enrollments = [
        enrolled("ann@acme.example"),
        enrolled("carl@acme.example", PAUSED),
        enrolled("bo@bcc.example", BOUNCED),
    ]
    scope, targets = policy.stop_targets(
        "thread", sent=MAIL, replier="carl@acme.example", enrollments=enrollments
    )
    assert scope == "thread"
    assert targets == ["ann@acme.example", "carl@acme.example"]


def test_recipient_scope_falls_back_to_to_recipients_for_other_address():
    enrollments = [enrolled("ann@acme.example"), enrolled("carl@acme.example")]
    _, targets = policy.stop_targets(
        "recipient", sent=MAIL, replier="ann.home@else.example", enrollments=enrollments
    )
    assert targets == ["ann@acme.example"]
    _, targets = policy.stop_targets(
        "recipient", sent=MAIL, replier="carl@acme.example", enrollments=enrollments
    )
    # A reply from someone only CC'd ends the campaign for the addressee too (DESIGN).
    assert targets == ["carl@acme.example", "ann@acme.example"]
    _, targets = policy.stop_targets(
        "recipient", sent=MAIL, replier="ann@acme.example", enrollments=enrollments
    )
    assert targets == ["ann@acme.example"]


def test_domain_scope_and_freemail_fallback():
    enrollments = [enrolled("ann@acme.example")]
    colleagues = [enrolled("dan@acme.example"), enrolled("old@acme.example", STOPPED)]
    scope, targets = policy.stop_targets(
        "domain",
        sent=MAIL,
        replier="ann@acme.example",
        enrollments=enrollments,
        domain_enrollments=colleagues,
    )
    assert scope == "domain"
    assert targets == ["ann@acme.example", "dan@acme.example"]
    scope, _ = policy.stop_targets(
        "domain", sent=MAIL, replier="x@gmail.com", enrollments=enrollments
    )
    assert scope == "thread"
    scope, _ = policy.stop_targets(
        "domain",
        sent=MAIL,
        replier="x@corp-mail.example",
        enrollments=enrollments,
        freemail=["corp-mail.example"],
    )
    assert scope == "thread"


def test_internal_domains():
    assert policy.is_internal("me@vendor.example", ["vendor.example"])
    assert policy.is_internal("me@eu.vendor.example", ["vendor.example"])
    assert not policy.is_internal("me@notvendor.example", ["vendor.example"])
    assert not policy.is_internal("", ["vendor.example"])


def test_pause_until():
    now = dt.datetime(2026, 11, 25, 12, tzinfo=dt.UTC).timestamp()
    back = policy.pause_until(dt.date(2026, 12, 1), now=now, default_days=7, max_days=60)
    assert back == dt.datetime(2026, 12, 1, tzinfo=dt.UTC).timestamp()
    assert policy.pause_until(None, now=now, default_days=7, max_days=60) == now + 7 * 86400
    far = policy.pause_until(dt.date(2028, 1, 1), now=now, default_days=7, max_days=60)
    assert far == now + 60 * 86400
    assert policy.pause_until(dt.date(2026, 11, 1), now=now, default_days=7, max_days=60) is None


def test_freemail_matches_subdomains_and_common_providers():
    for domain in ("comcast.net", "free.fr", "163.com", "qq.com", "yahoo.co.jp", "hotmail.it"):
        assert policy.is_freemail(domain), domain
    assert policy.is_freemail("BTInternet.com")
    # Below a provider is still the provider; a look-alike suffix is not.
    assert policy.is_freemail("eu.mail.gmail.com")
    assert policy.is_freemail("branch.corp-mail.example", ["corp-mail.example"])
    assert not policy.is_freemail("notgmail.com")
    assert not policy.is_freemail("acme.example")
    gmail_sub = sent(("a@us.gmail.com", "to"))
    assert policy.relation("b@us.gmail.com", gmail_sub) == policy.OTHER
