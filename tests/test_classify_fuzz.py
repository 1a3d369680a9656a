"""No input makes the classifier raise, and hostile shapes stay bounded.

Inbound fails open: whatever arrives, classify() must return a verdict. Hypothesis feeds
arbitrary header lists and bodies; the hostile shapes (deep MIME nesting, huge header
blocks, endless References) are written out explicitly.
"""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replytrack.classify import KINDS, Classification, classify, classify_message, needs_body

NAMES = st.sampled_from(
    [
        "From",
        "Subject",
        "Content-Type",
        "Content-Transfer-Encoding",
        "Auto-Submitted",
        "Precedence",
        "In-Reply-To",
        "References",
        "Return-Path",
        "X-Failed-Recipients",
        "Date",
        "X-Autoreply",
        "X-MS-Exchange-Inbox-Rules-Loop",
    ]
) | st.text(min_size=0, max_size=30)
VALUES = st.text(max_size=300) | st.sampled_from(
    [
        "multipart/report; report-type=delivery-status; boundary=x",
        "multipart/mixed; boundary=",
        'multipart/alternative; boundary="a"',
        "message/rfc822",
        "auto-replied",
        "<>",
        "Automatic reply: hi",
        "Undeliverable: hi",
        "=?utf-8?b?invalid?=",
        "=?x-unknown?q?abc?=",
        "Mon, 99 Foo 2026 99:99:99",
    ]
)
BODIES = st.none() | st.binary(max_size=4000) | st.text(max_size=2000).map(str.encode)


def check(result: Classification) -> None:
    assert result.kind in KINDS
    assert all(isinstance(e, str) for e in result.evidence)
    assert all(isinstance(i, str) for i in result.referenced_ids)
    # classify() turns an internal fault into "human" (inbound fails open); a fault
    # is still a bug, so the tests insist on none.
    assert not any(e.startswith("classifier-error") for e in result.evidence), result.evidence


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    headers=st.lists(st.tuples(NAMES, VALUES), max_size=20),
    body=BODIES,
    envelope=st.none()
    | st.sampled_from(["", "<>", "MAILER-DAEMON@x.example"])
    | st.text(max_size=40),
)
def test_classify_never_raises(
    headers: list[tuple[str, str]], body: bytes | None, envelope: str | None
) -> None:
    check(classify(headers, body, envelope_from=envelope, today=dt.date(2026, 3, 2)))
    assert isinstance(needs_body(headers, envelope_from=envelope), bool)


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=6000))
def test_classify_message_never_raises(raw: bytes) -> None:
    check(classify_message(raw))


@settings(max_examples=100, deadline=None)
@given(
    text=st.text(
        alphabet=st.sampled_from(list("0123456789./- abcdefghijklmnoptuvyMJ\n")), max_size=400
    )
)
def test_return_date_reader_on_noise(text: str) -> None:
    result = classify(
        [("Subject", "Out of office"), ("Auto-Submitted", "auto-replied")],
        ("I am away until " + text).encode(),
        today=dt.date(2026, 3, 2),
    )
    assert result.kind == "auto_reply"
    if result.return_date is not None:
        assert dt.date(2026, 3, 2) < result.return_date <= dt.date(2027, 3, 3)


@pytest.mark.timeout(60)
def test_deep_mime_nesting_is_bounded() -> None:
    depth = 5000
    opening = "".join(
        f'--b{i}\nContent-Type: multipart/mixed; boundary="b{i + 1}"\n\n' for i in range(depth)
    )
    body = (opening + f"--b{depth}\nContent-Type: text/plain\n\nhello\n").encode()
    headers = [("From", "a@b.example"), ("Content-Type", 'multipart/mixed; boundary="b0"')]
    check(classify(headers, body))


@pytest.mark.timeout(60)
def test_many_parts_and_huge_headers_are_bounded() -> None:
    parts = "".join("--x\nContent-Type: text/plain\n\nDelivery failed\n" for _ in range(20000))
    headers = [("Content-Type", "multipart/mixed; boundary=x")]
    headers += [(f"X-Junk-{i}", "v" * 100) for i in range(50000)]
    headers += [("References", " ".join(f"<id{i}@x.example>" for i in range(100000)))]
    check(classify(headers, parts.encode()))


@pytest.mark.timeout(60)
def test_huge_single_line_body_is_bounded() -> None:
    body = b"I am out of the office until " + b"9" * 5_000_000
    result = classify([("Subject", "Automatic reply: x")], body)
    check(result)
    assert result.kind == "auto_reply"


@pytest.mark.timeout(60)
def test_pathological_date_sentences_are_bounded() -> None:
    sentence = "until " + " ".join(["Monday 12 March next week in two days"] * 2000)
    check(classify([("Subject", "Out of office"), ("X-Autoreply", "yes")], sentence.encode()))


# Bodies of one repeated fragment, 256 KiB each (the most the classifier reads). Each shape
# once made some pattern rescan the rest of the text from every line or every "<":
# blank lines and "> " lines for line-start patterns with \s*, "<" and "<script" for the
# HTML tag stripper. A linear classifier finishes each in milliseconds; the timeout only
# guards against a hang, it is no speed requirement.
HOSTILE_FRAGMENTS = {
    "blank-lines": b"\r\n",
    "quote-lines": b"> \r\n",
    "spaces": b" ",
    "blank-lines-with-indent": b" \t\r\n",
    "dash-lines": b"--\r\n",
    "dashes": b"-",
    "message-id-lines": b"Message-ID:\r\n",
    "open-brackets": b"<",
    "unclosed-scripts": b"<script>",
}
HOSTILE_HEADERS = {
    "plain": [("Content-Type", "text/plain")],
    "html": [("Content-Type", "text/html")],
    "report-from-daemon": [
        ("Content-Type", "multipart/report; report-type=delivery-status; boundary=b"),
        ("From", "MAILER-DAEMON@mx.example"),
        ("Subject", "Undeliverable: offer"),
    ],
    "auto-reply": [("Subject", "Out of office"), ("Auto-Submitted", "auto-replied")],
}


@pytest.mark.timeout(20)
@pytest.mark.parametrize("fragment", list(HOSTILE_FRAGMENTS), ids=list(HOSTILE_FRAGMENTS))
@pytest.mark.parametrize("shape", list(HOSTILE_HEADERS), ids=list(HOSTILE_HEADERS))
def test_256k_body_of_one_repeated_fragment_finishes(fragment: str, shape: str) -> None:
    piece = HOSTILE_FRAGMENTS[fragment]
    body = piece * (256 * 1024 // len(piece))
    verdict = classify(HOSTILE_HEADERS[shape], body, today=dt.date(2026, 11, 25))
    assert verdict.kind in KINDS
    assert not any(e.startswith("classifier-error") for e in verdict.evidence)
    if shape == "plain":
        # Nothing in these bodies is automation wording: the verdict stays human.
        assert verdict.kind == "human"


def _phrase_sets() -> dict[str, object]:
    from replytrack.classify import _patterns as pat

    return {name: value for name, value in vars(pat).items() if isinstance(value, pat.PhraseSet)}


def _vocabulary() -> list[str]:
    """Words and bits of the phrase tables, so that random text often nearly matches."""
    import re

    words: set[str] = set()
    for phrase_set in _phrase_sets().values():
        for _, pattern in phrase_set.table:  # type: ignore[attr-defined]
            words.update(re.findall(r"[^\W\d_]+(?:'[^\W\d_]+)?", pattern.pattern))
    return sorted(words)


VOCABULARY = _vocabulary()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    words=st.lists(
        st.tuples(st.sampled_from(VOCABULARY), st.sampled_from([" ", "  ", "\n", ": ", "-"])),
        max_size=40,
    ),
    upper=st.booleans(),
)
def test_phrase_screens_never_hide_a_phrase(words: list[tuple[str, str]], upper: bool) -> None:
    """The fast lower-case screen of each phrase table finds whatever the table's own
    case-insensitive patterns find, in any letter case."""
    text = "".join(word + gap for word, gap in words)
    if upper:
        text = text.upper()
    for name, phrase_set in _phrase_sets().items():
        expected = next((lang for lang, p in phrase_set.table if p.search(text)), None)  # type: ignore[attr-defined]
        assert phrase_set.first(text) == expected, name  # type: ignore[attr-defined]
        every = [p for _, p in phrase_set.table if p.search(text)]  # type: ignore[attr-defined]
        assert phrase_set.hits(text) == every, name  # type: ignore[attr-defined]
