"""Where the new text of a mail ends and the quoted earlier message begins.

A person answering a mail writes above (or between) the lines of what they answer; an
auto-reply quotes nothing. Auto-reply wording is therefore looked for only in the new text,
so that a person quoting a notice is not taken for one, and only in its opening, where a
notice says what it is: a long reply costs no more to read than a short one.

The markers are those mail clients write before a quoted message, in the common client
languages: "> " lines, an attribution line ("On ... wrote:", "Am ... schrieb", "Le ... a
écrit", "Den ... skrev"), a separator ("-----Original Message-----", "---------- Forwarded
message") and the header block Outlook puts above the earlier message ("From: ... Sent:
...").
"""

from __future__ import annotations

import re

# Characters of new text read for auto-reply wording and return dates.
NEW_TEXT_LIMIT = 2000
# A marker that starts inside the limit is found even when it ends past it (an attribution
# line is at most ~250 characters); the search stops this far past the limit.
MARKER_SPAN = 1000

_SEPARATOR_WORDS = (
    "forwarded message|weitergeleitete nachricht|message transféré|mensaje reenviado|"
    "original message|ursprüngliche nachricht|message d'origine|mensaje original|"
    "messaggio originale|mensagem original|oorspronkelijk bericht|ursprungligt meddelande|"
    "oprindelig meddelelse|opprinnelig melding|alkuperäinen viesti|wiadomość oryginalna|"
    "původní zpráva"
)
_ATTRIBUTION_OPENERS = "on|am|le|el|il|em|op|den|w dniu"
_ATTRIBUTION_VERBS = "wrote|schrieb|a écrit|escribió|ha scritto|escreveu|schreef|skrev|napisał"
_HEADER_LABELS = "from|von|de|van|da|från|fra|od|lähettäjä"

# Every line-start branch uses [ \t]* rather than \s*: with re.M, a \s* after ^ runs on
# across the following empty lines and fails there, once per line, which makes a body of
# blank lines cost time quadratic in its length.
QUOTE_MARKERS = re.compile(
    # a quoted line; -----Original Message-----; On ... wrote:; the From: line Outlook
    # writes above the earlier mail (a line of underscores alone is no marker: notices
    # put one above their disclaimer)
    r"^[ \t]*>"
    rf"|^-{{2,}}[ \t]*(?:{_SEPARATOR_WORDS})"
    rf"|^[ \t]*(?:{_ATTRIBUTION_OPENERS}) .{{0,200}}(?:{_ATTRIBUTION_VERBS})[ \t]*:"
    # "Am ... schrieb Sam <sam@example.com>:": the name after the verb, the colon last
    rf"|^[ \t]*(?:{_ATTRIBUTION_OPENERS}) .{{0,200}}(?:{_ATTRIBUTION_VERBS}) .{{0,200}}:[ \t]*$"
    rf"|^[ \t]*(?:{_HEADER_LABELS}):\s.{{0,200}}$",
    re.I | re.M,
)


def quotes_earlier(text: str) -> bool:
    """True when ``text`` quotes an earlier message."""
    return QUOTE_MARKERS.search(text) is not None


def new_text(text: str, limit: int = NEW_TEXT_LIMIT) -> str:
    """The opening of ``text`` above its first quote marker, at most ``limit`` characters.

    ``text`` is searched only as far as the opening needs (a marker may span two lines),
    so the cost does not grow with the length of the quoted thread below.
    """
    line_end = text.find("\n", limit)
    if line_end >= 0:
        line_end = text.find("\n", line_end + 1)
    window = text if line_end < 0 else text[:line_end]
    match = QUOTE_MARKERS.search(window[: limit + MARKER_SPAN])
    cut = match.start() if match is not None else limit
    return text[: min(cut, limit)]
