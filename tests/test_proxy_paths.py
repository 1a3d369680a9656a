"""The proxy's fast reading of plain SMTP paths gives what aiosmtpd's own parser gives."""

from __future__ import annotations

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import given, settings
from hypothesis import strategies as st

from replytrack.proxy.protocol import NullSenderSMTP
from tests.support import strategies as addr


class _Limits:
    """What ``_getaddr`` reads of the server: the local-part limit (aiosmtpd's default)."""

    def __init__(self, limit: int = 64) -> None:
        self.local_part_limit = limit


def _outcome(parse: object, arg: str, limit: int) -> object:
    # The stdlib parser itself raises on some junk ("<" alone: IndexError); the fast path
    # must then raise the same, not answer differently.
    try:
        return parse(_Limits(limit), arg)  # type: ignore[operator]
    except Exception as exc:
        return ("raised", type(exc))


def fast(arg: str, limit: int = 64) -> object:
    return _outcome(NullSenderSMTP._getaddr, arg, limit)


def stock(arg: str, limit: int = 64) -> object:
    return _outcome(SMTP._getaddr, arg, limit)


_params = st.sampled_from(["", "SIZE=100", "BODY=8BITMIME SMTPUTF8", "(comment) SIZE=1", "x"])
_plain = st.builds(
    lambda g1, address, g2, params: f"{g1}<{address}>{g2}{params}",
    addr.gap,
    addr.address,
    addr.gap,
    _params,
)
# Other shapes, and junk in every position, must give aiosmtpd's answer too.
_other = st.text(alphabet='<>@."()[] \tab\\:,;-', max_size=24)


@settings(max_examples=600, deadline=None)
@given(st.one_of(_plain, _other, st.builds(lambda a, b: a + b, _plain, _other)))
def test_fast_path_agrees_with_aiosmtpd(arg: str) -> None:
    assert fast(arg) == stock(arg)


@pytest.mark.parametrize(
    "arg",
    [
        "<ann@acme.example>",
        "<ann@acme.example> SIZE=4096 BODY=8BITMIME",
        "  <ann.lee@mail.acme-corp.example>\tSMTPUTF8",
        "<ann@acme.example> (a comment) SIZE=1",
        "<a..b@acme.example>",
        "<.a@acme.example>",
        "<ann@acme.example.>",
        "<ann@[192.0.2.1]>",
        '<"ann lee"@acme.example>',
        "<@route.example:ann@acme.example>",
        "ann@acme.example",
        "<ann@acme.example",
        "",
    ],
)
def test_known_shapes_agree_with_aiosmtpd(arg: str) -> None:
    assert fast(arg) == stock(arg)


def test_local_part_limit_applies_on_the_fast_path() -> None:
    long_local = "a" * 65
    assert fast(f"<{long_local}@acme.example>") == (None, None)
    assert stock(f"<{long_local}@acme.example>") == (None, None)
    assert fast(f"<{long_local}@acme.example>", limit=0) == (f"{long_local}@acme.example", "")
