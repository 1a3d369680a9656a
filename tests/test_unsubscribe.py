"""Unsubscribe links: tokens, the List-Unsubscribe fields the stamp adds, mail to the
unsubscribe address, and what an unsubscribe does to the store (both backends)."""

from __future__ import annotations

from typing import Any

import pytest

from replytrack import unsubscribe
from replytrack.do_not_contact import address_hasher
from replytrack.headers import parse_fields, split_message
from replytrack.proxy.stamp import stamp
from replytrack.store.records import (
    ACTIVE,
    STOPPED,
    Event,
    StatusChange,
)
from replytrack.tokens import Keyring, mint, verify
from tests.support.milter_records import record_mail

DOMAIN = "track.example.com"
NOW = 1_760_000_000.0


def values(data: bytes, name: str) -> list[str]:
    header, _ = split_message(data)
    return [f.value for f in parse_fields(header) if f.name.lower() == name.lower()]


def options(keyring: Keyring, url_base: str = "") -> unsubscribe.Options:
    return unsubscribe.Options(keyring=keyring, address=f"unsubscribe@{DOMAIN}", url_base=url_base)


# --- tokens -----------------------------------------------------------------------------------


def test_a_token_leads_back_to_its_mail_and_is_not_its_message_id(keyring: Keyring) -> None:
    message_id = mint(keyring, DOMAIN)
    token = unsubscribe.token_for(keyring, message_id)
    assert token is not None and len(token) == len(message_id.partition("@")[0])
    assert token != message_id.partition("@")[0]
    assert unsubscribe.message_id_for(keyring, token, DOMAIN) == message_id
    assert verify(keyring, unsubscribe.message_id_for(keyring, token, DOMAIN) or "")
    # The Message-ID's own token (quoted in every reply) does not unsubscribe anyone.
    assert unsubscribe.message_id_for(keyring, message_id.partition("@")[0], DOMAIN) is None


def test_altered_forged_and_foreign_tokens_lead_nowhere(keyring: Keyring) -> None:
    token = unsubscribe.token_for(keyring, mint(keyring, DOMAIN)) or ""
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    for i in range(1, len(token)):
        swapped = alphabet[(alphabet.index(token[i]) + 1) % 32]
        altered = token[:i] + swapped + token[i + 1 :]
        assert unsubscribe.message_id_for(keyring, altered, DOMAIN) is None, i
    for bad in ("", token[:-1], token + "a", token.upper() + "!", "x" * len(token), "é" * 45):
        assert unsubscribe.message_id_for(keyring, bad, DOMAIN) is None
    other = Keyring.generate()
    assert unsubscribe.message_id_for(other, token, DOMAIN) is None
    assert unsubscribe.message_id_for(keyring, token, "other.example.com") is None
    # Only Message-IDs we minted get a token.
    assert unsubscribe.token_for(keyring, "client-1@engine.example.org") is None


# --- the fields on campaign mail -------------------------------------------------------------

CAMPAIGN = (
    b"From: s@example.org\r\nTo: pat@prospect.test\r\n"
    b"X-ReplyTrack-Campaign: spring\r\nSubject: hi\r\n\r\nbody\r\n"
)


def test_campaign_mail_gets_mailto_and_one_click_links(keyring: Keyring) -> None:
    message_id = mint(keyring, DOMAIN)
    out = stamp(CAMPAIGN, message_id, unsubscribe=options(keyring, "https://u.example.com/rt"))
    token = unsubscribe.token_for(keyring, message_id)
    assert values(out.data, "List-Unsubscribe") == [
        f"<mailto:unsubscribe+{token}@{DOMAIN}>, <https://u.example.com/rt/u/{token}>"
    ]
    assert values(out.data, "List-Unsubscribe-Post") == ["List-Unsubscribe=One-Click"]
    assert out.list_unsubscribe == "ours"
    assert split_message(out.data)[1] == split_message(CAMPAIGN)[1]


def test_without_a_url_only_mailto_and_no_post_field(keyring: Keyring) -> None:
    out = stamp(CAMPAIGN + b"", mint(keyring, DOMAIN), unsubscribe=options(keyring))
    [link] = values(out.data, "List-Unsubscribe")
    assert link.startswith("<mailto:unsubscribe+") and "https" not in link
    assert values(out.data, "List-Unsubscribe-Post") == []


def test_one_to_one_mail_and_switched_off_get_no_links(keyring: Keyring) -> None:
    plain = b"From: s@example.org\r\nTo: pat@prospect.test\r\n\r\nbody\r\n"
    out = stamp(plain, mint(keyring, DOMAIN), unsubscribe=options(keyring, "https://u.test"))
    assert values(out.data, "List-Unsubscribe") == [] and out.list_unsubscribe is None
    out = stamp(CAMPAIGN, mint(keyring, DOMAIN))
    assert values(out.data, "List-Unsubscribe") == [] and out.list_unsubscribe is None


def test_the_clients_own_list_unsubscribe_is_kept(keyring: Keyring) -> None:
    data = CAMPAIGN.replace(
        b"Subject: hi\r\n",
        b"Subject: hi\r\nList-Unsubscribe: <https://engine.test/unsub/1>\r\n"
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n",
    )
    out = stamp(data, mint(keyring, DOMAIN), unsubscribe=options(keyring, "https://u.test"))
    assert values(out.data, "List-Unsubscribe") == ["<https://engine.test/unsub/1>"]
    assert values(out.data, "List-Unsubscribe-Post") == ["List-Unsubscribe=One-Click"]
    assert out.list_unsubscribe == "client"


# --- mail to the unsubscribe address ----------------------------------------------------------


def test_recognise_takes_only_verified_tokens_of_our_address(keyring: Keyring) -> None:
    message_id = mint(keyring, DOMAIN)
    token = unsubscribe.token_for(keyring, message_id) or ""
    forged = token[:-2] + ("aa" if not token.endswith("aa") else "bb")

    def found(*rcpts: str) -> list[str]:
        return unsubscribe.recognise(
            rcpts, address=f"unsubscribe@{DOMAIN}", keyring=keyring, domain=DOMAIN
        )

    assert found(f"<Unsubscribe+{token.upper()}@TRACK.example.com>") == [message_id]
    assert found(f"unsubscribe+{token}@{DOMAIN}", f"unsubscribe+{token}@{DOMAIN}") == [message_id]
    assert found(f"unsubscribe+{forged}@{DOMAIN}") == []
    assert found(f"unsubscribe@{DOMAIN}", "pat@prospect.test") == []
    assert found(f"unsubscribe+{token}@elsewhere.test", f"other+{token}@{DOMAIN}") == []


# --- what an unsubscribe does (both backends) ----------------------------------------------------


def sent(store: Any, message_id: str, campaign: str, *names: str) -> None:
    names = tuple(f"{n}@example.com" for n in names)
    record_mail(store, message_id, campaign, *names, sender="sales@ours.example", at=NOW)


def test_an_unsubscribe_lists_stops_everywhere_and_notifies_once(any_store: Any) -> None:
    any_store.use_hasher(address_hasher(Keyring.generate()))
    sent(any_store, "m1@t", "spring", "ann")
    sent(any_store, "m2@t", "autumn", "ann", "bob")
    any_store.record_event(
        Event(kind="reply", created_at=NOW, campaign="autumn", sender="bob@example.com"),
        set_status=[StatusChange("autumn", "bob@example.com", STOPPED, "replied")],
    )
    outcome = unsubscribe.apply(any_store, "m1@t", via="one-click", now=NOW + 1)
    assert outcome is not None and outcome.addresses == ["ann@example.com"]
    assert sorted(outcome.stopped) == [
        ("autumn", "ann@example.com"),
        ("spring", "ann@example.com"),
    ]
    states = {(e.campaign, e.recipient): e.status for e in any_store.enrollments()}
    assert states == {
        ("spring", "ann@example.com"): STOPPED,
        ("autumn", "ann@example.com"): STOPPED,
        ("autumn", "bob@example.com"): STOPPED,
    }
    [event] = any_store.events(kind="unsubscribe")
    payload = event.to_json()
    assert payload["kind"] == "unsubscribe" and payload["recipient"] == "ann@example.com"
    assert payload["detail"]["via"] == "one-click"
    assert any_store.outbox_counts(NOW + 2)["pending"] == 2  # the reply's and this one
    # A campaign never sent to her before refuses her too.
    blocked = any_store.blocked_enrollments("winter", ["ann@example.com"])
    assert blocked["ann@example.com"].reason.startswith("do-not-contact")
    # The same click again changes nothing and queues nothing.
    again = unsubscribe.apply(any_store, "m1@t", via="one-click", now=NOW + 5)
    assert again is not None and not again.recorded
    assert len(any_store.events(kind="unsubscribe")) == 1
    assert len(any_store.suppressions()) == 1


def test_a_mailto_unsubscribe_from_one_recipient_covers_only_them(any_store: Any) -> None:
    sent(any_store, "m2@t", "autumn", "ann", "bob")
    outcome = unsubscribe.apply(any_store, "m2@t", via="mailto", requester="BOB@example.com")
    assert outcome is not None and outcome.addresses == ["bob@example.com"]
    states = {e.recipient: e.status for e in any_store.enrollments()}
    assert states == {"ann@example.com": ACTIVE, "bob@example.com": STOPPED}


def test_an_unknown_mail_does_nothing(any_store: Any) -> None:
    assert unsubscribe.apply(any_store, "gone@t", via="one-click") is None
    assert any_store.suppressions() == [] and any_store.events() == []


@pytest.mark.parametrize("requester", [None, "stranger@example.org"])
def test_a_request_naming_nobody_who_got_it_covers_every_recipient(
    any_store: Any, requester: str | None
) -> None:
    sent(any_store, "m2@t", "autumn", "ann", "bob")
    outcome = unsubscribe.apply(any_store, "m2@t", via="mailto", requester=requester)
    assert outcome is not None
    assert outcome.addresses == ["ann@example.com", "bob@example.com"]


def test_the_milter_engine_records_a_mailto_unsubscribe_and_never_calls_it_a_reply(
    store: Any, keyring: Keyring
) -> None:
    """Mail to unsubscribe+TOKEN@ our domain, as the List-Unsubscribe mailto sends it: the
    engine lists the sender and stops them; a forged token does nothing."""
    from replytrack.config import Config
    from replytrack.milter.engine import Engine
    from tests.support.milter_records import inbound, reply_headers

    domain = "track.example.com"
    message_id = mint(keyring, domain)
    sent(store, message_id, "spring", "ann")
    token = unsubscribe.token_for(keyring, message_id)
    assert token is not None
    engine = Engine(Config(domain=domain), keyring, store)

    # A forged token, or none, from the enrolled prospect herself: no unsubscribe, and
    # no reply either (it would match her enrollment weakly and stop the campaign).
    for local in (f"unsubscribe+{token[:-2]}xx", "unsubscribe"):
        forged = inbound("ann@example.com", reply_headers("ann@example.com", subject="unsubscribe"))
        forged.recipients = [f"{local}@{domain}"]
        screening = engine.prescreen(forged)
        assert screening is not None and screening.unsubscribes == ()
        assert engine.process(forged).kind != "reply"
        assert store.suppressions() == []
        assert store.events() == []
        assert {e.recipient: e.status for e in store.enrollments()} == {"ann@example.com": ACTIVE}

    msg = inbound("ann@example.com", reply_headers("ann@example.com", subject="unsubscribe"))
    msg.recipients = [f"unsubscribe+{token}@{domain}"]
    screening = engine.prescreen(msg)
    assert screening is not None and screening.unsubscribes == (message_id,)
    verdict = engine.process(msg)
    assert verdict.kind != "reply"
    assert [s.value for s in store.suppressions()] == ["ann@example.com"]
    assert {e.recipient: e.status for e in store.enrollments()} == {"ann@example.com": STOPPED}
    engine.process(msg)  # a replay records nothing twice
    assert len(store.events(kind="unsubscribe")) == 1
