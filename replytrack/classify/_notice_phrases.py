"""Phrase tables for two kinds of automatic notice, by language: acknowledgements of
receipt (ticket systems, public offices, web forms and shops) and notices that the person
has left the organisation. Stock template wording, not wording seen in any single mail."""

from __future__ import annotations

import re

from ._anchored import AnchoredTable
from ._phrases import PhraseSet

_I = re.I | re.U | re.S


def _set(table: dict[str, list[str]]) -> PhraseSet:
    return PhraseSet([(lang, re.compile(p, _I)) for lang, pats in table.items() for p in pats])


_NUMBER = r"\s*:?\s*#?\s?[a-z]{0,6}-?\d{3,}\b"

# Subjects that name an acknowledgement of receipt.
ACK_SUBJECT = _set(
    {
        "en": [
            r"\backnowledge?ment of (?:receipt|your)\b|\breceipt (?:confirmation|acknowledge?ment)\b",
            r"\b(?:message|request|e-?mail|enquiry|inquiry|ticket|case|submission) (?:received|acknowledged)\b",
            r"\bwe(?:'ve| have)? received your\b|\bconfirmation of receipt\b",
            r"\bautomatic (?:confirmation|acknowledge?ment)\b|\bticket (?:created|opened)\b",
            r"\brequest (?:created|logged)\b|\b(?:ticket|case|request|incident) (?:#|no\.?|number)\s*:?\s*\w{0,6}-?\d{3,}\b.{0,40}\b(?:has been )?(?:created|opened|received|logged)\b",
        ],
        "de": [
            r"(?:empfangs|eingangs)best(?:ä|ae)tigung\b",
            r"\bihre (?:anfrage|nachricht|e-?mail) (?:ist )?(?:bei uns )?eingegangen\b",
        ],
        "fr": [
            r"\baccus[ée] de r[ée]ception\b|\bconfirmation de réception\b|\bnous avons (?:bien )?reçu\b"
        ],
        "es": [
            r"\bacuse de recibo\b|\bconfirmación de (?:recepción|recibo)\b|\bhemos recibido\b|\bsolicitud recibida\b"
        ],
        "pt": [
            r"\bconfirmação de (?:recebimento|receção|recepção)\b|\baviso de receção\b|\brecebemos a sua\b"
        ],
        "it": [
            r"\bconferma di (?:ricezione|ricevimento)\b|\bavviso di ricevimento\b|\babbiamo ricevuto\b|\brichiesta ricevuta\b"
        ],
        "nl": [
            r"\bontvangstbevestiging\b|\bbevestiging van ontvangst\b|\bwe hebben (?:uw|je) .{0,20}ontvangen\b"
        ],
        "sv": [
            r"\bmottagningsbekräftelse\b|\bbekräftelse på (?:mottaget|ditt ärende)\b|\bvi har tagit emot\b"
        ],
        "pl": [r"\bpotwierdzenie (?:otrzymania|odbioru|przyjęcia)\b|\botrzymaliśmy\b"],
    }
)

# Body sentences of acknowledgements (searched in the lower-cased new text, by anchor word).
ACK_BODY = AnchoredTable(
    {
        "en": [
            r"\b(?:we've|we have|we) (?:successfully )?received your (?:e-?mail|message|request|enquiry|inquiry|query|ticket|submission|application|mail)\b",
            r"\byour (?:e-?mail|message|request|enquiry|inquiry|query|ticket|case|submission)(?: \(?#?\w{0,12}\)?)? (?:has been|was|is) (?:successfully )?(?:received|logged|created|opened|registered|submitted)\b",
            r"\bthis is an? (?:automatic|automated|auto-generated) (?:acknowledge?ment|confirmation|receipt)\b",
            r"\ba (?:support |service |new )?(?:ticket|case|request) has been (?:created|opened|logged)\b",
            r"\b(?:ticket|case|reference|request|incident) (?:number|no\.?|#|id|nr\.?)" + _NUMBER,
            r"\bthere is no need to reply to this (?:message|e-?mail)\b",
            r"\bwe will (?:get back to you|respond|reply|be in touch|contact you) (?:as soon as possible|shortly|within \d+|soon)\b",
        ],
        "de": [
            r"\b(?:ihre|deine) (?:e-?mail|nachricht|anfrage|mail|bewerbung|bestellung)\b.{0,30}\b(?:ist|wurde)\b.{0,20}\b(?:eingegangen|erhalten|empfangen|registriert)\b",
            r"\bwir haben ihre (?:e-?mail|nachricht|anfrage|mail)\b.{0,20}\berhalten\b",
            r"\bwir (?:werden uns|melden uns)\b.{0,30}\b(?:schnellstmöglich|so schnell wie möglich|umgehend|zeitnah|in kürze|baldmöglichst)\b",
            r"\b(?:ticket|vorgangs|anfrage|referenz)(?:nummer|-nr\.?| nr\.?| id)" + _NUMBER,
            r"(?:empfangs|eingangs)bestätigung\b",
        ],
        "fr": [
            r"\bnous avons (?:bien )?reçu votre (?:e-?mail|message|courriel|demande|requête|candidature)\b",
            r"\bvotre (?:e-?mail|message|courriel|demande|requête)\b.{0,20}\ba (?:bien )?été (?:reçue?|enregistrée?)\b",
            r"\bnous (?:vous )?(?:répondrons|reviendrons vers vous|recontacterons)\b.{0,40}\b(?:dans les (?:meilleurs|plus brefs) délais|rapidement|prochainement)\b",
            r"\baccusé de réception\b",
            r"\bnuméro de (?:ticket|dossier|demande)" + _NUMBER,
        ],
        "es": [
            r"\bhemos recibido (?:su|tu) (?:correo|mensaje|solicitud|consulta|e-?mail|petición)\b",
            r"\b(?:su|tu) (?:correo|mensaje|solicitud|consulta|petición)\b.{0,20}\bha sido (?:recibid[oa]|registrad[oa])\b",
            r"\b(?:le responderemos|nos pondremos en contacto)\b.{0,30}\b(?:lo antes posible|a la mayor brevedad|en breve|a la brevedad)\b",
            r"\bacuse de recibo\b",
            r"\bnúmero de (?:ticket|caso|solicitud|incidencia)" + _NUMBER,
        ],
        "pt": [
            r"\brecebemos (?:a )?(?:sua|tua) (?:mensagem|solicitação|e-?mail|pedido|consulta)\b",
            r"\b(?:sua|tua) (?:mensagem|solicitação|pedido|consulta)\b.{0,20}\bfoi (?:recebid[oa]|registad[oa]|registrad[oa])\b",
            r"\b(?:responderemos|entraremos em contato|entraremos em contacto)\b.{0,30}\b(?:o mais breve|em breve|brevemente|assim que possível)\b",
            r"\bconfirmação de (?:recebimento|receção)\b",
            r"\b(?:número do (?:chamado|ticket|protocolo|pedido)|protocolo)" + _NUMBER,
        ],
        "it": [
            r"\babbiamo ricevuto (?:il |la )?(?:suo|sua|tuo|tua|vostro|vostra) (?:messaggio|richiesta|e-?mail|mail)\b",
            r"\b(?:la|il) (?:sua|tua|vostra|suo|tuo|vostro) (?:richiesta|messaggio|e-?mail)\b.{0,20}\bè stat[oa] (?:ricevut[oa]|registrat[oa]|pres[oa] in carico)\b",
            r"\b(?:le|ti|vi) (?:risponderemo|ricontatteremo)\b.{0,30}\b(?:al più presto|quanto prima|a breve|prima possibile)\b",
            r"\bconferma di ricezione\b",
            r"\bnumero (?:di )?(?:ticket|pratica|richiesta)" + _NUMBER,
        ],
        "nl": [
            r"\b(?:wij hebben|we hebben) (?:uw|je) (?:e-?mail|bericht|aanvraag|vraag|mail)\b.{0,30}\bontvangen\b",
            r"\b(?:uw|je) (?:e-?mail|bericht|aanvraag|vraag)\b.{0,20}\bis (?:in goede orde )?(?:ontvangen|geregistreerd)\b",
            r"\b(?:wij|we) nemen\b.{0,40}\bcontact (?:met u |met je )?op\b",
            r"\bontvangstbevestiging\b",
            r"\b(?:ticketnummer|referentienummer|dossiernummer)" + _NUMBER,
        ],
        "sv": [
            r"\bvi har (?:tagit emot|mottagit|fått) (?:ditt|din|ert|er) (?:meddelande|ärende|mejl|mail|e-?post(?:meddelande)?|förfrågan)\b",
            r"\b(?:ditt|ert) (?:meddelande|ärende)\b.{0,20}\bhar (?:tagits emot|registrerats|mottagits)\b",
            r"\bvi återkommer\b.{0,30}\b(?:så snart som möjligt|snarast|inom)\b",
            r"\bärendenummer" + _NUMBER,
        ],
        "pl": [
            r"\botrzymaliśmy (?:twoją|pana|pani|państwa) (?:wiadomość|zgłoszenie|zapytanie|e-?mail)\b",
            r"\b(?:twoje|pana|pani|państwa) zgłoszenie\b.{0,20}\b(?:zostało|zarejestrowano)\b",
            r"\b(?:odpowiemy|skontaktujemy się)\b.{0,30}\b(?:najszybciej|wkrótce|niezwłocznie|jak najszybciej)\b",
            r"\bnumer zgłoszenia" + _NUMBER,
        ],
    }
)

# A ticket number in a subject: "[#12345]", "[example.com #123]", "[Ticket#2024010110000012]",
# "Case 00123456", ServiceNow's "INC0012345", Jira's "(HELP-123)".
TICKET_SUBJECT = re.compile(
    r"\[[^\]]{0,40}#\s?[a-z]{0,6}-?\d{3,}\]"
    r"|\b(?:ticket|case|request|incident|anfrage|vorgang|demande|dossier|caso|chamado|pratica|melding|ärende|zgłoszenie)"
    r"\s*(?:#|no\.?|nr\.?|number|id)\s*:?\s*[a-z]{0,6}-?\d{3,}\b"
    r"|\b(?:inc|req|ritm|sctask|cs)\d{6,}\b|\bticket#\d{6,}\b|\[jira\]",
    _I,
)

# Header names and X-Mailer / User-Agent values of ticket, helpdesk, CRM and form systems.
TICKET_HEADER_PREFIXES = (
    "x-zendesk-",
    "x-freshdesk-",
    "x-freshservice-",
    "x-otrs-",
    "x-znuny-",
    "rt-ticket",
    "rt-originator",
    "x-rt-",
    "x-jira-",
    "x-servicenow-",
    "x-sfdc-",
    "x-salesforce",
    "x-hubspot-",
    "x-osticket",
    "x-kayako",
    "x-helpscout-",
    "x-zoho-desk",
)
TICKET_MAILER = re.compile(
    r"zendesk|freshdesk|freshservice|\botrs\b|znuny|request tracker|\bjira\b|servicenow|service-now|"
    r"osticket|hubspot|salesforce|kayako|help ?scout|zoho ?desk|spiceworks|sysaid|manageengine|"
    r"servicedesk|\bglpi\b|topdesk|cherwell|ivanti|wufoo|typeform|jotform|wpforms|gravity ?forms|"
    r"formstack|contact form 7|shopify|woocommerce|magento",
    _I,
)

# Sender local parts that nobody answers from.
NO_REPLY_LOCALPART = re.compile(
    r"^(?:no[-_.]?reply|do[-_.]?not[-_.]?reply|dont[-_.]?reply|no[-_.]?response|"
    r"auto[-_.]?(?:reply|responder|confirm(?:ation)?))(?:[-_.+].*)?$",
    _I,
)

# Notices that the person has left: the third person or the mailbox speaks (a server rule
# or a colleague's template), worth as much as out-of-office wording.
LEFT_ORGANISATION = AnchoredTable(
    {
        "en": [
            r"\b(?:is|are) no longer (?:with|employed (?:at|by|with)|working (?:at|for|with)|part of|at)\b",
            r"\bno longer works? (?:at|for|with|here)\b",
            r"\bhas left (?:the|our) (?:company|organi[sz]ation|firm|business|team|university|institution|group)\b",
            r"\b(?:this|the) (?:e-?mail )?(?:mailbox|e-?mail address|account|address|inbox) is no longer (?:being )?(?:monitored|active|in use|checked|valid|read)\b",
        ],
        "de": [
            r"\b(?:ist|sind) nicht mehr (?:bei|für|in|im)\b.{0,60}\b(?:tätig|beschäftigt|angestellt)\b",
            r"\bhat (?:das unternehmen|die firma|unser unternehmen|unsere firma|uns)\b.{0,20}\bverlassen\b",
            r"(?:postfach|konto|adresse) wird nicht mehr (?:gelesen|bearbeitet|abgerufen|genutzt|verwendet|betreut)\b",
            r"\bist (?:aus dem unternehmen )?ausgeschieden\b",
        ],
        "fr": [
            r"\bne fait plus partie (?:de|du|des)\b",
            r"\ba quitté (?:l'entreprise|la société|l'organisation|le groupe|nos effectifs|notre société|le cabinet)\b",
            r"\bne travaille plus (?<!\bje ne travaille plus )(?:chez|pour|au sein|dans)\b",
            r"\bcette (?:adresse|boîte)\b.{0,30}\bn'est plus (?:active|consultée|utilisée|valide|lue|relevée)\b",
        ],
        "es": [
            r"\bya no (?:trabaja|forma parte) (?:en|para|de|con)\b",
            r"\bha dejado (?:la empresa|la compañía|la organización|de trabajar)\b",
            r"\b(?:esta|la) (?:dirección|cuenta|casilla)\b.{0,30}\bya no (?:está activa|se utiliza|es válida|se revisa|está en uso)\b",
        ],
        "pt": [
            r"\b(?:já não|não) (?:trabalha|faz parte)\b",
            r"\bdeixou (?:a empresa|a companhia|a organização|de trabalhar|de fazer parte)\b",
            r"\beste (?:endereço|e-?mail)\b.{0,30}\bnão (?:está|é) (?:mais )?(?:ativo|monitorizado|monitorado|utilizado|válido)\b",
        ],
        "it": [
            r"\bnon (?:lavora|fa) più (?:presso|per|con|parte)\b",
            r"\bha lasciato (?:l'azienda|la società|l'organizzazione|il gruppo)\b",
            r"\b(?:questa|la) (?:casella|mailbox|indirizzo)\b.{0,30}\bnon è più (?:attiv[oa]|monitorat[oa]|utilizzat[oa]|in uso)\b",
        ],
        "nl": [
            r"\b(?:is|zijn) niet (?:meer|langer) (?:werkzaam|in dienst) (?:bij|voor)\b",
            r"\bis uit dienst\b",
            r"\b(?:e-mailadres|emailadres|adres|postvak|mailadres) (?:wordt niet meer (?:gelezen|gebruikt|gecontroleerd)|is niet meer (?:in gebruik|actief))\b",
        ],
        "sv": [
            r"\b(?:arbetar|jobbar) inte (?:längre|kvar) (?:på|hos|för)\b",
            r"\bhar lämnat (?:företaget|bolaget|organisationen)\b",
            r"\b(?:e-postadress|epostadress|adress|brevlåda)\b.{0,20}\b(?:används inte längre|är inte längre aktiv|bevakas inte)\b",
        ],
        "pl": [
            r"\bnie pracuje już\b|\bjuż nie pracuje\b",
            r"\b(?:odszedł|odeszła) z (?:firmy|pracy|organizacji)\b",
            r"\bopuścił(?:a)? (?:firmę|organizację)\b",
        ],
    }
)

# The same said in the first person: a person may write it too, so it only supports.
LEFT_ORGANISATION_SELF = AnchoredTable(
    {
        "en": [
            r"\b(?:i've|i have|i) left (?:the company|the organi[sz]ation|the firm|my (?:position|role|job))\b",
            r"\bi (?:no longer|don't|do not) work (?:at|for|with|here)\b|\bi(?:'m| am) no longer (?:with|at|employed)\b",
        ],
        "de": [
            r"\bich habe (?:das unternehmen|die firma)\b.{0,20}\bverlassen\b",
            r"\bich (?:bin|arbeite) nicht mehr (?:bei|für|im)\b",
        ],
        "fr": [
            r"\bj'ai quitté (?:l'entreprise|la société|mes fonctions|mon poste)\b|\bje ne (?:travaille|suis) plus (?:chez|pour|au sein|dans)\b"
        ],
        "es": [
            r"\bya no trabajo (?:en|para|con)\b|\b(?:he dejado|dejé) (?:la empresa|la compañía|mi puesto)\b"
        ],
        "pt": [
            r"\b(?:já não|não) trabalho mais\b|\bjá não trabalho\b|\bdeixei a empresa\b|\bsaí da empresa\b"
        ],
        "it": [r"\bnon lavoro più\b|\bho lasciato (?:l'azienda|la società)\b"],
        "nl": [r"\bik (?:werk|ben) niet (?:meer|langer) (?:bij|werkzaam|in dienst)\b"],
        "sv": [r"\bjag har (?:slutat|lämnat)\b|\bjag (?:arbetar|jobbar) inte (?:längre|kvar)\b"],
        "pl": [r"\b(?:już nie pracuję|nie pracuję już)\b|\bodszedłem z\b|\bodeszłam z\b"],
    }
)
