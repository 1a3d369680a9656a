"""The text an intent is read from: what the person wrote now, without what is not theirs.

:func:`replytrack.classify.new_text.new_text` already cut the quoted earlier message away.
What is left may still hold words the person did not write as a request: their signature
and what follows it (a disclaimer, our campaign's footer when the client copied it without
a quote marker), links (``https://…/unsubscribe?t=…``) and the conditional footer sentences
of bulk mail ("If you no longer wish to receive these emails…", "To unsubscribe, click
here"). Those are removed first, so a footer quoted back never reads as a request.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from .._anchored import AnchoredTable, anchors
from .._phrases import _literal_prefix

# Characters of new text read for an intent: people say what they want at the top.
INTENT_TEXT_LIMIT = 1500

# A signature delimiter ("-- "), or a rule line that starts a disclaimer or a footer.
_SIGNATURE = re.compile(r"^[ \t]*(?:--[ \t]?|_{5,}|-{5,}|={5,})[ \t]*$", re.M)
# A link and the label just before it on the same line ("Unsubscribe: <https://…>").
_LINK = re.compile(
    r"(?:[\w'’-]+[ \t]*(?::[ \t]*)?(?=<)|[\w'’-]+[ \t]*:[ \t]*)?<?(?:https?://|www\.)[^\s>]*>?",  # noqa: RUF001
    re.I,
)

_MAILTO = re.compile(r"<?mailto:([^\s>?]+)[^\s>]*>?", re.I)

# The sentences of bulk-mail footers, which name unsubscribing without asking for it. Each
# opens a sentence ("To unsubscribe, …") or is conditional ("if you no longer wish…"), so a
# person's "I would like to unsubscribe" is not one of them.
_FOOTER_SENTENCES = (
    ("en", r"\bif you (?:no longer|don't|do not|would (?:rather|prefer) not) (?:wish|want|like)"),
    # A sentence's opening: no word, comma or colon before it (the text's blanks are single).
    ("en", r"to (?<![\w,;:] to )(?<!\wto )(?:unsubscribe|opt[- ]out|stop receiving)"),
    ("en", r"\b(?:can|may) (?:unsubscribe|opt[- ]out)\b"),
    (
        "en",
        r"unsubscribe (?<![\w,;:] unsubscribe )(?<!\wunsubscribe )(?:here|below|at any time|anytime)\b",
    ),
    ("en", r"\b(?:manage|update) (?:your )?(?:e-?mail )?(?:preferences|subscriptions?|settings)\b"),
    (
        "en",
        r"\b(?:you're|you are) receiving (?:this|these)\b|\bthis (?:e-mail|email|message) was sent to\b",
    ),
    ("en", r"\bclick here to\b"),
    (
        "de",
        r"\bwenn sie (?:diese|unsere|keine|künftig keine)\b.{0,60}\b(?:erhalten|bekommen) (?:möchten|wollen)",
    ),
    (
        "de",
        r"\bum sich (?:vom newsletter )?ab(?:zu)?melden\b|\bzum abmelden\b|\bhier abmelden\b|\bnewsletter abbestellen\b",
    ),
    ("fr", r"\bsi vous ne (?:souhaitez|voulez|désirez) plus recevoir"),
    (
        "fr",
        r"\bpour (?:vous )?(?:désabonner|désinscrire)\b|\bse désinscrire\b|\bgérer vos préférences\b",
    ),
    ("es", r"\bsi (?:no|ya no) (?:desea|quiere|deseas|quieres) (?:seguir )?recibir"),
    ("es", r"\bpara (?:darse|darte|dar) de baja\b|\bpara cancelar (?:la|su|tu) suscripción\b"),
    ("pt", r"\bse (?:não|já não) (?:deseja|quiser|desejar) (?:mais )?receber"),
    ("pt", r"\bpara (?:cancelar|se descadastrar|descadastrar|deixar de receber)\b"),
    ("it", r"\bse non (?:desideri|desidera|vuoi|vuole) più ricevere"),
    (
        "it",
        r"\bper (?:annullare|cancellare) (?:l'iscrizione|la sottoscrizione)\b|\bper disiscriver(?:ti|si)\b",
    ),
    ("nl", r"\bals (?:u|je) (?:deze|onze|geen)\b.{0,60}\b(?:wilt|wil) ontvangen"),
    ("nl", r"\bom (?:je|u|zich) af te melden\b|\bklik hier om\b"),
    ("sv", r"\bom du inte (?:längre )?vill (?:ta emot|få)"),
    ("sv", r"\bför att avsluta (?:din |prenumerationen)|\bavregistrera dig här\b"),
    ("pl", r"\bjeśli nie chcesz (?:już )?otrzymywać"),
    ("pl", r"\baby (?:się )?(?:wypisać|zrezygnować)\b"),
)
_FOOTER = AnchoredTable(
    {
        lang: [p + r"[^.!?\n]*(?:[.!?]|\n|$)" for code, p in _FOOTER_SENTENCES if code == lang]
        for lang in dict.fromkeys(code for code, _ in _FOOTER_SENTENCES)
    },
    flags=re.U | re.S | re.M,
)
# Whether a text may hold a footer sentence at all, from its anchor words: most hold none.
_FOOTER_ANCHORS = frozenset(anchor for _, _, anchor in _FOOTER.table if anchor is not None)
_FOOTER_ALWAYS = any(anchor is None for _, _, anchor in _FOOTER.table)
# Each footer pattern's literal opening (no re.I): a pattern whose opening is not in the
# text is not run. Keyed by the source, whose hash a str keeps (a Pattern's is computed).
_FOOTER_OPENING = {
    pattern.pattern: _literal_prefix(pattern.pattern) for _, pattern, _ in _FOOTER.table
}


# The characters str.split() takes for blanks in ASCII text: folding these with replace()
# gives what " ".join(text.split()) gives, without making a string of every word.
_ASCII_BLANKS = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f"


def fold_blanks(low: str) -> str:
    """``low`` with each run of blanks made one space and none at either end, and right
    single quotes made apostrophes: ``" ".join(low.replace("\\u2019", "'").split())``."""
    if not low.isascii():
        return " ".join(low.replace("’", "'").split())  # noqa: RUF001
    for blank in _ASCII_BLANKS:
        if blank in low:
            low = low.replace(blank, " ")
    while "  " in low:
        low = low.replace("  ", " ")
    return low.strip(" ")


class IntentText(NamedTuple):
    """The new text prepared for the intent rules: ``text`` as written (for addresses),
    ``low`` lower-cased with runs of blanks made one (phrases wrap across lines)."""

    text: str
    low: str
    words: frozenset[str]  # the anchor set of ``low`` (see replytrack.classify._anchored)

    @classmethod
    def prepare(
        cls,
        new_text: str,
        limit: int = INTENT_TEXT_LIMIT,
        words: frozenset[str] | None = None,
        low: str | None = None,
    ) -> IntentText:
        """Cut the signature and what follows, links, and bulk-mail footer sentences.

        ``words``: the anchor set of ``new_text`` when the caller has it (a superset of the
        prepared text's does as well: it only lets a phrase run that cannot match).
        ``low``: ``new_text.lower()`` when the caller has it.
        """
        text = new_text[:limit]
        # Every delimiter holds "--", "_____" or "=====": without them the line-by-line
        # search (the costliest step on a long text) cannot find one. A character is looked
        # for first: that is a memchr, a string is a slower scan.
        if (
            ("-" in text and "--" in text)
            or ("_" in text and "_____" in text)
            or ("=" in text and "=====" in text)
        ):
            signature = _SIGNATURE.search(text)
            if signature is not None:
                text = text[: signature.start()]
        if low is None or len(text) != len(new_text):
            low = text.lower()
        # mailto: addresses stay (a referral may name one); the link around them goes.
        # (Neither pattern can match without its ":" or "www.".)
        cut = False
        colon = ":" in low
        if colon and "mailto:" in low:
            text, cut = _MAILTO.sub(r" \1 ", text), True
        if (colon and "http" in low) or "www." in low:
            text, cut = _LINK.sub(" ", text), True
        low = fold_blanks(text.lower() if cut else low)
        if words is None:
            words = anchors(low)
        # Footer sentences go from the lower-cased text only: phrases are read there, and
        # an address (read from ``text``) is never inside one.
        if _FOOTER_ALWAYS or not _FOOTER_ANCHORS.isdisjoint(words):
            for _, pattern in _FOOTER.candidates(words):
                if _FOOTER_OPENING[pattern.pattern] in low:
                    low = pattern.sub(" ", low)
        return cls(text, low, words)
