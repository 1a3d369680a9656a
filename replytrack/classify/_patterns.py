"""Phrase tables for the detectors, by language.

Each table maps a language code to regular expressions. The phrases are the
stock wording of mail servers and mail clients (Outlook, Exchange, Gmail,
Lotus Notes, Postfix, Exim, qmail, Sendmail, ...) and of out-of-office
templates, not wording seen in any single message.
"""

from __future__ import annotations

import re

from ._phrases import PhraseSet

# DOTALL: phrases in mail text are wrapped across lines.
_I = re.I | re.U | re.S


def _compile(table: dict[str, list[str]]) -> list[tuple[str, re.Pattern[str]]]:
    return [(lang, re.compile(p, _I)) for lang, pats in table.items() for p in pats]


# Subjects that auto-reply software puts first (optionally after a ticket tag).
AUTO_SUBJECT = _compile(
    {
        "en": [
            r"^(?:\[[^\]]{0,80}\]\s*)?(?:automatic|auto)[- ]?(?:reply|response|answer)\b",
            r"^(?:\[[^\]]{0,80}\]\s*)?auto[- ]?reply\b",
            r"^(?:\[[^\]]{0,80}\]\s*)?out of (?:the )?office\b",
            r"^(?:\[[^\]]{0,80}\]\s*)?auto:\s",
            r"\bis out of (?:the )?office\b",
            r"^(?:\[[^\]]{0,80}\]\s*)?(?:away|vacation|holiday|annual leave)(?: reply| message| notice)?\s*[:\-]",
            r"\bout of office (?:auto[- ]?reply|reply|notification|notice)\b",
            r"\bauto[- ]?reply\s*:",
            r"^\s*(?:autoresponse|autoresponder|auto-generated reply)\b",
            r"^(?:\[[^\]]{0,80}\]\s*)?away (?:from|until)\b",
        ],
        "de": [
            r"^(?:\[[^\]]{0,80}\]\s*)?abwesenheits(?:notiz|nachricht|meldung|info)\b",
            r"^(?:\[[^\]]{0,80}\]\s*)?automatische (?:antwort|rückantwort|nachricht)\b",
            r"^(?:\[[^\]]{0,80}\]\s*)?(?:ich bin )?nicht im (?:büro|hause|haus)\b",
            r"\bist (?:nicht im büro|abwesend|außer haus|ausser haus)\b",
            r"^(?:\[[^\]]{0,80}\]\s*)?(?:urlaub|abwesend|außer haus|ausser haus)\s*[:\-]",
        ],
        "fr": [
            r"^(?:\[[^\]]{0,80}\]\s*)?r[ée]ponse automatique\b",
            r"^(?:\[[^\]]{0,80}\]\s*)?(?:message d'|avis d')?absence\b",
            r"^(?:\[[^\]]{0,80}\]\s*)?absent(?:e)? du bureau\b",
            r"\best absent(?:e)?\b",
        ],
        "es": [
            r"^(?:\[[^\]]{0,80}\]\s*)?respuesta autom[áa]tica\b",
            r"^(?:\[[^\]]{0,80}\]\s*)?fuera de (?:la )?oficina\b",
            r"^(?:\[[^\]]{0,80}\]\s*)?(?:mensaje de )?ausencia\b",
            r"\best[áa] fuera de la oficina\b",
        ],
        "it": [
            r"^(?:\[[^\]]{0,80}\]\s*)?risposta automatica\b",
            r"^(?:\[[^\]]{0,80}\]\s*)?fuori (?:sede|ufficio)\b",
            r"^(?:\[[^\]]{0,80}\]\s*)?(?:messaggio di )?assenza\b",
            r"\b[èe] fuori (?:sede|ufficio)\b",
        ],
        "pt": [
            r"^(?:\[[^\]]{0,80}\]\s*)?resposta autom[áa]tica\b",
            r"^(?:\[[^\]]{0,80}\]\s*)?fora do escrit[óo]rio\b",
            r"^(?:\[[^\]]{0,80}\]\s*)?(?:mensagem de )?aus[êe]ncia\b",
            r"^(?:\[[^\]]{0,80}\]\s*)?ausente\s*[:\-]",
        ],
        "nl": [
            r"^(?:\[[^\]]{0,80}\]\s*)?automatisch(?:e)? (?:antwoord|beantwoord|reactie)\b",
            r"^(?:\[[^\]]{0,80}\]\s*)?(?:niet aanwezig|afwezig(?:heid)?|buiten kantoor)\b",
            r"\bis (?:afwezig|niet aanwezig|buiten kantoor)\b",
        ],
        "other": [
            r"^(?:\[[^\]]{0,80}\]\s*)?autosvar\b",  # Swedish, Danish, Norwegian
            r"^(?:\[[^\]]{0,80}\]\s*)?automaattinen vastaus\b",  # Finnish
            r"\bautomatyczna odpowied",  # Polish
            r"^(?:\[[^\]]{0,80}\]\s*)?automatick[áa] odpov[ěe]ď",  # Czech
            r"^(?:\[[^\]]{0,80}\]\s*)?автоответ|^автоматический ответ",  # Russian
            r"^(?:\[[^\]]{0,80}\]\s*)?自動(?:応答|返信)",  # Japanese
            r"^(?:\[[^\]]{0,80}\]\s*)?自动(?:回复|答复)",  # Chinese
            r"^(?:\[[^\]]{0,80}\]\s*)?automatikus válasz\b",  # Hungarian
            r"^(?:\[[^\]]{0,80}\]\s*)?otomatik (?:yan\u0131t|cevap)\b",  # Turkish
            r"^(?:\[[^\]]{0,80}\]\s*)?αυτόματη απάντηση",  # Greek
            r"^(?:\[[^\]]{0,80}\]\s*)?자동 ?(?:회신|응답)",  # Korean
        ],
    }
)

# Subjects that autoresponders use but people sometimes write too: supporting evidence only.
AUTO_SUBJECT_WEAK = _compile(
    {
        "en": [
            r"^(?:\[[^\]]{0,80}\]\s*)?(?:thank you|thanks) for (?:your|contacting)\b.{0,40}(?:e-?mail|message)",
            r"^(?:\[[^\]]{0,80}\]\s*)?(?:we have )?received your (?:e-?mail|message|request)\b",
            r"^(?:\[[^\]]{0,80}\]\s*)?(?:your )?(?:request|ticket|case|enquiry|inquiry) (?:has been )?(?:received|created|opened|logged)\b",
        ],
        "de": [
            r"^(?:\[[^\]]{0,80}\]\s*)?(?:vielen )?dank für ihre (?:nachricht|e-?mail|anfrage)\b"
        ],
        "fr": [r"^(?:\[[^\]]{0,80}\]\s*)?merci pour votre (?:message|e-?mail|courriel)\b"],
        "es": [r"^(?:\[[^\]]{0,80}\]\s*)?gracias por su (?:mensaje|correo)\b"],
        "it": [
            r"^(?:\[[^\]]{0,80}\]\s*)?grazie per (?:il|la) (?:suo |vostro )?(?:messaggio|e-?mail)\b"
        ],
        "pt": [
            r"^(?:\[[^\]]{0,80}\]\s*)?obrigad[oa] pel[oa] (?:sua )?(?:mensagem|e-?mail|contato|contacto)\b"
        ],
        "nl": [r"^(?:\[[^\]]{0,80}\]\s*)?bedankt voor uw (?:bericht|e-?mail)\b"],
    }
)

# Bare mentions in a body ("out of office", "auto-reply"): people write these too,
# so they only support other evidence.
OOO_MENTION = re.compile(
    r"\bauto[- ]?repl(?:y|ies)\b|\bout of (?:the )?office\b|\bautomatische antwort\b|"
    r"\br[ée]ponse automatique\b|\brespuesta autom[áa]tica\b|\brisposta automatica\b|"
    r"\bresposta autom[áa]tica\b|\bautomatisch antwoord\b",
    _I,
)

# Body sentences of out-of-office and vacation notices.
OOO_BODY = _compile(
    {
        "en": [
            r"\b(?:i am|i'm|i will be|i'll be|i am currently|i'm currently|currently)\s+(?:\w+\s+){0,2}"
            r"(?:out of (?:the )?office|away from (?:the |my )?(?:office|desk|e-?mail)|on (?:annual |parental |maternity |sick )?leave|"
            r"on (?:vacation|holiday|holidays|business travel|a business trip)|travel(?:l)?ing|out of the country|away)\b",
            r"\b(?:i am|i'm|i will be)\s+(?:\w+\s+){0,2}(?:back|returning) (?:in the office )?(?:on|in|at|by)\b",
            r"\bwith (?:limited|no|intermittent) access to (?:my )?e-?mail\b",
            r"\bi will (?:respond|reply|get back to you|answer)\b.{0,60}\b(?:when|upon|on) my return\b",
            r"\bupon my return\b",
        ],
        "de": [
            r"\bich bin\b.{0,80}\b(?:nicht im (?:büro|hause|haus)|abwesend|außer haus|ausser haus|im urlaub|nicht erreichbar)",
            r"\b(?:abwesenheitsnotiz|abwesenheitsnachricht)\b",
            r"\bnach meiner rückkehr\b",
            r"\bab dem .{0,30} wieder (?:im büro|erreichbar|da)\b",
            r"\b(?:bin|wieder) ab\b.{0,40}\bwieder\b",
        ],
        "fr": [
            r"\bje (?:suis|serai)\b.{0,40}\b(?:absent(?:e)?|en (?:congé|congés|vacances|déplacement)|hors du bureau)\b",
            r"\bmessage d'absence\b",
            r"\bà mon retour\b",
            r"\bde retour le\b",
        ],
        "es": [
            r"\b(?:estoy|estaré|me encuentro)\b.{0,40}\b(?:fuera de la oficina|de vacaciones|ausente|fuera)\b",
            r"\ba mi regreso\b",
            r"\bhasta el\b.{0,40}\bsin acceso\b",
        ],
        "it": [
            r"\bsar[òo]\b.{0,40}\b(?:assente|fuori (?:sede|ufficio)|in ferie|in vacanza)\b",
            r"\b(?:sono|resterò)\b.{0,40}\b(?:assente|fuori (?:sede|ufficio)|in ferie|in vacanza)\b",
            r"\bal mio rientro\b",
        ],
        "pt": [
            r"\b(?:estou|estarei|encontro-me)\b.{0,40}\b(?:fora do escritório|ausente|de férias|fora)\b",
            r"\b(?:no|após o) meu regresso\b|\bquando (?:eu )?voltar\b",
        ],
        "nl": [
            r"\bik ben\b.{0,40}\b(?:afwezig|niet aanwezig|buiten kantoor|op vakantie|met vakantie|niet bereikbaar)\b",
            r"\bafwezigheidsbericht\b",
            r"\bna mijn terugkeer\b|\bweer aanwezig\b|\bben ik weer\b",
        ],
    }
)

# The body of a mail a person writes rarely opens with these; auto-responders
# of ticket systems and shops do.
AUTORESPONDER_BODY = _compile(
    {
        "en": [
            r"\b(?:thank you|thanks) for (?:your|contacting)\b.{0,80}\b(?:we|our team)\b.{0,40}\b(?:will|shall)\b.{0,40}"
            r"\b(?:respond|reply|get back|contact you|be in touch)\b",
            r"\byour (?:message|e-?mail|request) has been received\b",
            r"\ba (?:support )?ticket has been (?:created|opened)\b",
        ],
    }
)

# A body that declares itself automatic: no person writes these sentences
# about their own mail, so they count as much as a header.
SELF_DECLARED_AUTOMATIC = _compile(
    {
        "en": [
            r"\bthis is an? (?:automatic|automated|auto-generated|automatically generated) (?:reply|response|message|notification|e-?mail)\b",
            r"\bthis (?:e-?mail|message) (?:was|has been|is) (?:sent |generated )?automatically\b",
            r"\bplease do not reply to this (?:automated|automatic) (?:e-?mail|message)\b",
            r"\bthis is the only notification you will receive while\b",
        ],
        "de": [
            r"\bdies ist eine automatisch(?:e)? (?:generierte |erzeugte )?(?:antwort|nachricht|e-?mail)\b",
            r"\bdiese (?:e-?mail|nachricht) wurde automatisch (?:erstellt|erzeugt|generiert|versendet|versandt)\b",
        ],
        "fr": [
            r"\bceci est un(?:e)? (?:réponse|message|courriel) automatique\b",
            r"\bce (?:message|courriel) (?:a été|est) (?:envoyé|généré) automatiquement\b",
        ],
        "es": [
            r"\b(?:esta|ésta) es una respuesta automática\b|\beste es un mensaje automático\b",
            r"\beste (?:mensaje|correo) (?:ha sido|fue|se ha) (?:enviado|generado) automáticamente\b",
        ],
        "it": [r"\bquesta è una risposta automatica\b|\bquesto è un messaggio automatico\b"],
        "pt": [r"\besta é uma (?:resposta|mensagem) automática\b"],
        "nl": [
            r"\bdit is een automatisch(?:e)? (?:gegenereerd(?:e)? )?(?:antwoord|bericht|reactie)\b"
        ],
    }
)

# Subjects of plain-text delivery reports.
BOUNCE_SUBJECT = [
    re.compile(p, _I)
    for p in (
        r"\bundeliver(?:able|ed)\b",
        r"\bundelivered mail returned to sender\b",
        r"\bmail delivery (?:failed|failure|system|subsystem|problem)\b",
        r"\bdelivery (?:status notification|failure|failed|notification|report|problem)\b",
        r"\breturned mail\b",
        r"\bfailure notice\b",
        r"\bnon[- ]?deliver(?:able|y)\b|\bnondeliverable\b",
        r"\bdelivery has failed\b",
        r"\bcould not (?:be )?deliver",
        r"\bmessage (?:not delivered|delivery failed|blocked|rejected)\b",
        r"\bmail(?:box)? (?:unavailable|full|quota)\b",
        r"\bbounce(?:d)? (?:mail|message|notification)\b",
        r"\breturned to sender\b",
        r"\bpermanent (?:delivery )?(?:failure|error)\b",
        r"\bwarning: (?:could not send|message .{0,40} delayed|delayed mail)\b",
        r"\bdelivery (?:delayed|delay)\b|\bdelayed mail\b|\bmessage delayed\b",
        r"\bunzustellbar\b|\bnicht zustellbar\b|\bunzustellbare\b|\bzustellung fehlgeschlagen\b",
        r"\bnon remis\b|\béchec de (?:la )?(?:remise|distribution)\b|\bnon distribuable\b",
        r"\bno se puede entregar\b|\bno entregad[oa]\b|\bimposible entregar\b",
        r"\bnon recapitabile\b|\bmancata consegna\b|\bimpossibile recapitare\b",
        r"\bnão (?:foi possível )?entreg|\bnão entregue\b",
        r"\bonbestelbaar\b|\bniet bezorgd\b|\bniet afgeleverd\b",
        r"\bnotice of non-?delivery\b",
        r"\bsuccessful mail delivery report\b|\brelayed\b.{0,20}\bdelivery\b",
        r"\bfailed (?:mail|delivery)\b|\bmail (?:error|failure)\b|\bdelivery error\b|\bnot (?:a )?member\b",
        r"メールエラー|配信エラー|配送エラー|送信エラー|不達|未達",
        r"недоставленн|не (?:может быть |удалось )?доставлен",  # Russian
        r"\bniedostarczon|\bnie (?:można|udało się) dostarczyć",  # Polish
        r"\bolevererbar|\bkunde inte levereras|\bkunne ikke leveres|\bikke levert",  # Nordic
        r"\bnedoručiteln|\bnelze doručit",  # Czech
        r"退信|无法投递|投递失败|退回的邮件|系统退信",  # Chinese
    )
]

# Body sentences that only delivery software writes.
BOUNCE_BODY = [
    re.compile(p, _I)
    for p in (
        r"this is the mail system at host",  # Postfix
        r"i'm sorry to have to inform you that your message could not",  # Postfix
        r"this message was created automatically by mail delivery software",  # Exim
        r"a message that you sent could not be delivered to (?:one or more|all) of its",  # Exim
        r"a message that you sent has not yet been delivered",  # Exim delay
        r"hi\. this is the qmail-send program",  # qmail
        r"i'm afraid i wasn't able to deliver your message",  # qmail variants
        r"sorry, i (?:wasn't|couldn't) able to (?:establish an smtp connection|deliver)",
        r"the original message was received at",  # Sendmail
        r"-[ \t]*transcript of session follows[ \t]*-",  # Sendmail
        r"-[ \t]*the following addresses had permanent fatal errors[ \t]*-",  # Sendmail
        r"delivery (?:has failed|failed) to these recipients or (?:groups|distribution lists)",  # Exchange
        r"your message did not reach some or all of the intended recipients",  # Exchange
        r"delivery to the following recipients? (?:failed|has been delayed|was delayed)",  # Exchange
        r"the following (?:recipient|address)\(?e?s?\)? (?:could not be reached|failed|was rejected)",
        r"delivery to the following recipient failed permanently",  # Gmail
        r"your message wasn't delivered to",  # Gmail, Office 365
        r"your message couldn't be delivered",  # Office 365
        r"message (?:wasn't|was not|could not be|couldn't be) delivered",
        r"delivery (?:incomplete|status notification)",
        r"there was a temporary problem delivering your message",  # Gmail delay
        r"delivery to the following recipient has been delayed",  # Gmail delay
        r"(?:was|were|is) (?:not|undeliverable) (?:delivered|deliverable) to",
        r"(?:could not|cannot|can't|couldn't|can not) be delivered",
        r"not a valid (?:user|recipient|address|mailbox)",
        r"you are not (?:a member|allowed to post|subscribed)\b",  # list servers refusing a post
        r"送信できませんでした|配信できませんでした|届きませんでした|配送できませんでした",
        r"unable to deliver (?:your )?(?:message|mail)",
        r"could not be delivered to (?:the )?(?:following|one or more)",
        r"your message (?:to|for) .{0,120} (?:was|has been) (?:rejected|returned|bounced|blocked)",
        r"(?:permanent|fatal) (?:delivery )?(?:error|failure)",
        r"mail delivery (?:failed|failure)",
        r"undeliverable (?:message|mail)",
        r"returned mail: ",
        r"retry (?:timeout|time not reached) (?:exceeded|for any host)",
        r"smtp error from remote (?:mail server|server)",
        r"(?:user|mailbox|recipient|address) (?:unknown|not found|does not exist|unavailable|is full|full)",
        r"no such (?:user|mailbox|recipient|address)",
        r"diagnostic[- ]code:",
        r"reporting-mta:",
        r"\b55[0-4][ -]5\.\d{1,3}\.\d{1,3}\b|\b[45]\.[0-7]\.\d{1,3}\b.{0,60}\b(?:user|mailbox|recipient|address|reject)",
        r"die folgende nachricht konnte nicht zugestellt werden|konnte nicht zugestellt werden",
        r"votre message n'a pas pu être (?:remis|délivré|distribué)|n'a pas pu être (?:remis|distribué)",
        r"no se ha podido entregar|no pudo ser entregado",
        r"non è stato possibile (?:recapitare|consegnare)",
        r"não foi possível entregar",
        r"kon niet worden (?:afgeleverd|bezorgd)",
    )
]

# Phrases that say a delivery report is only a delay (transient).
DELAY = [
    re.compile(p, _I)
    for p in (
        r"\bhas not yet been delivered\b",
        r"\bdelivery (?:has been |was )?delayed\b|\bdelayed mail\b|\bmessage delayed\b|\bdelivery delay\b",
        r"\bwill (?:continue to )?(?:retry|try)\b.{0,80}\b(?:for|until|again)\b",
        r"\btemporary (?:problem|failure|error)\b",
        r"\bstill trying\b|\bwarning: message\b",
        r"\bzustellung verzögert\b|\bremise différée\b|\bentrega retrasada\b|\bconsegna ritardata\b",
    )
]

SUCCESS = [
    re.compile(p, _I)
    for p in (
        r"\bsuccessful(?:ly)? (?:mail )?deliver",
        r"\bdelivery to the following recipients? (?:was |has been )?(?:completed|successful|complete)\b",
        r"\byour message (?:was|has been) (?:successfully )?(?:delivered|relayed)\b",
    )
]

# Subject prefixes of read receipts in the common client languages.
RECEIPT_SUBJECT = re.compile(
    r"^\s*(?:read|not read|gelesen|nicht gelesen|lu|non lu|leído|le[íi]do|no leído|letto|non letto|lido|"
    r"não lido|gelezen|niet gelezen|läst|læst|lest|luettu|przeczytano|прочитано|"
    r"read receipt|return receipt|lesebestätigung|accusé de lecture|confirmación de lectura|"
    r"conferma di lettura|confirmação de leitura|leesbevestiging)\s*:",
    _I,
)
RECEIPT_BODY = re.compile(
    r"\bwas read on\b|\bwurde am\b.{0,40}\bgelesen\b|\ba été lu\b|\bfue leído\b|\bè stato letto\b|"
    r"\bfoi lido\b|\bis gelezen\b|\bwas displayed\b|\bhas been displayed\b|\bdisposition:\s*\S+;\s*displayed\b",
    _I,
)

# Challenge-response: the sender is asked to prove being a person or to be allow-listed.
CHALLENGE_BODY = [
    re.compile(p, _I)
    for p in (
        r"\b(?:add|added|listed|list)\b.{0,60}\b(?:guest list|allowed list|allow[- ]?list|white[- ]?list|approved senders?(?: list)?|"
        r"safe senders?(?: list)?|trusted senders?)\b",
        r"\b(?:guest list|allowed list|allow[- ]?list|white[- ]?list|approved senders? list)\b.{0,80}\b(?:click|link|verify|confirm)\b",
        r"\b(?:verify|confirm) (?:that )?you are (?:a )?(?:human|real person|not a (?:robot|spammer))\b",
        r"\bprotected by\b.{0,60}\b(?:spam|anti-?spam|challenge|verification)\b|\baccount is protected by\b",
        r"\bsender (?:is )?not (?:pre-?)?approved\b|\bsender verification\b|\bchallenge[- ]response\b",
        r"\bhas been (?:waitlisted|held|quarantined) (?:until|pending)\b|\bhas been waitlisted\b",
    )
]

# Envelope or header senders that are delivery software.
DAEMON_LOCALPART = re.compile(
    r"^(?:mailer-daemon|mailer_daemon|mailerdaemon|postmaster|post_master|post\.master|mail-daemon|mdaemon|"
    r"mail\.delivery\.system|bounces?|nobody|mail-delivery|maildelivery|mta|smtp|mailadmin)$",
    _I,
)
DAEMON_DISPLAY = re.compile(
    r"\b(?:mail delivery (?:system|subsystem|service)|mailer[- ]daemon|postmaster|microsoft outlook|"
    r"mail administrator|delivery status notification|mail delivery)\b",
    _I,
)

# From-header local parts of list servers' administrative mail (not matched
# against the envelope sender: list traffic from people is sent from such addresses).
LIST_ADMIN_LOCALPART = re.compile(
    r"^[\w.+-]+-(?:admin|owner|request)$|^(?:majordomo|listserv|mailman|ezmlm|fml)$", _I
)


def _untagged(patterns: list[re.Pattern[str]]) -> list[tuple[str, re.Pattern[str]]]:
    return [("", p) for p in patterns]


AUTO_SUBJECT_SET = PhraseSet(AUTO_SUBJECT)
AUTO_SUBJECT_WEAK_SET = PhraseSet(AUTO_SUBJECT_WEAK)
OOO_BODY_SET = PhraseSet(OOO_BODY)
OOO_MENTION_SET = PhraseSet([("", OOO_MENTION)])
AUTORESPONDER_BODY_SET = PhraseSet(AUTORESPONDER_BODY)
SELF_DECLARED_SET = PhraseSet(SELF_DECLARED_AUTOMATIC)
BOUNCE_SUBJECT_SET = PhraseSet(_untagged(BOUNCE_SUBJECT))
BOUNCE_BODY_SET = PhraseSet(_untagged(BOUNCE_BODY))
CHALLENGE_BODY_SET = PhraseSet(_untagged(CHALLENGE_BODY))
