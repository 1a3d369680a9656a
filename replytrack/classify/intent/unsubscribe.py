"""``unsubscribe``: the person asks to get no more mail ("remove me", "unsubscribe", "stop
emailing me", "take me off your list"). The sender goes on the do-not-contact list.

A "not" in front turns a phrase around ("please don't unsubscribe me"); phrases that carry
their own negation ("do not contact me") are not turned around by it. A new text that is
only the request ("Unsubscribe", "STOP", "Abmelden") counts even without context, and so
does a subject that is nothing else.
"""

from __future__ import annotations

import re

from ..subjects import strip_prefixes
from ._rule import Hit, compile_table, find
from ._text import IntentText

NAME = "unsubscribe"

PHRASES = compile_table(
    {
        "en": [
            r"\bunsubscrib(?:e|ed|ing)\b",
            r"\b(?:remove|delete) (?:me|us|my (?:e-?mail|address|name|details|contact)|this (?:e-?mail|address))\b",
            r"\btake (?:me|us|my (?:e-?mail|address|name)) off\b",
            r"\b(?:stop|quit|cease) (?:e-?mailing|mailing|contacting|spamming|messaging|writing to|sending (?:me|us)) ?(?:me|us)?\b",
            r"\bstop sending (?:these|this|your|any more|more)\b",
            r"\b(?:do not|don't|never) (?:e-?mail|contact|write to|message|spam|mail) (?:me|us)\b",
            r"\bopt (?:me |us )?out\b|\bopt-out\b",
            r"\bno (?:more|further) (?:e-?mails|mails|messages|contact|follow-?ups)\b",
            r"\b(?:don't|do not) (?:want|wish) (?:to (?:receive|get) )?(?:any )?(?:more|further|these|your) (?:e-?mails|mails|messages)\b",
            r"\bi (?:never|did not|didn't) (?:sign(?:ed)? up|subscribe|opt(?:ed)? in)\b",
            r"\boff (?:your|the|this) (?:mailing |e-?mail |distribution |contact )?list\b",
        ],
        "de": [
            r"\b(?:abmelden|abzumelden|abbestellen|abzubestellen|austragen|auszutragen)\b.{0,60}\b(?:newsletter|verteiler|liste|e-?mails?|mails|nachrichten|mailings?)\b",
            r"\b(?:newsletter|verteiler|liste|e-mails?|emails?|mails|mailings?)\b.{0,60}\b(?:abmelden|abzumelden|abbestellen|abzubestellen|austragen|auszutragen)\b",
            r"\b(?:tragen|nehmen|streichen|entfernen|löschen) sie mich\b",
            r"\bmich (?:bitte )?(?:aus|von) (?:ihrem|ihrer|dem|der|diesem|dieser|eurem|eurer) (?:verteiler|liste|mailingliste|newsletter|e-?mail-?verteiler|adressliste)",
            r"\bkeine (?:weiteren |werbe)?(?:e-?mails|mails|nachrichten|werbung|zusendungen|newsletter) mehr\b",
            r"\b(?:kontaktieren|anschreiben|anmailen|schreiben|mailen) sie mich (?:bitte )?nicht mehr\b",
            r"\bmich (?:bitte )?nicht mehr (?:kontaktieren|anschreiben|anmailen|zu kontaktieren|anzuschreiben)\b",
            r"\bwidersprech?e\b.{0,60}\b(?:werbung|nutzung|verarbeitung|kontaktaufnahme)",
            r"\blöschen sie (?:bitte )?meine (?:daten|adresse|e-?mail)",
        ],
        "fr": [
            r"\b(?:désabonn|désinscri)\w*",
            r"\b(?:retirez|supprimez|enlevez|effacez|rayez)(?:-moi|-nous| moi| mon adresse| mes coordonnées| mon e-?mail)\b",
            r"\bne (?:plus|pas) (?:me |nous )?(?:contacter|écrire|envoyer)\b",
            r"\bne me (?:contactez|écrivez|envoyez|sollicitez) plus\b",
            r"\b(?:arrêtez|cessez) de (?:m'|me |nous )(?:envoyer|écrire|contacter|solliciter)",
            r"\bne (?:souhaite|veux|désire) plus (?:rien )?recevoir\b",
        ],
        "es": [
            r"\b(?:dar|darme|darnos|den|denme) de baja\b",
            r"\b(?:elimínenme|eliminenme|elimíname|eliminarme|bórrenme|borrenme|sáquenme|saquenme|quítenme|quitenme|sacarme|quitarme|borrarme)\b",
            r"\bno (?:me )?(?:envíen|envien|manden|escriban|contacten) más\b",
            r"\b(?:dejen|deje|dejad) de (?:enviarme|escribirme|contactarme|mandarme)\b",
            r"\bno (?:quiero|deseo) (?:recibir|seguir recibiendo) más\b",
            r"\b(?:cancelar|anular) (?:mi |la )?suscripción\b|\bdesuscrib\w*",
        ],
        "pt": [
            r"\bdescadastr\w*",
            r"\b(?:remova|removam|retire|retirem|tirem|exclua|excluam|apaguem)(?:-me| me| o meu (?:e-?mail|endereço|contato|contacto))\b",
            r"\b(?:remover|retirar|tirar|excluir) da (?:sua |vossa )?lista\b",
            r"\bnão (?:quero|desejo) (?:mais )?receber\b",
            r"\b(?:parem|pare|deixem) de (?:me )?(?:enviar|mandar|contactar|contatar)\b",
            r"\bnão me (?:enviem|mandem|contactem|contatem) mais\b",
            r"\bcancelar (?:a |minha )?(?:inscrição|subscrição|assinatura)\b",
        ],
        "it": [
            r"\b(?:cancellatemi|cancellami|cancellarmi|rimuovetemi|rimuovimi|rimuovermi|toglietemi|toglimi|eliminatemi|disiscrivetemi|disiscrivimi|disiscrivermi)\b",
            r"\bdisiscri(?:vere|zione)\b",
            r"\bnon (?:voglio|desidero) più ricevere\b",
            r"\b(?:smettete|smetti|smettetela) di (?:inviarmi|mandarmi|scrivermi|contattarmi)\b",
            r"\bnon (?:mi )?(?:contattate|scrivete|inviate|contattatemi|scrivetemi) più\b",
        ],
        "nl": [
            r"\b(?:uitschrijven|uit te schrijven|uitgeschreven)\b",
            r"\b(?:afmelden|af te melden)\b.{0,60}\b(?:nieuwsbrief|mailinglijst|lijst|e-?mails|mailings|berichten)\b",
            r"\b(?:haal|verwijder|schrap) (?:mij|me|ons|mijn (?:e-?mail(?:adres)?|adres|gegevens))\b",
            r"\bgeen (?:e-?mails|mails|berichten|mailings|mailtjes) meer\b",
            r"\bstop (?:maar )?met (?:mailen|e-?mailen|sturen|benaderen)\b",
            r"\bniet meer (?:mailen|e-?mailen|benaderen|contacteren)\b",
        ],
        "sv": [
            r"\bavsluta (?:min |mitt )?prenumeration",
            r"\bavregistrera (?:mig|oss)\b|\bavanmäl(?:a)? mig\b",
            r"\bta bort (?:mig|oss|min (?:e-?post(?:adress)?|adress|mejladress))\b",
            r"\bsluta (?:skicka|maila|mejla|kontakta)\b",
            r"\b(?:vill|önskar) inte (?:ha|få|ta emot) (?:fler|mer|några fler) (?:mejl|mail|e-?post|utskick)\b",
            r"\bkontakta (?:mig|oss) inte\b",
        ],
        "pl": [
            r"\bwypisz(?:cie)? mnie\b|\bwypisać\b|\bwypisanie\b",
            r"\b(?:usuń|usuńcie|proszę usunąć) (?:mnie|mój (?:adres|e-?mail)|moje dane)\b",
            r"\bnie (?:wysyłajcie|wysyłaj|przysyłajcie) (?:mi|więcej)\b",
            r"\bnie (?:chcę|życzę sobie) (?:więcej )?(?:otrzymywać|dostawać)\b",
            r"\brezygnuj(?:ę|e) z (?:subskrypcji|newslettera|mailingu)\b",
            r"\bproszę (?:mnie )?nie kontaktować\b",
        ],
    }
)

# A new text or subject that is nothing but the request.
_ALONE = re.compile(
    r"^\W*(?:please\W+|bitte\W+|por favor\W+)?(?:unsubscribe(?: me)?|remove(?: me)?|stop|opt[- ]?out|"
    r"abmelden|austragen|désabonner|désinscription|désabonnement|baja|darme de baja|"
    r"descadastrar|cancellami|disiscrivimi|uitschrijven|afmelden|avregistrera|avsluta prenumerationen|"
    r"wypisz(?: mnie)?|rezygnuję)\W*$",
    re.I,
)


def check(text: IntentText, subject: str = "") -> Hit | None:
    """A request to get no more mail, in the new text or as the whole subject."""
    if _ALONE.match(text.low):
        return Hit(NAME, "any", text.low.strip()[:40], 0)
    found = find(NAME, PHRASES, text, negatable=True)
    if found is not None:
        return found
    bare, _ = strip_prefixes(subject)
    if _ALONE.match(bare):
        return Hit(NAME, "subject", bare.strip().lower()[:40], -1)
    return None
