"""What a person's reply means (intent), acknowledgements and "has left" notices.

Samples written for these tests in English, German, French, Spanish, Portuguese, Italian,
Dutch, Swedish and Polish. Trigger words in quoted text, in the signature, in links and in
bulk-mail footers must not fire; the real corpus's human replies must get no
``unsubscribe``.
"""

from __future__ import annotations

import datetime as dt
import os
from collections import Counter
from pathlib import Path

import pytest

from replytrack.classify import Classification, classify, classify_message, needs_body
from replytrack.classify.intent import INTENTS, RULES, label_intent
from tests.support.replies import message

TODAY = dt.date(2026, 3, 2)
SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "corpus"

CAMPAIGN_QUOTE = (
    "\n\nOn Mon, 2 Mar 2026 at 09:00, Sam Seller <sam@example.com> wrote:\n"
    "> Hi Erika, would a short call next week make sense? Let's talk!\n"
    "> Sounds good? Reply to book a call.\n"
    "> --\n"
    "> You received this because you are a customer. Unsubscribe: https://ex.example/u/abc\n"
    "> To stop receiving these emails, remove me from this list by clicking here.\n"
)


def reply(
    body: str,
    *,
    subject: str = "Re: A short call?",
    sender: str = "Erika Mustermann <erika@example.de>",
    envelope_from: str | None = "erika@example.de",
    extra: list[tuple[str, str]] | None = None,
    threaded: bool = True,
) -> Classification:
    headers, raw = message(subject, body, sender=sender, extra=extra, reply=threaded)
    return classify(headers, raw, envelope_from=envelope_from, today=TODAY)


# (language, new text, intent)
SAMPLES = [
    # English
    ("en", "Please remove me from your mailing list.", "unsubscribe"),
    ("en", "Stop emailing me.", "unsubscribe"),
    ("en", "Take me off your list, thanks", "unsubscribe"),
    ("en", "UNSUBSCRIBE", "unsubscribe"),
    ("en", "Not interested, thanks.", "not_interested"),
    ("en", "No thanks, we're all set.", "not_interested"),
    ("en", "I'm not the right person for this. Please contact jane.doe@acme.example.", "referral"),
    ("en", "Sounds good, let's talk Tuesday.", "positive"),
    ("en", "Happy to chat, can we book a call for next week?", "positive"),
    ("en", "Thanks for the note. I will read it later.", "other"),
    # German
    ("de", "Bitte tragen Sie mich aus Ihrem Verteiler aus.", "unsubscribe"),
    ("de", "Kontaktieren Sie mich bitte nicht mehr.", "unsubscribe"),
    ("de", "Danke, aber kein Interesse.", "not_interested"),
    (
        "de",
        "Ich bin nicht der richtige Ansprechpartner, bitte wenden Sie sich an max@firma.example.",
        "referral",
    ),
    ("de", "Klingt gut, lassen Sie uns telefonieren.", "positive"),
    ("de", "Danke für die Nachricht.", "other"),
    # French
    ("fr", "Merci de me désinscrire de votre liste.", "unsubscribe"),
    ("fr", "Ne me contactez plus, s'il vous plaît.", "unsubscribe"),
    ("fr", "Non merci, pas intéressé.", "not_interested"),
    ("fr", "Je ne suis pas la bonne personne, veuillez contacter paul@societe.example", "referral"),
    ("fr", "Ça me semble bien, prenons rendez-vous jeudi.", "positive"),
    # Spanish
    ("es", "Por favor, denme de baja de su lista.", "unsubscribe"),
    ("es", "No me interesa, gracias.", "not_interested"),
    ("es", "No soy la persona indicada; contacte con ana@empresa.example", "referral"),
    ("es", "Suena bien, hablemos el martes.", "positive"),
    # Portuguese
    ("pt", "Por favor, remova-me da sua lista.", "unsubscribe"),
    ("pt", "Não tenho interesse, obrigado.", "not_interested"),
    ("pt", "Não sou a pessoa certa, fale com joao@empresa.example", "referral"),
    ("pt", "Tenho interesse, vamos conversar na próxima semana.", "positive"),
    # Italian
    ("it", "Cancellatemi dalla vostra lista, grazie.", "unsubscribe"),
    ("it", "Non sono interessato.", "not_interested"),
    ("it", "Non sono la persona giusta, si rivolga a luca@azienda.example", "referral"),
    ("it", "Mi sembra ottimo, sentiamoci domani.", "positive"),
    # Dutch
    ("nl", "Graag uitschrijven, ik wil geen e-mails meer.", "unsubscribe"),
    ("nl", "Nee bedankt, geen interesse.", "not_interested"),
    ("nl", "Ik ben niet de juiste persoon, neem contact op met piet@bedrijf.example", "referral"),
    ("nl", "Klinkt goed, laten we bellen.", "positive"),
    # Swedish
    ("sv", "Ta bort mig från er lista.", "unsubscribe"),
    ("sv", "Nej tack, inte intresserad.", "not_interested"),
    ("sv", "Jag är inte rätt person, kontakta eva@foretag.example", "referral"),
    ("sv", "Låter bra, vi kan boka ett möte.", "positive"),
    # Polish
    ("pl", "Proszę usunąć mój adres, wypisz mnie.", "unsubscribe"),
    ("pl", "Nie jestem zainteresowany.", "not_interested"),
    ("pl", "Nie jestem właściwą osobą, proszę skontaktować się z adam@firma.example", "referral"),
    ("pl", "Brzmi dobrze, porozmawiajmy.", "positive"),
]


@pytest.mark.parametrize(("lang", "text", "intent"), SAMPLES, ids=[s[1][:30] for s in SAMPLES])
def test_intent_of_a_reply_above_a_quoted_campaign_mail(lang: str, text: str, intent: str) -> None:
    """The intent comes from the new text; the quoted campaign mail below it says "let's
    talk", "book a call", "unsubscribe" and "remove me", and none of it counts."""
    verdict = reply("Hi Sam,\n\n" + text + "\n\nBest,\nErika" + CAMPAIGN_QUOTE)
    assert verdict.kind == "human"
    assert verdict.intent is not None
    assert verdict.intent.intent == intent, verdict.intent
    if intent != "other":
        assert verdict.intent.language == lang
        assert verdict.intent.evidence[0].startswith(intent + ":")


def test_referral_records_the_named_address_not_the_senders() -> None:
    found = label_intent(
        "I'm not the right person. Please contact our buyer at Buyer <Buyer@Acme.example>;"
        " I am erika@example.de.",
        sender="erika@example.de",
    )
    assert found.intent == "referral"
    assert found.referred_address == "buyer@acme.example"
    nameless = label_intent("I'm not the right person, please contact our CTO.")
    assert (nameless.intent, nameless.referred_address) == ("referral", None)


def test_precedence_and_negation() -> None:
    both = label_intent("Sounds good, but please remove me from the list.")
    assert both.intent == "unsubscribe"
    assert [e.split(":")[0] for e in both.evidence] == ["unsubscribe", "positive"]
    assert label_intent("I'm interested.").intent == "positive"
    assert label_intent("I'm not interested.").intent == "not_interested"
    assert label_intent("Please don't unsubscribe me, I like these.").intent == "other"
    assert label_intent("No need to book a call.").intent == "other"
    assert label_intent("Kein Interesse.").intent == "not_interested"
    assert label_intent("No me interesa.").intent == "not_interested"
    assert [r.name for r in RULES] == list(INTENTS[:-1])


FOOTERS = [
    # our campaign's footer copied into the new text without a quote marker
    "Sounds good, let's talk Tuesday.\n\nIf you no longer wish to receive these emails, "
    "unsubscribe here.\n",
    "Sounds good, let's talk Tuesday.\nUnsubscribe: <https://ex.example/unsubscribe?t=abc>\n",
    "Sounds good, let's talk Tuesday.\n\nTo unsubscribe, click here: https://ex.example/u\n",
    # below the signature delimiter: a list footer
    "Sounds good, let's talk Tuesday.\n-- \nErika\nTo unsubscribe from this list: send the "
    'line "unsubscribe linux-kernel" in the body of a message\n',
    "Klingt gut, lassen Sie uns telefonieren.\n\nWenn Sie keine E-Mails mehr von uns erhalten "
    "möchten, können Sie sich hier abmelden.\n",
    "Ça me semble bien.\n\nSi vous ne souhaitez plus recevoir nos e-mails, cliquez ici pour "
    "vous désabonner.\n",
]


@pytest.mark.parametrize("text", FOOTERS, ids=range(len(FOOTERS)))
def test_footer_unsubscribe_wording_never_counts(text: str) -> None:
    verdict = reply(text)
    assert verdict.intent is not None
    assert verdict.intent.intent == "positive", verdict.intent


def test_a_person_asking_to_unsubscribe_is_no_footer() -> None:
    assert label_intent("I would like to unsubscribe from this list.").intent == "unsubscribe"
    assert label_intent("Hi,\nunsubscribe\n-- \nErika").intent == "unsubscribe"


def test_subject_that_is_only_the_request() -> None:
    assert reply("", subject="Unsubscribe").intent.intent == "unsubscribe"  # type: ignore[union-attr]
    # Our own subject with Re: in front says nothing about the person.
    assert reply("Thanks.", subject="Re: Let's talk!").intent.intent == "other"  # type: ignore[union-attr]


def test_intent_only_for_people_and_only_with_the_body() -> None:
    auto = reply(
        "I am out of the office until 9 March.",
        subject="Automatic reply: A short call?",
        extra=[("Auto-Submitted", "auto-replied")],
    )
    assert auto.kind == "auto_reply" and auto.intent is None
    headers = [("From", "erika@example.de"), ("Subject", "Re: x")]
    assert classify(headers, None).intent is None


@pytest.mark.skipif(
    not SHARED.is_dir() and os.environ.get("CI", "").lower() != "true",
    reason=f"research corpus not present at {SHARED}",
)
def test_corpus_human_replies_get_no_unsubscribe() -> None:
    """The real human replies (LKML with its list footers, Thunderbird, Outlook, ...) are
    answers about other things: none asks to unsubscribe."""
    assert SHARED.is_dir(), f"research corpus not present at {SHARED} (CI=true)"
    seen: Counter[str] = Counter()
    for path in sorted((SHARED / "human_reply").glob("*.eml")):
        verdict = classify_message(path.read_bytes())
        assert verdict.kind == "human"
        assert verdict.intent is not None, path.name
        seen[verdict.intent.intent] += 1
        assert verdict.intent.intent != "unsubscribe", (path.name, verdict.intent)
    assert seen["other"] >= 0.9 * sum(seen.values())


# --- acknowledgements ------------------------------------------------------------------------

ACKS = [
    (
        "en",
        "Request received: A short call? [#48213]",
        "Dear customer,\n\nWe have received your request and a ticket has been created."
        " Our team will get back to you shortly.\n\nSupport",
        "Acme Support <support@acme.example>",
        [("X-Mailer", "Zendesk Mailer")],
    ),
    (
        "de",
        "Eingangsbestätigung: A short call?",
        "Sehr geehrte Damen und Herren,\n\nIhre Nachricht ist bei uns eingegangen. Wir melden"
        " uns schnellstmöglich bei Ihnen.\n\nIhre Stadtverwaltung",
        "Poststelle <poststelle@stadt.example>",
        [],
    ),
    (
        "fr",
        "Accusé de réception",
        "Bonjour,\n\nNous avons bien reçu votre message. Nous vous répondrons dans les meilleurs"
        " délais.\n\nLe service client",
        "Service client <no-reply@boutique.example>",
        [],
    ),
    (
        "es",
        "Re: A short call? [Ticket #2231]",
        "Hola,\n\nHemos recibido su mensaje. Número de ticket: 2231. Le responderemos lo antes"
        " posible.",
        "Soporte <soporte@empresa.example>",
        [("X-Mailer", "Freshdesk")],
    ),
    (
        "nl",
        "Ontvangstbevestiging",
        "Beste,\n\nWij hebben uw bericht in goede orde ontvangen. Wij nemen zo spoedig mogelijk"
        " contact met u op.",
        "Klantenservice <info@bedrijf.example>",
        [],
    ),
    (
        "it",
        "Conferma di ricezione",
        "Gentile cliente,\n\nabbiamo ricevuto il suo messaggio. Le risponderemo al più presto.",
        "Assistenza <noreply@azienda.example>",
        [],
    ),
]


@pytest.mark.parametrize(
    ("lang", "subject", "body", "sender", "extra"), ACKS, ids=[a[0] for a in ACKS]
)
def test_acknowledgements_without_rfc3834_are_auto_replies(
    lang: str, subject: str, body: str, sender: str, extra: list[tuple[str, str]]
) -> None:
    verdict = reply(body, subject=subject, sender=sender, envelope_from=None, extra=extra)
    assert verdict.kind == "auto_reply", verdict.evidence
    assert verdict.subtype == "acknowledgement"
    assert verdict.return_date is None
    assert any(
        e.startswith(("body:acknowledgement", "subject:acknowledgement")) for e in verdict.evidence
    )


def test_null_sender_acknowledgement_is_not_a_bounce() -> None:
    """An acknowledgement from MAIL FROM:<> (even from a MAILER-DAEMON-like From, with a
    "Delivery notification" subject) says nothing failed: an auto-reply, not a bounce."""
    for sender, subject in (
        ("Mail Delivery System <MAILER-DAEMON@office.example>", "Ihre Nachricht"),
        ("Bürgerservice <buergerservice@amt.example>", "Delivery notification: your message"),
    ):
        verdict = reply(
            "Ihre Nachricht ist bei uns eingegangen und wird bearbeitet.\n",
            subject=subject,
            sender=sender,
            envelope_from="",
        )
        assert verdict.kind == "auto_reply", (subject, verdict.evidence)
        assert verdict.subtype == "acknowledgement"
        assert "envelope-from:null" in verdict.evidence


def test_null_sender_with_failure_wording_is_still_a_bounce() -> None:
    verdict = reply(
        "We received your message but it could not be delivered to the following recipients:\n"
        "  bob@acme.example: user unknown\n",
        subject="Undeliverable: A short call?",
        sender="Mail Delivery System <MAILER-DAEMON@acme.example>",
        envelope_from="",
    )
    assert verdict.kind == "bounce"


SHORT_HUMAN = [
    "We received your message, I'll look into it and get back to you.\n\nTom",
    "Thanks, got it. Ticket #4411 is the one I mentioned, let's talk Tuesday.\n",
    "Wir haben Ihre Nachricht erhalten, danke! Ich melde mich.\n",
]


@pytest.mark.parametrize("body", SHORT_HUMAN, ids=range(len(SHORT_HUMAN)))
def test_short_human_replies_that_sound_like_acknowledgements_stay_human(body: str) -> None:
    assert reply(body + CAMPAIGN_QUOTE).kind == "human"
    assert reply(body).kind == "human"


def test_helpdesk_agents_answer_without_acknowledgement_wording_stays_human() -> None:
    verdict = reply(
        "Hi Sam, yes, we would like a demo. Thursday 10:00 works.\nTom (Acme Support)",
        subject="[Acme] Re: A short call? [#48213]",
        extra=[("X-Mailer", "Zendesk Mailer")],
    )
    assert verdict.kind == "human"
    assert verdict.intent is not None and verdict.intent.intent == "positive"


def test_acknowledgement_subject_makes_the_body_worth_reading() -> None:
    headers = [
        ("From", "Poststelle <poststelle@stadt.example>"),
        ("Subject", "Eingangsbestätigung"),
    ]
    assert needs_body(headers)
    assert needs_body([("From", "noreply@shop.example"), ("Subject", "Hello")])
    assert not needs_body([("From", "erika@example.de"), ("Subject", "Re: A short call?")])


# --- has left the organisation ---------------------------------------------------------------

LEFT = [
    ("en", "John Smith is no longer with Acme. Please contact sales@acme.example instead."),
    (
        "de",
        "Herr Müller ist nicht mehr für die Firma Beispiel GmbH tätig. Ihre E-Mail wird"
        " nicht weitergeleitet.",
    ),
    (
        "fr",
        "Mme Dupont ne fait plus partie de la société. Merci de contacter accueil@societe.example.",
    ),
    ("es", "Ana García ya no trabaja en la empresa. Contacte con info@empresa.example."),
    ("pt", "O João já não trabalha nesta empresa. Contacte geral@empresa.example."),
    ("it", "Il sig. Rossi non lavora più presso la nostra azienda."),
    ("nl", "Piet is niet meer werkzaam bij ons bedrijf. Dit e-mailadres wordt niet meer gelezen."),
    ("sv", "Eva arbetar inte längre på företaget."),
    ("pl", "Pan Adam nie pracuje już w naszej firmie."),
]


@pytest.mark.parametrize(("lang", "body"), LEFT, ids=[x[0] for x in LEFT])
def test_left_organisation_notice(lang: str, body: str) -> None:
    verdict = reply(body, subject="Re: A short call?", extra=[("Auto-Submitted", "auto-replied")])
    assert verdict.kind == "auto_reply"
    assert verdict.subtype == "left_organisation", verdict.evidence
    assert verdict.return_date is None
    assert any(e == f"body:left-organisation:{lang}" for e in verdict.evidence)


def test_left_organisation_without_headers_and_its_successor() -> None:
    """A server rule's unquoted notice, no RFC 3834 header: still a notice; the successor's
    address is the referral's."""
    verdict = reply(
        "This mailbox is no longer monitored. John Smith has left the company; "
        "please contact mary@acme.example.",
        subject="A short call?",
        sender="john@acme.example",
    )
    assert (verdict.kind, verdict.subtype) == ("auto_reply", "left_organisation")
    assert verdict.intent is not None and verdict.intent.referred_address == "mary@acme.example"


def test_a_person_saying_they_left_above_a_quote_stays_a_reply() -> None:
    verdict = reply("I have left the company, please contact mary@acme.example." + CAMPAIGN_QUOTE)
    assert verdict.kind == "human"
    assert verdict.intent is not None
    assert (verdict.intent.intent, verdict.intent.referred_address) == (
        "referral",
        "mary@acme.example",
    )
