"""What an intent rule is made of: a phrase table by language, searched in the prepared
text, with a negation check for the phrases a "not" in front turns around."""

from __future__ import annotations

import functools
import re
from typing import NamedTuple

from .._anchored import AnchoredTable
from .._phrases import _literal_prefix
from ._text import IntentText

# Words that turn the phrase after them around ("don't unsubscribe me", "no need to book a
# call", "nicht interessiert" is its own phrase): looked for between the start of the
# clause and the phrase, at most this many characters back.
_I = re.I | re.U | re.S
_NEGATION_SPAN = 30
_CLAUSE_END = re.compile(r"[.!?;,:\n]")
_NEGATION = re.compile(
    r"(?:\b(?:not|no|never|nothing|don't|dont|doesn't|didn't|won't|wouldn't|"
    r"nicht|kein\w*|nie|niemals|pas|jamais|ne|n'|nunca|jamás|não|nao|nem|non|mai|"
    r"niet|geen|nooit|inte|aldrig|ej)\b|n't\b)",
    _I,
)


def compile_table(table: dict[str, list[str]]) -> AnchoredTable:
    """A phrase table (language -> lower-case patterns) ready to search."""
    return AnchoredTable(table)


class Hit(NamedTuple):
    """One rule's finding: its name, the language and phrase that decided, where."""

    rule: str
    lang: str
    phrase: str
    start: int

    @property
    def evidence(self) -> str:
        return f"{self.rule}:{self.lang}:{self.phrase}"


@functools.cache
def _opening(source: str) -> str:
    """The literal text every match of the pattern ``source`` starts with ("" if none)."""
    return _literal_prefix(source)


def negated(low: str, start: int) -> bool:
    """True when a negation stands in the same clause just before ``start``."""
    if start == 0:
        return False
    before = low[max(0, start - _NEGATION_SPAN) : start]
    ends = list(_CLAUSE_END.finditer(before))
    if ends:
        before = before[ends[-1].end() :]
    return _NEGATION.search(before) is not None


def find(rule: str, phrases: AnchoredTable, text: IntentText, *, negatable: bool) -> Hit | None:
    """The first phrase of ``phrases`` (table order) in ``text`` that is not negated."""
    low = text.low
    if not low:
        return None
    for lang, pattern in phrases.candidates(text.words):
        # A phrase whose literal opening is not in the text cannot match: ``in`` costs far
        # less than running the pattern (the tables' patterns are case-sensitive, on
        # lower-cased text).
        if _opening(pattern.pattern) not in low:
            continue
        for match in pattern.finditer(low):
            if negatable and negated(low, match.start()):
                continue
            return Hit(rule, lang, match.group(0)[:60], match.start())
    return None
