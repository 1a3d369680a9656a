"""Auto-reply wording is read only in the opening of the new text, above the quoted thread;
the IDs an automated reply refers to come from the same In-Reply-To/References order the
matcher uses; every detector is in the table with its description."""

from __future__ import annotations

import datetime as dt

import pytest

from replytrack.classify import Classification, classify
from replytrack.classify.detectors import DETECTORS
from replytrack.classify.new_text import NEW_TEXT_LIMIT, new_text
from replytrack.classify.thread_ids import IN_REPLY_TO, REFERENCES, answered_ids

TODAY = dt.date(2026, 3, 2)
OUR_ID = "tok3n.abc@mail.example.com"
NOTICE = (
    "I am out of the office until Monday with no access to email.\nThis is an automatic reply.\n"
)


def reply(
    body: str,
    *,
    subject: str = "Re: Your proposal",
    in_reply_to: str = OUR_ID,
    references: str = "",
) -> Classification:
    headers = [
        ("From", "Erika Mustermann <erika@example.de>"),
        ("To", "Sam Seller <sam@example.com>"),
        ("Subject", subject),
        ("Message-ID", "<reply-1@example.de>"),
        ("In-Reply-To", f"<{in_reply_to}>"),
        ("References", references or f"<{OUR_ID}>"),
        ("Content-Type", "text/plain; charset=utf-8"),
    ]
    return classify(headers, body.encode(), envelope_from="erika@example.de", today=TODAY)


ATTRIBUTIONS = {
    "en": "On Mon, 2 Mar 2026 at 09:12, Sam Seller <sam@example.com> wrote:",
    "de": "Am 02.03.2026 um 09:12 schrieb Sam Seller <sam@example.com>:",
    "fr": "Le lun. 2 mars 2026 à 09:12, Sam Seller <sam@example.com> a écrit :",
    "sv": "Den 2 mars 2026 kl. 09:12 skrev Sam Seller <sam@example.com>:",
    "pl": "W dniu 2.03.2026 o 09:12, Sam Seller <sam@example.com> napisał:",
    "outlook": "From: Sam Seller <sam@example.com>\nSent: Monday, March 2, 2026 9:12 AM",
    "separator-nl": "-----Oorspronkelijk bericht-----",
    "separator-da": "-----Oprindelig meddelelse-----",
}


@pytest.mark.parametrize("marker", list(ATTRIBUTIONS), ids=list(ATTRIBUTIONS))
def test_notice_wording_below_a_quote_marker_is_not_the_senders(marker: str) -> None:
    """A person forwarding or answering above an earlier notice, quoted without "> " as
    Outlook and many webmails do, is a person."""
    body = f"Hi Sam,\n\nsee below, let us talk.\n\nErika\n\n{ATTRIBUTIONS[marker]}\n\n{NOTICE}"
    verdict = reply(body)
    assert verdict.kind == "human", verdict.evidence


def test_the_same_notice_above_the_quote_is_an_auto_reply() -> None:
    body = f"{NOTICE}\n{ATTRIBUTIONS['en']}\n> Dear Erika, our offer...\n"
    assert reply(body, subject="Automatic reply: Your proposal").kind == "auto_reply"


def test_wording_past_the_opening_of_a_long_reply_is_not_read() -> None:
    """Notices say what they are at once; a person's long mail is not scanned to its end."""
    opening = "We went through the proposal line by line with the team.\n" * 60
    assert len(opening) > NEW_TEXT_LIMIT
    verdict = reply(opening + NOTICE)
    assert verdict.kind == "human", verdict.evidence
    assert not [e for e in verdict.evidence if e.startswith("body:")]


def test_new_text_is_the_opening_above_the_first_marker() -> None:
    text = "Thanks!\n\nOn Mon, Sam wrote:\nolder text\n"
    assert new_text(text) == "Thanks!\n\n"
    assert new_text("x" * 5000) == "x" * NEW_TEXT_LIMIT
    # A marker that starts inside the opening and ends past it still ends the new text.
    body = "a" * (NEW_TEXT_LIMIT - 10) + "\nOn Mon, 2 Mar 2026, " + "S" * 60 + " wrote:\nold"
    assert new_text(body) == "a" * (NEW_TEXT_LIMIT - 10) + "\n"


def test_auto_reply_refers_to_the_newest_reference_of_a_long_thread() -> None:
    """References lists a thread oldest first: the newest IDs are the mail answered, also
    when the chain is longer than the classifier keeps."""
    older = " ".join(f"<step{i}@older.example>" for i in range(80))
    verdict = reply(
        NOTICE,
        subject="Out of office",
        in_reply_to="cc-reply@example.org",
        references=f"{older} <{OUR_ID}> <cc-reply@example.org>",
    )
    assert verdict.kind == "auto_reply"
    assert verdict.referenced_ids[:2] == ("cc-reply@example.org", OUR_ID)


def test_answered_ids_order_and_sources() -> None:
    pairs = answered_ids(["<a@x> <b@x>"], ["<r1@x> <a@x> <r2@x>"], limit=50)
    assert pairs == [
        ("a@x", IN_REPLY_TO),
        ("b@x", IN_REPLY_TO),
        ("r2@x", REFERENCES),
        ("r1@x", REFERENCES),
    ]
    newest = answered_ids([], [" ".join(f"<{i}@x>" for i in range(100))], limit=10)
    assert [i for i, _ in newest] == [f"{i}@x" for i in range(99, 89, -1)]


def test_every_detector_has_a_description() -> None:
    assert len(DETECTORS) == 8
    for detector in DETECTORS:
        assert (detector.check.__doc__ or "").strip()
        assert (detector.signals.__doc__ or "").strip()
