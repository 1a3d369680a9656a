"""``positive``: the person wants to go on ("sounds good", "let's talk", "book a call",
"klingt gut", "je suis intéressé", "me interesa"). A "not" in front turns a phrase around
("no need to book a call"); a bare "thanks" is no yes and stays ``other``."""

from __future__ import annotations

from ._rule import Hit, compile_table, find
from ._text import IntentText

NAME = "positive"

_MEET = r"(?:call|meeting|demo|chat|time|session|appointment)"

PHRASES = compile_table(
    {
        "en": [
            r"\bsounds? (?:good|great|interesting|perfect|fine|like a plan)\b",
            r"\b(?:let's|lets|let us) (?:talk|chat|meet|connect|set (?:up|something up)|schedule|book|do it|hop on|speak)\b",
            rf"\b(?:book|schedule|set up|arrange|find time for) (?:a |some |an? )?(?:quick |short |15[- ]min(?:ute)? |30[- ]min(?:ute)? )?{_MEET}\b",
            r"\b(?:i'm|i am|we're|we are) (?:very |definitely |quite |really |genuinely |certainly )?interested\b",
            r"\b(?:happy|glad|keen|open|eager) to (?:talk|chat|meet|connect|learn more|hear more|discuss|see)\b",
            r"\bsend (?:me |us )?(?:more )?(?:info|information|details|a proposal|pricing|a quote)\b",
            r"\bwhat (?:time|day)s? (?:works|suits|would work)\b",
            r"\bcount (?:me|us) in\b",
            r"\b(?:would|i'd|we'd) love to (?:chat|talk|learn|hear|see|meet)\b",
            r"\byes,? please\b|\btell me more\b",
            r"\b(?:i'd|i would|we'd|we would) (?:like|love|be glad) (?:a |to (?:see |have |book |schedule |set up )?(?:a )?)?(?:demo|call|meeting|chat|talk|learn more)\b",
        ],
        "de": [
            r"\bklingt (?:gut|interessant|spannend|super|sehr gut)\b",
            r"\b(?:lassen sie uns|lass uns|lasst uns) (?:telefonieren|sprechen|treffen|austauschen|einen termin)\b",
            r"\b(?:termin|telefonat|gespräch|call|meeting) (?:vereinbaren|ausmachen|abstimmen|finden)\b",
            r"\b(?:ich habe|wir haben|habe) (?:großes |grundsätzlich |durchaus )?interesse\b",
            r"\b(?:bin|sind) (?:sehr |durchaus |grundsätzlich )?interessiert\b",
            r"\b(?:schicken|senden) sie (?:mir|uns) (?:gerne |bitte )?(?:mehr |weitere )?(?:infos|informationen|unterlagen|ein angebot)\b",
            r"\bwann (?:passt es|passt|hätten sie zeit|haben sie zeit)\b",
        ],
        "fr": [
            r"\bça (?:me |nous )?(?:semble|paraît|parait) (?:bien|intéressant|parfait)\b",
            r"\b(?:je suis|nous sommes) (?:très )?intéressée?s?\b",
            r"\b(?:prenons|fixons|planifions|organisons|caler) (?:un )?(?:rendez-vous|rdv|appel|call|créneau|réunion|échange)\b",
            r"\b(?:discutons|parlons|échangeons)(?:-en)?\b",
            r"\bavec plaisir\b|\bvolontiers\b",
            r"\benvoyez-(?:moi|nous) (?:plus d'|des )?(?:informations|infos|détails)\b",
        ],
        "es": [
            r"\bsuena (?:bien|interesante|genial|perfecto)\b",
            r"\b(?:me|nos) interesa\b",
            r"\b(?:estoy|estamos) (?:muy )?interesad[oa]s?\b",
            r"\bhablemos\b|\bconversemos\b",
            r"\b(?:agendar|programar|concertar|coordinar) (?:una )?(?:llamada|reunión|cita|demo)\b",
            r"\bcon (?:mucho )?gusto\b",
            r"\benvíe(?:me|nos) más información\b|\bme gustaría (?:saber|conocer) más\b",
        ],
        "pt": [
            r"\bparece (?:bom|ótimo|interessante)\b",
            r"\b(?:tenho|temos) interesse\b",
            r"\b(?:estou|estamos) (?:muito )?interessad[oa]s?\b",
            r"\bvamos (?:conversar|falar|marcar)\b",
            r"\b(?:marcar|agendar) (?:uma )?(?:reunião|chamada|call|conversa|demo)\b",
            r"\bcom (?:todo o )?prazer\b",
        ],
        "it": [
            r"\bmi sembra (?:ottimo|interessante|perfetto|una buona idea)\b",
            r"\b(?:sono|siamo) (?:molto )?interessat[oiae]\b",
            r"\b(?:mi|ci) interessa\b",
            r"\bsentiamoci\b|\bparliamone\b",
            r"\b(?:fissiamo|organizziamo|programmiamo|fissare) (?:una )?(?:chiamata|call|riunione|incontro|demo)\b",
            r"\bvolentieri\b",
        ],
        "nl": [
            r"\bklinkt (?:goed|interessant|prima|top)\b",
            r"\b(?:ik heb|wij hebben|we hebben) (?:wel )?interesse\b",
            r"\b(?:ben|zijn) (?:zeer |erg )?geïnteresseerd\b",
            r"\blaten we (?:bellen|afspreken|praten|een afspraak)\b",
            r"\b(?:afspraak|belafspraak|gesprek|call) (?:maken|inplannen|plannen)\b",
            r"\bgraag meer (?:informatie|info)\b",
        ],
        "sv": [
            r"\blåter (?:bra|intressant|utmärkt)\b",
            r"\b(?:jag är|vi är) (?:mycket )?intresserad(?:e)?\b",
            r"\b(?:boka|planera) (?:in )?(?:ett )?(?:möte|samtal)\b",
            r"\bskicka (?:gärna )?mer information\b|\bhöra mer\b",
        ],
        "pl": [
            r"\bbrzmi (?:dobrze|świetnie|interesująco|ciekawie)\b",
            r"\b(?:jestem|jesteśmy) (?:bardzo )?zainteresowan[aiy]\b",
            r"\bporozmawiajmy\b|\bumówmy się\b",
            r"\b(?:umówić|zaplanować) (?:się na )?(?:rozmowę|spotkanie|call|telefon)\b",
            r"\bproszę o (?:więcej informacji|ofertę)\b",
        ],
    }
)


def check(text: IntentText, subject: str = "") -> Hit | None:
    """A yes: the person wants to talk, meet or hear more."""
    return find(NAME, PHRASES, text, negatable=True)
