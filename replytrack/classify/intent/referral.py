"""``referral``: the person says we wrote to the wrong one ("I'm not the right person",
"please contact …", "I no longer work at …", "wenden Sie sich an …"). When the new text
names an address after the phrase (or anywhere, failing that) other than the sender's own,
it is the referred address.
"""

from __future__ import annotations

import re

from ._rule import Hit, compile_table, find
from ._text import IntentText

NAME = "referral"

# How far after the phrase an address still belongs to it.
_ADDRESS_SPAN = 300
_ADDRESS = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})+"
)

PHRASES = compile_table(
    {
        "en": [
            r"\b(?:i'm|i am) not the (?:right|best|correct|appropriate|relevant|responsible) (?:person|contact|one)\b",
            r"\bwrong (?:person|contact|department)\b",
            r"\b(?:please|kindly|you should|better to|best to|you may want to|you might want to|you'll want to|try) "
            r"(?:contact|reach out to|get in touch with) (?!me\b|us\b|again\b)",
            r"\b(?:please|kindly|you should|better to|best to|try) (?:e-?mail|write to) [\w.+-]+@",
            r"\b(?:is|would be) the (?:right|best|correct|appropriate|responsible) (?:person|contact)\b",
            r"\b(?:i've|i have|i) (?:forwarded|passed|cc'?d|copied|looped in) (?:your|this|it|my colleague)\b",
            r"\b(?:no longer|don't|do not) work (?:at|for|with|here|there)\b|\bi(?:'m| am) no longer (?:with|at)\b",
            r"\b(?:is|are) (?:responsible|in charge) (?:for|of) (?:this|that|these|our)\b",
        ],
        "de": [
            r"\bnicht (?:der|die) (?:richtige|zuständige|korrekte)n? (?:ansprechpartner(?:in)?|person|kontakt)\b",
            r"\bfalsche(?:r|n)? (?:ansprechpartner(?:in)?|person|abteilung)\b",
            r"\b(?:wenden|melden) sie sich (?:bitte )?(?:an|bei)\b",
            r"\bkontaktieren sie (?:bitte )?(?!mich\b|uns\b)\w",
            r"\b(?:ist|wäre) (?:der|die) (?:richtige|zuständige)n? (?:ansprechpartner(?:in)?|person)\b",
            r"\bzuständig (?:ist|sind|wäre)\b",
            r"\b(?:weitergeleitet|weitergegeben)\b",
            r"\b(?:arbeite|bin) nicht mehr (?:bei|für|im)\b",
        ],
        "fr": [
            r"\bpas (?:la|le) (?:bonne|bon) (?:personne|interlocut(?:eur|rice)|contact)\b",
            r"\b(?:veuillez|merci de|je vous invite à) (?:contacter|vous adresser à|écrire à|joindre) (?!moi\b)",
            r"\badressez-vous à\b|\bcontactez plutôt\b",
            r"\b(?:est|serait) (?:la|le) (?:bonne|bon|meilleure?) (?:personne|interlocut(?:eur|rice)|contact)\b",
            r"\bje (?:transmets|transfère|fais suivre)\b|\bj'ai transmis\b",
            r"\bje ne travaille plus (?:chez|pour|au sein|dans)\b",
        ],
        "es": [
            r"\bno soy (?:la persona|el contacto) (?:adecuad[oa]|indicad[oa]|correct[oa]|responsable)\b",
            r"\b(?:contacte|contacten|diríjase|póngase en contacto|pónganse en contacto) (?:con|a) (?!mí\b|nosotros\b)",
            r"\b(?:es|sería) la persona (?:adecuada|indicada|correcta|responsable)\b",
            r"\b(?:he reenviado|reenvié|he trasladado)\b",
            r"\bya no trabajo (?:en|para|con)\b",
        ],
        "pt": [
            r"\bnão sou a pessoa (?:certa|indicada|correta|adequada|responsável)\b",
            r"\b(?:contacte|contate|entre em contato com|entre em contacto com|fale com|dirija-se a) (?!mim\b|nós\b)",
            r"\b(?:é|seria) a pessoa (?:certa|indicada|correta|responsável)\b",
            r"\b(?:encaminhei|reencaminhei|repassei)\b",
            r"\bjá não trabalho\b|\bnão trabalho mais\b",
        ],
        "it": [
            r"\bnon sono la persona (?:giusta|corretta|indicata|adatta|responsabile)\b",
            r"\b(?:contattare|contatti|scriva a|si rivolga a|rivolgersi a) (?!me\b|noi\b)",
            r"\b(?:è|sarebbe) la persona (?:giusta|corretta|indicata|responsabile)\b",
            r"\b(?:ho inoltrato|ho girato)\b",
            r"\bnon lavoro più\b",
        ],
        "nl": [
            r"\bniet de (?:juiste|aangewezen|goede) (?:persoon|contactpersoon)\b",
            r"\bcontact op met\b",
            r"\bis de (?:juiste|aangewezen) (?:persoon|contactpersoon)\b",
            r"\b(?:doorgestuurd|doorgezet)\b",
            r"\b(?:werk|ben) niet (?:meer|langer) (?:bij|werkzaam)\b",
        ],
        "sv": [
            r"\binte (?:rätt|den rätta) (?:person|kontakt(?:person)?)\b",
            r"\b(?:kontakta|vänd dig till|hör av dig till|mejla) (?!mig\b|oss\b)",
            r"\bär rätt (?:person|kontakt(?:person)?)\b",
            r"\b(?:vidarebefordrat|skickat vidare)\b",
            r"\bjag (?:arbetar|jobbar) inte (?:längre|kvar)\b|\bjag har slutat\b",
        ],
        "pl": [
            r"\bnie jestem (?:właściwą|odpowiednią) osobą\b",
            r"\b(?:proszę (?:się )?skontaktować się z|proszę kontaktować się z|proszę pisać do|skontaktuj się z)\b",
            r"\bjest (?:właściwą|odpowiednią) osobą\b",
            r"\bprzekazał(?:em|am)\b",
            r"\bjuż nie pracuję\b|\bnie pracuję już\b",
        ],
    }
)


def referred_address(text: IntentText, hit: Hit, sender: str) -> str | None:
    """The address the referral names: the first after the phrase, else the first in the
    new text, that is not the sender's own."""
    sender = sender.lower()
    low = text.text.lower()
    # ``hit.start`` is a position in the blank-normalised text; the raw text is searched
    # from the phrase's first word instead.
    anchor = low.find(hit.phrase.split(" ", 1)[0]) if hit.phrase else -1
    windows = [low[anchor : anchor + _ADDRESS_SPAN]] if anchor >= 0 else []
    windows.append(low)
    for window in windows:
        for match in _ADDRESS.finditer(window):
            address = match.group(0).strip(".")
            if address != sender:
                return address
    return None


def check(text: IntentText, subject: str = "") -> Hit | None:
    """The person is not the one to talk to, or points to someone else."""
    return find(NAME, PHRASES, text, negatable=False)
