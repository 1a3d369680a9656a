"""``not_interested``: a plain no ("not interested", "no thanks", "kein Interesse", "pas
intéressé", "no me interesa"). These phrases carry their own negation, so no "not" in
front turns them around; "not uninterested" is left to a person reading the event."""

from __future__ import annotations

from ._rule import Hit, compile_table, find
from ._text import IntentText

NAME = "not_interested"

_PROVIDER = (
    r"(?:solution|provider|vendor|partner|supplier|agency|tool|system|platform|contract|service)s?"
)

PHRASES = compile_table(
    {
        "en": [
            r"\bnot (?:really |currently |at all |that |very |too )?interested\b",
            r"\bno interest\b|\bnot of interest\b",
            r"\bno,? thank(?:s| you)\b",
            r"\bnot (?:a (?:good )?fit|a priority|relevant (?:for|to) (?:us|me)|for us|something we need)\b",
            r"\b(?:we're|we are|i'm|i am) (?:all set|not looking|happy with (?:our|my) current)\b",
            rf"\bwe already (?:have|use|work with)\b.{{0,30}}\b{_PROVIDER}\b",
            r"\b(?:i'll|i will|we'll|we will) pass\b|\bpass on this\b",
            r"\bplease (?:don't|do not) follow up\b",
            r"\b(?:don't|do not) (?:need|want) (?:it|this|your (?:product|service|offer))\b",
        ],
        "de": [
            r"\bkein(?:erlei)? (?:interesse|bedarf)\b",
            r"\bnicht (?:daran |weiter |mehr )?interessiert\b",
            r"\bnein,? danke\b",
            r"\b(?:brauchen|benötigen) wir (?:derzeit |aktuell |momentan )?nicht\b",
            r"\b(?:haben|nutzen) (?:bereits|schon) (?:einen|eine|ein) (?:dienstleister|anbieter|partner|lösung|agentur)\b",
            r"\bkein thema für uns\b",
        ],
        "fr": [
            r"\bpas (?:du tout |vraiment )?intéressée?s?\b",
            r"\baucun intérêt\b|\bpas d'intérêt\b",
            r"\bnon,? merci\b",
            r"\b(?:n'avons|n'ai) pas besoin\b|\bpas de besoin\b",
            r"\bne (?:nous|m') intéresse pas\b",
            r"\bnous (?:avons|utilisons) déjà (?:un|une) (?:prestataire|fournisseur|partenaire|solution|outil)\b",
        ],
        "es": [
            r"\bno (?:me|nos) interesa\b",
            r"\bno (?:estoy|estamos) interesad[oa]s?\b",
            r"\bno,? gracias\b",
            r"\bno (?:lo )?necesit(?:o|amos)\b",
            r"\bya (?:tenemos|contamos con|usamos|trabajamos con) (?:un|una) (?:proveedor|solución|socio|agencia|herramienta)\b",
            r"\bningún interés\b",
        ],
        "pt": [
            r"\bnão (?:tenho|temos) interesse\b",
            r"\bnão (?:estou|estamos) interessad[oa]s?\b",
            r"\bnão,? obrigad[oa]\b",
            r"\bnão (?:precisamos|preciso|necessitamos)\b",
            r"\bnão (?:me|nos) interessa\b|\bsem interesse\b",
        ],
        "it": [
            r"\bnon (?:sono|siamo) interessat[oiae]\b",
            r"\bnon (?:mi|ci) interessa\b",
            r"\bno,? grazie\b",
            r"\bnon (?:ne )?abbiamo bisogno\b|\bnon ne ho bisogno\b",
            r"\bnessun interesse\b",
        ],
        "nl": [
            r"\bgeen (?:interesse|behoefte)\b",
            r"\bniet geïnteresseerd\b|\bniet geinteresseerd\b",
            r"\bnee,? (?:bedankt|dank (?:je|u))\b",
            r"\bniet nodig\b",
        ],
        "sv": [
            r"\binte intresserad(?:e)?\b",
            r"\binget (?:intresse|behov)\b",
            r"\bnej,? tack\b",
        ],
        "pl": [
            r"\bnie (?:jestem|jesteśmy) zainteresowan[aiy]\b",
            r"\bnie,? dziękuję\b",
            r"\bnie potrzebuj(?:emy|ę)\b",
            r"\bbrak zainteresowania\b",
            r"\bnie interesuje (?:mnie|nas)\b",
        ],
    }
)


def check(text: IntentText, subject: str = "") -> Hit | None:
    """A plain no to what we offered."""
    return find(NAME, PHRASES, text, negatable=False)
