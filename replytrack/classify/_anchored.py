"""Phrase tables searched by anchor words: for text that is long against the phrases.

A :class:`~replytrack.classify._phrases.PhraseSet` looks for each phrase's literal opening
with ``in``: for a table of a hundred phrases and 2,000 characters of text that is a hundred
passes. Here the text is cut into words once (:func:`anchors`), and a phrase is run only
when its first word (its first four letters, for longer words) is among them: a set lookup
per phrase. The answer is the table's own (the phrases run on the text as before); a
phrase whose first word cannot be told (an optional opening) always runs.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Iterator

from ._phrases import _literal_prefix, _screen_sources, _top_level_branches

_WORD = re.compile(r"\w+")
_ANCHOR = 4
_FIRST = operator.itemgetter(slice(None, _ANCHOR))


# Characters that end a word, made blanks so that str.split cuts the text as \w+ would
# (faster than a regex over the text by far). Other characters that are no word character
# only cost a phrase run: a word then carries them and may miss an anchor, so they are
# listed generously.
_NOT_WORD = str.maketrans(
    dict.fromkeys(map(ord, "!\"#$%&'()*+,-./:;<=>?@[\\]^`{|}~’‘“”„«»‹›–—…¿¡·•§°\u00a0"), " ")  # noqa: RUF001
)


def anchors(low: str) -> frozenset[str]:
    """The anchor set of lower-cased text: each word's first four characters."""
    return frozenset(map(_FIRST, set(low.translate(_NOT_WORD).split())))


def _anchor_of(source: str) -> str | None:
    """The anchor every match of ``source`` has among the text's words, or None."""
    bare = source[2:] if source.startswith("\\b") else source
    word = _WORD.match(bare)
    if word is None:
        return None
    text, rest = word.group(0), bare[word.end() :]
    if rest[:1] in ("?", "*", "{"):
        # The word's last character is optional: the word may end before it, or go on.
        text, complete = text[:-1], False
    else:
        # The word ends in the pattern itself: a literal blank or punctuation, or \b / \s.
        if rest[1:2] == "?":
            rest = rest[2:]  # an optional character after the word ("no,? thanks")
        complete = rest == "" or rest[:1] in " ,.;:!'-" or rest[:2] in ("\\b", "\\s")
    if len(text) >= _ANCHOR:
        return text[:_ANCHOR]
    return text if complete and text else None


def _bounded(source: str) -> str:
    """``source`` (a pattern opening with a word, ``\\b`` removed) with its word boundary
    put back after its literal opening: ``re`` scans fast for a pattern that opens with a
    literal, and char by char for one that opens with ``\\b``."""
    prefix = _literal_prefix(source)
    if not prefix:
        return "\\b" + source
    return prefix + f"(?<!\\w{re.escape(prefix)})" + source[len(prefix) :]


class AnchoredTable:
    """A phrase table (language, pattern) with the anchor word of each pattern.

    Patterns are written in lower case and searched in lower-cased text (no re.I, which
    would keep ``re`` from its literal scan). Each is split into its alternatives (a
    leading group distributed over the rest), each searched on its own: the answer is the
    same, and each opens with a literal.
    """

    def __init__(self, table: dict[str, list[str]], flags: int = re.U | re.S) -> None:
        self.table: list[tuple[str, re.Pattern[str], str | None]] = []
        for lang, sources in table.items():
            for source in sources:
                for branch in _top_level_branches(source):
                    bounded = branch.startswith("\\b")
                    for alternative in _screen_sources(branch):
                        pattern = _bounded(alternative) if bounded else alternative
                        anchor = _anchor_of(alternative)
                        self.table.append((lang, re.compile(pattern, flags), anchor))
        # Positions in the table by anchor: a text's candidates are found from the few
        # anchors it shares with the table, not by walking the table.
        self._by_anchor: dict[str, list[int]] = {}
        self._always: list[int] = []
        for position, (_, _, anchor) in enumerate(self.table):
            if anchor is None:
                self._always.append(position)
            else:
                self._by_anchor.setdefault(anchor, []).append(position)
        self._anchors = frozenset(self._by_anchor)

    def candidates(self, words: frozenset[str]) -> Iterator[tuple[str, re.Pattern[str]]]:
        """The (language, pattern) pairs, in table order, that may match text with anchor
        set ``words``."""
        positions = list(self._always)
        for anchor in self._anchors & words:
            positions += self._by_anchor[anchor]
        positions.sort()
        for position in positions:
            lang, pattern, _ = self.table[position]
            yield lang, pattern

    def first(self, low: str, words: frozenset[str]) -> str | None:
        """The language of the first pattern (in table order) found in ``low``."""
        for lang, pattern in self.candidates(words):
            if pattern.search(low):
                return lang
        return None
