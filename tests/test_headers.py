"""Header parsing and editing on raw bytes: the body never changes, only the named fields
go, and hostile values cost bounded time."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replytrack.headers import (
    MAX_IDS,
    _parse_addresses,
    edit_header,
    extract_addresses,
    extract_msgids,
    header_values,
    line_ending,
    parse_fields,
    parse_mailbox,
    split_message,
)
from tests.support import strategies as addr

FUZZ = settings(max_examples=200, deadline=None)

names = st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,15}", fullmatch=True)
values = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\r\n\x00"), max_size=40
).map(str.strip)
eols = st.sampled_from([b"\r\n", b"\n"])


@st.composite
def header_blocks(draw: st.DrawFn) -> tuple[bytes, bytes, list[tuple[str, list[bytes]]]]:
    """A header block with folded fields, its line ending and its fields as (name, lines)."""
    eol = draw(eols)
    fields = []
    for _ in range(draw(st.integers(1, 8))):
        name = draw(names)
        first = f"{name}: {draw(values)}".encode()
        folds = [
            draw(st.sampled_from([b" ", b"\t"])) + draw(values).encode()
            for _ in range(draw(st.integers(0, 3)))
        ]
        fields.append((name, [first, *folds]))
    block = b"".join(line + eol for _, lines in fields for line in lines)
    return block, eol, fields


bodies = st.binary(max_size=3000) | st.builds(
    lambda parts: b"".join(parts),
    st.lists(
        st.sampled_from(
            [b"\r\n", b"\n", b"\r", b"\x00", b"\xff\xfe", b".", b"x" * 1200, b"caf\xc3\xa9 "]
        ),
        max_size=30,
    ),
)


@FUZZ
@given(block=header_blocks(), body=bodies, data=st.data())
def test_edit_keeps_body_and_other_fields_byte_identical(
    block: tuple[bytes, bytes, list[tuple[str, list[bytes]]]], body: bytes, data: st.DataObject
) -> None:
    header, eol, fields = block
    message = header + eol + body
    field_names = sorted({n for n, _ in fields})
    to_remove = data.draw(st.lists(st.sampled_from(field_names), max_size=3))
    # Case must not matter for removal.
    remove_spelled = [n.swapcase() for n in to_remove]
    out, removed = edit_header(
        message, remove=remove_spelled, add=[("Message-ID", "<tok@example.com>")]
    )
    gone = {n.lower() for n in to_remove}
    kept = b"".join(
        line + eol for name, lines in fields if name.lower() not in gone for line in lines
    )
    assert out == b"Message-ID: <tok@example.com>" + eol + kept + eol + body
    assert out.endswith(eol + body)
    assert [f.name.lower() for f in removed] == [n.lower() for n, _ in fields if n.lower() in gone]
    assert b"".join(f.raw for f in removed) == b"".join(
        line + eol for name, lines in fields if name.lower() in gone for line in lines
    )


@FUZZ
@given(data=st.binary(max_size=2000))
def test_split_and_parse_round_trip_arbitrary_bytes(data: bytes) -> None:
    header, rest = split_message(data)
    assert header + rest == data
    assert b"".join(f.raw for f in parse_fields(header)) == header


@FUZZ
@given(data=st.binary(max_size=2000))
def test_edit_without_changes_only_ever_completes_the_header(data: bytes) -> None:
    out, removed = edit_header(data)
    assert removed == []
    _header, rest = split_message(data)
    if rest:
        assert out.endswith(rest)


@FUZZ
@given(block=header_blocks())
def test_parse_fields_keeps_folded_lines_with_their_field(
    block: tuple[bytes, bytes, list[tuple[str, list[bytes]]]],
) -> None:
    header, eol, fields = block
    parsed = parse_fields(header)
    assert b"".join(f.raw for f in parsed) == header
    assert [f.name for f in parsed] == [n for n, _ in fields]
    for f, (_, lines) in zip(parsed, fields, strict=True):
        assert f.raw == b"".join(line + eol for line in lines)
        assert "\n" not in f.value and "\r" not in f.value


def test_folded_field_is_removed_whole_and_value_unfolds() -> None:
    message = (
        b"From: a@example.com\r\n"
        b"X-ReplyTrack-Campaign: spring\r\n"
        b"\tcontinued\r\n"
        b" more\r\n"
        b"Subject: hi\r\n"
        b"\r\n"
        b"X-ReplyTrack-Campaign: in the body stays\r\n"
    )
    out, removed = edit_header(message, remove=["x-replytrack-campaign"])
    assert out == (
        b"From: a@example.com\r\nSubject: hi\r\n\r\nX-ReplyTrack-Campaign: in the body stays\r\n"
    )
    assert len(removed) == 1
    assert removed[0].value == "spring continued more"


def test_remove_prefixes() -> None:
    message = b"X-ReplyTrack-Step: 2\nX-Replytrack-Campaign: c\nX-Other: 1\n\nbody"
    out, removed = edit_header(message, remove_prefixes=["x-replytrack-"])
    assert out == b"X-Other: 1\n\nbody"
    assert [f.name for f in removed] == ["X-ReplyTrack-Step", "X-Replytrack-Campaign"]


@pytest.mark.parametrize("eol", [b"\r\n", b"\n"])
def test_added_fields_use_the_blocks_line_ending(eol: bytes) -> None:
    message = b"Subject: x" + eol + eol + b"body\r\nwith\nmixed\rendings"
    out, _ = edit_header(message, add=[("Message-ID", "<a@b>"), ("X-Original-Message-ID", "<c@d>")])
    assert out == (b"Message-ID: <a@b>" + eol + b"X-Original-Message-ID: <c@d>" + eol + message)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        # No body: the header block gets the empty line that ends it.
        (b"Subject: x\r\n", b"Message-ID: <a@b>\r\nSubject: x\r\n\r\n"),
        (b"Subject: x", b"Message-ID: <a@b>\r\nSubject: x\r\n\r\n"),
        (b"Subject: x\n", b"Message-ID: <a@b>\nSubject: x\n\n"),
        # No header: the new field goes before the empty line, the body stays.
        (b"\r\nbody\n", b"Message-ID: <a@b>\r\n\r\nbody\n"),
        (b"\nbody\r\n", b"Message-ID: <a@b>\n\nbody\r\n"),
        # Nothing at all: on the wire line endings are CRLF.
        (b"", b"Message-ID: <a@b>\r\n\r\n"),
    ],
)
def test_edit_message_without_body_or_header(message: bytes, expected: bytes) -> None:
    out, _ = edit_header(message, add=[("Message-ID", "<a@b>")])
    assert out == expected


def test_line_ending_and_header_values() -> None:
    assert line_ending(b"A: b\r\n") == b"\r\n"
    assert line_ending(b"A: b\n") == b"\n"
    assert line_ending(b"A: b") == b"\r\n"
    header = b"To: a@x\r\nto: b@y\r\n  c@z\r\nCc: d@w\r\n"
    assert header_values(header, "TO") == ["a@x", "b@y  c@z"]


def test_non_field_lines_round_trip_and_are_never_removed() -> None:
    header = b" leading continuation\r\nno colon here\r\nBad Name: x\r\n: empty\r\nOK: y\r\n"
    fields = parse_fields(header)
    assert b"".join(f.raw for f in fields) == header
    assert [f.name for f in fields] == ["", "", "", "", "OK"]
    out, removed = edit_header(header + b"\r\nbody", remove=["", "Bad Name"])
    assert removed == []
    assert out == header + b"\r\nbody"


# --- Message-IDs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("<a@b>", ["a@b"]),
        ("<a@b>\r\n <c@d>\r\n\t<e@f>", ["a@b", "c@d", "e@f"]),
        ("<a@b> (a comment <x@y>) <c@d>", ["a@b", "c@d"]),
        ("<a@b> (nested (comment <x@y>) here) <c@d>", ["a@b", "c@d"]),
        ("a@b c@d", ["a@b", "c@d"]),
        ("<a@b> c@d, <e@f>", ["a@b", "c@d", "e@f"]),
        ("<a@b> <a@b> a@b <c@d>", ["a@b", "c@d"]),
        ("< a@b >", ["a@b"]),
        ("<no-at-sign> <a@b>", ["a@b"]),
        ("", []),
        ("(only a comment)", []),
        ('"quoted" <a@b>', ["a@b"]),
    ],
)
def test_extract_msgids(value: str, expected: list[str]) -> None:
    assert extract_msgids(value) == expected


def test_extract_msgids_bounded_to_the_limit() -> None:
    value = " ".join(f"<id{i}@example.com>" for i in range(1500))
    ids = extract_msgids(value)
    assert len(ids) == MAX_IDS
    assert ids[0] == "id0@example.com" and ids[-1] == f"id{MAX_IDS - 1}@example.com"
    assert extract_msgids(value, limit=10) == [f"id{i}@example.com" for i in range(10)]


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "value",
    [
        "a" * 1_000_000,
        "@" * 1_000_000,
        "<" * 1_000_000,
        "<a" * 500_000,
        "(" * 1_000_000,
        "(a" * 500_000 + ")" * 500_000,
        "<" + "a" * 999_999,
        "a@" * 500_000,
        "x@y " * 250_000,
    ],
)
def test_extract_msgids_on_megabyte_values_is_bounded(value: str) -> None:
    # The timeout marks the bound: a quadratic scan of these takes minutes.
    ids = extract_msgids(value)
    assert len(ids) <= MAX_IDS


@settings(max_examples=300, deadline=None)
@given(value=st.text(max_size=500))
def test_extract_msgids_never_raises(value: str) -> None:
    for msgid in extract_msgids(value):
        assert "@" in msgid and "<" not in msgid and ">" not in msgid


# --- addresses --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["Ann Lee <Ann@Example.COM>"], ["ann@example.com"]),
        (['"Lee, Ann" <ann@example.com>, bob@example.org'], ["ann@example.com", "bob@example.org"]),
        (["team: ann@example.com, Bob <bob@example.org>;"], ["ann@example.com", "bob@example.org"]),
        (["undisclosed-recipients:;"], []),
        (["=?utf-8?q?J=C3=B6rg?= <joerg@example.de>"], ["joerg@example.de"]),
        (["ann@example.com (Ann Lee)"], ["ann@example.com"]),
        (["a@x.test", "A@X.TEST", "b@x.test"], ["a@x.test", "b@x.test"]),
        (["not an address", ""], []),
    ],
)
def test_extract_addresses(values: list[str], expected: list[str]) -> None:
    assert extract_addresses(values) == expected


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "value",
    [
        "(" * 100_000,
        ":" * 100_000,
        "(" * 5000 + " a@b.test",
        "x:" * 5000 + " a@b.test;",
        ",<" * 100_000,
        '"' * 100_000,
        "a@b, " * 100_000,
    ],
)
def test_extract_addresses_on_hostile_values_is_bounded(value: str) -> None:
    # getaddresses recurses per nested comment or group: thousands raise RecursionError.
    result = extract_addresses([value])
    assert len(result) <= 1000
    if "a@b.test" in value:
        assert result == ["a@b.test"]


@settings(max_examples=300, deadline=None)
@given(values=st.lists(st.text(max_size=200), max_size=4))
def test_extract_addresses_never_raises(values: list[str]) -> None:
    for address in extract_addresses(values):
        assert "@" in address and address == address.lower()


def test_bare_cr_does_not_start_a_field() -> None:
    # To Postfix a bare CR is part of the line: "Subject: a<CR>X-ReplyTrack-Campaign: b" is
    # one Subject field. Cutting it in two and removing the second half would glue the
    # next field onto the Subject line.
    message = b"Subject: a\rX-ReplyTrack-Campaign: evil\r\nFrom: me@x\r\n\r\nbody"
    out, removed = edit_header(message, remove=["x-replytrack-campaign"])
    assert removed == []
    assert out == message
    assert [f.name for f in parse_fields(message.split(b"\r\n\r\n")[0] + b"\r\n")] == [
        "Subject",
        "From",
    ]


# --- the plain-mailbox fast path agrees with the stdlib parser ------------------------------
_mailbox = st.one_of(
    st.builds(lambda g1, a, g2: f"{g1}{a}{g2}", addr.gap, addr.address, addr.gap),
    st.builds(
        lambda g1, words, g2, a, g3: f"{g1}{' '.join(words)}{g2}<{a}>{g3}",
        addr.gap,
        st.lists(addr.atom, min_size=0, max_size=3),
        addr.gap,
        addr.address,
        addr.gap,
    ),
)


@settings(max_examples=500, deadline=None)
@given(_mailbox)
def test_plain_mailbox_fast_path_agrees_with_stdlib(value: str) -> None:
    from email.utils import getaddresses, parseaddr

    assert parse_mailbox(value) == parseaddr(value)
    assert list(_parse_addresses([value])) == getaddresses([value])


@pytest.mark.parametrize(
    "value",
    [
        '"Doe, John" <john@example.com>',
        "John (the boss) <john@example.com>",
        "a@example.com, b@example.com",
        "Team: a@example.com, b@example.com;",
        "<@route:john@example.com>",
        "=?utf-8?q?J=C3=B6rg?= <j@example.com>",
        "John <john@example.com",
    ],
)
def test_other_mailbox_shapes_go_to_the_stdlib(value: str) -> None:
    from email.utils import getaddresses, parseaddr

    assert parse_mailbox(value) == parseaddr(value)
    assert list(_parse_addresses([value])) == getaddresses([value])
