"""Subject lines (replytrack.classify.subjects): one table of reply and forward prefixes that
the detectors, the unsubscribe rule and subject matching all read, and one bounded decoder of
encoded words."""

from __future__ import annotations

import pytest

from replytrack.classify import _mime
from replytrack.classify.intent import label_intent
from replytrack.classify.subjects import (
    FORWARD_SUBJECT,
    REPLY_SUBJECT,
    strip_prefixes,
    subject_text,
)
from replytrack.milter import match as matching

REPLIES = ["Re:", "RE :", "AW:", "SV:", "VS:", "Antw:", "R:", "Rif:", "Res:", "Odp:", "Réf. :"]
FORWARDS = ["Fw:", "FWD:", "WG:", "TR:", "RV:", "I:", "Enc:", "Doorst:", "VS:"]
COUNTED = ["Re[2]:", "RE(3):", "AW\uff1a", "Fwd.:"]


@pytest.mark.parametrize("prefix", REPLIES + FORWARDS + COUNTED)
def test_every_reader_knows_every_prefix(prefix: str) -> None:
    """What one reader takes for a reply or forward prefix, all do."""
    assert REPLY_SUBJECT.match(f"{prefix} x") or FORWARD_SUBJECT.match(f"{prefix} x")
    # Subject matching: the subject a person answers.
    assert matching.answer_subject(f"{prefix} {prefix} Hello  there") == ("hello there", True)
    # The unsubscribe rule: a subject that is only the request, behind any prefix.
    intent = label_intent("", subject=f"{prefix} Unsubscribe")
    assert intent.intent == "unsubscribe", intent


def test_reply_and_forward_prefixes_stay_apart() -> None:
    """A detector that tells a forwarded bounce from a replied one reads them apart."""
    assert REPLY_SUBJECT.match("Re: x") and not FORWARD_SUBJECT.match("Re: x")
    assert FORWARD_SUBJECT.match("Fwd: x") and not REPLY_SUBJECT.match("Fwd: x")
    for subject in ("Reply needed", "Fwd", "Result: 3", "Tracking: x", "Information"):
        assert strip_prefixes(subject) == (subject, False)


def test_encoded_words_are_decoded_once_and_bounded() -> None:
    assert subject_text("=?utf-8?q?AW=3A_Gr=C3=BC=C3=9Fe?=\t again") == "AW: Grüße again"
    assert subject_text("=?bogus?q?x?= y") == "=?bogus?q?x?= y"
    assert subject_text(None) == ""
    huge = "Re: " + "word " * 100_000
    assert len(_mime.decode_words(huge)) == _mime.MAX_VALUE
    assert len(subject_text(huge)) <= _mime.MAX_VALUE
    assert len(matching.answer_subject(huge)[0]) < _mime.MAX_VALUE
    encoded = "=?utf-8?q?Re=3A_x?= " * 10_000
    assert len(_mime.decode_words(encoded)) <= _mime.MAX_VALUE
