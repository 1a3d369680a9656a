"""The classifier on messages written for the cases the real corpus lacks.

Languages (German, French, Spanish, Italian, Portuguese, Dutch), Exchange auto-replies with no
RFC 3834 header, Gmail / Office 365 bounces that quote our Message-ID in In-Reply-To, human
replies through mailing lists, and return dates in written, numeric and relative forms.
"""

from __future__ import annotations

import datetime as dt

import pytest

from replytrack.classify import KINDS, Classification, classify, classify_message, needs_body
from tests.support.replies import OUR_ID, message

TODAY = dt.date(2026, 3, 2)  # a Monday


def verdict(
    subject: str, body: str, *, envelope_from: str | None = "erika@example.de", **kw: object
) -> Classification:
    headers, raw = message(subject, body, **kw)  # type: ignore[arg-type]
    return classify(headers, raw, envelope_from=envelope_from, today=TODAY)


# --- people ---------------------------------------------------------------------------------


HUMAN_REPLIES = [
    ("Re: Your proposal", "Hi Sam,\n\nthanks, that sounds good. Can we talk on Thursday?\n\nErika"),
    (
        "AW: Ihr Angebot",
        "Hallo Sam,\n\ndanke für das Angebot. Passt es am Donnerstag?\n\nGruß\nErika",
    ),
    ("RE: Votre offre", "Bonjour,\n\nmerci pour votre message, je vous rappelle demain.\n\nErika"),
    ("Re: out of office policy", "Sam,\n\nour out of office policy is attached. Best, Erika"),
    (
        "Re: Delivery failure of my order",
        "Hello,\n\nthe parcel never arrived; the courier says the address could not be found.\n",
    ),
    ("Re: back next week?", "Yes, I am back on Monday, let's meet then.\n\n> Are you around?"),
]


@pytest.mark.parametrize(("subject", "body"), HUMAN_REPLIES)
def test_people_replying_are_human(subject: str, body: str) -> None:
    result = verdict(subject, body)
    assert result.kind == "human", result.evidence


def test_list_reply_with_precedence_and_suppress_is_human() -> None:
    """People reply through lists: Precedence: list/bulk and X-Auto-Response-Suppress alone
    do not make mail automatic."""
    for precedence in ("list", "bulk"):
        result = verdict(
            "Re: [dev] release plan",
            "I agree with the plan; ship it on Friday.\n\n> Proposal attached",
            extra=[
                ("Precedence", precedence),
                ("List-Id", "<dev.lists.example.org>"),
                ("X-Auto-Response-Suppress", "All"),
            ],
        )
        assert result.kind == "human", result.evidence


def test_outlook_new_mail_with_thread_index_is_human() -> None:
    result = verdict(
        "Question about pricing",
        "Hello, what does the pro plan cost?",
        extra=[("Thread-Index", "AdC0xOxFwE/tigzGSJa9glHhu/rfhw=="), ("Thread-Topic", "Question")],
        reply=False,
    )
    assert result.kind == "human"


# --- auto-replies ---------------------------------------------------------------------------


AUTO_REPLIES = [
    # German Exchange/Outlook, no RFC 3834 header at all.
    (
        "Abwesenheitsnotiz: Ihr Angebot",
        "Vielen Dank für Ihre Nachricht. Ich bin bis zum 16. März 2026 nicht im Büro und habe "
        "keinen Zugriff auf meine E-Mails.",
        "de",
        dt.date(2026, 3, 16),
    ),
    (
        "Automatische Antwort: Ihr Angebot",
        "Ich bin ab dem 20.03. wieder im Büro.",
        "de",
        dt.date(2026, 3, 20),
    ),
    (
        "Réponse automatique : Votre offre",
        "Bonjour, je suis absente du bureau jusqu'au 12 mars inclus. Je répondrai à votre "
        "message à mon retour.",
        "fr",
        dt.date(2026, 3, 12),
    ),
    (
        "Respuesta automática: Su oferta",
        "Gracias por su mensaje. Estaré fuera de la oficina hasta el 18 de marzo.",
        "es",
        dt.date(2026, 3, 18),
    ),
    (
        "Risposta automatica: La vostra offerta",
        "Grazie per il messaggio. Sarò fuori ufficio fino al 23 marzo, al mio rientro risponderò.",
        "it",
        dt.date(2026, 3, 23),
    ),
    (
        "Resposta automática: A sua proposta",
        "Obrigado pela sua mensagem. Estou fora do escritório até 25 de março.",
        "pt",
        dt.date(2026, 3, 25),
    ),
    (
        "Automatisch antwoord: Uw offerte",
        "Bedankt voor uw bericht. Ik ben afwezig tot en met 13 maart 2026.",
        "nl",
        dt.date(2026, 3, 13),
    ),
    (
        "Automatic reply: Your proposal",
        "Thank you for your email. I am out of the office until Monday, March 16th with "
        "limited access to email.",
        "en",
        dt.date(2026, 3, 16),
    ),
    (
        "Out of Office: Your proposal",
        "I'm on annual leave and will be back on 19/03/2026.",
        "en",
        dt.date(2026, 3, 19),
    ),
]


@pytest.mark.parametrize(("subject", "body", "lang", "returns"), AUTO_REPLIES)
def test_out_of_office_in_many_languages(
    subject: str, body: str, lang: str, returns: dt.date
) -> None:
    """Exchange-style notices with only a subject and a body, in seven languages."""
    result = verdict(subject, body)
    assert result.kind == "auto_reply", result.evidence
    assert result.subtype == "out_of_office"
    assert result.return_date == returns
    assert result.referenced_ids == (OUR_ID,)


def test_exchange_automatic_reply_with_loop_header_only() -> None:
    result = verdict(
        "Automatic reply: Your proposal",
        "Thanks for your note.",
        extra=[
            ("X-MS-Exchange-Inbox-Rules-Loop", "erika@example.de"),
            ("X-Auto-Response-Suppress", "All"),
        ],
        envelope_from="",
    )
    assert result.kind == "auto_reply"
    assert "header:x-ms-exchange-inbox-rules-loop" in result.evidence


def test_rfc3834_header_alone_decides() -> None:
    result = verdict("Re: Your proposal", "Thanks!", extra=[("Auto-Submitted", "auto-replied")])
    assert result.kind == "auto_reply"
    assert "auto-submitted:auto-replied" in result.evidence


def test_auto_submitted_no_is_human() -> None:
    result = verdict("Re: Your proposal", "Sounds good.", extra=[("Auto-Submitted", "no")])
    assert result.kind == "human"


@pytest.mark.parametrize(
    ("name", "value"),
    [("X-Autoreply", "yes"), ("X-Autorespond", "Vacation"), ("Precedence", "auto_reply")],
)
def test_other_auto_reply_headers(name: str, value: str) -> None:
    assert verdict("Re: Your proposal", "Thanks.", extra=[(name, value)]).kind == "auto_reply"


def test_exchange_suppress_header_alone_is_not_enough() -> None:
    result = verdict("Re: Your proposal", "Fine.", extra=[("X-Auto-Response-Suppress", "All")])
    assert result.kind == "human"


def test_ooo_body_without_header_signal_and_english_subject() -> None:
    """An autoresponder that copies the subject: the body wording plus a null sender decide."""
    result = verdict(
        "Your proposal",
        "I am currently out of the office with no access to email. I will respond upon my return.",
        envelope_from="<>",
    )
    assert result.kind == "auto_reply"
    assert result.subtype == "out_of_office"
    assert result.return_date is None


def test_challenge_response() -> None:
    result = verdict(
        "Re: Your proposal",
        "Your message is waiting. I use a spam filter: please click the link below so that you "
        "are added to my approved senders list.\nhttps://verify.example.net/c/abc",
        extra=[("Auto-Submitted", "auto-replied")],
    )
    assert result.kind == "auto_reply"
    assert result.subtype == "challenge_response"


# --- return dates ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "returns"),
    [
        ("I am away until next Monday.", dt.date(2026, 3, 9)),
        ("I am on holiday and will be back in two weeks.", dt.date(2026, 3, 16)),
        ("I'm out of the office until 03/20/2026.", dt.date(2026, 3, 20)),  # month first: 20 > 12
        ("I'm out of the office until 04/03/2026.", dt.date(2026, 3, 4)),  # nearer reading wins
        ("I will be returning 2026-04-07.", dt.date(2026, 4, 7)),
        ("Back on 5 June.", dt.date(2026, 6, 5)),  # year-less dates lie ahead
        ("Back on 5 January.", dt.date(2027, 1, 5)),  # ... even across the new year
        ("Back on 15 February.", None),  # a stale notice: that day passed two weeks ago
        ("On leave from 1 February until 31 March.", dt.date(2026, 3, 31)),  # the range end
        ("I was back on 1 January 2026.", None),  # dates in the past are not return dates
        ("I will be away until 1 January 2031.", None),  # beyond the sane horizon
    ],
)
def test_return_date_forms(text: str, returns: dt.date | None) -> None:
    result = verdict("Out of office", text)
    assert result.kind == "auto_reply"
    assert result.return_date == returns


def test_german_numeric_date_is_day_first() -> None:
    result = verdict("Abwesenheitsnotiz", "Ich bin bis 04.03.2026 im Urlaub.")
    assert result.return_date == dt.date(2026, 3, 4)


def test_date_header_is_the_reference_without_today() -> None:
    headers, body = message("Out of Office", "I am away until next Monday.")
    result = classify(headers, body, envelope_from="erika@example.de")
    assert result.return_date == dt.date(2026, 3, 9)


# --- bounces --------------------------------------------------------------------------------


RETURNED = f"""From: Sam Seller <sam@example.com>
To: gone@example.org
Subject: Your proposal
Message-ID: <{OUR_ID}>
Date: Mon, 02 Mar 2026 08:00:00 +0000
"""


def test_gmail_bounce_with_in_reply_to_is_a_bounce() -> None:
    """Gmail's NDN quotes our Message-ID in In-Reply-To and References."""
    body = (
        "** Address not found **\n\nYour message wasn't delivered to gone@example.org because "
        "the address couldn't be found, or is unable to receive mail.\n\nThe response from the "
        "remote server was:\n550 5.1.1 The email account that you tried to reach does not exist."
        "\n\n----- Original message -----\n\n" + RETURNED
    )
    headers, raw = message(
        "Delivery Status Notification (Failure)",
        body,
        sender="Mail Delivery Subsystem <mailer-daemon@googlemail.com>",
        extra=[("X-Failed-Recipients", "gone@example.org")],
    )
    result = classify(headers, raw, envelope_from="", today=TODAY)
    assert result.kind == "bounce"
    assert result.permanent is True
    assert result.failed_recipients == ("gone@example.org",)
    assert OUR_ID in result.referenced_ids


def _dsn(action: str, status: str) -> tuple[list[tuple[str, str]], bytes]:
    boundary = "b-123"
    body = f"""--{boundary}
Content-Type: text/plain; charset=us-ascii

Your message to gone@example.org couldn't be delivered.

--{boundary}
Content-Type: message/delivery-status

Reporting-MTA: dns;AM0PR01MB1234.eurprd01.prod.outlook.com

Final-Recipient: rfc822;gone@example.org
Action: {action}
Status: {status}
Diagnostic-Code: smtp;550 5.1.10 RESOLVER.ADR.RecipientNotFound

--{boundary}
Content-Type: text/rfc822-headers

{RETURNED}
--{boundary}--
"""
    headers, raw = message(
        "Undeliverable: Your proposal",
        body,
        sender="Microsoft Outlook <postmaster@example.onmicrosoft.com>",
        content_type=f'multipart/report; report-type=delivery-status; boundary="{boundary}"',
        extra=[("Thread-Index", "AQHZabc="), ("Thread-Topic", "Your proposal")],
    )
    return headers, raw


def test_office365_dsn_with_thread_headers_is_a_permanent_bounce() -> None:
    headers, raw = _dsn("failed", "5.1.10")
    result = classify(headers, raw, envelope_from="<>", today=TODAY)
    assert result.kind == "bounce"
    assert result.subtype == "dsn_failed"
    assert result.permanent is True
    assert result.failed_recipients == ("gone@example.org",)
    assert result.referenced_ids[0] == OUR_ID


def test_delayed_dsn_is_transient() -> None:
    headers, raw = _dsn("delayed", "4.4.7")
    result = classify(headers, raw, envelope_from="", today=TODAY)
    assert (result.kind, result.subtype, result.permanent) == ("bounce", "dsn_delayed", False)


def test_delivered_dsn_is_a_success_notice() -> None:
    headers, raw = _dsn("delivered", "2.0.0")
    result = classify(headers, raw, envelope_from="", today=TODAY)
    assert (result.kind, result.subtype, result.permanent) == ("bounce", "dsn_delivered", None)


@pytest.mark.parametrize(
    ("subject", "text"),
    [
        (
            "Undelivered Mail Returned to Sender",
            "This is the mail system at host mx.example.org.\n\nI'm sorry to have to inform you "
            "that your message could not\nbe delivered to one or more recipients.\n\n"
            "<gone@example.org>: host mx.example.org said: 550 5.1.1 User unknown\n",
        ),
        (
            "Mail delivery failed: returning message to sender",
            "This message was created automatically by mail delivery software.\n\nA message that "
            "you sent could not be delivered to one or more of its\nrecipients. This is a "
            "permanent error. The following address(es) failed:\n\n  gone@example.org\n",
        ),
        (
            "failure notice",
            "Hi. This is the qmail-send program at example.org.\nI'm afraid I wasn't able to "
            "deliver your message to the following addresses.\n\n<gone@example.org>:\n"
            "Sorry, no mailbox here by that name. (#5.1.1)\n",
        ),
        (
            "Unzustellbar: Ihr Angebot",
            "Die Nachricht konnte nicht zugestellt werden an gone@example.org.\n",
        ),
    ],
)
def test_plain_text_bounces(subject: str, text: str) -> None:
    body = text + "\n------ This is a copy of the message, including all the headers. ------\n\n"
    headers, raw = message(
        subject, body + RETURNED, sender="Mail Delivery System <MAILER-DAEMON@mx.example.org>"
    )
    result = classify(headers, raw, envelope_from="", today=TODAY)
    assert result.kind == "bounce", result.evidence
    assert result.permanent is True
    assert "gone@example.org" in result.failed_recipients
    assert OUR_ID in result.referenced_ids


def test_person_forwarding_a_bounce_is_human() -> None:
    result = verdict(
        "Fwd: Undelivered Mail Returned to Sender",
        "Sam, your mail to our old address bounced, see below.\n\n"
        "> This is the mail system at host mx.example.org.\n> 550 5.1.1 User unknown",
    )
    assert result.kind == "human"


# --- receipts and reports ---------------------------------------------------------------------


def test_mdn_read_receipt_refers_to_our_message() -> None:
    boundary = "mdn-1"
    body = f"""--{boundary}
Content-Type: text/plain; charset=utf-8

Ihre Nachricht wurde am 02.03.2026 gelesen.

--{boundary}
Content-Type: message/disposition-notification

Reporting-UA: example.de; Microsoft Exchange Server
Final-Recipient: rfc822;erika@example.de
Original-Message-ID: <{OUR_ID}>
Disposition: manual-action/MDN-sent-manually; displayed

--{boundary}--
"""
    headers, raw = message(
        "Gelesen: Your proposal",
        body,
        content_type=(
            f'multipart/report; report-type=disposition-notification; boundary="{boundary}"'
        ),
    )
    result = classify(headers, raw, envelope_from="erika@example.de", today=TODAY)
    assert (result.kind, result.subtype) == ("receipt", "mdn")
    assert result.referenced_ids[0] == OUR_ID


def test_arf_report_is_feedback() -> None:
    boundary = "arf-1"
    body = f"""--{boundary}
Content-Type: text/plain

This is an email abuse report.

--{boundary}
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: SomeGenerator/1.0
Version: 1

--{boundary}
Content-Type: message/rfc822

{RETURNED}
--{boundary}--
"""
    headers, raw = message(
        "Abuse report",
        body,
        sender="feedback@isp.example",
        content_type=f'multipart/report; report-type=feedback-report; boundary="{boundary}"',
        reply=False,
    )
    result = classify(headers, raw, envelope_from="feedback@isp.example", today=TODAY)
    assert (result.kind, result.subtype) == ("feedback", "arf")
    assert result.referenced_ids == (OUR_ID,)


# --- needs_body and whole files ------------------------------------------------------------------


def test_needs_body_only_for_possibly_automated_mail() -> None:
    human, _ = message("Re: Your proposal", "")
    assert needs_body(human, envelope_from="erika@example.de") is False
    ooo, _ = message("Automatische Antwort: Ihr Angebot", "")
    assert needs_body(ooo, envelope_from="erika@example.de") is True
    assert needs_body(human, envelope_from="") is True
    assert needs_body(human, envelope_from="<>") is True
    report, _ = message("x", "", content_type="multipart/report; report-type=delivery-status")
    assert needs_body(report, envelope_from="a@b.example") is True
    daemon, _ = message("x", "", sender="MAILER-DAEMON@mx.example.org")
    assert needs_body(daemon, envelope_from="a@b.example") is True


def test_classify_without_body_uses_headers() -> None:
    headers, _ = message("Automatic reply: Your proposal", "")
    result = classify(headers, None, envelope_from="erika@example.de", today=TODAY)
    assert result.kind == "auto_reply"


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_classify_message_line_endings_and_mbox_line(newline: bytes) -> None:
    text = (
        "From MAILER-DAEMON Mon Mar  2 09:00:00 2026\n"
        "Return-Path: <>\nFrom: Erika <erika@example.de>\nSubject: Abwesenheitsnotiz: Angebot\n"
        "Date: Mon, 02 Mar 2026 09:15:00 +0100\n\nIch bin bis zum 16. März 2026 nicht im Büro.\n"
    )
    raw = text.encode("utf-8").replace(b"\n", newline)
    result = classify_message(raw)
    assert result.kind == "auto_reply"
    assert result.return_date == dt.date(2026, 3, 16)


def test_kinds_are_the_contract() -> None:
    assert KINDS == ("human", "auto_reply", "bounce", "receipt", "feedback")


def test_plain_autoresponder_copying_the_subject() -> None:
    """Simple autoresponders answer "Re: <subject>" with a short notice and no headers."""
    result = verdict(
        "Re: Your proposal",
        "Hello,\n\nI am currently on vacation until 20 March 2026 with no access to e-mail.\n"
        "For urgent matters please call the office.\n\nErika",
    )
    assert result.kind == "auto_reply", result.evidence
    assert result.return_date == dt.date(2026, 3, 20)


def test_person_mentioning_their_absence_while_answering_is_human() -> None:
    result = verdict(
        "Re: Your proposal",
        "Hi Sam,\n\nthe numbers look fine. I'm on vacation until 20 March, so let's sign after.\n"
        "\nErika\n\nOn Mon, 2 Mar 2026, Sam Seller wrote:\n> Here is our proposal.\n",
    )
    assert result.kind == "human", result.evidence


def test_person_writing_about_out_of_office_settings_is_human() -> None:
    result = verdict(
        "Re: [it] out of office replies",
        "Our out of office replies are set in the web portal.\n\n> How do I set an auto-reply?",
        extra=[("Precedence", "list"), ("X-Auto-Response-Suppress", "All")],
    )
    assert result.kind == "human", result.evidence


def test_auto_submitted_with_a_comment() -> None:
    result = verdict(
        "Re: Your proposal",
        "Away.",
        extra=[("Auto-Submitted", "auto-replied (zimbra; vacation)")],
    )
    assert result.kind == "auto_reply"
    assert "auto-submitted:auto-replied" in result.evidence


@pytest.mark.parametrize(
    ("subject", "body"),
    [
        (
            "Request received: Your proposal",
            "Thank you for contacting us. This is an automated response confirming that we "
            "received your request; our team will get back to you within two business days.",
        ),
        (
            "Re: Ihr Angebot",
            "Guten Tag,\n\ndies ist eine automatisch generierte Nachricht. Ihre E-Mail ist bei uns "
            "eingegangen und wird bearbeitet.",
        ),
        (
            "Re: Votre offre",
            "Ceci est une réponse automatique : votre message a bien été reçu.",
        ),
    ],
)
def test_acknowledgements_that_declare_themselves_automatic(subject: str, body: str) -> None:
    result = verdict(subject, body)
    assert result.kind == "auto_reply", result.evidence
    # Acknowledgements of receipt have their own subtype (tests/test_intent.py has more).
    assert result.subtype == "acknowledgement"


def test_person_quoting_an_automatic_notice_outlook_style_is_human() -> None:
    """Outlook quotes without ">": wording below "-----Original Message-----" is not theirs."""
    result = verdict(
        "RE: Automatic reply: Your proposal",
        "Sam, Erika is back now, I am forwarding your mail to her.\n\nJonas\n\n"
        "-----Original Message-----\nFrom: Erika Mustermann\nSent: Monday\n"
        "Subject: Automatic reply: Your proposal\n\nThis is an automatic reply. I am out of the "
        "office until 16 March with no access to email.",
    )
    assert result.kind == "human", result.evidence


def test_person_answering_a_mail_that_says_it_was_sent_automatically_is_human() -> None:
    result = verdict(
        "Re: Your trial ends soon",
        "Yes please, extend it.\n\nOn Mon, 2 Mar 2026 at 08:00, Sam Seller wrote:\n"
        "This message was sent automatically by our trial system.",
    )
    assert result.kind == "human", result.evidence


def test_person_forwarding_an_out_of_office_is_human() -> None:
    result = verdict(
        "Fwd: Automatic reply: Your proposal",
        "Sam, FYI - Erika is away, talk to me instead.\n\n"
        "---------- Forwarded message ----------\nFrom: Erika <erika@example.de>\n"
        "Subject: Automatic reply: Your proposal\n\nI am out of the office until 15 March.\n",
    )
    assert result.kind == "human", result.evidence


def test_bounce_subject_in_another_language_from_a_daemon() -> None:
    headers, raw = message(
        "Недоставленное сообщение",
        "Ваше сообщение не может быть доставлено.\n",
        sender="MAILER-DAEMON@mx.example.ru",
    )
    result = classify(headers, raw, envelope_from="", today=TODAY)
    assert result.kind == "bounce"
