"""The proxy's header transformation, tested directly (it is pure) and with hypothesis."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replytrack.headers import edit_header, parse_fields, split_message
from replytrack.proxy.stamp import MetadataError, header_end, stamp

OURS = "1abcdefgh@track.example.com"


def names(data: bytes) -> list[str]:
    header, _ = split_message(data)
    return [f.name.lower() for f in parse_fields(header)]


def values(data: bytes, name: str) -> list[str]:
    header, _ = split_message(data)
    return [f.value for f in parse_fields(header) if f.name.lower() == name.lower()]


def test_stamp_replaces_message_id_and_strips_metadata() -> None:
    data = (
        b"From: Seller <s@example.org>\r\n"
        b"To: a@x.test, B <b@y.test>\r\n"
        b"Cc: c@z.test\r\n"
        b"Subject: =?utf-8?q?gr=C3=BC=C3=9Fe?=\r\n"
        b"Message-ID: <orig@engine.test>\r\n"
        b"X-ReplyTrack-Campaign: spring\r\n"
        b"x-replytrack-step: 3\r\n"
        b"X-Original-Message-ID: <planted@evil.test>\r\n"
        b"X-ReplyTrack: reply; campaign=x\r\n"
        b"\r\n"
        b"Message-ID: <in-body@not-a-header>\r\n"
    )
    out = stamp(data, OURS)
    assert values(out.data, "Message-ID") == [f"<{OURS}>"]
    assert values(out.data, "X-Original-Message-ID") == ["<orig@engine.test>"]
    assert not [n for n in names(out.data) if n.startswith("x-replytrack")]
    assert split_message(out.data)[1] == split_message(data)[1]
    assert (out.campaign, out.step) == ("spring", 3)
    assert out.original_message_id == "orig@engine.test"
    assert out.to == ("a@x.test", "b@y.test") and out.cc == ("c@z.test",)
    assert out.from_address == "s@example.org"
    assert out.subject == "grüße"


def test_white_space_before_the_colon_is_still_the_field() -> None:
    """RFC 5322 obs-syntax "Name :": the campaign is read and the header never leaks out,
    and a second Message-ID written that way does not survive beside ours."""
    data = (
        b"X-ReplyTrack-Campaign : autumn\r\n"
        b"X-ReplyTrack-Step\t: 2\r\n"
        b"Message-ID : <orig@engine.test>\r\n"
        b"Subject: hi\r\n"
        b"\r\n"
        b"body\r\n"
    )
    out = stamp(data, OURS)
    assert (out.campaign, out.step) == ("autumn", 2)
    assert out.original_message_id == "orig@engine.test"
    assert b"ReplyTrack" not in split_message(out.data)[0]
    assert values(out.data, "Message-ID") == [f"<{OURS}>"]


def test_stamp_without_message_id_or_metadata() -> None:
    out = stamp(b"Subject: hi\n\nbody\n", OURS)
    assert out.data == f"Message-ID: <{OURS}>\n".encode() + b"Subject: hi\n\nbody\n"
    assert out.original_message_id is None and out.campaign is None and out.step is None


def test_folded_message_id_is_read() -> None:
    out = stamp(b"Message-ID:\r\n <folded@x.test>\r\nTo: a@b.test\r\n\r\n", OURS)
    assert out.original_message_id == "folded@x.test"
    assert values(out.data, "Message-ID") == [f"<{OURS}>"]


@pytest.mark.parametrize(
    "headers",
    [
        b"X-ReplyTrack-Campaign: " + b"c" * 201,
        b"X-ReplyTrack-Campaign: a\x7fb",
        b"X-ReplyTrack-Campaign: a\xffb",
        b"X-ReplyTrack-Campaign: a\r\nX-ReplyTrack-Campaign: b",
        b"X-ReplyTrack-Campaign: a\r\nX-ReplyTrack-Step: -1",
        b"X-ReplyTrack-Campaign: a\r\nX-ReplyTrack-Step: 1.5",
        b"X-ReplyTrack-Campaign: a\r\nX-ReplyTrack-Step: 9999999999",
        b"X-ReplyTrack-Step: 2",
        # Issue 13 item 7: a campaign header that is present but blank is a template gone
        # wrong, not one-to-one mail; ids outside the rule; steps in other scripts' digits.
        b"X-ReplyTrack-Campaign:",
        b"X-ReplyTrack-Campaign:    ",
        b"X-ReplyTrack-Campaign: \t",
        b"X-ReplyTrack-Campaign: spring\r\nX-ReplyTrack-Campaign:  ",
        b"X-ReplyTrack-Campaign: a;b",
        b"X-ReplyTrack-Campaign: a; match=in-reply-to",
        b"X-ReplyTrack-Campaign: a=b",
        b'X-ReplyTrack-Campaign: "a"',
        b"X-ReplyTrack-Campaign: spring 2026",
        "X-ReplyTrack-Campaign: fr\u00fchling".encode(),
        "X-ReplyTrack-Campaign: a\r\nX-ReplyTrack-Step: \u0663".encode(),
        "X-ReplyTrack-Campaign: a\r\nX-ReplyTrack-Step: \uff13".encode(),
        "X-ReplyTrack-Campaign: a\r\nX-ReplyTrack-Step: \u00b2".encode(),
        b"X-ReplyTrack-Campaign: a\r\nX-ReplyTrack-Step:",
        b"X-ReplyTrack-Campaign: a\r\nX-ReplyTrack-Step: +3",
        # A bare CR would be a line end upstream: a field hidden from us behind it.
        b"X-Foo: 1\rMessage-ID: <evil@x>\rX-ReplyTrack-Campaign: leaked",
        b"Subject: a\rb",
        # A first line starting with white space would continue our Message-ID.
        b" X-Foo: 1",
        b"\tMessage-ID: <evil@x>",
    ],
)
def test_bad_metadata_raises(headers: bytes) -> None:
    with pytest.raises(MetadataError):
        stamp(headers + b"\r\n\r\nbody\r\n", OURS)


def test_repeated_equal_campaign_is_fine_and_200_chars_is_the_limit() -> None:
    campaign = "c" * 200
    data = f"X-ReplyTrack-Campaign: {campaign}\r\nX-ReplyTrack-Campaign: {campaign}\r\n\r\n"
    assert stamp(data.encode(), OURS).campaign == campaign


def test_every_character_of_the_campaign_rule_is_taken() -> None:
    """The rule README states: ASCII letters, digits and . _ : - / + @ ; steps in 0-9."""
    campaign = "AZaz09._:-/+@"
    data = f"X-ReplyTrack-Campaign: {campaign}\r\nX-ReplyTrack-Step: 007\r\n\r\n".encode()
    out = stamp(data, OURS)
    assert (out.campaign, out.step) == (campaign, 7)


def test_blank_campaign_error_says_why() -> None:
    with pytest.raises(MetadataError, match=r"X-ReplyTrack-Campaign: the campaign id is empty"):
        stamp(b"X-ReplyTrack-Campaign:   \r\n\r\nbody\r\n", OURS)
    with pytest.raises(MetadataError, match=r"ASCII letters, digits and \. _ : - / \+ @"):
        stamp(b"X-ReplyTrack-Campaign: a;b\r\n\r\nbody\r\n", OURS)
    with pytest.raises(MetadataError, match=r"X-ReplyTrack-Step: .*ASCII digits"):
        stamp("X-ReplyTrack-Campaign: a\r\nX-ReplyTrack-Step: \u0663\r\n\r\n".encode(), OURS)


# --- properties -------------------------------------------------------------------------------

field_names = st.sampled_from(
    [
        "From",
        "To",
        "Cc",
        "Subject",
        "Message-ID",
        "message-id",
        "X-Original-Message-ID",
        "X-ReplyTrack",
        "X-ReplyTrack-Other",
        "Received",
        "DKIM-Signature",
        "X-Mailer",
    ]
)
field_values = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x2FF, exclude_characters="\x7f"),
    max_size=60,
).map(str.strip)
bodies = st.binary(max_size=400).map(lambda b: b.replace(b"\r", b""))


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    eol = draw(st.sampled_from([b"\r\n", b"\n"]))
    lines = []
    for name, value in draw(st.lists(st.tuples(field_names, field_values), max_size=12)):
        line = f"{name}: {value}".encode()
        if draw(st.booleans()):
            line += eol + b"\t" + value.encode()[:10] + b"x"
        lines.append(line + eol)
    body = draw(bodies).replace(b"\n", eol)
    return b"".join(lines) + eol + body


@settings(max_examples=300, deadline=None)
@given(messages())
def test_stamp_properties(data: bytes) -> None:
    out = stamp(data, OURS)
    # Exactly one Message-ID, ours.
    assert values(out.data, "Message-ID") == [f"<{OURS}>"]
    # No sender metadata leaves, and at most one X-Original-Message-ID (the client's own).
    assert not [n for n in names(out.data) if n.startswith("x-replytrack")]
    originals = values(out.data, "X-Original-Message-ID")
    assert originals == ([f"<{out.original_message_id}>"] if out.original_message_id else [])
    # The body is untouched, byte for byte.
    assert split_message(out.data)[1] == split_message(data)[1]
    # Every other field is kept, bytes and order unchanged.
    header, _ = split_message(data)
    dropped = {"message-id", "x-original-message-id"}
    kept = [
        f.raw
        for f in parse_fields(header)
        if f.name.lower() not in dropped and not f.name.lower().startswith("x-replytrack")
    ]
    out_header, _ = split_message(out.data)
    out_fields = [
        f.raw
        for f in parse_fields(out_header)
        if f.name.lower() not in ("message-id", "x-original-message-id")
    ]
    assert [r.rstrip(b"\r\n") for r in out_fields] == [r.rstrip(b"\r\n") for r in kept]


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        messages(),
        st.lists(
            st.sampled_from([b"\r\n", b"\n", b"\r", b"To: a@b.test", b"Message-ID: <m@x>", b"x"]),
            max_size=12,
        ).map(b"".join),
    )
)
def test_stamp_rebuilds_only_the_header_block(data: bytes) -> None:
    # The proxy relays head + body (a view of the client's bytes, never copied); that must
    # be exactly what editing the whole message gives, for any split of header and body.
    _, body_start = header_end(data)
    if re.search(rb"\r(?!\n)", data[:body_start]) or data[:1] in (b" ", b"\t"):
        with pytest.raises(MetadataError):
            stamp(bytearray(data), OURS)
        return
    out = stamp(bytearray(data), OURS)
    add = [("Message-ID", f"<{OURS}>")]
    if out.original_message_id is not None:
        add.append(("X-Original-Message-ID", f"<{out.original_message_id}>"))
    whole, _ = edit_header(
        data,
        remove=("Message-ID", "X-Original-Message-ID"),
        remove_prefixes=("X-ReplyTrack",),
        add=add,
    )
    assert out.data == whole
    assert out.size == len(whole)
    assert bytes(out.body) == data[out.body_start :]
