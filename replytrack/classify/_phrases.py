"""Phrase tables searched fast: most text matches none of a table's phrases.

The tables themselves are in :mod:`replytrack.classify._patterns`; this module only knows
how to search one quickly without changing its answer.
"""

from __future__ import annotations

import re


def _top_level(source: str) -> tuple[list[str], int | None]:
    """Split ``source`` at its outermost ``|`` (outside groups and classes), up to the
    ``)`` that closes the level it starts in; also return that ``)``'s index (None
    when the text runs out first)."""
    branches: list[str] = []
    depth = 0
    in_class = False
    start = 0
    index = 0
    while index < len(source):
        char = source[index]
        if char == "\\":
            index += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
            if source[index + 1 : index + 2] == "]":
                index += 1  # a "]" first in a class is a member, not its end
        elif char == "(":
            depth += 1
        elif char == ")":
            if depth == 0:
                branches.append(source[start:index])
                return branches, index
            depth -= 1
        elif char == "|" and depth == 0:
            branches.append(source[start:index])
            start = index + 1
        index += 1
    branches.append(source[start:])
    return branches, None


def _top_level_branches(source: str) -> list[str]:
    """The alternatives of a pattern's outermost ``|``."""
    return _top_level(source)[0]


def _screen_sources(source: str) -> list[str]:
    """Alternatives whose union matches wherever ``source`` does, each opening with a
    literal when that can be arranged: "\\b(?:i am|i'm) away" becomes "i am away" and
    "i'm away" (dropping a \\b only widens a screen; distributing a leading
    group over the rest of the branch keeps its meaning)."""
    out: list[str] = []
    for branch in _top_level_branches(source):
        bare = branch[2:] if branch.startswith("\\b") else branch
        if bare.startswith("(?:"):
            alternatives, end = _top_level(bare[3:])
            if end is not None:
                rest = bare[3 + end + 1 :]
                expanded = [alt + rest for alt in alternatives]
                if rest[:1] not in ("*", "+", "?", "{") and all(
                    alt[:1].isalpha() for alt in expanded
                ):
                    out.extend(expanded)
                    continue
        out.append(bare)
    return out


_META = frozenset("\\.^$*+?{}[]()|")


def _literal_prefix(source: str) -> str:
    """The literal text every match of ``source`` starts with ("" when none)."""
    prefix: list[str] = []
    for char in source:
        if char in _META:
            if char in "*+?{" and prefix:
                prefix.pop()  # the quantified character may be absent or repeated
            break
        prefix.append(char)
    return "".join(prefix)


# Text up to this long is screened in one pass (see PhraseSet.might_match).
_SHORT_TEXT = 256


class PhraseSet:
    """A phrase table searched fast: most text matches none of its phrases.

    Python's ``re`` cannot use its literal-prefix scan under re.IGNORECASE, nor for a
    pattern that opens with ``\\b``, so a table of 40 such patterns costs 40 character-
    by-character passes over the text. Every phrase here is written in lower case, so
    the lower-cased text is first searched without re.I: patterns that open with a
    literal each (fast scan), the others as one alternation (a single pass); a screen's
    literal prefix is first looked for with ``in``, whose substring search skips ahead
    faster than the regex engine's scan. Only when that finds something are the original
    patterns run in table order, on the original text, so the answer (which phrase,
    which language, how many) is the table's own.
    """

    def __init__(self, table: list[tuple[str, re.Pattern[str]]]) -> None:
        self.table = table
        literal: list[str] = []
        other: list[str] = []
        for _, pattern in table:
            for source in _screen_sources(pattern.pattern):
                (literal if source[:1].isalpha() else other).append(source)
        self._screens = [re.compile(source, re.U | re.S) for source in literal]
        if other:
            joined = "|".join(f"(?:{source})" for source in other)
            self._screens.append(re.compile(joined, re.U | re.S))
        self._prefixed = [(_literal_prefix(s.pattern), s) for s in self._screens]
        # On short text (a subject, a header value) one pass of a single alternation beats
        # the literal scans, which each start over; on long text the literal scans win
        # (figures in bench/README.md).
        self._one_pass = re.compile(
            "|".join(f"(?:{screen.pattern})" for screen in self._screens), re.U | re.S
        )

    def might_match(self, text: str) -> bool:
        """False when no phrase of the table occurs in ``text`` (the fast pass)."""
        low = text.lower()
        if len(low) <= _SHORT_TEXT:
            return self._one_pass.search(low) is not None
        return any(prefix in low and screen.search(low) for prefix, screen in self._prefixed)

    def first(self, text: str) -> str | None:
        """The language of the first phrase (in table order) found in ``text``."""
        if not text or not self.might_match(text):
            return None
        for lang, pattern in self.table:
            if pattern.search(text):
                return lang
        return None

    def hits(self, text: str) -> list[re.Pattern[str]]:
        """Every pattern of the table that occurs in ``text``."""
        if not text or not self.might_match(text):
            return []
        return [p for _, p in self.table if p.search(text)]
