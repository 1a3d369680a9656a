"""Subject lines as the detectors, the intent rules and subject matching read them: encoded
words decoded, and the reply and forward prefixes of many languages and clients, from one
table."""

from __future__ import annotations

import re

from ._mime import decode_words

# The words of the prefixes, as regular expressions, case ignored. Reply: Re, AW (German),
# SV (Nordic), VS (Finnish), Antw (Dutch), R, Rif (Italian), Res (Portuguese), Odp (Polish),
# Réf (French clients). Forward: Fw, Fwd, WG (German), TR (French), RV (Spanish), I (Italian),
# Enc (Portuguese), Doorst (Dutch), VS (Finnish, where it means both).
REPLY_WORDS = ("re", "aw", "sv", "vs", "antw", "r", "rif", "res", "odp", "r[ée]f")
FORWARD_WORDS = ("fwd?", "wg", "tr", "rv", "i", "enc", "doorst", "vs")

# One prefix: the word, an optional dot, Outlook's and Thunderbird's counters ("Re[2]:",
# "Re(2):"), and a colon, ASCII or full-width. No two runs of spaces meet, so a failed match
# over a long run of spaces costs linear time, not quadratic.
_PREFIX = r"\s*(?:{words})\.?\s*(?:(?:\[\d+\]|\(\d+\))\s*)?[:\uff1a]"

REPLY_SUBJECT = re.compile("^" + _PREFIX.format(words="|".join(REPLY_WORDS)), re.I)
FORWARD_SUBJECT = re.compile("^" + _PREFIX.format(words="|".join(FORWARD_WORDS)), re.I)
_PREFIXES = re.compile(
    r"^(?:" + _PREFIX.format(words="|".join(dict.fromkeys(REPLY_WORDS + FORWARD_WORDS))) + r")+\s*",
    re.I,
)


def subject_text(value: str | None) -> str:
    """A Subject header's text: RFC 2047 words decoded (the value as it came when they do not
    decode), runs of white space folded into one space; bounded by ``decode_words``."""
    return " ".join(decode_words(value or "").split())


def strip_prefixes(subject: str) -> tuple[str, bool]:
    """``subject`` without its leading reply and forward prefixes ("Re: Fwd: AW: "), and
    whether it had any."""
    found = _PREFIXES.match(subject)
    if found is None:
        return subject, False
    return subject[found.end() :], True
