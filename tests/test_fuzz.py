"""Fuzzing the pure parts every mail goes through: header parsing, token verification,
the classifier and the milter engine.

No exception may escape any of them (outbound would answer 451 for nothing, inbound would
lose its verdict), and the work on hostile input must stay bounded. Bounds are asserted by
size (how many IDs come out, how many bytes are read), and the megabyte-sized cases run under
a generous hypothesis deadline, so quadratic behaviour fails the test without the suite
asserting any speed (speed lives in bench/).
"""

from __future__ import annotations

import datetime as dt
import string
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from replytrack import headers, tokens
from replytrack.classify import KINDS, classify, classify_message
from replytrack.tokens import Keyring

KEYRING = Keyring.generate()
OTHER_KEYRING = Keyring.generate()
DOMAIN = "mail.example.com"
# Minted once: hypothesis needs the same draws to give the same data.
MINTED = [tokens.mint(KEYRING, DOMAIN) for _ in range(20)]

# Bytes that matter to header parsing: line endings, folding, colons, brackets, NUL, 8-bit.
HEADER_BYTES = st.binary(max_size=2000) | st.lists(
    st.sampled_from(
        [
            b"\r\n",
            b"\n",
            b"\r",
            b" ",
            b"\t",
            b":",
            b"<",
            b">",
            b"@",
            b"(",
            b")",
            b"\x00",
            b"\xff",
            b"Subject",
            b"References",
            b"Message-ID",
            b"X-ReplyTrack-Campaign",
            b"a",
        ]
    ),
    max_size=400,
).map(b"".join)
BIG = settings(
    max_examples=15,
    deadline=timedelta(seconds=5),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --- headers ---------------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(data=HEADER_BYTES)
def test_split_and_parse_give_back_every_byte(data: bytes) -> None:
    head, rest = headers.split_message(data)
    assert head + rest == data
    fields = headers.parse_fields(head)
    assert b"".join(f.raw for f in fields) == head
    for f in fields:
        assert isinstance(f.value, str)


@settings(max_examples=300, deadline=None)
@given(
    data=HEADER_BYTES,
    body=st.binary(max_size=500),
    remove=st.lists(
        st.sampled_from(["Message-ID", "Subject", "X-ReplyTrack-Campaign", ""]), max_size=3
    ),
    value=st.text(alphabet=string.printable.replace("\r", "").replace("\n", ""), max_size=60),
)
def test_edit_header_never_touches_the_body(
    data: bytes, body: bytes, remove: list[str], value: str
) -> None:
    message = data.replace(b"\r\n\r\n", b"\r\n").replace(b"\n\n", b"\n")
    message = message.rstrip(b"\r\n") + b"\r\n\r\n" + body if message.strip() else b"\r\n" + body
    edited, removed = headers.edit_header(
        message, remove=remove, remove_prefixes=["X-ReplyTrack-"], add=[("Message-ID", value)]
    )
    _, old_rest = headers.split_message(message)
    new_head, new_rest = headers.split_message(edited)
    # The body (and the empty line before it) leaves exactly as it came.
    assert new_rest.endswith(body)
    assert old_rest == new_rest or not old_rest
    names = [f.name.lower() for f in headers.parse_fields(new_head)]
    assert names[0] == "message-id"
    assert all(not n.startswith("x-replytrack-") for n in names)
    assert all(
        f.name.lower() in {r.lower() for r in remove} or f.name.lower().startswith("x-replytrack-")
        for f in removed
    )


@settings(max_examples=300, deadline=None)
@given(value=st.text(max_size=3000))
def test_extract_msgids_bounded_and_clean(value: str) -> None:
    ids = headers.extract_msgids(value)
    assert len(ids) <= headers.MAX_IDS
    assert len(ids) == len(set(ids))
    for msgid in ids:
        assert "@" in msgid and len(msgid) <= 998
        assert not any(c in msgid for c in " \t\r\n<>")


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.text(max_size=300), max_size=5))
def test_extract_addresses_never_raises(values: list[str]) -> None:
    found = headers.extract_addresses(values)
    assert len(found) <= headers.MAX_ADDRESSES
    assert all("@" in a and a == a.lower() for a in found)


HOSTILE_FRAGMENTS = st.sampled_from(
    [
        "(",
        ")",
        "<",
        ">",
        "@",
        "a",
        "a@b",
        "<x@y>",
        " ",
        "\r\n ",
        "((((",
        "))))",
        '"',
        ",",
        "<a@b.example> ",
        "(comment <c@d>) ",
    ]
)


@BIG
@given(fragment=st.lists(HOSTILE_FRAGMENTS, min_size=1, max_size=8).map("".join))
def test_megabyte_references_bounded(fragment: str) -> None:
    """A 1 MB References of any repeated shape: at most MAX_IDS come out, quickly."""
    value = (fragment * (1_000_000 // len(fragment) + 1))[:1_000_000]
    ids = headers.extract_msgids(value)
    assert len(ids) <= headers.MAX_IDS
    assert isinstance(headers.strip_comments(value), str)
    raw = ("References: " + value + "\r\n").encode()
    assert len(headers.header_values(raw, "references")) == 1


def test_our_id_found_at_any_position_of_a_thousand() -> None:
    ours = tokens.mint(KEYRING, DOMAIN)
    for position in (0, 1, 500, 998, 999):
        chain = [f"<{i}.x@elsewhere.example>" for i in range(999)]
        chain.insert(position, f"<{ours}>")
        ids = headers.extract_msgids("\r\n ".join(chain))
        assert len(ids) == 1000
        assert ids[position] == ours


# --- tokens ----------------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_verify_never_raises_on_garbage(text: str) -> None:
    assert tokens.verify(KEYRING, text) is False


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_any_change_to_a_token_is_refused(data: st.DataObject) -> None:
    msgid = data.draw(st.sampled_from(MINTED))
    assert tokens.verify(KEYRING, msgid) and tokens.verify(KEYRING, f"<{msgid}>")
    token, _, domain = msgid.partition("@")
    index = data.draw(st.integers(0, len(token) - 1))
    replacement = data.draw(st.sampled_from("abcdefghijklmnopqrstuvwxyz234567ABZ01=-"))
    assume(replacement != token[index])
    forged = token[:index] + replacement + token[index + 1 :]
    assert not tokens.verify(KEYRING, f"{forged}@{domain}")
    cut = data.draw(st.integers(1, len(token) - 1))
    assert not tokens.verify(KEYRING, f"{token[:cut]}@{domain}")
    assert not tokens.verify(KEYRING, f"{token}{replacement.lower()}@{domain}")
    assert not tokens.verify(KEYRING, f"{token}@{domain.upper()}")
    assert not tokens.verify(KEYRING, f"{token}@other.example")
    assert not tokens.verify(OTHER_KEYRING, msgid)


# --- classifier ------------------------------------------------------------------------------
def _check(verdict: object) -> None:
    assert getattr(verdict, "kind", None) in KINDS
    evidence = verdict.evidence  # type: ignore[attr-defined]
    assert not any(e.startswith("classifier-error") for e in evidence), evidence


MIME_HEADERS = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "Content-Type",
                "Auto-Submitted",
                "Subject",
                "From",
                "References",
                "X-Autoreply",
                "Precedence",
                "Return-Path",
                "In-Reply-To",
            ]
        ),
        st.sampled_from(
            [
                "multipart/report; report-type=delivery-status; boundary=b",
                "multipart/mixed; boundary=b",
                "text/plain; charset=x-unknown",
                "auto-replied",
                "bulk",
                "<>",
                "Out of office",
                "=?utf-8?q?=FF?=",
                "MAILER-DAEMON <>",
                "<a@b> <c@d>",
            ]
        ),
    ),
    max_size=8,
)
MIME_BODY = st.lists(
    st.sampled_from(
        [
            b"--b\r\n",
            b"--b--\r\n",
            b"Content-Type: message/delivery-status\r\n",
            b"Content-Type: message/rfc822\r\n",
            b"\r\n",
            b"Status: 5.1.1\r\n",
            b"Final-Recipient: rfc822; x@y\r\n",
            b"Action: failed\r\n",
            b"I am out of the office until 3 March.\r\n",
            b"\xff\xfe\x00",
            b"Content-Transfer-Encoding: base64\r\n",
            b"=?=\r\n",
        ]
    ),
    max_size=60,
).map(b"".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hdrs=MIME_HEADERS, body=MIME_BODY, envelope=st.sampled_from([None, "", "<>", "a@b"]))
def test_classify_mime_shapes_never_raise(
    hdrs: list[tuple[str, str]], body: bytes, envelope: str | None
) -> None:
    _check(classify(hdrs, body, envelope_from=envelope, today=dt.date(2026, 11, 25)))
    raw = b"".join(f"{n}: {v}\r\n".encode() for n, v in hdrs) + b"\r\n" + body
    _check(classify_message(raw))


@BIG
@given(fragment=MIME_BODY.filter(bool), times=st.integers(1, 20_000))
def test_classify_bounded_on_big_bodies(fragment: bytes, times: int) -> None:
    body = (fragment * times)[:2_000_000]
    _check(classify([("Content-Type", "multipart/report; boundary=b")], body))


@pytest.mark.timeout(30)
@pytest.mark.parametrize("content_type", ["text/plain", "multipart/report; boundary=b"])
def test_classify_body_of_blank_lines_bounded(content_type: str) -> None:
    """64 KiB of empty lines (found by the fuzzer above): patterns anchored at a line start
    with a leading ``\\s*`` rescan every following line from every line, which is quadratic;
    a linear classifier finishes this in well under the timeout."""
    _check(classify([("Content-Type", content_type)], b"\r\n" * 32768))


def test_classify_thousand_id_references() -> None:
    refs = " ".join(f"<{i}@x.example>" for i in range(1000))
    _check(classify([("From", "a@b.example"), ("References", refs), ("In-Reply-To", "<5@x>")]))


# --- milter engine (pure parts) ---------------------------------------------------------------
ENGINE_HEADERS = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "From",
                "In-Reply-To",
                "References",
                "Message-ID",
                "X-ReplyTrack",
                "Auto-Submitted",
                "Content-Type",
                "Subject",
                "Return-Path",
            ]
        )
        | st.text(max_size=20),
        st.text(max_size=300)
        | st.lists(st.sampled_from([*MINTED, "x@y", "<", ">", "(", "junk"]), max_size=30).map(
            lambda ids: " ".join(f"<{i}>" for i in ids)
        ),
    ),
    max_size=15,
)


def _engine():  # type: ignore[no-untyped-def]
    from replytrack.config import Config
    from replytrack.milter.engine import Engine

    return Engine(Config(domain=DOMAIN), KEYRING, None)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    hdrs=ENGINE_HEADERS,
    envelope=st.sampled_from(["", "<>", "a@b.example", "MAILER-DAEMON@x"]) | st.text(max_size=40),
    body=st.none() | st.binary(max_size=2000),
)
def test_engine_screen_and_decide_never_raise(
    hdrs: list[tuple[str, str]], envelope: str, body: bytes | None
) -> None:
    from replytrack.milter import inbound
    from replytrack.store.records import INBOUND_KINDS

    engine = _engine()
    msg = inbound.Inbound(envelope_from=envelope, headers=hdrs, body=body)
    screening = engine.screen(msg)
    verdict = engine.decide(msg, screening)
    assert verdict.kind in INBOUND_KINDS
    # Without a store nothing can match, so nothing is a reply and nothing stops.
    assert verdict.kind != "reply" and not verdict.stopped
    assert screening.strip_count == sum(1 for n, _ in hdrs if n.lower() == "x-replytrack")
    assert inbound.dedupe_key(msg)
    inbound.never_reply_reason(msg)
    again = inbound.Inbound.from_json(msg.to_json())
    assert again.headers == msg.headers and again.body == msg.body


@settings(max_examples=200, deadline=None)
@given(hdrs=ENGINE_HEADERS)
def test_match_screen_bounded_and_never_looks_up_forgeries(hdrs: list[tuple[str, str]]) -> None:
    from replytrack.milter import match as matching

    screened = matching.screen(hdrs, keyring=KEYRING, domain=DOMAIN)
    ids = [c.message_id for c in screened.candidates]
    assert len(ids) == len(set(ids))
    for candidate in screened.candidates:
        if matching.looks_like_our_token(candidate.message_id, DOMAIN):
            assert candidate.verified and tokens.verify(KEYRING, candidate.message_id)
    assert not any(tokens.verify(KEYRING, f) for f in screened.forged)
    asked: list[list[str]] = []
    assert matching.match(screened, lambda found: asked.append(list(found)) or []) is None
    assert len(asked) <= 1


@BIG
@given(count=st.integers(1000, 20_000), ours_at=st.floats(0, 1))
def test_match_screen_megabyte_references(count: int, ours_at: float) -> None:
    """Thousands of IDs in References: bounded candidates, our verified token kept."""
    from replytrack.milter import match as matching

    chain = [f"<{i}.x@elsewhere.example>" for i in range(count)]
    position = int(ours_at * (min(count, headers.MAX_IDS) - 1))
    chain.insert(position, f"<{MINTED[0]}>")
    screened = matching.screen([("References", " ".join(chain))], keyring=KEYRING, domain=DOMAIN)
    assert len(screened.candidates) <= headers.MAX_IDS + 16
    assert MINTED[0] in [c.message_id for c in screened.candidates]
