"""What a person's reply means: its intent, read from the new text above the quote only.

:func:`label_intent` runs the rules of :data:`RULES`, one module each, over the prepared new
text (:class:`~replytrack.classify.intent._text.IntentText`: no signature, links or bulk-mail
footer sentences, so our own footer's "unsubscribe" quoted or copied back never counts).
Every rule that fires leaves evidence (``rule:language:phrase``); the intent is the first
of :data:`INTENTS` among them, in that order of precedence::

    unsubscribe > not_interested > referral > positive > other

so "sounds good, but please remove me" is an unsubscribe. Negation is handled for the
obvious cases: a "not"/"nicht"/"pas"/… in the same clause just before a phrase turns a
``positive`` or ``unsubscribe`` phrase off ("no need to book a call", "please don't
unsubscribe me" is then ``other``); the ``not_interested`` phrases carry their own negation.
Everything here is pure and bounded (at most INTENT_TEXT_LIMIT characters are read).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import not_interested, positive, referral, unsubscribe
from ._rule import Hit
from ._text import INTENT_TEXT_LIMIT, IntentText

UNSUBSCRIBE = "unsubscribe"
NOT_INTERESTED = "not_interested"
REFERRAL = "referral"
POSITIVE = "positive"
OTHER = "other"
#: The intents, in order of precedence.
INTENTS = (UNSUBSCRIBE, NOT_INTERESTED, REFERRAL, POSITIVE, OTHER)


@dataclass(frozen=True)
class Rule:
    """One intent rule: its name, what it means, and its check."""

    name: str
    description: str
    check: Callable[[IntentText, str], Hit | None]


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().splitlines()[0] if doc else ""


#: The rules in order of precedence (the first that fires decides).
RULES: tuple[Rule, ...] = tuple(
    Rule(module.NAME, _first_line(module.__doc__), module.check)
    for module in (unsubscribe, not_interested, referral, positive)
)


@dataclass(frozen=True)
class Intent:
    """What a person's reply means.

    ``intent`` is one of :data:`INTENTS`; ``evidence`` one ``rule:language:phrase`` per
    rule that fired, the deciding one first; ``referred_address`` the address a referral
    names (None when it names none, or the intent is not ``referral``); ``language`` the
    language of the deciding phrase (``en``, ``de``, …; None for ``other``).
    """

    intent: str
    evidence: tuple[str, ...] = ()
    referred_address: str | None = None
    language: str | None = None

    def to_json(self) -> dict[str, object]:
        """The intent as ``check --json``, ``events --json`` and webhooks carry it."""
        return {
            "intent": self.intent,
            "evidence": list(self.evidence),
            "referred_address": self.referred_address,
            "language": self.language,
        }


NO_INTENT = Intent(OTHER)


def label_intent(
    new_text: str,
    *,
    subject: str = "",
    sender: str = "",
    words: frozenset[str] | None = None,
    low: str | None = None,
) -> Intent:
    """The intent of a person's reply from its ``new_text`` (the text above the quoted
    earlier message, see :func:`replytrack.classify.new_text.new_text`).

    ``subject`` is read only when it is nothing but a request ("Unsubscribe"): a reply's
    subject is usually ours with "Re:" in front. ``sender`` (an address) is never taken for
    the referred address. ``words`` is the anchor set of ``new_text`` and ``low`` the text
    lower-cased, when the caller has them (:func:`replytrack.classify._anchored.anchors`),
    to save computing them again.
    """
    text = IntentText.prepare(new_text, words=words, low=low)
    hits = [hit for rule in RULES if (hit := rule.check(text, subject)) is not None]
    if not hits:
        return NO_INTENT
    first = hits[0]
    address = None
    if first.rule == REFERRAL:
        address = referral.referred_address(text, first, sender)
    language = first.lang if first.lang not in ("any", "subject") else None
    return Intent(first.rule, tuple(h.evidence for h in hits), address, language)


__all__ = [
    "INTENTS",
    "INTENT_TEXT_LIMIT",
    "NOT_INTERESTED",
    "NO_INTENT",
    "OTHER",
    "POSITIVE",
    "REFERRAL",
    "RULES",
    "UNSUBSCRIBE",
    "Intent",
    "Rule",
    "label_intent",
]
